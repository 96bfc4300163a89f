"""Top-K exposure of target items: the pair-level (micro) share of targets shown in the top-K."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_tru.metrics.functional import check_k, count_relevant, ranking_hits


class ExposureAtK(Metric):
    r"""Exposure of target items in the top-K.

    .. math::
        \mathrm{Exposure@}K = \frac{\sum_u |\mathrm{top}_K(u) \cap T_u|}{\sum_u |T_u|}

    Unlike :class:`RecallAtK` (a mean over users), every target pair weighs the same.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    shown: Tensor
    total: Tensor

    def __init__(self, k: int = 20, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_k(k)
        self.k = k
        self.add_state("shown", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, topk: Tensor, target: Tensor) -> None:
        hits = ranking_hits(topk[:, : self.k], target)
        self.shown = self.shown + hits.sum()
        self.total = self.total + count_relevant(target).sum()

    def compute(self) -> Tensor:
        return self.shown.float() / self.total.clamp_min(1).float()
