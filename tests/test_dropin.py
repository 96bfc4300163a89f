"""The drop-in protocol: a user's own LightningModule, unlearned by TRU through UnlearningTask."""
from __future__ import annotations

import copy
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from torch import Tensor, nn

from lightning_tru.models.protocol import all_scores, branch_groups, entity_groups, layer_groups
from lightning_tru.models.unlearning import UnlearningTask

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "custom_recommender.py"
OPTIONAL = ("embeddings", "branch_scores", "branch_parameters", "layer_parameters", "entity_parameters", "attach",
            "set_graph")


@pytest.fixture(scope="module")
def example() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("custom_recommender_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # so Lightning / pickling can find the class by its module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny embedding ops: one thread avoids oversubscribing the shared cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_example_model_offers_only_score(example: ModuleType) -> None:
    model = example.MatrixFactorization(5, 7, dim=3)
    assert callable(model.score)
    assert not [m for m in OPTIONAL if hasattr(model, m)]
    assert model.score(torch.tensor([0, 4]), torch.tensor([6, 1])).shape == (2,)


def test_example_unlearns_with_the_fallbacks(
    example: ModuleType, one_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    full_ranking_calls = 0
    score = example.MatrixFactorization.score

    def counting_score(self: nn.Module, users: Tensor, items: Tensor) -> Tensor:
        nonlocal full_ranking_calls
        n = self.item.num_embeddings
        if len(items) % n == 0 and torch.equal(items, torch.arange(n).repeat(len(items) // n)):
            full_ranking_calls += 1  # the chunked all_scores fallback: every item for each user
        return score(self, users, items)

    monkeypatch.setattr(example.MatrixFactorization, "score", counting_score)
    res = example.main(num_users=300, num_items=150, mean_interactions=15, dim=16, train_epochs=10, unlearn_steps=60)

    assert res["forget_recall_before"] > 0.3  # the model has learned the pairs to forget
    assert res["forget_recall_after"] < 0.5 * res["forget_recall_before"]
    assert res["test_recall_after"] > 0.5 * res["test_recall_before"]  # utility survives
    assert full_ranking_calls > 0  # no embeddings(): ranking ran through chunked score
    # no branch_parameters() / layer_parameters(): one group per top-level module
    if res["steps"]:  # profiled: no branch_parameters() / layer_parameters(), one group per top-level module
        # the reset users' rows are kept: the user branch may get no gradient at all
        assert "item" in res["branch_scales"] and set(res["branch_scales"]) <= {"user", "item"}
        assert set(res["selected_layers"]) <= {"user", "item"} and res["selected_layers"]
    else:  # the reset of the deleted users' rows (untrained model handed over) already answered it
        assert "0 steps" in res["stopping_reason"] and not res["branch_scales"]


def test_fallback_groups_and_chunked_scores(example: ModuleType) -> None:
    torch.manual_seed(0)
    model = example.MatrixFactorization(6, 9, dim=4)
    top_level = [name for name, _ in model.named_children()]
    assert sorted(branch_groups(model)) == sorted(top_level) == ["item", "user"]
    assert layer_groups(model) == {"user": ["user.weight"], "item": ["item.weight"]}
    assert entity_groups(model, 6, 9) == {"user": ["user.weight"], "item": ["item.weight"]}  # tables by row count
    assert entity_groups(example.MatrixFactorization(6, 6, dim=4), 6, 6) == {}  # ambiguous: no row isolation
    users = torch.tensor([5, 0, 3])
    for chunk in (1, 9, 20, 1 << 20):  # one row per chunk, exact fit, ragged, everything at once
        scores = all_scores(model, users, 9, chunk=chunk)
        assert torch.allclose(scores, model.user.weight[users] @ model.item.weight.T, atol=1e-6)


class _NoScore(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.user = nn.Embedding(4, 2)
        self.item = nn.Embedding(4, 2)

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        return (self.user(users) * self.item(items)).sum(-1)


def test_model_without_score_is_rejected() -> None:
    with pytest.raises(TypeError, match=r"_NoScore has no score\(users, items\) method"):
        UnlearningTask(_NoScore())


# ------------------------------------------------------------------------- one run per callback, resume, modes
class _DropMLP(torch.nn.Module):
    """A drop-in scorer with dropout and a non-dot-product score (only ``score``, as docs/dropin.md asks)."""

    def __init__(self, num_users: int, num_items: int, dim: int = 16) -> None:
        super().__init__()
        self.user, self.item = torch.nn.Embedding(num_users, dim), torch.nn.Embedding(num_items, dim)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(2 * dim, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                                       torch.nn.Linear(16, 1))

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([self.user(users), self.item(items)], -1)).squeeze(-1)


def _drop_mlp_setup() -> tuple:
    from lightning_tru import ForgetRequest, SyntheticDataModule, UnlearningDataModule

    seed_everything(0, verbose=False)
    dm = SyntheticDataModule(num_users=300, num_items=120, seed=0, batch_size=512)
    model = _DropMLP(dm.num_users, dm.num_items)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(15):
        for u, p, n in dm.train_dataloader():
            loss = -torch.nn.functional.logsigmoid(model.score(u, p) - model.score(u, n)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model, UnlearningDataModule(dm, ForgetRequest("user", 0.1, seed=0), seed=0)


def _fit(model: torch.nn.Module, udm: Any, cb: Any, epochs: int, extra: list | None = None, **kw: Any) -> None:
    from lightning_tru import UnlearningTask

    Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1,
            max_epochs=epochs, callbacks=[cb, *(extra or [])], enable_checkpointing=bool(extra),
            limit_val_batches=0).fit(UnlearningTask(model), datamodule=udm, **kw)


def test_a_resumed_run_with_dropout_ends_where_an_uninterrupted_one_does(tmp_path: Path) -> None:
    """Dropout draws, the last verified point (bisection, guard) and the step size all continue across a resume."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_tru import TRU

    base, udm = _drop_mlp_setup()
    kw = dict(lr=3e-2, eval_every=2, max_utility_loss=None)
    full = copy.deepcopy(base)
    seed_everything(0, verbose=False)
    cb_full = TRU(**kw)
    _fit(full, udm, cb_full, 30)
    assert cb_full.steps >= 8 and cb_full.target_reached  # several verifications: the test has something to resume
    seed_everything(0, verbose=False)
    part = copy.deepcopy(base)
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_epochs=1, save_top_k=-1, filename="{epoch}")
    _fit(part, udm, TRU(**kw), 5, extra=[ckpt])  # "crashes" after 5 steps, between two verifications
    resumed = copy.deepcopy(base)
    cb = TRU(**kw)
    seed_everything(123, verbose=False)  # whatever the global RNG is now: the checkpoint's states are restored
    _fit(resumed, udm, cb, 30, ckpt_path=tmp_path / "epoch=4.ckpt")
    assert cb.steps == cb_full.steps and cb.stopping_reason == cb_full.stopping_reason
    for (n, a), (_, b) in zip(full.named_parameters(), resumed.named_parameters()):
        torch.testing.assert_close(a, b, msg=n, rtol=0, atol=0)


def test_a_callback_answers_one_request_and_restores_the_models_modes() -> None:
    from lightning_tru import TRU

    model, udm = _drop_mlp_setup()
    model.eval()
    model.mlp[2].train()  # a submodule the user keeps in another mode than its parent
    modes = {n: m.training for n, m in model.named_modules()}
    cb = TRU(lr=3e-2, eval_every=2)
    _fit(model, udm, cb, 4)
    assert {n: m.training for n, m in model.named_modules()} == modes
    with pytest.raises(RuntimeError, match="already ran .* build a new one"):
        _fit(model, udm, cb, 4)  # the old profile and step count would be taken for a resume
    assert {n: m.training for n, m in model.named_modules()} == modes  # also after a failed run


@pytest.mark.parametrize("bad", [dict(lr=float("inf")), dict(lr=float("nan")), dict(eval_every=1.5),
                                 dict(train_mode="no")])
def test_bad_callback_values_are_refused_up_front(bad: dict) -> None:
    from lightning_tru import TRU

    with pytest.raises(ValueError, match="lr=|eval_every=|train_mode="):
        TRU(**bad)


def test_scalegun_defaults_work_on_a_model_without_an_id_branch() -> None:
    from lightning_tru.callbacks.scalegun import ScaleGUN

    model, udm = _drop_mlp_setup()
    sg = ScaleGUN()
    assert sg.select_parameters(model, udm.num_users, udm.num_items) == ["user.weight", "item.weight"]
    with pytest.raises(ValueError, match="branches=.*'auto'"):
        ScaleGUN(branches="id")
