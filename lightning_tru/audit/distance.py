r"""Distance to Retrain: per-user top-K Jaccard and Spearman score correlation, against a noise floor.

For each audited user :math:`u` (retained users), with :math:`T_K(u)` a model's top-K among the
items outside :math:`u`'s retained train set:

.. math::
    J(u) = \frac{|T_K^{a}(u) \cap T_K^{b}(u)|}{|T_K^{a}(u) \cup T_K^{b}(u)|}, \qquad
    \rho(u) = \mathrm{corr}\big(\mathrm{rank}\, s^a_{u\cdot},\ \mathrm{rank}\, s^b_{u\cdot}\big)

(Spearman: Pearson correlation of the score ranks over the same candidate items; ranks by sort
order, so exact ties are broken by index, which continuous scores make immaterial). Two Retrains
with different seeds already disagree: the *noise floor* is the same statistic between Retrain and
a second Retrain, and the reported ratio is the distance over the floor's distance,
:math:`(1 - \bar J) / (1 - \bar J_{\text{floor}})`; a ratio of at most 1 is within retraining noise.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_tru.audit.scoring import score_batches

__all__ = ["TopKJaccard", "RankCorrelation", "ranking_distance", "distance_to_retrain"]


def _ranks(scores: Tensor) -> Tensor:
    """Ranks ``0..n-1`` along the last dim (by sort order)."""
    order = scores.argsort(dim=1)
    ranks = torch.empty_like(order, dtype=torch.float64)
    ranks.scatter_(1, order, torch.arange(scores.shape[1], dtype=torch.float64, device=scores.device).expand_as(order))
    return ranks


class _UserMean(Metric):
    """A mean over users of a per-user agreement (sum states ``accum``, ``total``)."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    accum: Tensor
    total: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("accum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def compute(self) -> Tensor:
        return self.accum / self.total.clamp_min(1)


class TopKJaccard(_UserMean):
    r"""Mean over users of the Jaccard overlap of two top-K lists (sum states ``accum``, ``total``)."""

    def update(self, top_a: Tensor, top_b: Tensor) -> None:
        """``top_a``, ``top_b``: ``(B, K)`` item ids of the same users."""
        if top_a.shape != top_b.shape:
            raise ValueError(f"top-K lists differ in shape: {tuple(top_a.shape)} vs {tuple(top_b.shape)}")
        inter = (top_a.unsqueeze(2) == top_b.unsqueeze(1)).any(2).sum(1).double()  # (B,)
        k = top_a.shape[1]
        self.accum = self.accum + (inter / (2 * k - inter)).sum()
        self.total = self.total + top_a.shape[0]


class RankCorrelation(_UserMean):
    r"""Mean over users of the Spearman correlation of two score rows over the candidate items
    (finite in both; sum states ``accum``, ``total``)."""

    def update(self, scores_a: Tensor, scores_b: Tensor) -> None:
        """``(B, I)`` scores of the same users; ``-inf`` marks excluded items (the same in both). Row by row: a batched
        stable sort of the whole ``(B, I)`` block measured no faster (TikTok-sized rows, 1 thread)."""
        if scores_a.shape != scores_b.shape:
            raise ValueError(f"score rows differ in shape: {tuple(scores_a.shape)} vs {tuple(scores_b.shape)}")
        for a, b in zip(scores_a, scores_b):
            keep = torch.isfinite(a) & torch.isfinite(b)
            if int(keep.sum()) < 2:
                continue
            ra, rb = _ranks(a[keep][None])[0], _ranks(b[keep][None])[0]
            ra, rb = ra - ra.mean(), rb - rb.mean()
            den = (ra.norm() * rb.norm()).clamp_min(1e-12)
            self.accum = self.accum + (ra * rb).sum() / den
            self.total = self.total + 1


def ranking_distance(
    model_a: Any, model_b: Any, users: np.ndarray, exclude: sp.csr_matrix, k: int = 20, batch_users: int = 512
) -> dict[str, float]:
    """Mean top-K Jaccard and Spearman correlation of two models over ``users`` (``exclude`` masked)."""
    num_items = exclude.shape[1]
    jac, corr = TopKJaccard(sync_on_compute=False), RankCorrelation(sync_on_compute=False)
    for (_, sa), (_, sb) in zip(
        score_batches(model_a, users, num_items, exclude, batch_users),
        score_batches(model_b, users, num_items, exclude, batch_users),
    ):
        sa, sb = sa.cpu(), sb.cpu()
        kk = min(k, num_items)
        jac.update(torch.topk(sa, kk, dim=1).indices, torch.topk(sb, kk, dim=1).indices)
        corr.update(sa, sb)
    return {f"jaccard@{k}": float(jac.compute()), "spearman": float(corr.compute())}


def distance_to_retrain(
    model: Any,
    retrain: Any,
    users: np.ndarray,
    exclude: sp.csr_matrix,
    k: int = 20,
    retrain_seed2: Optional[Any] = None,
    batch_users: int = 512,
) -> dict[str, float]:
    """:func:`ranking_distance` of ``model`` vs ``retrain``; with ``retrain_seed2`` (a Retrain of
    another seed) also the floor (Retrain vs Retrain-2) and the ratios of the distances
    ``(1 - stat) / (1 - stat_floor)``."""
    out = ranking_distance(model, retrain, users, exclude, k, batch_users)
    if retrain_seed2 is not None:
        floor = ranking_distance(retrain_seed2, retrain, users, exclude, k, batch_users)
        for key, v in floor.items():
            out[f"floor_{key}"] = v
            out[f"ratio_{key}"] = (1.0 - out[key]) / max(1.0 - v, 1e-12)
    return out
