"""Distance to Retrain: Jaccard / Spearman vs naive references, self-distance, the Retrain noise floor."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from _audit_setup import planted
from lightning_tru.audit.distance import RankCorrelation, TopKJaccard, distance_to_retrain, ranking_distance


def test_jaccard_and_spearman_match_naive_references() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 30, generator=g), torch.randn(6, 30, generator=g)
    b[:3] = a[:3] + 0.3 * b[:3]
    a[:, :4] = float("-inf")  # excluded items
    b[:, :4] = float("-inf")
    ta, tb = torch.topk(a, 5).indices, torch.topk(b, 5).indices
    jac, corr = TopKJaccard(), RankCorrelation()
    jac.update(ta, tb)
    corr.update(a, b)
    naive_j = np.mean([len(set(x.tolist()) & set(y.tolist())) / len(set(x.tolist()) | set(y.tolist()))
                       for x, y in zip(ta, tb)])
    naive_r = np.mean([spearmanr(x[4:].numpy(), y[4:].numpy())[0] for x, y in zip(a, b)])
    assert float(jac.compute()) == pytest.approx(naive_j, abs=1e-12)
    assert float(corr.compute()) == pytest.approx(naive_r, abs=1e-9)
    with pytest.raises(ValueError, match="differ in shape"):
        jac.update(ta, tb[:, :3])


def test_spearman_handles_rows_with_their_own_exclusions_like_scipy() -> None:
    """Rows excluding different items (one not finite in only one of the models, one with a single candidate, skipped),
    ties among the candidates: the statistic equals scipy's row by row; rows of two shapes are an error."""
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(9, 40, generator=g, dtype=torch.float64), torch.randn(9, 40, generator=g, dtype=torch.float64)
    b[:4] = a[:4] + 0.5 * b[:4]
    for r in range(9):
        out = torch.randperm(40, generator=g)[: 3 * r]
        a[r, out] = b[r, out] = float("-inf")
    a[2, 7], b[5, 11] = float("nan"), float("inf")  # not finite in one model only: out of both
    a[6, 1:39] = b[6, 1:39] = float("-inf")  # two candidates left
    a[7, :39] = b[7, :39] = float("-inf")  # one candidate: no correlation
    b[3, 20:25] = 0.25  # ties within a row
    ref = []
    for x, y in zip(a, b):
        keep = torch.isfinite(x) & torch.isfinite(y)
        if int(keep.sum()) >= 2:
            ref.append(spearmanr(x[keep].numpy(), y[keep].numpy(), nan_policy="raise")[0] if int(keep.sum()) > 2 else
                       float(np.sign((x[keep][1] - x[keep][0]) * (y[keep][1] - y[keep][0]))))
    corr = RankCorrelation()
    corr.update(a, b)
    assert int(corr.total) == len(ref) and len(ref) >= 7
    # scipy averages tied ranks where the sort orders them: the same except in the tied row
    untied = [v for i, v in enumerate(ref) if i != 3]
    one = RankCorrelation()
    one.update(torch.cat([a[:3], a[4:]]), torch.cat([b[:3], b[4:]]))
    assert float(one.compute()) == pytest.approx(np.mean(untied), abs=1e-9)
    assert float(corr.compute()) == pytest.approx(np.mean(ref), abs=0.01)
    with pytest.raises(ValueError, match="differ in shape"):
        corr.update(a, b[:, :3])


def test_self_distance_is_zero_and_another_seed_is_not() -> None:
    p = planted()
    udm = p.udm
    users = np.flatnonzero(np.diff(udm.retained_train_csr().indptr) > 0)
    excl = udm.retained_train_csr()
    self_d = ranking_distance(p.retrain, p.retrain, users, excl, k=20)
    assert self_d["jaccard@20"] == pytest.approx(1.0) and self_d["spearman"] == pytest.approx(1.0)
    res = distance_to_retrain(p.trained, p.retrain, users, excl, k=20, retrain_seed2=p.retrain2)
    assert 0.0 < res["floor_jaccard@20"] < 1.0 and res["floor_spearman"] < 1.0
    assert res["ratio_jaccard@20"] == pytest.approx((1 - res["jaccard@20"]) / (1 - res["floor_jaccard@20"]))
    # a model trained on the same retained data with another seed sits at the floor: ratio 1 by definition
    floor_vs_floor = distance_to_retrain(p.retrain2, p.retrain, users, excl, k=20, retrain_seed2=p.retrain2)
    assert floor_vs_floor["ratio_jaccard@20"] == pytest.approx(1.0)
