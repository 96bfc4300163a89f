r"""Sparse graph operators shared by the backbones.

Graphs are data, not parameters: :class:`SparseGraph` keeps a CSR matrix and its
transpose as non-persistent buffers, so Lightning moves them with the module, checkpoints
stay small, and unlearning swaps in a graph without the forgotten edges by calling the
backbone's ``set_graph``. Two SpMM backends compute the same product:

* ``"torch"`` (default): ``torch.sparse`` CSR (MKL on CPU, cuSPARSE on GPU);
* ``"torch_sparse"``: the optional ``torch-sparse`` extension (``pip install lightning_tru[ext]``).

Both run inside one autograd function whose backward is :math:`\partial L/\partial X = A^\top G`
with the transpose precomputed once per graph.
"""
from __future__ import annotations

import importlib.util
import warnings
from typing import Callable, Literal, NamedTuple, Optional

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

Backend = Literal["torch", "torch_sparse"]
BACKENDS: tuple[str, ...] = ("torch", "torch_sparse")


def _csr_tensor(*args: object, **kwargs: object) -> Tensor:
    """``torch.sparse_csr_tensor`` with torch's "beta state" notice silenced here only (no global filter)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(*args, **kwargs)  # type: ignore[arg-type]


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown graph backend {backend!r}; choose one of {BACKENDS}")
    if backend == "torch_sparse" and importlib.util.find_spec("torch_sparse") is None:
        raise ImportError(
            "graph backend 'torch_sparse' needs the torch-sparse package: "
            "pip install --no-build-isolation 'lightning_tru[ext]' (or use backend='torch')"
        )


def _spmm(crow: Tensor, col: Tensor, val: Tensor, shape: tuple[int, int], x: Tensor, backend: str) -> Tensor:
    if backend == "torch_sparse":
        import torch_sparse

        mat = torch_sparse.SparseTensor(
            rowptr=crow, col=col, value=val, sparse_sizes=shape, is_sorted=True, trust_data=True
        )
        return mat.matmul(x)
    return csr_mm(_csr_tensor(crow, col, val, shape, check_invariants=False), x)


def csr_mm(a: Tensor, x: Tensor) -> Tensor:
    """``a @ x`` for a CSR tensor ``a`` and a dense ``x``, the product written straight into a fresh output
    (``addmm`` with ``beta=0``, which ignores the output's content): torch's ``a @ x`` on the CPU zero-fills its
    result and copies it once more, 3-4x the product's own time on one thread. Differentiable calls (``x``
    requiring grad under grad mode: double backward) take ``a @ x``."""
    if torch.is_grad_enabled() and x.requires_grad:
        return a @ x
    out = x.new_empty(a.shape[0], x.shape[1])
    return torch.addmm(out, a, x, beta=0.0, out=out)


class _SpMM(torch.autograd.Function):
    """:math:`Y = A X` (or :math:`A^\\top X`) with :math:`\\nabla_X = A^\\top \\nabla_Y` (or :math:`A \\nabla_Y`);
    the graph itself gets no gradient."""

    @staticmethod
    def forward(ctx, graph: "SparseGraph", x: Tensor, transpose: bool = False) -> Tensor:  # type: ignore[override]
        ctx.graph, ctx.transpose = graph, transpose
        return graph.product(x, transpose)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor, None]:  # type: ignore[override]
        return None, ctx.graph.product(grad, not ctx.transpose), None


class ReweightedSpMM(torch.autograd.Function):
    r""":math:`Y = \tilde A X` for a matrix with :math:`\hat A`'s (symmetric) pattern and new values.

    ``val`` are :math:`\tilde A`'s values and ``val_t`` those of :math:`\tilde A^\top`, both in
    :math:`\hat A`'s CSR order, so the backward :math:`\nabla_X = \tilde A^\top \nabla_Y` reuses
    the same ``crow`` / ``col``.
    """

    @staticmethod
    def forward(ctx, graph: "SparseGraph", val: Tensor, val_t: Tensor, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.graph = graph
        ctx.save_for_backward(val_t)
        return _spmm(graph.crow, graph.col, val, graph.shape, x, graph.backend)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, None, None, Tensor]:  # type: ignore[override]
        (val_t,) = ctx.saved_tensors
        g: SparseGraph = ctx.graph
        return None, None, None, _spmm(g.crow, g.col, val_t, g.shape, grad, g.backend)


class SampledMix(torch.autograd.Function):
    r""":math:`y_n = \sum_j w_{nj}\, x_{s_{nj}}` as a CSR product :math:`P x` with :math:`P_{n, s_{nj}} = w_{nj}`.

    Backward: :math:`\nabla_x = P^\top \nabla_y` (CSR of the transpose) and
    :math:`\nabla_{w_{nj}} = \nabla_{y_n}^\top x_{s_{nj}}` (sampled dense-dense product), which
    avoids materialising the ``(N, S, d)`` gather and its scatter-add backward.
    Shapes: ``x`` ``(I, d)``, ``w`` ``(N, S)``, ``samples`` ``(N, S)`` -> ``(N, d)``.
    """

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, samples: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, w, samples)
        return _mix(x, w, samples)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:  # type: ignore[override]
        x, w, samples = ctx.saved_tensors
        return _mix_t(w, samples, x.shape[0], grad), _sampled_dot(grad, x, samples), None


class SampledDot(torch.autograd.Function):
    r""":math:`y_{nj} = q_n^\top x_{s_{nj}}`: each row of ``q`` against the rows ``samples[n]`` of ``x`` (the entries
    :math:`s_{nj}` of :math:`q x^\top`, a sampled dense-dense product), without gathering the ``(N, S, d)`` rows.

    Backward with :math:`P_{n, s_{nj}} = \nabla_{y_{nj}}`: :math:`\nabla_q = P x`, :math:`\nabla_x = P^\top q`
    (:class:`SampledMix`'s products, repeated samples summed).
    Shapes: ``q`` ``(N, d)``, ``x`` ``(I, d)``, ``samples`` ``(N, S)`` -> ``(N, S)``.
    """

    @staticmethod
    def forward(ctx, q: Tensor, x: Tensor, samples: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(q, x, samples)
        return _sampled_dot(q, x, samples)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:  # type: ignore[override]
        q, x, samples = ctx.saved_tensors
        return _mix(x, grad, samples), _mix_t(grad, samples, x.shape[0], q), None


def _mix(x: Tensor, w: Tensor, samples: Tensor) -> Tensor:
    """``(N, d)``: :math:`P x` with :math:`P_{n, s_{nj}} = w_{nj}` (CSR, ``S`` entries a row)."""
    n, s = samples.shape
    crow = torch.arange(0, n * s + 1, s, device=x.device)
    return csr_mm(_csr_tensor(crow, samples.reshape(-1), w.reshape(-1), (n, x.shape[0]), check_invariants=False), x)


def _mix_t(w: Tensor, samples: Tensor, num: int, grad: Tensor) -> Tensor:
    """``(num, d)``: :math:`P^\\top G` with :math:`P_{n, s_{nj}} = w_{nj}` (the transpose's CSR by a stable sort)."""
    n, s = samples.shape
    col = samples.reshape(-1)
    order = torch.argsort(col, stable=True)
    crow_t = torch.zeros(num + 1, dtype=torch.long, device=col.device)
    crow_t[1:] = torch.bincount(col, minlength=num).cumsum(0)
    rows = torch.arange(n, device=col.device).repeat_interleave(s)
    mat_t = _csr_tensor(crow_t, rows[order], w.reshape(-1)[order], (num, n), check_invariants=False)
    return csr_mm(mat_t, grad.contiguous())


def _sampled_dot(q: Tensor, x: Tensor, samples: Tensor) -> Tensor:
    """``(N, S)``: :math:`q_n^\\top x_{s_{nj}}` (``torch.sparse.sampled_addmm`` on the samples' pattern)."""
    n, s = samples.shape
    crow = torch.arange(0, n * s + 1, s, device=q.device)
    pattern = _csr_tensor(crow, samples.reshape(-1), q.new_zeros(n * s), (n, x.shape[0]), check_invariants=False)
    return torch.sparse.sampled_addmm(pattern, q.contiguous(), x.T.contiguous(), beta=0.0).values().view(n, s)


class _RowsMM(torch.autograd.Function):
    r""":math:`Y = B X` for :math:`B = A[\text{rows}]` (or :math:`A^\top[\text{rows}]`), a CSR block of a :class:`SparseGraph`.

    Backward :math:`\nabla_X = B^\top \nabla_Y`: through the COO view of :math:`B^\top` (:class:`BlockMM`) while
    :math:`B` holds at most a quarter of the graph's entries; above, the graph's stored transpose times
    :math:`\nabla_Y` scattered to all rows (a full product beats the unsorted COO one there: ~12 vs ~40 ns an entry
    on one CPU thread).
    """

    @staticmethod
    def forward(ctx, graph: "SparseGraph", rows: Tensor, block: Tensor, transpose: bool, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.graph, ctx.block, ctx.transpose = graph, block, transpose
        ctx.save_for_backward(rows)
        return csr_mm(block, x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, None, None, None, Tensor]:  # type: ignore[override]
        g: SparseGraph = ctx.graph
        if 4 * ctx.block.values().numel() <= g.nnz:
            return None, None, None, None, _block_t_mm(ctx.block, grad)
        (rows,) = ctx.saved_tensors
        spread = grad.new_zeros(g.shape[1 if ctx.transpose else 0], grad.shape[1]).index_add_(0, rows, grad)
        return None, None, None, None, g.product(spread, not ctx.transpose)


class BlockMM(torch.autograd.Function):
    r""":math:`Y = B X` for a CSR block :math:`B` (no gradient) with :math:`\nabla_X = B^\top \nabla_Y` through a COO
    view of :math:`B^\top` (the same entries, indices swapped): no sort to transpose, unlike the CSR product's own backward."""

    @staticmethod
    def forward(ctx, block: Tensor, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.block = block
        return csr_mm(block, x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor]:  # type: ignore[override]
        return None, _block_t_mm(ctx.block, grad)


def _block_t_mm(b: Tensor, grad: Tensor) -> Tensor:
    """:math:`B^\\top G` for a CSR tensor :math:`B` through the COO view of :math:`B^\\top` (no sort)."""
    crow = b.crow_indices()
    rows = torch.arange(b.shape[0], device=crow.device).repeat_interleave(crow.diff(), output_size=b.values().numel())
    t = torch.sparse_coo_tensor(torch.stack([b.col_indices(), rows]), b.values(), (b.shape[1], b.shape[0]), check_invariants=False)
    return torch.sparse.mm(t, grad)


class SparseGraph(nn.Module):
    r"""A fixed sparse matrix :math:`A \in \mathbb{R}^{n \times m}` applied as ``graph(x) = A x``.

    Args:
        matrix: a scipy sparse matrix (any format).
        backend: ``"torch"`` or ``"torch_sparse"``.
        symmetric: set when :math:`A = A^\top` to skip storing the transpose.

    Shapes:
        - input: ``(m, d)``; output: ``(n, d)``.
    """

    crow: Tensor
    col: Tensor
    val: Tensor
    crow_t: Tensor
    col_t: Tensor
    val_t: Tensor

    def __init__(self, matrix: sp.spmatrix, backend: Backend = "torch", symmetric: bool = False) -> None:
        super().__init__()
        _check_backend(backend)
        self.backend = backend
        self.symmetric = symmetric
        m = sp.csr_matrix(matrix, dtype=np.float32)
        m.sum_duplicates()
        m.sort_indices()
        self.shape = (int(m.shape[0]), int(m.shape[1]))
        self._register_csr("", m)
        if symmetric:  # the transpose is the matrix itself: the same tensors under both names (no copy)
            for name in ("crow", "col", "val"):
                self.register_buffer(name + "_t", getattr(self, name), persistent=False)
        else:
            self._register_csr("_t", sp.csr_matrix(m.T))

    def _register_csr(self, suffix: str, m: sp.csr_matrix) -> None:
        m.sort_indices()
        self.register_buffer("crow" + suffix, torch.from_numpy(m.indptr.astype(np.int64, copy=False)), persistent=False)
        self.register_buffer("col" + suffix, torch.from_numpy(m.indices.astype(np.int64, copy=False)), persistent=False)
        self.register_buffer("val" + suffix, torch.from_numpy(m.data.astype(np.float32)), persistent=False)

    @property
    def nnz(self) -> int:
        return int(self.val.numel())

    def forward(self, x: Tensor, transpose: bool = False) -> Tensor:
        """:math:`A x`, or :math:`A^\\top x` with ``transpose`` (the stored transpose: no conversion)."""
        if x.shape[0] != self.shape[0 if transpose else 1]:
            raise ValueError(f"graph of shape {self.shape}{'^T' if transpose else ''} cannot multiply a matrix with {x.shape[0]} rows")
        if x.dtype != self.val.dtype:
            x = x.to(self.val.dtype)
        return _SpMM.apply(self, x, transpose)

    def product(self, x: Tensor, transpose: bool = False) -> Tensor:
        """:math:`A x` or :math:`A^\\top x`, outside autograd's bookkeeping (the backend's product)."""
        if not transpose or self.symmetric:
            return _spmm(self.crow, self.col, self.val, self.shape, x, self.backend)
        return _spmm(self.crow_t, self.col_t, self.val_t, (self.shape[1], self.shape[0]), x, self.backend)

    def rows_product(self, rows: Tensor, x: Tensor, transpose: bool = False) -> Tensor:
        r"""``(R, d)``: :math:`(A x)_{\text{rows}}` (or :math:`(A^\top x)_{\text{rows}}`) from the CSR rows ``rows`` alone
        (cost: their entries), differentiable in ``x`` (:class:`_RowsMM`)."""
        if x.shape[0] != self.shape[0 if transpose else 1]:
            raise ValueError(f"graph of shape {self.shape}{'^T' if transpose else ''} cannot multiply a matrix with {x.shape[0]} rows")
        crow, col, val = self.rows(rows, transpose)
        block = _csr_tensor(crow, col, val, (len(rows), self.shape[0 if transpose else 1]), check_invariants=False)
        return _RowsMM.apply(self, rows, block, transpose, x.to(self.val.dtype))

    def rows(self, rows: Tensor, transpose: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """CSR ``(crow (R+1,), col (nnz_R,), val (nnz_R,))`` of the rows ``rows`` (``(R,)`` long) of :math:`A`
        (of :math:`A^\\top` with ``transpose``), columns unchanged."""
        if transpose and not self.symmetric:
            crow_a, col_a, val_a = self.crow_t, self.col_t, self.val_t
        else:
            crow_a, col_a, val_a = self.crow, self.col, self.val
        start = crow_a[rows]
        counts = crow_a[rows + 1] - start
        crow = torch.zeros(len(rows) + 1, dtype=torch.long, device=rows.device)
        torch.cumsum(counts, 0, out=crow[1:])
        total = int(crow[-1])
        idx = torch.arange(total, device=rows.device) + (start - crow[:-1]).repeat_interleave(counts, output_size=total)
        return crow, col_a.index_select(0, idx), val_a.index_select(0, idx)

    def row_product(self, rows: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """``((A x)[rows] (R, d), the columns those rows read (nnz_R,))`` for sorted distinct ``rows``, at the cost of
        the rows' entries (no gradient through the graph; ``x`` ``(m, d)``); a contiguous range of rows is a slice of
        the CSR arrays (no gather)."""
        if len(rows) and int(rows[-1]) - int(rows[0]) + 1 == len(rows):
            lo, hi = int(rows[0]), int(rows[-1]) + 1
            a, b = int(self.crow[lo]), int(self.crow[hi])
            crow, col, val = self.crow[lo : hi + 1] - a, self.col[a:b], self.val[a:b]
        else:
            crow, col, val = self.rows(rows)
        return _csr_tensor(crow, col, val, (len(rows), self.shape[1]), check_invariants=False) @ x, col

    def block(self, rows: Tensor, also: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """``(A[rows, C] as a CSR tensor (R, |C|), C)`` with ``C`` the sorted distinct columns the rows read,
        joined with the ids ``also``; the full matrix's values."""
        crow, col, val = self.rows(rows)
        mark = torch.zeros(self.shape[1], dtype=torch.bool, device=col.device)  # a mark per column, no sort
        mark.index_fill_(0, col, True)
        if also is not None:
            mark.index_fill_(0, also, True)
        cols = mark.nonzero().squeeze(1)  # sorted
        pos = torch.empty(self.shape[1], dtype=torch.long, device=col.device)
        pos.index_copy_(0, cols, torch.arange(len(cols), device=col.device))
        mat = _csr_tensor(crow, pos.index_select(0, col), val, (len(rows), len(cols)), check_invariants=False)
        return mat, cols

    def frontiers(self, seeds: Tensor, hops: int, max_nnz: Optional[int] = None) -> Optional["Frontiers"]:
        r"""The ``hops``-hop computation graph of ``seeds`` in this square graph (see :class:`Frontiers`).

        :math:`S_0` = the sorted distinct seeds, :math:`S_{k+1} = S_k \cup N(S_k)` (out-neighbours),
        ``blocks[k]`` :math:`= A[S_k, S_{k+1}]` with the full graph's values (its normalisation included).
        Cost: the degree sum of :math:`S_0 \dots S_{hops-1}`; ``None`` as soon as the blocks would hold more
        than ``max_nnz`` entries (the caller then propagates over the whole graph).
        """
        budget = {"nnz": 0}

        def step(nodes: list[Tensor]) -> Optional[tuple[Tensor, Tensor]]:
            budget["nnz"] += int((self.crow[nodes[-1] + 1] - self.crow[nodes[-1]]).sum())
            if max_nnz is not None and budget["nnz"] > max_nnz:
                return None
            return self.block(nodes[-1], also=nodes[-1])

        return self._grow(seeds, hops, step)

    def _grow(self, seeds: Tensor, hops: int,
              step: Callable[[list[Tensor]], Optional[tuple[Tensor, Tensor]]]) -> Optional["Frontiers"]:
        """:class:`Frontiers` from ``hops`` calls of ``step(nodes so far) -> (block, next nodes)`` (``None``: give up)."""
        if self.shape[0] != self.shape[1]:
            raise ValueError(f"frontiers need a square graph, this one is {self.shape}")
        nodes = [torch.unique(seeds)]
        blocks: list[Tensor] = []
        for _ in range(hops):
            out = step(nodes)
            if out is None:
                return None
            blocks.append(out[0])
            nodes.append(out[1])
        return Frontiers(nodes, blocks, sum(int(b.values().numel()) for b in blocks))

    def sample_block(
        self, rows: Tensor, fanout: int, generator: Optional[torch.Generator] = None, also: Optional[Tensor] = None
    ) -> tuple[Tensor, Tensor]:
        r"""An unbiased sample of the block ``A[rows, :]``: ``(B as a CSR tensor (R, |C|), C)`` with ``C`` the sorted
        distinct columns ``B`` reads, joined with the ids ``also``.

        A row :math:`n` with :math:`d_n \le F` (``fanout``) keeps its entries; a row with more draws :math:`F` of them
        uniformly with replacement, :math:`j_1 \dots j_F`, each weighted :math:`d_n / F`:

        .. math::
            (B x)_n = \frac{d_n}{F} \sum_{f=1}^{F} A_{n j_f} x_{j_f}, \qquad \mathbb E[B] = A[\text{rows}, :]

        (GraphSAGE's neighbour sampling with the full graph's values, so the estimate keeps its normalisation).
        Cost: :math:`O(R F \log(R F))`, whatever the graph's size. Duplicate draws are summed (a proper CSR).
        """
        if fanout < 1:
            raise ValueError(f"fanout={fanout} must be >= 1 (neighbours drawn per row)")
        dev = rows.device
        start = self.crow[rows]
        deg = self.crow[rows + 1] - start
        take = deg.clamp(max=fanout)
        total = int(take.sum())
        row_of = torch.arange(len(rows), device=dev).repeat_interleave(take, output_size=total)
        first = torch.zeros(len(rows) + 1, dtype=torch.long, device=dev)
        torch.cumsum(take, 0, out=first[1:])
        d = deg[row_of]
        sampled = d > fanout
        draw = torch.rand(total, generator=generator, device=generator.device if generator is not None else dev).to(dev)
        offset = torch.where(sampled, (draw * d).long().clamp(max=(d - 1).clamp_min(0)), torch.arange(total, device=dev) - first[row_of])
        idx = start[row_of] + offset
        col = self.col[idx]
        val = self.val[idx] * torch.where(sampled, d.to(self.val.dtype) / fanout, torch.ones_like(self.val[idx]))
        cols, inv = torch.unique(col if also is None else torch.cat([col, also]), return_inverse=True)  # sorted
        key = row_of * len(cols) + inv[:total]
        keys, pos = torch.unique(key, return_inverse=True)  # sorted by (row, column); duplicate draws merged
        summed = torch.zeros(len(keys), dtype=val.dtype, device=dev).index_add_(0, pos, val)
        crow = torch.zeros(len(rows) + 1, dtype=torch.long, device=dev)
        torch.cumsum(torch.bincount(keys // max(1, len(cols)), minlength=len(rows)), 0, out=crow[1:])
        mat = _csr_tensor(crow, keys % max(1, len(cols)), summed, (len(rows), len(cols)), check_invariants=False)
        return mat, cols

    def sampled_frontiers(self, seeds: Tensor, hops: int, fanout: int, generator: Optional[torch.Generator] = None) -> "Frontiers":
        r"""A sampled ``hops``-hop computation graph of ``seeds`` (see :class:`Frontiers`): ``blocks[k]`` is an
        independent :meth:`sample_block` of :math:`A[S_k, :]` and :math:`S_{k+1}` = its columns :math:`\cup S_0`.

        The blocks are drawn independently, so :math:`\mathbb E[B_0 B_1 \cdots B_{l-1}] = (A^l)[S_0, :]`:
        :meth:`Frontiers.apply` gives an unbiased estimate of the exact propagation on :math:`S_0`, exactly it when
        ``fanout`` is at least the largest degree met. Cost: at most :math:`F |S_0| \sum_{k<L} (F+1)^k` entries,
        independent of the graph's size.
        """
        out = self._grow(seeds, hops, lambda nodes: self.sample_block(nodes[-1], fanout, generator, also=nodes[0]))
        assert out is not None  # a sampled step never gives up
        return out

    def to_scipy(self) -> sp.csr_matrix:
        return sp.csr_matrix(
            (self.val.cpu().numpy(), self.col.cpu().numpy(), self.crow.cpu().numpy()), shape=self.shape
        )

    def extra_repr(self) -> str:
        return f"shape={self.shape}, nnz={self.nnz}, backend={self.backend!r}"


class Frontiers(NamedTuple):
    r"""The computation graph of :math:`L` propagation layers at a seed set :math:`S_0` (:meth:`SparseGraph.frontiers`).

    Since :math:`(A^{l} x)_{S_k}` needs only :math:`(A^{l-1} x)_{S_{k+1}}`, starting from
    :math:`x_{S_L}` and multiplying by ``blocks[L-1]``, ..., ``blocks[0]`` gives :math:`(A^l x)` exactly on
    :math:`S_{L-l} \supseteq S_0` (:meth:`apply`), at the cost of the blocks' entries instead of
    :math:`L\,\mathrm{nnz}(A)`.

    Attributes:
        nodes: ``L + 1`` sorted node-id tensors :math:`S_0 \subseteq S_1 \subseteq \dots \subseteq S_L`.
        blocks: ``L`` CSR tensors, ``blocks[k]`` :math:`= A[S_k, S_{k+1}]` (``(|S_k|, |S_{k+1}|)``).
        nnz: entries of the blocks together.
    """

    nodes: list[Tensor]
    blocks: list[Tensor]
    nnz: int

    def apply(self, x: Tensor, mean: bool) -> Tensor:
        r"""``(|S_0|, d)``: :math:`\frac{1}{L+1}\sum_{l=0}^{L} (A^l x)_{S_0}` if ``mean`` else :math:`(A^L x)_{S_0}`,
        from ``x`` ``(|S_L|, d)``, the rows :math:`S_L` of :math:`x` (differentiable in ``x``)."""
        seeds, hops = self.nodes[0], len(self.blocks)
        acc = x[torch.searchsorted(self.nodes[-1], seeds)] if mean else None
        for k in reversed(range(hops)):
            x = BlockMM.apply(self.blocks[k], x)  # (A^{hops-k} x) on S_k
            if mean and k:
                acc = acc + x[torch.searchsorted(self.nodes[k], seeds)]  # type: ignore[operator]
        if not mean:
            return x
        return (x + acc) / (hops + 1) if hops else acc  # type: ignore[operator]


def interaction_matrix(edge_index: Tensor | np.ndarray, num_users: int, num_items: int) -> sp.csr_matrix:
    """Binary ``(num_users, num_items)`` matrix :math:`R` from ``(2, E)`` (user, item) edges."""
    e = edge_index.detach().cpu().numpy() if isinstance(edge_index, Tensor) else np.asarray(edge_index)
    e = e.reshape(2, -1).astype(np.int64, copy=False)
    if e.size and (e.min() < 0 or e[0].max() >= num_users or e[1].max() >= num_items):
        raise ValueError(
            f"edge ids out of range for num_users={num_users}, num_items={num_items}; "
            "build the graph from the same data the model was sized for"
        )
    key = e[0] * num_items + e[1]
    if bool(np.all(key[1:] > key[:-1])):  # sorted distinct edges (a CSR's, e.g. the retained graph): no sort
        indptr = np.zeros(num_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(e[0], minlength=num_users), out=indptr[1:])
        r = sp.csr_matrix((np.ones(e.shape[1], np.float32), e[1], indptr), shape=(num_users, num_items))
        r.has_canonical_format = True
        return r
    r = sp.csr_matrix((np.ones(e.shape[1], np.float32), (e[0], e[1])), shape=(num_users, num_items))
    r.sum_duplicates()
    r.data[:] = 1.0
    return r


def _inv_sqrt(deg: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        d = np.power(deg.astype(np.float64), -0.5)
    d[~np.isfinite(d)] = 0.0
    return d


def normalized_bipartite(r: sp.csr_matrix, self_loops: bool = False) -> sp.csr_matrix:
    r"""Symmetrically normalised user-item adjacency of the bipartite graph.

    .. math::
        \hat A = D^{-1/2} (A + \delta I) D^{-1/2}, \quad
        A = \begin{pmatrix} 0 & R \\ R^\top & 0 \end{pmatrix}

    with :math:`\delta = 1` when ``self_loops`` (isolated nodes get degree 0 and rows of zeros).
    Shapes: ``r`` is ``(U, I)``; the result is ``(U + I, U + I)``.
    """
    nu, ni = r.shape
    if not self_loops:  # built directly in CSR (sorted rows, no sparse products): O(nnz) with small constants
        r = sp.csr_matrix(r)
        r.sum_duplicates()
        binary = bool(np.all(r.data == 1))
        du = _inv_sqrt(np.diff(r.indptr) if binary else np.asarray(r.sum(1)).ravel())
        di = _inv_sqrt(np.bincount(r.indices, minlength=ni) if binary else np.asarray(r.sum(0)).ravel())
        rows_u = np.repeat(np.arange(nu), np.diff(r.indptr))
        # (E,) float64: D_U^-1/2 R D_I^-1/2 on R's entries
        w = du[rows_u] * di[r.indices] if binary else r.data * du[rows_u] * di[r.indices]
        # the item rows: the transpose of the normalised block (the same products, CSC order; sorted rows)
        rt = sp.csr_matrix(sp.csr_matrix((w.astype(np.float32), r.indices, r.indptr), shape=r.shape).T)
        indptr = np.concatenate([r.indptr, r.indptr[-1] + rt.indptr[1:]]).astype(np.int64)
        indices = np.concatenate([r.indices, rt.indices]).astype(np.int64)
        indices[: len(r.indices)] += nu
        out = sp.csr_matrix((np.concatenate([w.astype(np.float32), rt.data]), indices, indptr), shape=(nu + ni, nu + ni))
        out.has_canonical_format = True  # rows sorted (R's, then the transpose's), no duplicates
        return out
    a = sp.bmat([[None, r], [r.T, None]], format="csr", dtype=np.float32)
    if self_loops:
        a = a + sp.identity(nu + ni, dtype=np.float32, format="csr")
    d = _inv_sqrt(np.asarray(a.sum(1)).ravel())
    return sp.csr_matrix(sp.diags(d) @ a @ sp.diags(d), dtype=np.float32)


def normalized_interactions(r: sp.csr_matrix) -> sp.csr_matrix:
    r""":math:`D_U^{-1/2} R D_I^{-1/2}`, the user-item block of :func:`normalized_bipartite`."""
    du = _inv_sqrt(np.asarray(r.sum(1)).ravel())
    di = _inv_sqrt(np.asarray(r.sum(0)).ravel())
    return sp.csr_matrix(sp.diags(du) @ r @ sp.diags(di), dtype=np.float32)


def knn_graph(features: Tensor | np.ndarray, k: int = 10, chunk: int = 2048) -> sp.csr_matrix:
    r"""Symmetrically normalised item-item kNN graph from cosine similarity (MGCN).

    Row :math:`i` keeps the top-``k`` items by :math:`\cos(f_i, f_j)` (itself included, as in
    MGCN), with weight 1, then :math:`\hat S = D^{-1/2} S D^{-1/2}` with row-sum degrees.
    Computed in row chunks: memory :math:`O(\text{chunk} \cdot n)`.
    """
    f = torch.as_tensor(np.asarray(features) if not isinstance(features, Tensor) else features)
    f = f.detach().float().cpu()
    n = f.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"knn k={k} must be between 1 and the number of items ({n})")
    f = torch.nn.functional.normalize(f, dim=1)
    cols = []
    for s in range(0, n, chunk):
        cols.append(torch.topk(f[s : s + chunk] @ f.T, k, dim=1).indices)
    col = torch.cat(cols).numpy().reshape(-1)
    row = np.repeat(np.arange(n), k)
    s = sp.csr_matrix((np.ones(len(row), np.float32), (row, col)), shape=(n, n))
    s.sum_duplicates()
    deg = _inv_sqrt(np.asarray(s.sum(1)).ravel())
    return sp.csr_matrix(sp.diags(deg) @ s @ sp.diags(deg), dtype=np.float32)
