"""TRU on planted synthetic data: mechanics (masks, scales, gate, resume, DDP) and forgetting vs Retrain."""
from __future__ import annotations

import contextlib
import copy
import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from conftest import REPO, unlearn
from lightning_tru.audit.membership import matched_nonmembers, pair_membership
from lightning_tru.audit.report import evaluate
from lightning_tru.callbacks import TRU
from lightning_tru.datamodules import SyntheticDataModule
from lightning_tru.datamodules.forget import ForgetRequest
from lightning_tru.datamodules.unlearning import UnlearningDataModule
from lightning_tru.models import RecommenderModule
from lightning_tru.models.retrain import retrain
from lightning_tru.models.unlearning import UnlearningTask
from lightning_tru.nn import MGCN, MIGGT, LightGCN




@pytest.fixture(scope="module")
def setup() -> tuple[SyntheticDataModule, RecommenderModule, RecommenderModule]:
    """A planted data set, the untrained model and the model trained on it."""
    seed_everything(0)
    dm = SyntheticDataModule(num_users=400, num_items=200, seed=3, batch_size=1024, eval_batch_size=256)
    initial = RecommenderModule(partial(MGCN, embedding_dim=16), dm.num_users, dm.num_items, dm.feature_dims,
                                optimizer=partial(torch.optim.Adam, lr=1e-2))
    trained, _ = retrain(initial, dm, max_epochs=30, patience=5, seed=0, accelerator="cpu")  # trained like Retrain
    return dm, initial, trained


def _unlearn(trained: RecommenderModule, udm: UnlearningDataModule, cb: TRU, steps: int = 200, **kw: Any) -> RecommenderModule:
    return unlearn(trained, udm, cb, steps, **kw)


def test_tru_forgets_like_retrain_and_keeps_utility(setup: tuple) -> None:
    dm, initial, trained = setup
    udm = UnlearningDataModule(dm, ForgetRequest("user", 0.05, seed=0), seed=0)
    before = evaluate(copy.deepcopy(trained), udm, original_graph=True)
    cb = TRU(eval_every=2)
    model = _unlearn(trained, udm, cb)
    after = evaluate(model, udm)
    seed_everything(0)
    gold, _ = retrain(initial, udm.retained, max_epochs=30, patience=5, seed=0, accelerator="cpu")
    ref = evaluate(gold, udm)
    assert cb.target_reached, cb.stopping_reason
    assert before["forget_recall@20"] > 2 * ref["forget_recall@20"]  # the planted signal is there to forget
    assert 0.8 * ref["forget_recall@20"] <= after["forget_recall@20"] <= 1.25 * ref["forget_recall@20"]  # two-sided
    pop = np.asarray(udm.retained_train_csr().sum(0)).ravel()
    pairs = matched_nonmembers(udm.forget.forget_pairs, dm.data.csr("train", "valid", "test"), pop, seed=1)
    mia = {name: pair_membership(m, *pairs, udm.retained_train_csr())["auc_rank"] for name, m in (("tru", model), ("gold", gold))}
    assert abs(mia["tru"] - mia["gold"]) <= 0.05, mia  # as hard to tell from Retrain by a pair-level attack
    assert after["exposure@20"] <= 1.1 * ref["exposure@20"]
    assert after["test/ndcg@20"] >= 0.97 * ref["test/ndcg@20"]  # issue 4 aims at 98%; measured 99.3% here


class _MaskProbe(TRU):
    """Instrumented TRU: asserts the gradient edit inside the hook."""

    checked = 0

    def edit_gradients(self, model: torch.nn.Module) -> None:
        raw = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        super().edit_gradients(model)
        selected = {n for l, ns in model.layer_parameters().items() if l in self.selected_layers for n in ns}
        branch_of = {n: b for b, ns in model.branch_parameters().items() for n in ns}
        for n, p in model.named_parameters():
            if n not in raw:
                continue
            if n in selected:
                want = raw[n] * self.branch_scales.get(branch_of[n], 1.0)
                if n in self.isolated_rows:  # row isolation: only the request's rows keep their gradient
                    keep = torch.zeros(len(want), dtype=torch.bool)
                    keep[self.isolated_rows[n]] = True
                    want[~keep] = 0
                torch.testing.assert_close(p.grad, want)
            else:
                assert torch.count_nonzero(p.grad) == 0, n
        self.checked += 1


def test_masks_zero_unselected_layers_and_scale_branches(setup: tuple) -> None:
    dm, _, trained = setup
    udm = UnlearningDataModule(dm, ForgetRequest("user", 0.05, seed=1))
    cb = _MaskProbe(eval_every=100, target_recall=0.0)
    before = {n: p.detach().clone() for n, p in trained.named_parameters()}
    model = _unlearn(trained, udm, cb, steps=3)
    assert cb.checked == 3
    assert 0 < len(cb.selected_layers) < len(model.layer_parameters())
    selected = {n for l, ns in model.layer_parameters().items() if l in cb.selected_layers for n in ns}
    users = "backbone.user_embedding.weight"
    for n, p in model.named_parameters():
        if n != users:  # the user table is reset (deleted users' rows), then kept
            assert torch.equal(p, before[n]) == (n not in selected), n
    # user-wise: the deleted users' rows are reset and kept as set; the update goes to the item rows
    assert users not in selected and sorted(cb.kept_rows[users]) == sorted(udm.forget.users.tolist())
    assert cb.isolated_rows[users] == [] and len(cb.isolated_rows["backbone.item_id_embedding.weight"]) > 0
    moved = (dict(model.named_parameters())[users] != before[users]).any(1).nonzero().flatten()
    assert set(moved.tolist()) <= set(udm.forget.users.tolist())  # retained users' rows never move
    lo, hi = cb.scale_clip
    assert all(lo <= s <= hi for s in cb.branch_scales.values())


def test_branch_scales_follow_gradient_statistics(setup: tuple) -> None:
    _, _, trained = setup
    model = copy.deepcopy(trained)
    cb = TRU(scale_clip=(0.01, 100.0))
    branches = model.branch_parameters()
    g_f = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    g_r = {n: torch.ones_like(p) * (2.0 if n in branches["id"] else 1.0) for n, p in model.named_parameters()}
    cb._derive(model, g_f, g_r)
    # raw ratios: id 2, others 1; geometric mean normalisation keeps their ratio 2
    others = [s for b, s in cb.branch_scales.items() if b != "id"]
    assert cb.branch_scales["id"] / others[0] == pytest.approx(2.0)
    assert torch.tensor(list(cb.branch_scales.values())).log().mean().item() == pytest.approx(0.0, abs=1e-6)
    cb2 = TRU(scale_clip=(0.9, 1.1))
    cb2._derive(model, g_f, g_r)
    assert max(cb2.branch_scales.values()) <= 1.1 and min(cb2.branch_scales.values()) >= 0.9


def test_layer_selection_respects_capacity_and_coverage(setup: tuple) -> None:
    _, _, trained = setup
    model = copy.deepcopy(trained)
    layers = model.layer_parameters()
    g_r = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    g_f = {n: torch.ones_like(p) * (5.0 if n in layers["user_embedding"] else 1.0) for n, p in model.named_parameters()}
    cb = TRU(coverage=0.01)
    cb._derive(model, g_f, g_r)
    assert cb.selected_layers == ["user_embedding"]  # most sensitive, enough coverage
    total = sum(p.numel() for p in model.parameters())
    cb = TRU(coverage=1.0, capacity=0.3)
    cb._derive(model, g_f, g_r)
    sizes = {l: sum(dict(model.named_parameters())[n].numel() for n in ns) for l, ns in layers.items()}
    assert cb.selected_layers[0] == "user_embedding"
    assert sum(sizes[l] for l in cb.selected_layers[1:]) <= 0.3 * total


def test_layer_coverage_counts_what_an_adam_step_moves() -> None:
    """Coverage is the share of the forget gradient's L1 norm (an Adam step moves each parameter by about the lr, so
    it lowers the loss by ~ lr * |g|_1): one scalar with a large gradient does not cover the deletion alone (with the
    squared norm it carried 97.6% here, and the update moved that scalar only)."""
    model = torch.nn.Module()
    model.slope = torch.nn.Linear(1, 1, bias=False)  # e.g. a PReLU slope: 1 parameter
    model.mat = torch.nn.Linear(40, 25, bias=False)  # 1000 parameters
    g_f = {"slope.weight": torch.full((1, 1), 100.0), "mat.weight": torch.full((25, 40), 0.5)}
    g_r = {"slope.weight": torch.ones(1, 1), "mat.weight": torch.ones(25, 40)}
    cb = TRU(coverage=0.8, capacity=1.0)
    cb._derive(model, g_f, g_r)
    assert cb.layer_sensitivity["slope"] > cb.layer_sensitivity["mat"]  # the scalar comes first ...
    l1 = {"slope": 100.0, "mat": 0.5 * 1000}
    assert l1["slope"] / sum(l1.values()) < 0.8  # ... and covers 1/6 of the L1 norm: the matrix is needed too
    assert cb.selected_layers == ["slope", "mat"]
    cb = TRU(coverage=0.15, capacity=1.0)  # 1/6 > 0.15: the scalar alone is enough
    cb._derive(model, g_f, g_r)
    assert cb.selected_layers == ["slope"]


def test_ranking_gate_lowers_forgotten_items(setup: tuple) -> None:
    dm, _, trained = setup
    udm = UnlearningDataModule(dm, ForgetRequest("user", 0.05, seed=2))
    model = copy.deepcopy(trained)
    model.attach(udm)
    cb = TRU(gate_weight=1.0)
    batch = udm.make_batch(0, 0)
    fu, fi = batch.forget_users, batch.forget_items

    def margin() -> torch.Tensor:
        with torch.no_grad():
            return (model.score(fu, fi) - cb._thresholds(model, fu, udm)).mean()

    start = margin()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(20):
        opt.zero_grad()
        cb.training_losses(model, batch, udm)["gate"].backward()
        opt.step()
    assert margin() < start - 0.05


def test_ablations_switch_interventions_off(setup: tuple) -> None:
    dm, _, trained = setup
    udm = UnlearningDataModule(dm, ForgetRequest("user", 0.05, seed=1))
    cb = TRU(ranking_gate=False, layer_isolation=False, modality_scaling=False, eval_every=100, target_recall=0.0)
    model = copy.deepcopy(trained)
    model.attach(udm)
    assert "gate" not in cb.training_losses(model, udm.make_batch(0, 0), udm)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    cb.branch_scales = {"id": 3.0}
    cb.selected_layers = []
    cb._index(model)
    cb.edit_gradients(model)
    assert all(bool((p.grad == 1).all()) for p in model.parameters())


def test_masked_layers_form_no_gradient_and_the_steps_stay_the_same(setup: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    """Layer isolation's masked parameters are left out of the step's graph: the same steps as zeroed gradients."""
    dm, _, trained = setup
    udm = UnlearningDataModule(dm, ForgetRequest("user", 0.05, seed=0))
    cb = TRU(eval_every=3, target_recall=0.0)  # the one-sided target 0 is never reached: every step is taken
    fast = _unlearn(trained, udm, cb, steps=6)
    names = {n for n, _ in fast.named_parameters()}
    assert cb.steps == 6 and cb._param_masked and cb._param_masked < names  # some masked, some stepped
    assert all(p.requires_grad for p in fast.parameters())  # the user's model is handed back as it came
    model = copy.deepcopy(fast)
    model.zero_grad(set_to_none=True)
    sum(cb.training_losses(model, udm.make_batch(0, 0), udm).values()).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(grads[n] is None for n in cb._param_masked) and any(grads[n] is not None for n in names - cb._param_masked)
    assert all(p.requires_grad for p in model.parameters())
    monkeypatch.setattr(TRU, "_masked_frozen", lambda self, model, dm: contextlib.nullcontext())
    slow_cb = TRU(eval_every=3, target_recall=0.0)
    slow = _unlearn(trained, udm, slow_cb, steps=6)  # every gradient formed, the masked ones zeroed
    assert slow_cb.selected_layers == cb.selected_layers
    for (n, a), b in zip(fast.state_dict().items(), slow.state_dict().values()):
        assert torch.equal(a, b), n


def test_resume_mid_unlearning_matches_uninterrupted(setup: tuple, tmp_path: Path) -> None:
    dm, _, trained = setup
    udm = UnlearningDataModule(dm, ForgetRequest("user", 0.05, seed=0))
    full = _unlearn(trained, udm, TRU(eval_every=3, target_recall=0.0), steps=8)
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_epochs=1, save_top_k=-1, filename="{epoch}")
    model = copy.deepcopy(trained)
    model.train()
    Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", max_epochs=4,
            callbacks=[TRU(eval_every=3, target_recall=0.0), ckpt], limit_val_batches=0).fit(UnlearningTask(model), datamodule=udm)
    saved = torch.load(tmp_path / "epoch=3.ckpt", weights_only=True)
    state = next(v for k, v in saved["callbacks"].items() if k.startswith("TRU"))
    assert state["steps"] == 4 and state["fingerprint"] == udm.forget.fingerprint and state["extra"]["selected_layers"]
    # crash here; resume with a *fresh* model (weights come from the checkpoint) and a fresh callback
    resumed = copy.deepcopy(trained)
    resumed.train()
    cb = TRU(eval_every=3, target_recall=0.0)
    Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", max_epochs=8,
            callbacks=[cb], enable_checkpointing=False, limit_val_batches=0).fit(
        UnlearningTask(resumed), datamodule=udm, ckpt_path=tmp_path / "epoch=3.ckpt")
    assert cb.steps == 8
    for (n, a), (_, b) in zip(full.named_parameters(), resumed.named_parameters()):
        torch.testing.assert_close(a, b, msg=n)


def test_resume_with_another_request_is_refused(setup: tuple, tmp_path: Path) -> None:
    dm, _, trained = setup
    udm = UnlearningDataModule(dm, ForgetRequest("user", 0.05, seed=0))
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_epochs=1, save_top_k=-1, filename="{epoch}")
    model = copy.deepcopy(trained)
    Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", max_epochs=1,
            callbacks=[TRU(target_recall=0.0), ckpt], limit_val_batches=0).fit(UnlearningTask(model), datamodule=udm)
    other = UnlearningDataModule(dm, ForgetRequest("user", 0.05, seed=9))
    with pytest.raises(ValueError, match="same deletion request"):
        Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", max_epochs=2,
                callbacks=[TRU(target_recall=0.0)], enable_checkpointing=False, limit_val_batches=0).fit(
            UnlearningTask(copy.deepcopy(trained)), datamodule=other, ckpt_path=tmp_path / "epoch=0.ckpt")


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="scale_clip"):
        TRU(scale_clip=(2.0, 4.0))
    with pytest.raises(ValueError, match="capacity"):
        TRU(capacity=0.0)
    with pytest.raises(ValueError, match="gate_temperature"):
        TRU(gate_temperature=0.0)
    with pytest.raises(ValueError, match="lr"):
        TRU(lr=-1.0)
    for bad in (-0.1, 1.5, float("nan")):  # a recall is in [0, 1]; -1 would never be reached
        with pytest.raises(ValueError, match=r"target_recall=.* must be in \[0, 1\]"):
            TRU(target_recall=bad)
    assert TRU(target_recall=0.0).target_recall == 0.0 and TRU().target_recall is None


class _ProfileDump(TRU):
    def __init__(self, out: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.out = out

    def on_fit_end(self, trainer: Trainer, pl_module: Any) -> None:
        Path(self.out, f"rank{trainer.global_rank}.json").write_text(
            json.dumps({"scales": self.branch_scales, "layers": self.selected_layers,
                        "sens": self.layer_sensitivity, "steps": self.steps, "rows": self.isolated_rows}))


@pytest.mark.slow
def test_ddp_ranks_derive_identical_profiles(setup: tuple, tmp_path: Path) -> None:
    dm, _, trained = setup
    udm = UnlearningDataModule(dm, ForgetRequest("user", 0.05, seed=0))
    single = _ProfileDump(str(tmp_path), eval_every=2, target_recall=0.0)
    _unlearn(trained, udm, single, steps=2)
    ref = json.loads((tmp_path / "rank0.json").read_text())
    (tmp_path / "rank0.json").unlink()
    model = copy.deepcopy(trained)
    Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=2, limit_val_batches=0,
            callbacks=[_ProfileDump(str(tmp_path), eval_every=2, target_recall=0.0)]).fit(UnlearningTask(model), datamodule=udm)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0 == r1  # every rank derives the same scales and masks
    assert r0["layers"] == ref["layers"]  # sharded + all-reduced profile = single-process profile
    users, items = "backbone.user_embedding.weight", "backbone.item_id_embedding.weight"
    assert r0["rows"][users] == ref["rows"][users] == []  # the reset users' rows are kept
    assert sorted(r0["rows"][items]) == sorted(ref["rows"][items]) and len(ref["rows"][items]) > 0
    for b, s in ref["scales"].items():
        assert r0["scales"][b] == pytest.approx(s, rel=1e-4)


def test_row_isolation_keeps_request_rows_where_the_deletion_dominates(setup: tuple) -> None:
    dm, _, trained = setup
    model = copy.deepcopy(trained)
    udm = UnlearningDataModule(dm, ForgetRequest("interaction", 0.05, seed=0))
    users, items = udm.forget.users, udm.forget.items
    heavy = users[::2]  # footprint users whose retained gradient dominates: not free to move
    g_f = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    g_r = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    g_r["backbone.user_embedding.weight"][torch.from_numpy(heavy)] = 2.0
    cb = TRU()
    cb._derive_rows(model, g_f, g_r, udm)
    assert sorted(cb.isolated_rows["backbone.user_embedding.weight"]) == sorted(set(users) - set(heavy))
    assert sorted(cb.isolated_rows["backbone.item_id_embedding.weight"]) == sorted(items.tolist())
    cb = TRU(row_threshold=0.0)  # every row of the request, none outside it
    cb._derive_rows(model, g_f, g_r, udm)
    assert sorted(cb.isolated_rows["backbone.user_embedding.weight"]) == sorted(users.tolist())
    with pytest.raises(ValueError, match="row_threshold"):
        TRU(row_threshold=-1.0)


def test_isolated_rows_survive_the_checkpoint(setup: tuple) -> None:
    dm, _, trained = setup
    udm = UnlearningDataModule(dm, ForgetRequest("user", 0.05, seed=2))
    cb = TRU(eval_every=100, target_recall=0.0)
    model = _unlearn(trained, udm, cb, steps=1)
    state = cb.state_dict()
    cb2 = TRU()
    cb2.load_state_dict(state)
    cb2.restore_profile(model)
    assert cb2.isolated_rows == cb.isolated_rows and cb2.isolated_rows
    assert all(torch.equal(cb2._row_keep[n], cb._row_keep[n]) for n in cb._row_keep)


ABLATIONS = sorted((REPO / "configs" / "unlearn" / "ablations").glob("tru_no_*.yaml"))


@pytest.mark.parametrize("config", ABLATIONS, ids=[p.stem for p in ABLATIONS])
def test_ablation_configs_switch_one_intervention_off(config: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    from lightning_tru.cli import train_cli, unlearn_cli

    (cb,) = yaml.safe_load(config.read_text())["trainer"]["callbacks"]
    switches = ("modality_scaling", "layer_isolation", "row_isolation", "ranking_gate")
    assert cb["class_path"] == "lightning_tru.callbacks.TRU" and cb["init_args"] in [{s: False} for s in switches]
    monkeypatch.chdir(REPO)
    runs: list[tuple[TRU, set[str]]] = []  # the callback the run used, and the loss terms of its steps
    losses = TRU.training_losses

    def record(self: TRU, model: torch.nn.Module, batch: Any, dm: Any) -> dict:
        out = losses(self, model, batch, dm)
        runs.append((self, set(out)))
        return out

    monkeypatch.setattr(TRU, "training_losses", record)
    size = ["--data.init_args.num_users", "200", "--data.init_args.num_items", "100"]
    quiet = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
    cli = train_cli(["fit", "--config", "configs/train/lightgcn_synthetic.yaml", "--trainer.max_epochs", "1",
                     "--trainer.default_root_dir", str(tmp_path), "--test_after_fit", "false", *size, *quiet])
    report = unlearn_cli(["--config", "configs/train/lightgcn_synthetic.yaml", "--config", str(config),
                          "--ckpt_path", cli.trainer.checkpoint_callback.best_model_path, "--output_root",
                          str(tmp_path / "out"), "--ledger", str(tmp_path / "ledger.jsonl"), "--trainer.max_epochs", "2",
                          "--trainer.callbacks.init_args.target_recall", "0.0", *size, *quiet])  # never reached: 2 steps
    assert report["method"] == "TRU" and report["details"]["TRU"]["steps"] == len(runs) >= 1, len(runs)
    (off,) = cb["init_args"]
    for used, terms in runs:  # the switch reached the run's callback and only that one is off
        assert {s: getattr(used, s) for s in switches} == {s: s != off for s in switches}
        assert ("gate" in terms) == (off != "ranking_gate")


BACKBONES = {
    "lightgcn": partial(LightGCN, embedding_dim=16),
    "mgcn": partial(MGCN, embedding_dim=16),
    "miggt": partial(MIGGT, embedding_dim=16, num_layers={"id": 2, "text": 1, "image": 1}, mlp_hidden_dims=[32]),
}


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_tru_on_every_backbone_costs_little_beyond_graph_surgery(name: str) -> None:
    """TRU reaches its target and keeps the retained users' utility of the surgered model (no update)."""
    seed_everything(0)
    dm = SyntheticDataModule(num_users=400, num_items=400, seed=5, batch_size=1024, eval_batch_size=256)
    initial = RecommenderModule(BACKBONES[name], dm.num_users, dm.num_items, dm.feature_dims,
                                optimizer=partial(torch.optim.Adam, lr=1e-2))
    trained, _ = retrain(initial, dm, max_epochs=20, patience=3, seed=0, accelerator="cpu")
    udm = UnlearningDataModule(dm, ForgetRequest("user", 0.05, seed=0), seed=0)
    surgery = evaluate(copy.deepcopy(trained), udm)  # graph surgery alone
    cb = TRU()
    model = _unlearn(trained, udm, cb, steps=100)
    after = evaluate(model, udm)
    assert cb.target_reached, cb.stopping_reason
    assert after["forget_recall@20"] < 0.5 * surgery["forget_recall@20"]  # the planted memory is gone
    assert after["test/ndcg@20"] >= 0.95 * surgery["test/ndcg@20"]
    users = cb.isolated_rows.get("backbone.user_embedding.weight")
    if cb.steps:  # reverse steps ran: row isolation kept them on the request's user rows
        assert users is not None and set(users) <= set(udm.forget.users.tolist())
    else:  # the exact reset already answered the request: no profile, no step
        assert users is None and "0 steps" in str(cb.stopping_reason)


class _ModeProbe(TRU):
    modes: list[bool]

    def profile(self, trainer: Trainer, model: torch.nn.Module, dm: UnlearningDataModule) -> None:
        self.modes = [model.training]
        super().profile(trainer, model, dm)

    def training_losses(self, model: torch.nn.Module, batch: Any, dm: Any) -> dict:
        self.modes.append(model.training)
        return super().training_losses(model, batch, dm)


@pytest.mark.parametrize("train_mode", [False, True])
def test_update_runs_in_the_requested_mode(setup: tuple, train_mode: bool) -> None:
    dm, _, trained = setup
    udm = UnlearningDataModule(dm, ForgetRequest("user", 0.05, seed=0))
    cb = _ModeProbe(eval_every=100, target_recall=0.0, train_mode=train_mode)
    _unlearn(trained, udm, cb, steps=3)  # the helper hands over a model in training mode
    assert cb.modes == [train_mode] * 4  # profiling and every step
