r"""MultiDelete (Cheng & Amiri, ECCV 2024), adapted from multimodal encoders to recommenders."""
from __future__ import annotations

import copy
from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from lightning_tru.callbacks.base import UnlearningCallback
from lightning_tru.datamodules.unlearning import UnlearnBatch, UnlearningDataModule
from lightning_tru.models.protocol import eval_mode, group_scores, propagation

ReferenceDevice = Literal["model", "cpu"]
REFERENCE_DEVICES: tuple[str, ...] = ("model", "cpu")


class MultiDelete(UnlearningCallback):
    r"""MultiDelete: modality decoupling plus multimodal and unimodal knowledge retention.

    MultiDelete (https://arxiv.org/abs/2311.12047, code: github.com/CLU-UML/MultiDelete) unlearns
    image-text pairs by making a deleted pair look like an unpaired one while the multimodal and
    unimodal embeddings of retained data stay those of the original model. For a recommender,
    with :math:`s^0, E^0` the frozen original model:

    .. math::
        \mathcal L = \lambda_{md}\,\underbrace{\frac{1}{|B_F|}\sum_{(u,i,j) \in B_F}
                \big[(s_{ui} - s^0_{uj})^2 + a\,(s_{uj} - s^0_{uj})^2\big]}_{\text{modality decoupling}}
            + \lambda_{mm}\,\underbrace{\big[\mathrm{MSE}(E_{U_R}, E^0_{U_R})
                + \mathrm{MSE}(E_{I_R}, E^0_{I_R})\big]}_{\text{multimodal retention}}
            + \lambda_{um}\,\underbrace{\frac{1}{|\mathcal B|}\sum_{b \in \mathcal B}
                \big[\mathrm{MSE}(E^b_{U_R}, E^{b,0}_{U_R})
                + \mathrm{MSE}(E^b_{I_R}, E^{b,0}_{I_R})\big]}_{\text{unimodal retention}}

    where :math:`j` is the batch's sampled negative of the forget pair, an item the user never
    interacted with in the original training data (a random *unconnected* pair),
    :math:`U_R, I_R` the retain batch's users and items, :math:`E` the fused (final)
    embeddings and :math:`E^b` the per-branch embeddings of
    :attr:`~lightning_tru.nn.Propagation.branches` (ID, each modality, fusion; they sum to
    :math:`E`). MSE is the mean over entries.

    The anchor :math:`a` (``anchor_unconnected``, on by default; our addition) keeps the random
    unconnected pair's own score at the original's. A score is a scalar, unlike the joint
    image-text embedding MultiDelete matches, and without the anchor the decoupling term is
    met by shrinking the forgetting user's whole score profile, which leaves the ranking as it
    was (``benchmarks/RESULTS.md``, "Behind the defaults"). With the anchor a forgotten item is pushed to the level of a random item
    while the random items stay where they were.

    The frozen reference is the model at profile time (the trained weights) *after* graph
    surgery, in eval mode: no forgotten edge flows into the retention targets, and the
    retention terms are exactly zero before the first step. For a backbone with
    ``propagate()`` (a :class:`~lightning_tru.models.RecommenderModule`) or ``embeddings()`` the
    reference's outputs are cached once (it is deterministic and frozen) instead of a model
    copy; a score-only model keeps a frozen deep copy on ``reference_device``. Fallbacks: without
    ``propagate()`` the unimodal term is skipped (``unimodal_active``); a score-only model's
    multimodal term matches retain-pair scores instead of embeddings. The reference is not
    checkpointed (it is as large as the model's outputs): resuming raises; restart from the
    trained checkpoint.

    Args:
        lr, k, target_recall, eval_every, train_mode: see :class:`~lightning_tru.callbacks.UnlearningCallback`.
        decouple_weight: :math:`\lambda_{md}`.
        multimodal_weight: :math:`\lambda_{mm}`.
        unimodal_weight: :math:`\lambda_{um}`.
        reference_device: ``"model"`` (the model's device) or ``"cpu"`` for the frozen reference.
        anchor_unconnected: add :math:`(s_{uj} - s^0_{uj})^2` to the decoupling term (:math:`a = 1`).
    """

    state_attributes = ("unimodal_active",)

    def __init__(
        self,
        lr: float = 1e-2,
        k: int = 20,
        target_recall: Optional[float] = None,
        eval_every: int = 2,
        decouple_weight: float = 1.0,
        multimodal_weight: float = 1.0,
        unimodal_weight: float = 1.0,
        reference_device: ReferenceDevice = "model",
        anchor_unconnected: bool = True,
        train_mode: bool = True,
    ) -> None:
        super().__init__(lr=lr, k=k, target_recall=target_recall, eval_every=eval_every, train_mode=train_mode)
        if decouple_weight <= 0 or multimodal_weight < 0 or unimodal_weight < 0:
            raise ValueError(
                f"decouple_weight={decouple_weight} must be > 0, multimodal_weight={multimodal_weight} and "
                f"unimodal_weight={unimodal_weight} >= 0"
            )
        if reference_device not in REFERENCE_DEVICES:
            raise ValueError(f"reference_device={reference_device!r}; choose one of {REFERENCE_DEVICES}")
        self.decouple_weight, self.multimodal_weight, self.unimodal_weight = (
            decouple_weight, multimodal_weight, unimodal_weight,
        )
        self.reference_device = reference_device
        self.anchor_unconnected = anchor_unconnected
        self.unimodal_active: Optional[bool] = None
        self._ref_user: Optional[Tensor] = None  # (U, d)
        self._ref_item: Optional[Tensor] = None  # (I, d)
        self._ref_branches: dict[str, tuple[Tensor, Tensor]] = {}
        self._reference: Optional[nn.Module] = None  # score-only models

    # ------------------------------------------------------------------------ reference
    @override
    def profile(self, trainer: Trainer, model: nn.Module, dm: UnlearningDataModule) -> None:
        dev = next(model.parameters()).device if self.reference_device == "model" else torch.device("cpu")
        with eval_mode(model), torch.no_grad():
            prop = propagation(model)
            if prop is not None:
                self._ref_user, self._ref_item = prop.user.detach().to(dev), prop.item.detach().to(dev)
                self._ref_branches = {b: (u.detach().to(dev), i.detach().to(dev)) for b, (u, i) in prop.branches.items()}
            elif hasattr(model, "embeddings"):
                u, i = model.embeddings()  # type: ignore[operator]
                self._ref_user, self._ref_item = u.detach().to(dev), i.detach().to(dev)
            else:
                self._reference = copy.deepcopy(model).to(dev).requires_grad_(False)
        self.unimodal_active = bool(self._ref_branches)
        if not self.unimodal_active and self.unimodal_weight > 0:
            rank_zero_warn(
                f"MultiDelete: {type(model).__name__} exposes no branch embeddings; unimodal retention is skipped"
            )

    @override
    def restore_profile(self, model: nn.Module) -> None:
        raise RuntimeError(
            "MultiDelete's frozen reference is the original model taken at profile time and is not "
            "checkpointed, so a run cannot resume: restart the unlearning from the trained checkpoint"
        )

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: Any) -> None:
        self._ref_user = self._ref_item = self._reference = None
        self._ref_branches = {}

    def _reference_scores(self, users: Tensor, items: Tensor) -> Tensor:
        """:math:`s^0` of ``(B,)`` pairs, on the pairs' device, without gradients."""
        with torch.no_grad():
            if self._ref_user is not None and self._ref_item is not None:
                dev = self._ref_user.device
                return (self._ref_user[users.to(dev)] * self._ref_item[items.to(dev)]).sum(-1).to(users.device)
            if self._reference is None:
                raise RuntimeError("MultiDelete has no reference: the run was not profiled")
            dev = next(self._reference.parameters()).device
            return self._reference.score(users.to(dev), items.to(dev)).to(users.device)  # type: ignore[operator]

    @staticmethod
    def _match(current: Tensor, reference: Tensor, rows: Tensor) -> Tensor:
        return F.mse_loss(current[rows], reference[rows.to(reference.device)].to(current.device))

    # --------------------------------------------------------------------------- update
    @override
    def training_losses(self, model: nn.Module, batch: UnlearnBatch, dm: UnlearningDataModule) -> dict[str, Tensor]:
        fu, fi, fj, ru, ri, rj = batch
        prop = propagation(model)
        s_fi, s_fj, s_r = group_scores(model, [(fu, fi), (fu, fj), (ru, ri)], prop)
        target = self._reference_scores(fu, fj)  # (F,) s^0(u, j)
        decouple = F.mse_loss(s_fi, target)
        if self.anchor_unconnected:
            decouple = decouple + F.mse_loss(s_fj, target)
        losses = {"decouple": self.decouple_weight * decouple}
        if self.multimodal_weight > 0:
            uu, ii = torch.unique(ru), torch.unique(ri)
            if self._ref_user is not None and self._ref_item is not None:
                u, i = (prop.user, prop.item) if prop is not None else model.embeddings()  # type: ignore[operator]
                mm = self._match(u, self._ref_user, uu) + self._match(i, self._ref_item, ii)
            else:
                mm = F.mse_loss(s_r, self._reference_scores(ru, ri))
            losses["multimodal_retention"] = self.multimodal_weight * mm
        if self.unimodal_weight > 0 and self.unimodal_active and prop is not None:
            uu, ii = torch.unique(ru), torch.unique(ri)
            names = [b for b in prop.branches if b in self._ref_branches]
            um = sum(
                self._match(prop.branches[b][0], self._ref_branches[b][0], uu)
                + self._match(prop.branches[b][1], self._ref_branches[b][1], ii)
                for b in names
            ) / max(len(names), 1)
            losses["unimodal_retention"] = self.unimodal_weight * um  # type: ignore[operator]
        return losses
