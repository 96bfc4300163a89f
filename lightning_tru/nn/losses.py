r"""Losses as plain functions over score or embedding tensors."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def bpr_loss(pos: Tensor, neg: Tensor) -> Tensor:
    r"""Bayesian personalised ranking: :math:`-\frac1B\sum \log\sigma(s_{ui} - s_{uj})`.

    Shapes: ``pos``, ``neg``: ``(B,)`` scores of observed and sampled pairs.
    """
    return -F.logsigmoid(pos - neg).mean()


def reverse_bpr_loss(pos: Tensor, neg: Tensor) -> Tensor:
    r"""Reverse BPR for forget pairs: :math:`-\frac1B\sum \log\sigma(s_{uj} - s_{ui})`.

    Bounded below by 0: it pushes a forgotten item :math:`i` under a sampled negative
    :math:`j` without the runaway of plain gradient ascent on :func:`bpr_loss`.
    """
    return -F.logsigmoid(neg - pos).mean()


def l2_penalty(*embeddings: Tensor) -> Tensor:
    r"""Batch embedding regulariser :math:`\frac{1}{2B}\sum_e \lVert e \rVert_F^2` (``B`` = rows of the first)."""
    batch = embeddings[0].shape[0]
    return sum(e.pow(2).sum() for e in embeddings) / (2.0 * batch)  # type: ignore[return-value]


def info_nce(a: Tensor, b: Tensor, temperature: float = 0.2, counts: Optional[Tensor] = None) -> Tensor:
    r"""InfoNCE between two views, in-batch negatives.

    .. math::
        -\frac1B\sum_k \log \frac{\exp(\hat a_k^\top \hat b_k/\tau)}{\sum_l \exp(\hat a_k^\top \hat b_l/\tau)},
        \quad \hat x = x / \lVert x \rVert

    A batch that repeats an entity repeats its row and its column of the logits. With ``counts``,
    ``a`` and ``b`` hold each distinct entity once and ``counts[j]`` says how often it occurs; the
    value is that of the batch with the repetitions, computed on the distinct rows only:

    .. math::
        \frac{1}{\sum_j c_j}\sum_j c_j\Big(\log\sum_{j'} c_{j'} e^{S_{jj'}} - S_{jj}\Big), \quad
        S_{jj'} = \hat a_j^\top \hat b_{j'}/\tau

    The ``(B, B)`` logits are never stored: :class:`_InfoNCE` runs over blocks of rows that stay in cache.

    Shapes: ``a``, ``b``: ``(B, d)``; ``counts``: ``(B,)`` positive.
    """
    if counts is not None and (counts.shape != (a.shape[0],) or bool((counts <= 0).any())):
        raise ValueError(f"counts must hold one positive count per row of a ({a.shape[0]}), got shape {tuple(counts.shape)}")
    a = F.normalize(a, dim=1) / temperature  # scaling the (B, d) side is cheaper than the (B, B) logits
    b = F.normalize(b, dim=1)
    c = torch.ones(a.shape[0], dtype=a.dtype, device=a.device) if counts is None else counts.to(a.dtype)
    return _InfoNCE.apply(a, b, c, torch.is_grad_enabled() and (a.requires_grad or b.requires_grad))


class _InfoNCE(torch.autograd.Function):
    r""":math:`\frac{1}{C}\sum_j c_j (\log\sum_{j'} c_{j'} e^{S_{jj'}} - S_{jj})` with :math:`S = a b^\top`,
    :math:`C = \sum_j c_j`, computed over blocks of ``block`` rows of :math:`S` (fused cross-entropy).

    Its gradient :math:`G = \partial L/\partial S`, :math:`G_{jj'} = \frac{c_j}{C}(P_{jj'} - \delta_{jj'})` with
    :math:`P` the row softmax of :math:`S + \log c`, is known in the forward: each block of :math:`S` is
    exponentiated once, turned into its block of :math:`G` in place and contracted at once into
    :math:`\nabla_a = G b` and :math:`\nabla_b = G^\top a`; the backward only scales them. Memory
    :math:`O(\text{block} \cdot B)` instead of the :math:`(B, B)` logits, their softmax and its gradient.
    The gradients are computed only when ``need`` (grad mode on and an input requiring grad).
    Shapes: ``a``, ``b``: ``(B, d)``; ``c``: ``(B,)``.
    """

    block = 128

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, c: Tensor, need: bool) -> Tensor:  # type: ignore[override]
        n = a.shape[0]
        w = c / c.sum()  # (B,) row weights c_j / C
        log_c = c.log().unsqueeze(0)  # (1, B)
        grad_a = torch.empty_like(a) if need else None
        grad_b = torch.zeros_like(b) if need else None
        total = a.new_zeros(())
        for r0 in range(0, n, _InfoNCE.block):
            r1 = min(n, r0 + _InfoNCE.block)
            s = torch.addmm(log_c, a[r0:r1], b.T)  # (blk, B) logits + log c
            m = s.amax(1, keepdim=True)
            s.sub_(m).exp_()
            z = s.sum(1, keepdim=True)  # (blk, 1)
            diag = (a[r0:r1] * b[r0:r1]).sum(1)  # (blk,) S_jj
            wr = w[r0:r1]
            total = total + (wr * ((m.squeeze(1) + z.log().squeeze(1)) - diag)).sum()
            if need:
                s.mul_(wr.unsqueeze(1) / z)  # (blk, B): w_j P_jj'
                s.diagonal(r0).sub_(wr)  # - w_j on the diagonal: G's block
                torch.mm(s, b, out=grad_a[r0:r1])  # type: ignore[index]
                grad_b.addmm_(s.T, a[r0:r1])  # type: ignore[union-attr]
        ctx.save_for_backward(grad_a, grad_b)
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Optional[Tensor], Optional[Tensor], None, None]:  # type: ignore[override]
        grad_a, grad_b = ctx.saved_tensors
        return (grad_a * grad if ctx.needs_input_grad[0] else None, grad_b * grad if ctx.needs_input_grad[1] else None, None, None)


def info_nce_batch(a: Tensor, b: Tensor, ids: Tensor, temperature: float = 0.2) -> Tensor:
    """:func:`info_nce` of ``a[ids]`` against ``b[ids]``, computed over the distinct ``ids`` once each.

    Equal to ``info_nce(a[ids], b[ids], temperature)`` (same value, same gradients) at the cost of
    the distinct ids: a batch of ``B`` pairs over ``D`` distinct users costs :math:`D^2` logits, not :math:`B^2`.

    Shapes: ``a``, ``b``: ``(N, d)`` tables; ``ids``: ``(B,)`` row ids.
    """
    uniq, counts = torch.unique(ids, return_counts=True)
    return info_nce(a[uniq], b[uniq], temperature, counts)
