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

    Shapes: ``a``, ``b``: ``(B, d)``; ``counts``: ``(B,)`` positive.
    """
    a = F.normalize(a, dim=1) / temperature  # scaling the (B, d) side is cheaper than the (B, B) logits
    b = F.normalize(b, dim=1)
    target = torch.arange(a.shape[0], device=a.device)
    if counts is None:
        return F.cross_entropy(a @ b.T, target)  # (B, B) logits
    if counts.shape != (a.shape[0],) or bool((counts <= 0).any()):
        raise ValueError(f"counts must hold one positive count per row of a ({a.shape[0]}), got shape {tuple(counts.shape)}")
    c = counts.to(a.dtype)
    log_c = c.log()
    per_row = F.cross_entropy(torch.addmm(log_c.unsqueeze(0), a, b.T), target, reduction="none") + log_c  # (B,)
    return (c * per_row).sum() / c.sum()


def info_nce_batch(a: Tensor, b: Tensor, ids: Tensor, temperature: float = 0.2) -> Tensor:
    """:func:`info_nce` of ``a[ids]`` against ``b[ids]``, computed over the distinct ``ids`` once each.

    Equal to ``info_nce(a[ids], b[ids], temperature)`` (same value, same gradients) at the cost of
    the distinct ids: a batch of ``B`` pairs over ``D`` distinct users costs :math:`D^2` logits, not :math:`B^2`.

    Shapes: ``a``, ``b``: ``(N, d)`` tables; ``ids``: ``(B,)`` row ids.
    """
    uniq, counts = torch.unique(ids, return_counts=True)
    return info_nce(a[uniq], b[uniq], temperature, counts)
