r"""Losses as plain functions over score or embedding tensors."""
from __future__ import annotations

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


def info_nce(a: Tensor, b: Tensor, temperature: float = 0.2) -> Tensor:
    r"""InfoNCE between two views, in-batch negatives.

    .. math::
        -\frac1B\sum_k \log \frac{\exp(\hat a_k^\top \hat b_k/\tau)}{\sum_l \exp(\hat a_k^\top \hat b_l/\tau)},
        \quad \hat x = x / \lVert x \rVert

    Shapes: ``a``, ``b``: ``(B, d)``.
    """
    a = F.normalize(a, dim=1) / temperature  # scaling the (B, d) side is cheaper than the (B, B) logits
    b = F.normalize(b, dim=1)
    logits = a @ b.T  # (B, B)
    return F.cross_entropy(logits, torch.arange(a.shape[0], device=a.device))
