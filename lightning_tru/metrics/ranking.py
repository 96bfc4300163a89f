r"""Full-ranking top-K metrics as :class:`torchmetrics.Metric` classes (MMRec conventions).

Every metric keeps two sum-reduced states, ``accum`` (float64 sum of per-user values) and
``total`` (number of users with at least one relevant item), and returns
``accum / total``, i.e. the mean over users with at least one relevant item; users without
any relevant item are skipped. Because both states are sums, batches may be fed in any
split and across any number of processes and the result is the same.

``update`` takes:

- ``topk``: ``(B, K_max)`` long tensor of ranked item indices (best first), ``K_max >= k``,
  usually ``torch.topk(scores.masked_fill(train_mask, float("-inf")), K_max).indices``;
- ``target``: ``(B, num_items)`` bool tensor of held-out relevant items.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection

from lightning_tru.metrics.functional import (
    _hit_rate_compute,
    _hit_rate_update,
    _ndcg_compute,
    _ndcg_update,
    _precision_compute,
    _precision_update,
    _recall_compute,
    _recall_update,
    check_k,
    count_relevant,
    ranking_hits,
)

__all__ = ["HitRateAtK", "NDCGAtK", "PrecisionAtK", "RecallAtK", "ranking_metrics"]


class _RankingMetric(Metric):
    """Shared state handling for the top-K metrics; subclasses name their functional pair."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound: float = 0.0
    plot_upper_bound: float = 1.0

    accum: Tensor
    total: Tensor

    # Subclasses set these to ``staticmethod(<functional>)``.
    _update_fn: staticmethod
    _compute_fn: staticmethod

    def __init__(self, k: int = 20, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_k(k)
        self.k = k

        self.add_state("accum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, topk: Tensor, target: Tensor, num_relevant: Optional[Tensor] = None) -> None:
        """Update the sums with one batch of rankings ``topk`` (B, K_max) and relevance ``target`` (B, num_items).

        ``num_relevant`` (B,) may be passed when already known (shared by a collection).
        """
        hits = ranking_hits(topk, target)
        if num_relevant is None:
            num_relevant = count_relevant(target)
        accum, total = self._update_fn(hits, num_relevant, self.k)
        # out of place: states reset under inference mode must still update under no_grad
        self.accum = self.accum + accum.to(self.accum.device)
        self.total = self.total + total.to(self.total.device)

    def compute(self) -> Tensor:
        """Mean over users with at least one relevant item (0 if there were none)."""
        return self._compute_fn(self.accum, self.total)

    def extra_repr(self) -> str:
        """Show the cut-off in ``repr``."""
        return f"k={self.k}"


class RecallAtK(_RankingMetric):
    r"""Recall@k: share of a user's relevant items retrieved in the top k, averaged over users.

    .. math:: \text{Recall@}k = \frac{1}{|U^+|} \sum_{u \in U^+}
        \frac{|\{r < k : \text{hit}_{u,r}\}|}{|\mathcal{R}_u|}

    where :math:`U^+` are the users with at least one relevant item and :math:`\mathcal{R}_u`
    the relevant items of user :math:`u`.

    Args:
        k: cut-off (``>= 1``).
        kwargs: Additional keyword arguments, see :ref:`Metric kwargs` for more info.

    Example::

        >>> import torch
        >>> topk = torch.tensor([[0, 1], [2, 0]])
        >>> target = torch.tensor([[True, False, True], [False, True, False]])
        >>> RecallAtK(k=2)(topk, target)
        tensor(0.2500)

    """

    _update_fn = staticmethod(_recall_update)
    _compute_fn = staticmethod(_recall_compute)


class PrecisionAtK(_RankingMetric):
    r"""Precision@k: share of the top k that is relevant, averaged over users.

    .. math:: \text{Precision@}k = \frac{1}{|U^+|} \sum_{u \in U^+} \frac{|\{r < k : \text{hit}_{u,r}\}|}{k}

    Args:
        k: cut-off (``>= 1``).
        kwargs: Additional keyword arguments, see :ref:`Metric kwargs` for more info.

    """

    _update_fn = staticmethod(_precision_update)
    _compute_fn = staticmethod(_precision_compute)


class HitRateAtK(_RankingMetric):
    r"""Hit rate@k: share of users with at least one relevant item in their top k.

    .. math:: \text{Hit@}k = \frac{1}{|U^+|} \sum_{u \in U^+} \mathbb{1}\left[\exists\, r < k : \text{hit}_{u,r}\right]

    Args:
        k: cut-off (``>= 1``).
        kwargs: Additional keyword arguments, see :ref:`Metric kwargs` for more info.

    """

    _update_fn = staticmethod(_hit_rate_update)
    _compute_fn = staticmethod(_hit_rate_compute)


class NDCGAtK(_RankingMetric):
    r"""NDCG@k with binary relevance, averaged over users.

    .. math::
        \text{DCG@}k(u) = \sum_{r=0}^{k-1} \frac{\text{hit}_{u,r}}{\log_2(r+2)}, \qquad
        \text{IDCG@}k(u) = \sum_{r=0}^{\min(|\mathcal{R}_u|, k)-1} \frac{1}{\log_2(r+2)}

    .. math:: \text{NDCG@}k = \frac{1}{|U^+|} \sum_{u \in U^+} \frac{\text{DCG@}k(u)}{\text{IDCG@}k(u)}

    Args:
        k: cut-off (``>= 1``).
        kwargs: Additional keyword arguments, see :ref:`Metric kwargs` for more info.

    """

    _update_fn = staticmethod(_ndcg_update)
    _compute_fn = staticmethod(_ndcg_compute)


_METRIC_CLASSES: dict[str, type[_RankingMetric]] = {
    "recall": RecallAtK,
    "ndcg": NDCGAtK,
    "precision": PrecisionAtK,
    "hit": HitRateAtK,
}


def ranking_metrics(ks: Sequence[int] = (10, 20, 50), prefix: str = "") -> MetricCollection:
    """Build a collection of recall, NDCG, precision and hit rate at every cut-off in ``ks``.

    Keys are ``f"{prefix}{name}@{k}"`` for ``name`` in ``recall``, ``ndcg``, ``precision``,
    ``hit``, e.g. ``"val/recall@20"`` with ``prefix="val/"``. Feed it ``topk`` with at least
    ``max(ks)`` columns. Compute groups are disabled: the metrics share state names, and
    two of them can coincidentally hold equal states on the first batch (e.g. recall and hit
    rate when every user has one relevant item), which would wrongly merge them.

    Args:
        ks: cut-offs, each ``>= 1``; duplicates are ignored.
        prefix: string prepended to every key.

    """
    if isinstance(ks, int):
        ks = (ks,)
    unique_ks = list(dict.fromkeys(ks))
    if not unique_ks:
        raise ValueError("Expected at least one cut-off in `ks`, but got an empty sequence.")
    metrics: dict[str, Metric] = {
        f"{name}@{k}": cls(k=k) for k in unique_ks for name, cls in _METRIC_CLASSES.items()
    }
    return MetricCollection(metrics, prefix=prefix or None, compute_groups=False)
