"""User-level membership inference (Zhang et al.): feature formula, attack shape, planted members."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
import torch
from torch import nn

from _audit_setup import fit, new_model
from lightning_tru.audit.requests import users_forget_set
from lightning_tru.audit.user_mia import AttackMLP, rank_weights, train_attack, user_features, user_mia
from lightning_tru.datamodules import SyntheticDataModule


def test_rank_weights_are_zhangs() -> None:
    w = rank_weights(100)
    assert w[0] == pytest.approx(100 / 5050) and w[99] == pytest.approx(1 / 5050) and float(w.sum()) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        rank_weights(0)


class _Fixed(nn.Module):
    def __init__(self, u: torch.Tensor, i: torch.Tensor) -> None:
        super().__init__()
        self.u, self.i = nn.Parameter(u), nn.Parameter(i)

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.u, self.i


def test_features_match_a_naive_loop() -> None:
    import scipy.sparse as sp

    g = torch.Generator().manual_seed(0)
    model = _Fixed(torch.randn(4, 3, generator=g), torch.randn(12, 3, generator=g))
    dense = np.random.default_rng(0).random((4, 12)) < 0.3
    dense[:, 0] = True  # every user has a history
    hist = sp.csr_matrix(dense, dtype=np.float32)
    f = user_features(model, np.arange(4), hist, hist, n=5)
    s = (model.u @ model.i.T).detach()
    for u in range(4):
        items = hist[u].indices
        row = s[u].clone()
        row[items] = float("-inf")
        top = torch.topk(row, 5).indices
        w = torch.tensor([(5 - j) / 15 for j in range(5)], dtype=torch.float64)
        want = model.i.detach().double()[items].mean(0) - (w[:, None] * model.i.detach().double()[top]).sum(0)
        assert torch.allclose(f[u].double(), want, atol=1e-5)


def test_attack_is_32_8_2_and_rejects_one_class() -> None:
    shapes = [tuple(m.weight.shape) for m in AttackMLP(16) if isinstance(m, nn.Linear)]
    assert shapes == [(32, 16), (8, 32), (2, 8)]
    with pytest.raises(ValueError, match="both members"):
        train_attack(torch.randn(4, 3), torch.ones(4))


@lru_cache(maxsize=1)
def _four_groups() -> tuple:
    """Users split in four: target members / non-members, shadow members / non-members."""
    torch.set_num_threads(1)
    dm = SyntheticDataModule(num_users=400, num_items=200, seed=1, batch_size=1024, eval_batch_size=400)
    perm = np.random.default_rng(0).permutation(400)
    tm, tn, sm, sn = (np.sort(perm[i * 100 : (i + 1) * 100]) for i in range(4))
    tdm = dm.without(users_forget_set(dm.data, np.r_[tn, sm, sn]))
    sdm = dm.without(users_forget_set(dm.data, np.r_[tm, tn, sn]))
    target, shadow = fit(new_model(dm, 0), tdm, 25), fit(new_model(dm, 0), sdm, 25)  # same initial model
    target.attach(tdm)
    shadow.attach(sdm)
    return dm, tdm, sdm, target, shadow, tm, tn, sm, sn


@pytest.mark.parametrize("vectors", ["model", "data"])
def test_memorising_target_is_caught_on_members_vs_nonmembers(vectors: str) -> None:
    dm, tdm, sdm, target, shadow, tm, tn, sm, sn = _four_groups()
    res = user_mia(shadow, sm, sn, sdm.data.csr("train"), dm.data.csr("train"),
                   {"target": (target, tdm.data.csr("train"))}, tm, tn, n=100, seed=0, vectors=vectors)
    print(vectors, res)
    assert res["shadow"]["auc"] > 0.9
    assert res["target"]["auc"] > 0.75
    assert res["target"]["positive_member_rate"] > res["target"]["negative_member_rate"] + 0.3
    again = user_mia(shadow, sm, sn, sdm.data.csr("train"), dm.data.csr("train"),
                     {"target": (target, tdm.data.csr("train"))}, tm, tn, n=100, seed=0, vectors=vectors)
    assert again == res  # seeded


def test_item_vectors_are_read_in_eval_mode_and_leave_the_mode_alone() -> None:
    """A model with dropout / BatchNorm (MIG-GT) gives the same item table on every call, and stays in its mode."""
    import torch
    from torch import nn

    from lightning_tru.audit.user_mia import item_vectors

    class Dropped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Parameter(torch.randn(30, 4))
            self.norm = nn.BatchNorm1d(4)
            self.drop = nn.Dropout(0.5)

        def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
            return self.table, self.drop(self.norm(self.table))

    m = Dropped().train()
    stats = m.norm.running_mean.clone()
    a, b = item_vectors(m), item_vectors(m)
    assert torch.equal(a, b) and m.training and torch.equal(m.norm.running_mean, stats)
