r"""FineTune: continue training on the retained interactions only (a standard unlearning baseline)."""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn
from typing_extensions import override

from lightning_tru.callbacks.base import UnlearningCallback
from lightning_tru.datamodules.unlearning import UnlearnBatch, UnlearningDataModule
from lightning_tru.models.protocol import group_scores
from lightning_tru.nn.losses import bpr_loss


class FineTune(UnlearningCallback):
    r"""Fine-tune the trained model with BPR on retained pairs only.

    .. math::
        \mathcal L = \mathrm{BPR}(R) = -\frac{1}{|B_R|}\sum_{(u,i,j) \in B_R} \log\sigma(s_{ui} - s_{uj})

    with :math:`B_R` the retain part of the step's batch. The loss never reads the forget
    pairs: the deletion reaches the model only through graph surgery (the retained graph is
    installed before the first step) and through the drift of continued training, as in the
    "fine-tuning" baseline of the unlearning literature (e.g. Golatkar et al., CVPR 2020;
    CURE4Rec, NeurIPS 2024). The run stops on the base's forget-recall target or at the step
    budget (``trainer.max_epochs``).

    Expect it to forget item-wise (items that lost their interactions sink as training goes on)
    but not user-wise: no retained pair involves a forgotten user, so their own embedding never
    changes (``benchmarks/RESULTS.md``, "Behind the defaults").

    Args:
        lr: Adam learning rate (the training run's own rate is the natural choice).
        k, target_recall, eval_every, train_mode: see :class:`~lightning_tru.callbacks.UnlearningCallback`.
    """

    def __init__(
        self,
        lr: float = 1e-3,
        k: int = 20,
        target_recall: Optional[float] = None,
        eval_every: int = 5,
        train_mode: bool = True,
    ) -> None:
        super().__init__(
            lr=lr, k=k, target_recall=target_recall, eval_every=eval_every, train_mode=train_mode
        )

    @override
    def training_losses(self, model: nn.Module, batch: UnlearnBatch, dm: UnlearningDataModule) -> dict[str, Tensor]:
        ru, ri, rj = batch.retain_users, batch.retain_items, batch.retain_neg
        pos, neg = group_scores(model, [(ru, ri), (ru, rj)])
        return {"retain_bpr": bpr_loss(pos, neg)}
