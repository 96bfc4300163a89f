"""TRU with bounded-cost approximate steps (``sample_fanout``) answers a planted request like the exact TRU."""
from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import pytest
import torch
from lightning.pytorch import seed_everything

from conftest import unlearn
from lightning_tru.audit.membership import matched_nonmembers, pair_membership
from lightning_tru.audit.report import evaluate
from lightning_tru.callbacks import TRU
from lightning_tru.datamodules import SyntheticDataModule
from lightning_tru.datamodules.forget import ForgetRequest
from lightning_tru.datamodules.unlearning import UnlearningDataModule
from lightning_tru.models import RecommenderModule
from lightning_tru.models.retrain import retrain
from lightning_tru.nn import LightGCN


@pytest.fixture(scope="module")
def setup() -> tuple[SyntheticDataModule, RecommenderModule, RecommenderModule]:
    """Planted data, the untrained LightGCN and the LightGCN trained on it."""
    seed_everything(0, verbose=False)
    dm = SyntheticDataModule(num_users=400, num_items=200, seed=3, batch_size=1024, eval_batch_size=256)
    initial = RecommenderModule(partial(LightGCN, embedding_dim=16, num_layers=2), dm.num_users, dm.num_items,
                                dm.feature_dims, optimizer=partial(torch.optim.Adam, lr=2e-2))
    trained, _ = retrain(initial, dm, max_epochs=25, patience=5, seed=0, accelerator="cpu")
    return dm, initial, trained


def test_sampled_tru_lands_where_the_exact_tru_does(setup: tuple) -> None:
    """User-wise 20 %, fan-out 3 (item degrees ~40: every item row is sampled): pair-MIA AUC within 0.03 of the exact
    run's, test NDCG@20 at least 98 % of it, forget recall within 0.8-1.25 x."""
    dm, initial, trained = setup
    udm = UnlearningDataModule(dm, ForgetRequest("user", 0.2, seed=1), seed=0)
    pop = np.asarray(udm.retained_train_csr().sum(0)).ravel()
    pairs = matched_nonmembers(udm.forget.forget_pairs, dm.data.csr("train", "valid", "test"), pop, seed=1)
    out: dict[str, dict[str, Any]] = {}
    for name, fanout in (("exact", None), ("sampled", 3)):
        tru = TRU(sample_fanout=fanout)
        tru.use_initial(initial)
        seed_everything(0, verbose=False)
        model = unlearn(trained, udm, tru, 40)
        ev = evaluate(model, udm)
        out[name] = {"util": ev["test/ndcg@20"], "forget": ev["forget_recall@20"], "steps": tru.steps,
                     "auc": pair_membership(model, *pairs, udm.retained_train_csr())["auc_rank"],
                     "reached": tru.target_reached}
    exact, sampled = out["exact"], out["sampled"]
    assert exact["steps"] > 0 and sampled["steps"] > 0, out  # reverse steps ran in both
    assert sampled["reached"], out
    assert abs(sampled["auc"] - exact["auc"]) <= 0.03, out
    assert sampled["util"] >= 0.98 * exact["util"], out
    assert 0.8 * exact["forget"] <= sampled["forget"] <= 1.25 * exact["forget"], out


def test_sample_fanout_is_validated() -> None:
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="sample_fanout"):
            TRU(sample_fanout=bad)  # type: ignore[arg-type]


def test_a_verification_propagates_once(setup: tuple) -> None:
    """Forget recall, pair-MIA and the utility guard rank from one set of embeddings (``FrozenScorer``), and with
    ``sample_fanout`` TRU keeps them for the gate's thresholds of the next steps."""
    dm, initial, trained = setup
    udm = UnlearningDataModule(dm, ForgetRequest("user", 0.1, seed=0), seed=0)
    calls = {"n": 0}

    class Counting(TRU):
        def verify(self, model: Any, data: Any) -> dict[str, float]:
            backbone = model.backbone
            original, incremental = backbone.embeddings, backbone.propagate_from

            def counted() -> Any:
                calls["n"] += 1
                return original()

            def counted_from(*args: Any) -> Any:  # LightGCN: the propagation from the last verification's
                calls["n"] += 1
                return incremental(*args)

            backbone.embeddings, backbone.propagate_from = counted, counted_from  # type: ignore[method-assign]
            try:
                res = super().verify(model, data)
            finally:
                del backbone.embeddings, backbone.propagate_from
            assert calls["n"] == 1, calls
            calls["n"] = 0
            return res

    tru = Counting(sample_fanout=4, eval_every=2, stop_rule="recall", target_recall=0.0)
    tru.use_initial(initial)
    model = unlearn(trained, udm, tru, 4)
    assert tru.steps == 4 and tru._guard is not None
    steps_view = tru._t_view
    assert steps_view is not None and steps_view[0] == 4  # the last verification's embeddings
    u, i = model.backbone.embeddings()
    torch.testing.assert_close(steps_view[1].embeddings()[1], i)  # they are the model's after the steps


def test_row_sparse_steps_equal_dense_sampled_steps(setup: tuple) -> None:
    """Row-sparse steps (sparse table gradients, edits and row step scaling on their rows, RowAdam) end where the same
    sampled steps with dense gradients and Adam do: every step moves the same rows (the forget items' isolated rows),
    so the lazy row update is dense Adam's."""
    dm, initial, trained = setup
    udm = UnlearningDataModule(dm, ForgetRequest("user", 0.1, seed=0), seed=0)

    class Dense(TRU):
        def configure_optimizer(self, model: Any, data: Any) -> torch.optim.Optimizer:
            opt = super().configure_optimizer(model, data)
            self._row_sparse = False
            return torch.optim.Adam(opt.param_groups)

    models, kinds = [], []
    for cls in (TRU, Dense):
        tru = cls(sample_fanout=3, stop_rule="recall", target_recall=0.0, max_utility_loss=None)
        tru.use_initial(initial)
        seed_everything(0, verbose=False)
        models.append(unlearn(trained, udm, tru, 4))
        kinds.append(tru._row_sparse)
    assert kinds == [True, False]
    moved = 0
    for (n, a), b, c in zip(models[0].named_parameters(), models[1].parameters(), trained.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=n)
        moved += int((a != c).any(-1).sum()) if a.dim() == 2 else 0
    assert moved > 0  # the steps did move rows
