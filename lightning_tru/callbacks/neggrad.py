r"""NegGrad: gradient ascent on the forget pairs with retain descent (the unbounded form)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from lightning_tru.callbacks.base import UnlearningCallback, check_retain_weight
from lightning_tru.datamodules.unlearning import UnlearnBatch, UnlearningDataModule
from lightning_tru.models.protocol import group_scores
from lightning_tru.nn.losses import bpr_loss


class NegGrad(UnlearningCallback):
    r"""Negative gradient: maximise the BPR loss of the forget pairs, minimise it on retained pairs.

    .. math::
        \mathcal L = -\gamma_f\,\mathrm{BPR}(F) + \lambda_r\,\mathrm{BPR}(R)
        = \frac{\gamma_f}{|B_F|}\sum_{(u,i,j) \in B_F} \log\sigma(s_{ui} - s_{uj})
          - \frac{\lambda_r}{|B_R|}\sum_{(u,i,j) \in B_R} \log\sigma(s_{ui} - s_{uj})

    The forget term is **unbounded below** (:math:`\to -\infty` as :math:`s_{ui} - s_{uj} \to -\infty`):
    unlike reverse BPR (:func:`~lightning_tru.nn.losses.reverse_bpr_loss`, bounded by 0) it keeps
    pushing forgotten items down and eventually destroys the model. That is the baseline's point
    (Golatkar et al., CVPR 2020; "GA" in CURE4Rec / open-unlearning), so run it with frequent
    verification (``eval_every=1``): it stops as soon as forget Recall@K reaches the target, or at
    the step budget.

    Args:
        lr, k, target_recall, eval_every, train_mode: see :class:`~lightning_tru.callbacks.UnlearningCallback`.
        retain_weight: :math:`\lambda_r`, weight of retain descent (0 = pure gradient ascent).
        forget_weight: :math:`\gamma_f`, weight of the ascent term.
    """

    def __init__(
        self,
        lr: float = 1e-2,
        k: int = 20,
        target_recall: Optional[float] = None,
        eval_every: int = 1,
        retain_weight: float = 1.0,
        forget_weight: float = 1.0,
        train_mode: bool = True,
    ) -> None:
        super().__init__(
            lr=lr, k=k, target_recall=target_recall, eval_every=eval_every, train_mode=train_mode,
        )
        self.retain_weight = check_retain_weight(retain_weight)
        if forget_weight <= 0:
            raise ValueError(f"forget_weight={forget_weight} must be > 0 (the ascent term is the method)")
        self.forget_weight = forget_weight

    @override
    def training_losses(self, model: nn.Module, batch: UnlearnBatch, dm: UnlearningDataModule) -> dict[str, Tensor]:
        fu, fi, fj, ru, ri, rj = batch
        s_fi, s_fj, s_ri, s_rj = group_scores(model, [(fu, fi), (fu, fj), (ru, ri), (ru, rj)])
        return {
            "forget_ascent": self.forget_weight * F.logsigmoid(s_fi - s_fj).mean(),  # = -gamma_f * BPR(F)
            "retain_bpr": self.retain_weight * bpr_loss(s_ri, s_rj),
        }
