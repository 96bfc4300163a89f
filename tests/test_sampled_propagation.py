"""Sampled propagation: exact at a fan-out of at least the largest degree, unbiased below it."""
from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from lightning_tru.models import RecommenderModule
from lightning_tru.nn import MGCN, LightGCN, SparseGraph, normalized_bipartite
from lightning_tru.nn.losses import bpr_loss

U, I = 60, 40


def _edges(per_user: int = 5, seed: int = 0) -> torch.Tensor:
    """A random bipartite graph whose degrees (5 per user, ~7.5 per item) exceed a fan-out of 2."""
    g = torch.Generator().manual_seed(seed)
    users = torch.arange(U).repeat_interleave(per_user)
    return torch.stack([users, torch.randint(0, I, (len(users),), generator=g)])


def _adjacency() -> sp.csr_matrix:
    e = _edges().numpy()
    r = sp.csr_matrix((np.ones(e.shape[1]), (e[0], e[1])), shape=(U, I))
    r.data[:] = 1.0
    return normalized_bipartite(r)


def _lightgcn(layers: int = 3) -> LightGCN:
    torch.manual_seed(0)
    model = LightGCN(U, I, embedding_dim=4, num_layers=layers)
    model.set_graph(_edges())
    return model


def _mgcn() -> MGCN:
    torch.manual_seed(0)
    model = MGCN(U, I, {"image": 6}, embedding_dim=4, knn_k=3, num_ui_layers=2, num_ii_layers=1)
    model.set_graph(_edges())
    model.set_features({"image": torch.randn(I, 6, generator=torch.Generator().manual_seed(1))})
    return model


def test_sample_block_keeps_small_rows_and_is_unbiased() -> None:
    a = _adjacency()
    graph = SparseGraph(a, symmetric=True)
    rows = torch.tensor([0, 3, U + 2, U + 7])
    dense = torch.tensor(a.toarray()[rows.numpy()], dtype=torch.float32)
    max_degree = int(np.diff(a.indptr).max())
    exact, cols = graph.sample_block(rows, max_degree, torch.Generator().manual_seed(0), also=torch.tensor([1]))
    torch.testing.assert_close(exact.to_dense(), dense[:, cols])  # every row under the fan-out: the block itself
    assert 1 in cols.tolist() and torch.equal(cols, torch.sort(cols).values)
    g = torch.Generator().manual_seed(0)
    mean, n = torch.zeros_like(dense), 4000
    for _ in range(n):
        block, cols = graph.sample_block(rows, 2, g)
        assert int(torch.diff(block.crow_indices()).max()) <= 2  # at most F entries a row
        mean[:, cols] += block.to_dense() / n
    # each entry's estimate is A_nj d_n / F times Binomial(F, 1 / d_n): standard error under 0.02 here
    torch.testing.assert_close(mean, dense, rtol=0, atol=0.05)
    assert (mean - dense).abs().mean() < 0.01
    with pytest.raises(ValueError, match="fanout"):
        graph.sample_block(rows, 0)


@pytest.mark.parametrize("name", ["lightgcn", "mgcn"])
def test_sampled_propagation_at_full_fanout_is_exact(name: str) -> None:
    """Values (every branch) and gradients equal the full propagation's on the pairs' rows."""
    model = _lightgcn() if name == "lightgcn" else _mgcn()
    users, pos, neg = torch.tensor([4, 9, 4, 50]), torch.tensor([1, 2, 30, 2]), torch.tensor([5, 17, 8, 11])
    items = torch.cat([pos, neg])

    def loss(p):  # type: ignore[no-untyped-def]
        return bpr_loss(model.score(users, pos, p), model.score(users, neg, p))

    full = model.propagate()
    sampled = model.sampled_propagation(users, items, fanout=U + I, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sampled.user[users], full.user[users])
    torch.testing.assert_close(sampled.item[items], full.item[items])
    for b, (bu, bi) in full.branches.items():
        torch.testing.assert_close(sampled.branches[b][1][items], bi[items])
    g_full = torch.autograd.grad(loss(full), list(model.parameters()), allow_unused=True)
    g_sampled = torch.autograd.grad(loss(sampled), list(model.parameters()), allow_unused=True)
    for a, b in zip(g_sampled, g_full):
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,draws_n", [("lightgcn", 1500), ("mgcn", 600)])
def test_sampled_graph_views_are_unbiased(name: str, draws_n: int) -> None:
    """With fan-out 2 (below every degree) the mean over many draws approaches the exact rows (seeded): LightGCN's
    final embeddings over three layers, MGCN's user-item view (its ``id`` branch; the fuser is non-linear)."""
    model = _lightgcn(3) if name == "lightgcn" else _mgcn()
    users, items = torch.tensor([0, 7]), torch.tensor([3, 11])

    def rows(p):  # type: ignore[no-untyped-def]
        bu, bi = p.branches["id"]
        return torch.cat([bu[users], bi[items]])

    exact = rows(model.propagate()).detach()
    g = torch.Generator().manual_seed(0)
    draws = []
    with torch.no_grad():
        for _ in range(draws_n):
            draws.append(rows(model.sampled_propagation(users, items, fanout=2, generator=g)))
    draws_t = torch.stack(draws)
    mean, se = draws_t.mean(0), draws_t.std(0) / len(draws) ** 0.5
    assert float(draws_t.std(0).mean()) > 0.01 * float(exact.abs().mean())  # it does sample
    assert bool(((mean - exact).abs() <= 4 * se + 1e-6).all()), float(((mean - exact).abs() / (se + 1e-9)).max())


def test_recommender_scores_through_the_sampled_propagation() -> None:
    """Inside ``backbone.sampling`` the module's scores are the sampled estimate; outside, the exact local scores."""
    model = RecommenderModule(partial(LightGCN, embedding_dim=4, num_layers=2), U, I)
    model.backbone.set_graph(_edges())
    users, items = torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6])
    exact = model.score(users, items)
    with model.backbone.sampling(U + I, torch.Generator().manual_seed(0)):
        torch.testing.assert_close(model.score(users, items), exact)
    with model.backbone.sampling(1, torch.Generator().manual_seed(0)) as b:
        assert b._sampling is not None
        rough = model.score(users, items)
    assert not torch.allclose(rough, exact)
    assert model.backbone._sampling is None  # restored
    torch.testing.assert_close(model.score(users, items), exact)
    with pytest.raises(ValueError, match="fanout"):
        with model.backbone.sampling(0):
            pass


def test_training_losses_sample_inside_sampling_only() -> None:
    """A training batch's losses read the exact batch propagation, and the sampled one inside ``sampling``."""
    model = RecommenderModule(partial(LightGCN, embedding_dim=4, num_layers=2), U, I)
    model.backbone.set_graph(_edges())
    users, pos, neg = torch.tensor([1, 2]), torch.tensor([4, 5]), torch.tensor([6, 7])
    exact = model.training_losses(users, pos, neg)["bpr"]
    full = model.backbone.propagate()
    s_pos, s_neg = model.backbone.score(users, pos, full), model.backbone.score(users, neg, full)
    torch.testing.assert_close(exact, bpr_loss(s_pos, s_neg))
    with model.backbone.sampling(U + I, torch.Generator().manual_seed(0)):
        torch.testing.assert_close(model.training_losses(users, pos, neg)["bpr"], exact)
    with model.backbone.sampling(1, torch.Generator().manual_seed(0)):
        assert not torch.allclose(model.training_losses(users, pos, neg)["bpr"], exact)
