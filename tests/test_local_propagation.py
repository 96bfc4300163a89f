"""Local propagation: scores over the pairs' L-hop computation graph equal the full graph's."""
from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from lightning.pytorch import seed_everything

from conftest import quiet_trainer, unlearn
from lightning_tru.callbacks import TRU
from lightning_tru.datamodules import ForgetRequest, SyntheticDataModule, UnlearningDataModule
from lightning_tru.models import RecommenderModule
from lightning_tru.nn import MGCN, LightGCN, SparseGraph, normalized_bipartite
from lightning_tru.nn.losses import bpr_loss

U, I = 120, 90


def _edges(seed: int = 0, per_user: int = 2) -> torch.Tensor:
    """A sparse random bipartite graph: a few hops reach part of it only."""
    g = torch.Generator().manual_seed(seed)
    users = torch.arange(U).repeat_interleave(per_user)
    return torch.stack([users, torch.randint(0, I, (len(users),), generator=g)])


def _backbone(name: str, layers: int = 3) -> LightGCN | MGCN:
    torch.manual_seed(0)
    edges = _edges()
    if name == "lightgcn":
        model: LightGCN | MGCN = LightGCN(U, I, embedding_dim=8, num_layers=layers)
    else:
        model = MGCN(U, I, {"image": 6, "text": 5}, embedding_dim=8, knn_k=3, num_ui_layers=min(layers, 2),
                     num_ii_layers=layers - min(layers, 2))
        g = torch.Generator().manual_seed(1)
        model.set_features({"image": torch.randn(I, 6, generator=g), "text": torch.randn(I, 5, generator=g)})
    model.set_graph(edges)
    model.local_max_share = 1.0
    return model


def test_frontiers_match_dense_matrix_powers() -> None:
    r = sp.csr_matrix((np.ones(_edges().shape[1]), tuple(_edges().numpy())), shape=(U, I))
    r.data[:] = 1.0
    a = normalized_bipartite(r)
    graph = SparseGraph(a, symmetric=True)
    dense = torch.tensor(a.toarray(), dtype=torch.float64)
    x = torch.randn(U + I, 4, dtype=torch.float64)
    seeds = torch.tensor([7, 3, 7, U + 5])
    fr = graph.frontiers(seeds, 3)
    assert fr is not None and fr.nodes[0].tolist() == [3, 7, U + 5]
    assert len(fr.nodes[-1]) < U + I  # three hops do not reach the whole graph
    assert fr.nnz == sum(int(a[n.numpy()].nnz) for n in fr.nodes[:-1])
    powers = [x]
    for _ in range(3):
        powers.append(dense @ powers[-1])
    xs = x[fr.nodes[-1]].float()
    torch.testing.assert_close(fr.apply(xs, mean=False).double(), powers[3][fr.nodes[0]], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fr.apply(xs, mean=True).double(), torch.stack(powers).mean(0)[fr.nodes[0]],
                               rtol=1e-5, atol=1e-6)
    assert graph.frontiers(seeds, 3, max_nnz=fr.nnz - 1) is None  # over budget: the caller propagates in full
    with pytest.raises(ValueError, match="square"):
        SparseGraph(r).frontiers(seeds, 1)
    block, cols = graph.block(torch.tensor([3, U + 5]), also=torch.tensor([0]))
    torch.testing.assert_close(block.to_dense(), torch.tensor(a.toarray()[[3, U + 5]][:, cols.numpy()], dtype=torch.float32))
    assert 0 in cols.tolist() and set(a[[3, U + 5]].indices) <= set(cols.tolist())


@pytest.mark.parametrize("name,layers", [("lightgcn", 3), ("lightgcn", 0), ("mgcn", 3), ("mgcn", 1)])
def test_local_propagation_equals_the_full_graph_on_the_rows(name: str, layers: int) -> None:
    """Values of every branch and extra, and the gradients of a loss over them, equal the full propagation's
    (also without layers: MGCN with 1 user-item layer has no kNN hop)."""
    model = _backbone(name, layers)
    users, pos, neg = torch.tensor([4, 9, 4, 60]), torch.tensor([1, 2, 30, 2]), torch.tensor([5, 70, 8, 11])
    items = torch.cat([pos, neg])

    def loss(p):  # type: ignore[no-untyped-def]
        return bpr_loss(model.score(users, pos, p), model.score(users, neg, p)) + sum(
            s.pow(2).sum() for s in model.branch_scores(users, items[:4], p).values())

    full, local = model.propagate(), model.local_propagation(users, items)
    torch.testing.assert_close(local.user[users], full.user[users])
    torch.testing.assert_close(local.item[items], full.item[items])
    for b, (bu, bi) in full.branches.items():
        torch.testing.assert_close(local.branches[b][0][users], bu[users])
        torch.testing.assert_close(local.branches[b][1][items], bi[items])
    for k, v in full.extras.items():
        rows = torch.cat([users, items + U])
        torch.testing.assert_close(local.extras[k][rows], v[rows])
    off = torch.ones(U, dtype=torch.bool)
    off[users] = False
    assert local.user[off].abs().sum() == 0  # rows off the pairs are not computed
    g_full = torch.autograd.grad(loss(full), list(model.parameters()))
    g_local = torch.autograd.grad(loss(model.local_propagation(users, items)), list(model.parameters()))
    for a, b in zip(g_local, g_full):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    model.local_max_share = 0.0  # off: the graphs propagate in full (MGCN's fuser still on the rows only)
    fallback = model.local_propagation(users, items)
    torch.testing.assert_close(fallback.user[users], full.user[users])
    assert fallback.item.abs().sum() > local.item.abs().sum()  # more rows than the pairs' were propagated


def test_recommender_scores_through_the_local_propagation() -> None:
    model = RecommenderModule(partial(LightGCN, embedding_dim=8, num_layers=2), U, I)
    model.backbone.set_graph(_edges())
    model.backbone.local_max_share = 1.0
    users, items = torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6])
    assert model.backbone.adj.frontiers(torch.cat([users, items + U]), 2) is not None
    full = model.backbone.propagate()
    torch.testing.assert_close(model.score(users, items), model.backbone.score(users, items, full))
    parts = model.branch_scores(users, items)
    torch.testing.assert_close(parts["id"], model.backbone.branch_scores(users, items, full)["id"])


class _FixedBudget(TRU):
    """TRU that never meets its stopping rule: it spends the step budget."""

    def _reached(self, res: dict[str, float]) -> bool:
        return False


def test_tru_with_and_without_the_restriction_agrees() -> None:
    """A fixed budget of TRU steps lands on the same weights whether the scores propagate locally or in full."""
    seed_everything(0)
    dm = SyntheticDataModule(num_users=300, num_items=1200, mean_interactions=6.0, popularity_exponent=0.0, seed=2, batch_size=256,
                             eval_batch_size=256)
    trained = RecommenderModule(partial(LightGCN, embedding_dim=8, num_layers=2), dm.num_users, dm.num_items,
                                optimizer=partial(torch.optim.Adam, lr=1e-2))
    quiet_trainer(max_epochs=2).fit(trained, datamodule=dm)
    udm = UnlearningDataModule(dm, ForgetRequest("user", 0.01, seed=0), forget_batch_size=64, retain_batch_size=8, seed=0)
    fu, fi, fj, ru, ri, rj = udm.make_batch(0, 0)
    seeds = torch.cat([fu, fu, ru, ru, dm.num_users + torch.cat([fi, fj, ri, rj])])
    trained.backbone.set_graph(udm.train_edge_index())
    fr = trained.backbone.adj.frontiers(seeds, 2)
    assert fr is not None and fr.nnz < 0.9 * 2 * trained.backbone.adj.nnz, (fr.nnz, trained.backbone.adj.nnz)  # local runs
    out = {}
    for share in (0.0, 0.9):
        trained.backbone.local_max_share = share
        cb = _FixedBudget(stop_rule="recall", target_recall=0.0, eval_every=100, max_utility_loss=None)
        out[share] = unlearn(trained, udm, cb, steps=4)
        assert cb.steps == 4
    moved = 0.0
    for (n, a), b in zip(out[0.0].named_parameters(), out[0.9].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=n)
        moved += float((a - trained.get_parameter(n)).abs().sum())
    assert moved > 0  # the steps did change the model
