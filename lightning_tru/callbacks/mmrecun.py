r"""MMRecUn: reverse and forward BPR for multimodal recommendation unlearning (arXiv 2405.15328)."""
from __future__ import annotations

from typing import Any, Literal, Optional

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from lightning_tru.callbacks.base import UnlearningCallback
from lightning_tru.datamodules.unlearning import UnlearnBatch, UnlearningDataModule
from lightning_tru.models.protocol import group_scores, propagation
from lightning_tru.nn.losses import bpr_loss, l2_penalty, reverse_bpr_loss

Regularization = Literal["embedding", "parameter_change", "none"]
REGULARIZATIONS: tuple[str, ...] = ("embedding", "parameter_change", "none")


class MMRecUn(UnlearningCallback):
    r"""MMRecUn (Sinha, Mandal, Kankanhalli, AAAI 2025, https://arxiv.org/abs/2405.15328).

    Reverse BPR attenuates the forget interactions, forward BPR reinforces the retained ones;
    the backbone's contrastive auxiliary loss is *negated* on the forget batch (the multimodal
    alignment learnt from the forgotten interactions is undone) and an L2 term regularises:

    .. math::
        \mathcal L = \underbrace{-\frac{1}{|B_F|}\sum_{B_F}\log\sigma(s_{uj} - s_{ui})}_{\mathrm{revBPR}(F)}
            + \alpha\,\mathrm{BPR}(R) - \beta\,\mathcal L_{cl}(F) + \lambda\,\Omega

    * :math:`\mathcal L_{cl}(F)`: for a :class:`~lightning_tru.models.RecommenderModule` whose
      backbone's ``auxiliary_losses`` returns a ``"cl"`` term (MGCN's weighted InfoNCE between the
      side and content views), that term computed on the forget batch's users and items.
      Backbones without it (LightGCN, MIG-GT) and score-only models skip the term
      (``contrastive_active`` tells which case ran). :math:`-\mathcal L_{cl}` is bounded below
      (each InfoNCE is at most :math:`2/\tau + \log B`), so the objective stays bounded.
    * :math:`\Omega`: ``"embedding"`` (default) is MMRec's batch regulariser (MGCN trains with it):
      :math:`\frac{1}{2B}(\lVert E_U^B\rVert^2 + \lVert E_I^B\rVert^2 + \lVert E_J^B\rVert^2)` over the
      final embeddings of the step's users, items and negatives (forget and retain parts);
      ``"parameter_change"`` is :math:`\frac12\lVert\theta - \theta_0\rVert^2` (an anchor to the trained
      weights :math:`\theta_0`, snapshotted at profile time and not checkpointed: a resumed run
      raises); ``"none"`` drops it. A score-only model (no ``embeddings``) skips ``"embedding"``.
      The paper's text available to us (abstract and overviews) names reverse + forward BPR
      only; the contrastive and L2 forms and all weights follow docs/method.md and are our choice,
      each configurable.

    Args:
        lr, k, target_recall, eval_every, train_mode: see :class:`~lightning_tru.callbacks.UnlearningCallback`.
        alpha: :math:`\alpha`, weight of forward BPR on the retain batch.
        cl_weight: :math:`\beta`, multiplier of the (already weighted) backbone contrastive term.
        reg_weight: :math:`\lambda`.
        regularization: ``"embedding"``, ``"parameter_change"`` or ``"none"``.
    """

    state_attributes = ("contrastive_active",)

    def __init__(
        self,
        lr: float = 1e-2,
        k: int = 20,
        target_recall: Optional[float] = None,
        eval_every: int = 2,
        alpha: float = 1.0,
        cl_weight: float = 1.0,
        reg_weight: float = 1e-4,
        regularization: Regularization = "embedding",
        train_mode: bool = True,
    ) -> None:
        if alpha < 0:
            raise ValueError(f"alpha={alpha} must be >= 0 (the weight of forward BPR on retained pairs)")
        super().__init__(
            lr=lr, k=k, target_recall=target_recall, eval_every=eval_every, train_mode=train_mode
        )
        if regularization not in REGULARIZATIONS:
            raise ValueError(f"regularization={regularization!r}; choose one of {REGULARIZATIONS}")
        if cl_weight < 0 or reg_weight < 0:
            raise ValueError(f"cl_weight={cl_weight} and reg_weight={reg_weight} must be >= 0")
        self.alpha, self.cl_weight, self.reg_weight = alpha, cl_weight, reg_weight
        self.regularization = regularization
        self.contrastive_active: Optional[bool] = None
        self._anchor: Optional[dict[str, Tensor]] = None

    # ------------------------------------------------------------------------ profiling
    @override
    def profile(self, trainer: Trainer, model: nn.Module, dm: UnlearningDataModule) -> None:
        if self.regularization == "parameter_change" and self.reg_weight > 0:
            self._anchor = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    @override
    def restore_profile(self, model: nn.Module) -> None:
        if self.regularization == "parameter_change" and self.reg_weight > 0:
            raise RuntimeError(
                "MMRecUn with regularization='parameter_change' anchors to the trained weights, which are "
                "not checkpointed: restart the unlearning from the trained checkpoint instead of resuming"
            )

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: Any) -> None:
        self._anchor = None

    # --------------------------------------------------------------------------- update
    @override
    def training_losses(self, model: nn.Module, batch: UnlearnBatch, dm: UnlearningDataModule) -> dict[str, Tensor]:
        fu, fi, fj, ru, ri, rj = batch
        backbone = getattr(model, "backbone", None)
        prop = propagation(model)
        s_fi, s_fj, s_ri, s_rj = group_scores(model, [(fu, fi), (fu, fj), (ru, ri), (ru, rj)], prop)
        losses = {"reverse_bpr": reverse_bpr_loss(s_fi, s_fj), "retain_bpr": self.alpha * bpr_loss(s_ri, s_rj)}
        if self.cl_weight > 0:
            aux = backbone.auxiliary_losses(prop, fu, fi, fj) if prop is not None else {}  # type: ignore[union-attr]
            if self.contrastive_active is None:
                self.contrastive_active = "cl" in aux
                if not self.contrastive_active:
                    rank_zero_warn(f"MMRecUn: {type(backbone or model).__name__} has no contrastive term; skipping it")
            if "cl" in aux:
                losses["neg_cl"] = -self.cl_weight * aux["cl"]
        if self.reg_weight > 0 and self.regularization == "embedding":
            emb = self._embeddings(model, prop)
            if emb is not None:
                u, i = emb
                pos = torch.cat([fi, ri])
                neg = torch.cat([fj, rj])
                losses["l2"] = self.reg_weight * l2_penalty(u[torch.cat([fu, ru])], i[pos], i[neg])
        elif self.reg_weight > 0 and self.regularization == "parameter_change":
            if self._anchor is None:
                raise RuntimeError("MMRecUn's parameter anchor is missing: the run was not profiled")
            params = dict(model.named_parameters())
            change = sum((params[n] - p0).pow(2).sum() for n, p0 in self._anchor.items())
            losses["l2"] = 0.5 * self.reg_weight * change  # type: ignore[assignment]
        return losses

    @staticmethod
    def _embeddings(model: nn.Module, prop: Any) -> Optional[tuple[Tensor, Tensor]]:
        """Final ``(user, item)`` embeddings: from the step's propagation, else ``embeddings()``."""
        if prop is not None:
            return prop.user, prop.item
        if hasattr(model, "embeddings"):
            return model.embeddings()  # type: ignore[operator,no-any-return]
        return None
