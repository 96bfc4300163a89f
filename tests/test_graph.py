import importlib.util

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from lightning_tru.nn.graph import (
    SparseGraph,
    csr_mm,
    interaction_matrix,
    knn_graph,
    normalized_bipartite,
    normalized_interactions,
)


def _random_edges(nu: int = 9, ni: int = 7, e: int = 25, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, nu, e), rng.integers(0, ni, e)])


def test_normalized_bipartite_matches_dense_formula() -> None:
    r = interaction_matrix(_random_edges(), 9, 7)
    dense_r = r.toarray()
    a = np.block([[np.zeros((9, 9)), dense_r], [dense_r.T, np.zeros((7, 7))]])
    deg = a.sum(1)
    d = np.where(deg > 0, deg ** -0.5, 0.0)
    np.testing.assert_allclose(normalized_bipartite(r).toarray(), d[:, None] * a * d[None, :], rtol=1e-6)
    a_loop = a + np.eye(16)
    d2 = a_loop.sum(1) ** -0.5
    np.testing.assert_allclose(
        normalized_bipartite(r, self_loops=True).toarray(), d2[:, None] * a_loop * d2[None, :], rtol=1e-6
    )
    np.testing.assert_allclose(normalized_interactions(r).toarray(), normalized_bipartite(r).toarray()[:9, 9:], rtol=1e-6)
    # weighted, with an isolated user and item, unsorted input: the direct CSR build keeps the formula
    w = sp.random(9, 7, density=0.4, random_state=0, format="coo", dtype=np.float64)
    w = sp.coo_matrix((w.data + 0.5, (w.row, w.col)), shape=(9, 7)).tolil()
    w[3, :], w[:, 5] = 0, 0
    w = sp.csr_matrix(w)
    aw = np.block([[np.zeros((9, 9)), w.toarray()], [w.toarray().T, np.zeros((7, 7))]])
    dw = np.where(aw.sum(1) > 0, aw.sum(1) ** -0.5, 0.0)
    out = normalized_bipartite(w)
    assert out.has_sorted_indices and out.dtype == np.float32
    np.testing.assert_allclose(out.toarray(), dw[:, None] * aw * dw[None, :], rtol=1e-6)


def test_interaction_matrix_rejects_out_of_range_ids() -> None:
    with pytest.raises(ValueError, match="out of range"):
        interaction_matrix(np.array([[0, 9], [0, 1]]), 9, 7)


@pytest.mark.parametrize("symmetric", [True, False])
def test_sparse_graph_forward_and_gradient_match_dense(symmetric: bool) -> None:
    r = interaction_matrix(_random_edges(seed=3), 9, 7)
    m = normalized_bipartite(r) if symmetric else normalized_interactions(r)
    g = SparseGraph(m, symmetric=symmetric)
    dense = torch.tensor(m.toarray())
    x = torch.randn(m.shape[1], 5, requires_grad=True)
    xd = x.detach().clone().requires_grad_()
    w = torch.randn(m.shape[0], 5)
    (g(x) * w).sum().backward()
    (dense @ xd * w).sum().backward()
    torch.testing.assert_close(g(x), dense @ xd)
    torch.testing.assert_close(x.grad, xd.grad)


@pytest.mark.parametrize("symmetric", [True, False])
def test_sparse_graph_transpose_and_rows_products_match_dense(symmetric: bool) -> None:
    """``graph(x, transpose=True)`` is A^T x and ``rows_product(rows, x[, transpose])`` the rows of A x (A^T x), values and
    gradients (rows unsorted and repeated)."""
    r = interaction_matrix(_random_edges(seed=4), 9, 7)
    m = normalized_bipartite(r) if symmetric else normalized_interactions(r)
    g = SparseGraph(m, symmetric=symmetric)
    dense = torch.tensor(m.toarray())
    for transpose in (False, True):
        a = dense.T if transpose else dense
        x = torch.randn(a.shape[1], 3, requires_grad=True)
        # a few rows (backward through the block's own transpose) and every row, some twice (through the graph's)
        for rows in (torch.tensor([a.shape[0] - 1]), torch.cat([torch.arange(a.shape[0]).flip(0), torch.tensor([0, 2, 0])])):
            w = torch.randn(len(rows), 3)
            got = g.rows_product(rows, x, transpose)
            torch.testing.assert_close(got, (a @ x)[rows])
            torch.testing.assert_close(torch.autograd.grad((got * w).sum(), x)[0], torch.autograd.grad(((a @ x)[rows] * w).sum(), x)[0])
        full = g(x, transpose=transpose)
        torch.testing.assert_close(full, a @ x)
        torch.testing.assert_close(torch.autograd.grad(full.pow(2).sum(), x)[0], torch.autograd.grad((a @ x).pow(2).sum(), x)[0])
    with pytest.raises(ValueError, match="cannot multiply"):
        g.rows_product(torch.tensor([0]), torch.randn(m.shape[1] + 1, 2))


def test_csr_mm_matches_dense_and_stays_differentiable_twice() -> None:
    """``csr_mm`` (the product written into a fresh output) equals the dense product, an empty row included; under
    grad mode it is differentiable, so the graph's backward can be differentiated again (the double-vjp trick)."""
    m = sp.random(9, 6, density=0.3, format="lil", dtype=np.float32, random_state=0)
    m[2, :] = 0
    m = sp.csr_matrix(m)
    a = torch.sparse_csr_tensor(torch.from_numpy(m.indptr.astype(np.int64)), torch.from_numpy(m.indices.astype(np.int64)),
                                torch.from_numpy(m.data), m.shape)
    dense = torch.tensor(m.toarray())
    x = torch.randn(6, 3)
    torch.testing.assert_close(csr_mm(a, x), dense @ x)
    g = SparseGraph(m)
    x.requires_grad_(True)
    v = torch.randn(9, 3, requires_grad=True)
    (gx,) = torch.autograd.grad(g(x), x, grad_outputs=v, create_graph=True)  # A^T v, differentiable in v
    torch.testing.assert_close(gx, dense.T @ v)
    (gv,) = torch.autograd.grad(gx.sum(), v)
    torch.testing.assert_close(gv, dense @ torch.ones(6, 3))


def test_sparse_graph_rejects_wrong_rows_and_backend() -> None:
    g = SparseGraph(sp.identity(4, format="csr"))
    with pytest.raises(ValueError, match="cannot multiply"):
        g(torch.randn(5, 2))
    with pytest.raises(ValueError, match="unknown graph backend"):
        SparseGraph(sp.identity(4, format="csr"), backend="dense")  # type: ignore[arg-type]


def test_sparse_graph_buffers_are_not_persistent() -> None:
    g = SparseGraph(sp.identity(4, format="csr"))
    assert g.state_dict() == {}


def test_knn_graph_matches_naive_construction() -> None:
    rng = np.random.default_rng(0)
    f = rng.standard_normal((20, 6)).astype(np.float32)
    k = 4
    g = knn_graph(f, k, chunk=7).toarray()
    fn = f / np.linalg.norm(f, axis=1, keepdims=True)
    sim = fn @ fn.T
    s = np.zeros((20, 20))
    for i in range(20):
        s[i, np.argsort(-sim[i])[:k]] = 1.0
    d = s.sum(1) ** -0.5
    np.testing.assert_allclose(g, d[:, None] * s * d[None, :], rtol=1e-5)
    with pytest.raises(ValueError, match="knn k"):
        knn_graph(f, 0)


@pytest.mark.ext
@pytest.mark.skipif(importlib.util.find_spec("torch_sparse") is None, reason="torch-sparse not installed (make test-ext)")
def test_torch_sparse_backend_matches_torch_backend() -> None:
    r = interaction_matrix(_random_edges(60, 40, 300), 60, 40)
    for m, sym in ((normalized_bipartite(r), True), (normalized_interactions(r), False)):
        a, b = SparseGraph(m, "torch", sym), SparseGraph(m, "torch_sparse", sym)
        x1 = torch.randn(m.shape[1], 8, requires_grad=True)
        x2 = x1.detach().clone().requires_grad_()
        w = torch.randn(m.shape[0], 8)
        (a(x1) * w).sum().backward()
        (b(x2) * w).sum().backward()
        torch.testing.assert_close(a(x1), b(x2))
        torch.testing.assert_close(x1.grad, x2.grad)
