"""The drop-in protocol: a user's own LightningModule, unlearned by TRU through UnlearningTask."""
from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
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
