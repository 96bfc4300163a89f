"""Global target-item exposure vs a naive loop; fairness gap vs a naive split; efficiency ratios."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from _audit_setup import planted
from lightning_tru.audit.efficiency import Efficiency, efficiency_ratio
from lightning_tru.audit.exposure import exposure_reduction, global_exposure
from lightning_tru.audit.fairness import active_users, ndcg_gap
from lightning_tru.metrics.functional import ndcg_at_k


def _scores(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        u, i = model.embeddings()
        return u @ i.T


def test_global_exposure_matches_naive_loop() -> None:
    p = planted()
    udm = p.udm
    excl = udm.retained_train_csr()
    users = np.flatnonzero(np.diff(excl.indptr) > 0)
    targets = udm.forget.items
    got = {m: global_exposure(getattr(p, m), users, targets, excl, k=10, batch_users=64) for m in ("trained", "retrain")}
    for name in ("trained", "retrain"):
        s = _scores(getattr(p, name))
        shown = 0
        for u in users:
            row = s[u].clone()
            row[excl[u].indices] = float("-inf")
            shown += len(set(torch.topk(row, 10).indices.tolist()) & set(targets.tolist()))
        assert got[name] == pytest.approx(shown / (10 * len(users)))
    red = exposure_reduction(got["trained"], got["retrain"])
    assert red == pytest.approx(1 - got["retrain"] / got["trained"]) and exposure_reduction(0.0, 0.1) == 0.0


def test_ndcg_gap_matches_naive_split() -> None:
    p = planted()
    data = p.udm.retained.data
    train, excl, test = data.csr("train"), data.csr("train", "valid"), data.csr("test")
    res = ndcg_gap(p.retrain, train, excl, test, k=20, active_share=0.05)
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    active = active_users(train, users, 0.05)
    assert len(active) == int(np.ceil(0.05 * len(users)))
    counts = np.diff(train.indptr)
    assert counts[active].min() >= counts[np.setdiff1d(users, active)].max()
    s = _scores(p.retrain)
    s[torch.from_numpy(excl.toarray() > 0)] = float("-inf")
    target = torch.from_numpy(test.toarray() > 0)
    top = torch.topk(s, 20).indices
    inactive = np.setdiff1d(users, active)
    a = float(ndcg_at_k(top[active], target[active], 20))
    b = float(ndcg_at_k(top[inactive], target[inactive], 20))
    assert res["ndcg@20_active"] == pytest.approx(a) and res["ndcg@20_inactive"] == pytest.approx(b)
    assert res["ndcg@20_gap"] == pytest.approx(a - b)
    with pytest.raises(ValueError, match="active share"):
        active_users(train, users, 0.0)


def test_efficiency_measures_and_ratios() -> None:
    with Efficiency("cpu") as e:
        x = torch.ones(2_000_000)  # 8 MB
        del x
    r = e.result(steps=3)
    assert r["seconds"] > 0 and r["steps"] == 3 and r["peak_memory_bytes"] >= 0
    ratio = efficiency_ratio({"seconds": 2.0, "steps": 10.0}, {"seconds": 40.0, "steps": 500.0})
    assert ratio == {"seconds_ratio": 0.05, "steps_ratio": 0.02, "speedup": 20.0}


def test_random_recall_matches_enumerated_random_rankings() -> None:
    from itertools import permutations

    import scipy.sparse as sp

    from lightning_tru.audit.forgetting import random_recall

    num_items, k = 6, 2
    retained = {0: [0, 1], 1: [], 2: [3]}  # user -> retained train items (masked from the ranking)
    forgotten = {0: [2, 5], 1: [4], 2: []}  # user 2 forgot nothing: not averaged
    csr = lambda rows: sp.csr_matrix(  # noqa: E731
        (np.ones(sum(map(len, rows.values()))), ([u for u, r in rows.items() for _ in r], [i for r in rows.values() for i in r])),
        shape=(3, num_items))
    expected = []
    for u, f in forgotten.items():
        if not f:
            continue
        candidates = [i for i in range(num_items) if i not in retained[u]]
        recalls = [len(set(p[:k]) & set(f)) / len(f) for p in permutations(candidates)]  # every ranking equally likely
        expected.append(np.mean(recalls))
    assert random_recall(csr(retained), csr(forgotten), k) == pytest.approx(float(np.mean(expected)))
    assert random_recall(csr(retained), csr({0: [], 1: [], 2: []}), k) == 0.0


def test_recall_exposure_is_measured_in_eval_mode_and_leaves_the_mode_alone() -> None:
    """A model with dropout is measured without it (two calls agree) and stays in the mode it was in."""
    import scipy.sparse as sp
    import torch

    from lightning_tru.audit.forgetting import recall_exposure_at_k

    class Drop(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.u, self.i = torch.nn.Parameter(torch.randn(6, 4)), torch.nn.Parameter(torch.randn(9, 4))
            self.drop = torch.nn.Dropout(0.5)

        def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
            return self.drop(self.u), self.i

    m = Drop().train()
    target = sp.csr_matrix(([1.0] * 6, (range(6), [0, 1, 2, 3, 4, 5])), shape=(6, 9))
    empty = sp.csr_matrix((6, 9))
    a, b = recall_exposure_at_k(m, empty, target, k=3), recall_exposure_at_k(m, empty, target, k=3)
    assert a == b and m.training and m.drop.training
