"""The two zero-cost floors: Surgery changes no weight; Reset restores exactly the initial rows of
deleted entities and touches nothing else; both run without an optimisation step."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer

from _audit_setup import new_model, planted
from conftest import REPO
from lightning_tru.callbacks import Reset, Surgery
from lightning_tru.callbacks.reset import deleted_entities
from lightning_tru.cli import train_cli, unlearn_cli
from lightning_tru.datamodules.forget import ForgetRequest
from lightning_tru.datamodules.unlearning import UnlearningDataModule
from lightning_tru.models.unlearning import UnlearningTask
from lightning_tru.nn import MIGGT, LightGCN


def _run(model: torch.nn.Module, udm: UnlearningDataModule, cb: Surgery) -> torch.nn.Module:
    model = copy.deepcopy(model)
    Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            accelerator="cpu", max_epochs=5, limit_val_batches=0, num_sanity_val_steps=0,
            callbacks=[cb]).fit(UnlearningTask(model), datamodule=udm)
    return model


def _params(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in m.named_parameters()}


def test_surgery_changes_no_weight_and_installs_the_retained_graph() -> None:
    p = planted()
    cb = Surgery()
    out = _run(p.trained, p.udm, cb)
    before, after = _params(p.trained), _params(out)
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert cb.steps == 0 and "graph surgery only" in cb.stopping_reason and "0 optimisation steps" in cb.stopping_reason
    surgery = copy.deepcopy(p.trained)
    surgery.attach(p.udm)
    with torch.no_grad():
        assert torch.equal(out.embeddings()[0], surgery.embeddings()[0])  # propagates over the retained graph
        assert not torch.equal(out.embeddings()[0], p.trained.embeddings()[0])
    assert len(cb.history) == 1 and "forget_recall@20" in cb.history[0]


@pytest.mark.parametrize("regime", ["user", "item", "interaction"])
def test_reset_restores_exactly_the_initial_rows_and_nothing_else(regime: str) -> None:
    p = planted()
    udm = p.udm if regime == "user" else UnlearningDataModule(p.dm, ForgetRequest(regime, 0.1, seed=0), seed=0)
    users, items = deleted_entities(udm)
    retained = udm.retained_train_csr()
    if regime == "user":
        assert np.array_equal(users, udm.forget.users) and len(items) == 0
    if regime == "item":
        assert np.array_equal(items, udm.forget.items)
    assert (np.diff(retained.indptr)[users] == 0).all() and (np.diff(retained.tocsc().indptr)[items] == 0).all()
    cb = Reset()
    cb.use_initial(p.initial)
    out = _run(p.trained, udm, cb)
    trained, init, after = _params(p.trained), _params(p.initial), _params(out)
    rows = {"backbone.user_embedding.weight": users, "backbone.item_embedding.weight": items}
    for n in trained:
        r = torch.as_tensor(rows.get(n, np.array([], dtype=np.int64)), dtype=torch.long)
        keep = torch.ones(len(trained[n]), dtype=torch.bool)
        keep[r] = False
        assert torch.equal(after[n][r], init[n][r])  # exactly Retrain's starting rows
        assert torch.equal(after[n][keep], trained[n][keep])  # every other row untouched
    assert cb.steps == 0 and cb.edits["reset_users"] == len(users) and cb.edits["reset_items"] == len(items)
    assert "(0 optimisation steps)" in cb.stopping_reason


def test_reset_row_of_a_deleted_user_equals_retrain() -> None:
    """Retrain (from the same initial model) never moves a user without data: Reset is exact there."""
    p = planted()
    cb = Reset()
    cb.use_initial(p.initial)
    out = _run(p.trained, p.udm, cb)
    u = torch.as_tensor(p.udm.forget.users)
    assert torch.equal(out.backbone.user_embedding.weight[u], p.retrain.backbone.user_embedding.weight[u])


def test_reset_without_initial_model_redraws_from_the_backbone_initialiser() -> None:
    p = planted()
    out = _run(p.trained, p.udm, Reset(seed=3))
    again = _run(p.trained, p.udm, Reset(seed=3))
    u = torch.as_tensor(p.udm.forget.users)
    w = out.backbone.user_embedding.weight[u]
    assert torch.equal(w, again.backbone.user_embedding.weight[u])  # seeded
    assert not torch.equal(w, p.initial.backbone.user_embedding.weight[u])  # same law, other values
    bound = (6.0 / sum(p.initial.backbone.user_embedding.weight.shape)) ** 0.5  # xavier-uniform bound
    assert w.abs().max() <= bound and w.abs().max() > 0.8 * bound


@pytest.mark.parametrize("cls", [LightGCN, MIGGT])
def test_initial_entity_table_follows_the_constructor_law(cls: type) -> None:
    feats = {"image": 4} if cls is MIGGT else None
    b = cls(2000, 50, feats, embedding_dim=16)
    for name in [n for ns in b.entity_parameters().values() for n in ns]:
        fresh = b.initial_entity_table(name, torch.Generator().manual_seed(0))
        built = b.get_parameter(name).detach()
        assert fresh.shape == built.shape
        assert fresh.std() == pytest.approx(float(built.std()), rel=0.05)
        assert fresh.abs().max() == pytest.approx(float(built.abs().max()), rel=0.35)
    with pytest.raises(ValueError, match="not an entity table"):
        b.initial_entity_table("nothing.weight", torch.Generator())


def test_reset_on_a_model_without_an_item_table_resets_the_users_and_says_so(tmp_path: Path) -> None:
    """MIG-GT without item embeddings: deleted items have no row (their representation is computed from content), so
    Reset re-draws the deleted users' rows only and reports the items it could not; no table at all is refused."""
    import json
    from functools import partial

    from lightning_tru.models import RecommenderModule

    p = planted()
    model = RecommenderModule(partial(MIGGT, embedding_dim=8), p.dm.num_users, p.dm.num_items, p.dm.feature_dims)
    assert "item" not in model.backbone.entity_parameters()
    train = p.dm.data.split_pairs("train")
    users, items = p.udm.forget.users[:5], np.unique(train[:, 1])[:3]
    pairs = train[np.isin(train[:, 0], users) | np.isin(train[:, 1], items)]  # every pair of 5 users and of 3 items
    (tmp_path / "req.json").write_text(json.dumps({"pairs": pairs.tolist()}))
    udm = UnlearningDataModule(p.dm, ForgetRequest(file=tmp_path / "req.json"), seed=0)
    del_users, del_items = deleted_entities(udm)
    assert set(users) <= set(del_users) and set(items) <= set(del_items)
    init = copy.deepcopy(model)
    cb = Reset()
    cb.use_initial(init)
    out = _run(model, udm, cb)
    u = torch.as_tensor(del_users)
    assert torch.equal(out.backbone.user_embedding.weight[u], init.backbone.user_embedding.weight[u])
    assert cb.edits["reset_users"] == len(del_users) and cb.edits["reset_items"] == 0
    assert cb.edits["no_table"] == {"item": len(del_items)}
    assert f"{len(del_items)} deleted items have no row to re-draw" in cb.stopping_reason

    class NoTables(torch.nn.Module):  # a model that declares nothing: refused, not silently skipped
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(2))

        def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
            return self.w.sum() + 0.0 * users

    with pytest.raises(ValueError, match="names no user table"):
        Reset().edit(NoTables(), udm)


def test_reset_errors_on_a_foreign_initial_model() -> None:
    p = planted()
    cb = Reset()
    cb.use_initial({"backbone.user_embedding.weight": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match="untrained copy"):
        _run(p.trained, p.udm, cb)


SIZE = ["--data.init_args.num_users", "300", "--data.init_args.num_items", "150"]
CONFIG = REPO / "configs" / "train" / "lightgcn_synthetic.yaml"


@pytest.mark.parametrize("method", ["surgery", "reset"])
def test_floor_configs_run_through_the_cli(method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    cli = train_cli(["fit", "--config", str(CONFIG), "--trainer.max_epochs", "2",
                     "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false",
                     "--trainer.enable_progress_bar", "false", "--test_after_fit", "false", *SIZE])
    ckpt = cli.trainer.checkpoint_callback.best_model_path
    report = unlearn_cli(["--config", str(CONFIG), "--config", str(REPO / "configs" / "unlearn" / f"{method}.yaml"),
                          "--ckpt_path", ckpt, "--output_root", str(tmp_path / "runs"),
                          "--ledger", str(tmp_path / "ledger.jsonl"), "--trainer.logger", "false",
                          "--trainer.enable_progress_bar", "false", *SIZE])
    name = method.capitalize()
    assert report["method"] == name and report["details"][name]["steps"] == 0
    assert "0 optimisation steps" in report["details"][name]["stopping_reason"]
