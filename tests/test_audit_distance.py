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
