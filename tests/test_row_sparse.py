"""Row-sparse TRU steps, bottom up: RowAdam against torch.optim.Adam, the compact sampled LightGCN propagation with
sparse table gradients, and LightGCN's incremental full propagation (`propagate_from`)."""
from __future__ import annotations

import pytest
import torch

from lightning_tru.nn import LightGCN, RowAdam
from lightning_tru.nn.losses import bpr_loss


def _sparse(rows: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    return torch.sparse_coo_tensor(rows.unsqueeze(0), values, shape, check_invariants=True)


def test_row_adam_equals_dense_adam_on_the_touched_rows() -> None:
    """The same rows every step (the others never have a gradient): exactly torch.optim.Adam's values, and rows
    outside never move; a dense parameter next to it follows Adam too."""
    g = torch.Generator().manual_seed(0)
    table, shared = torch.randn(10, 3, generator=g), torch.randn(4, generator=g)
    a, b = torch.nn.Parameter(table.clone()), torch.nn.Parameter(table.clone())
    sa, sb = torch.nn.Parameter(shared.clone()), torch.nn.Parameter(shared.clone())
    rows = torch.tensor([1, 4, 7])
    ref = torch.optim.Adam([{"params": [a]}, {"params": [sa], "lr": 0.01}], lr=0.1)
    opt = RowAdam([{"params": [b]}, {"params": [sb], "lr": 0.01}], lr=0.1)
    for step in range(6):
        vals = torch.randn(3, 3, generator=g)
        dense = torch.zeros(10, 3).index_copy_(0, rows, vals)
        gs = torch.randn(4, generator=g)
        a.grad, sa.grad = dense, gs.clone()
        b.grad, sb.grad = _sparse(rows[[2, 0, 1]], vals[[2, 0, 1]], (10, 3)), gs.clone()  # unsorted: coalesced
        ref.step()
        opt.step()
        if step == 2:
            for group in (*ref.param_groups, *opt.param_groups):  # an lr change (TRU's growth) applies to both
                group["lr"] *= 2
    torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(sb, sa, rtol=1e-6, atol=1e-7)
    others = torch.ones(10, dtype=torch.bool).index_fill_(0, rows, False)
    assert torch.equal(b.detach()[others], table[others])  # untouched rows: bit for bit
    state = opt.state_dict()  # checkpointable like Adam
    again = RowAdam([{"params": [torch.nn.Parameter(table.clone())]}, {"params": [torch.nn.Parameter(shared.clone())]}], lr=0.1)
    again.load_state_dict(state)
    torch.testing.assert_close(again.state[again.param_groups[0]["params"][0]]["exp_avg"], opt.state[b]["exp_avg"])


def test_row_adam_is_lazy_on_rows_without_gradient() -> None:
    """A row with momentum but no gradient this step stays where it is (dense Adam would drift it)."""
    p = torch.nn.Parameter(torch.zeros(3, 2))
    opt = RowAdam([p], lr=0.1)
    p.grad = _sparse(torch.tensor([0, 2]), torch.ones(2, 2), (3, 2))
    opt.step()
    before = p.detach().clone()
    p.grad = _sparse(torch.tensor([2]), torch.ones(1, 2), (3, 2))
    opt.step()
    assert torch.equal(p.detach()[0], before[0]) and not torch.equal(p.detach()[2], before[2])
    assert torch.equal(p.detach()[1], torch.zeros(2))


def test_row_adam_validates() -> None:
    for kwargs in ({"lr": 0.0}, {"eps": -1.0}, {"betas": (0.9, 1.0)}):
        with pytest.raises(ValueError, match="lr="):
            RowAdam([torch.nn.Parameter(torch.zeros(2))], **kwargs)  # type: ignore[arg-type]


def test_row_sparse_sampling_matches_the_dense_sampled_step() -> None:
    """``sampling(..., sparse=True)``: a compact propagation with the same scores, sparse table gradients equal to the
    dense ones on their rows (zero elsewhere), and a RowAdam step equal to Adam's."""
    torch.manual_seed(0)
    U, I = 30, 20
    model = LightGCN(U, I, embedding_dim=4, num_layers=2)
    users = torch.arange(U).repeat_interleave(4)
    model.set_graph(torch.stack([users, torch.randint(0, I, (len(users),))]))
    u, pos, neg = torch.tensor([3, 7, 3]), torch.tensor([1, 5, 9]), torch.tensor([2, 2, 11])

    def loss(sparse: bool) -> torch.Tensor:
        with model.sampling(2, torch.Generator().manual_seed(5), sparse=sparse):
            p = model.pair_propagation(u, torch.cat([pos, neg]))
            assert (p.index is not None) == sparse and (p.user.shape[0] < U) == sparse
            return bpr_loss(model.score(u, pos, p), model.score(u, neg, p))

    params = [model.user_embedding.weight, model.item_embedding.weight]
    dense = torch.autograd.grad(loss(False), params)
    sparse = torch.autograd.grad(loss(True), params)
    for d, s in zip(dense, sparse):
        assert s.is_sparse and s.coalesce().indices().shape[1] < d.shape[0]
        torch.testing.assert_close(s.to_dense(), d)
    start = [p.detach().clone() for p in params]
    Adam = torch.optim.Adam(params, lr=0.05)
    for p, d in zip(params, dense):
        p.grad = d
    Adam.step()
    want = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, s in zip(params, start):
            p.copy_(s)
    opt = RowAdam(params, lr=0.05)
    for p, s in zip(params, sparse):
        p.grad = s
    opt.step()
    for p, w in zip(params, want):
        torch.testing.assert_close(p.detach(), w, rtol=1e-6, atol=1e-7)


def test_propagate_from_equals_a_full_propagation() -> None:
    """LightGCN's incremental propagation: after a few rows change (and after many, and on a new graph) the snapshot's
    embeddings equal ``propagate()``'s."""
    torch.manual_seed(0)
    U, I = 40, 25
    model = LightGCN(U, I, embedding_dim=4, num_layers=3)
    edges = torch.stack([torch.arange(U).repeat_interleave(3), torch.randint(0, I, (3 * U,))])
    model.set_graph(edges)

    def full() -> torch.Tensor:
        with torch.no_grad():
            p = model.propagate()
        return torch.cat([p.user, p.item])

    snap = model.propagate_from()
    torch.testing.assert_close(snap.final, full())
    for rows in ([U + 3, U + 7], [2], list(range(U + I))):  # a few item rows, a user row, every row
        with torch.no_grad():
            for r in rows:
                table = model.user_embedding.weight if r < U else model.item_embedding.weight
                table[r if r < U else r - U] += torch.randn(4)
        snap = model.propagate_from(snap)
        torch.testing.assert_close(snap.final, full(), rtol=1e-5, atol=1e-6)
    unchanged = model.propagate_from(snap)
    torch.testing.assert_close(unchanged.final, snap.final)
    model.set_graph(edges[:, :-5])  # a new graph: propagated in full again
    torch.testing.assert_close(model.propagate_from(snap).final, full())
