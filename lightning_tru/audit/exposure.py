r"""Global target-item exposure (the TRU paper's statistic): the share of *all retained users'*
top-K slots taken by the forgotten items.

.. math::
    \mathrm{GE@}K = \frac{\sum_{u \in U_r} |T_K(u) \cap F_I|}{K\,|U_r|}

with :math:`U_r` the users holding retained train interactions, :math:`T_K(u)` the top-K outside
their retained train items and :math:`F_I` the forgotten items. Other users' collaborative
signal keeps those items up, so even Retrain reduces it only partly (12.4% on MGCN, 18.3% on
MIG-GT, as the paper reports); the reduction is :math:`1 - \mathrm{GE}_{after} / \mathrm{GE}_{before}`.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_tru.audit.scoring import score_batches

__all__ = ["GlobalExposure", "global_exposure", "exposure_reduction"]


class GlobalExposure(Metric):
    r"""Share of top-K slots holding target items (sum states ``shown``, ``slots``)."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    shown: Tensor
    slots: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("shown", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("slots", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, topk: Tensor, is_target: Tensor) -> None:
        """``topk``: ``(B, K)`` item ids; ``is_target``: ``(I,)`` bool mask of the target items."""
        self.shown = self.shown + is_target.to(topk.device)[topk].sum()
        self.slots = self.slots + topk.numel()

    def compute(self) -> Tensor:
        return self.shown.double() / self.slots.clamp_min(1).double()


def global_exposure(
    model: Any, users: np.ndarray, targets: np.ndarray, exclude: sp.csr_matrix, k: int = 20, batch_users: int = 1024
) -> float:
    """:math:`\\mathrm{GE@}K` of ``targets`` (item ids) over ``users``, ``exclude`` masked."""
    num_items = exclude.shape[1]
    mask = torch.zeros(num_items, dtype=torch.bool)
    mask[torch.as_tensor(np.asarray(targets, dtype=np.int64))] = True
    metric = GlobalExposure(sync_on_compute=False)
    for _, scores in score_batches(model, users, num_items, exclude, batch_users):
        metric.update(torch.topk(scores, min(k, num_items), dim=1).indices.cpu(), mask)
    return float(metric.compute())


def exposure_reduction(before: float, after: float) -> float:
    """Relative reduction :math:`1 - \\text{after} / \\text{before}` (0 when ``before`` is 0)."""
    return 0.0 if before <= 0 else 1.0 - after / before
