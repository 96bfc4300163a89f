r"""The base of every unlearning method: life cycle, batching, state, logging, DDP."""
from __future__ import annotations

import abc
import logging
from typing import Any, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.seed import isolate_rng
from torch import Tensor, nn
from typing_extensions import override

from lightning_tru.audit.forgetting import forget_metrics, random_recall
from lightning_tru.datamodules.unlearning import UnlearnBatch, UnlearningDataModule
from lightning_tru.models.unlearning import UnlearningTask

log = logging.getLogger("lightning_tru")


class UnlearningCallback(Callback, abc.ABC):
    r"""Template for unlearning methods run as ``Trainer.fit(UnlearningTask(model), UnlearningDataModule(...))``.

    Life cycle: ``setup`` validates the run (datamodule, strategy, resumed fingerprint);
    ``on_fit_start`` *profiles* once (:meth:`profile`) and measures forget Recall@K;
    each step the task asks for :meth:`training_losses` (the *update*) and, after backward,
    :meth:`edit_gradients` runs; every ``eval_every`` steps the callback *verifies* forget
    Recall@K and stops all ranks together once it is at most the target.
    One step = one epoch of the unlearning datamodule.

    Subclasses override :meth:`training_losses` and optionally :meth:`profile`,
    :meth:`edit_gradients`, :meth:`extra_state` / :meth:`load_extra_state`.

    Args:
        lr: Adam learning rate of the update.
        k: cut-off of the forget recall.
        target_recall: stop once forget Recall@K is at most this; ``None`` = :meth:`reference_recall`.
        eval_every: steps between verifications.
        retain_weight: :math:`\lambda_r`, weight of retain BPR.
        train_mode: run the update's forward passes (profiling included) in training mode (dropout,
            edge dropout, sampled attention, batch-norm statistics), as the model was trained; ``False``
            edits the deployed, deterministic function instead. Measured on MIG-GT (TikTok, TRU,
            user-wise 5%): ``False`` reached the target in 36 steps instead of 74 at the same utility,
            but on the planted set of ``tests/test_tru.py``'s MIG-GT case it lost 39% of test NDCG@20
            where ``True`` lost none, so the default stays ``True``.
    """

    def __init__(
        self,
        lr: float = 1e-3,
        k: int = 20,
        target_recall: Optional[float] = None,
        eval_every: int = 5,
        retain_weight: float = 1.0,
        train_mode: bool = True,
    ) -> None:
        if lr <= 0 or k < 1 or eval_every < 1 or retain_weight < 0:
            raise ValueError(
                f"lr={lr} must be > 0, k={k} >= 1, eval_every={eval_every} >= 1, retain_weight={retain_weight} >= 0"
            )
        self.lr, self.k, self.eval_every, self.retain_weight = lr, k, eval_every, retain_weight
        self.target_recall = target_recall
        self.train_mode = train_mode
        self.steps = 0
        self.history: list[dict[str, float]] = []
        self.stopping_reason: Optional[str] = None
        self._fingerprint: Optional[str] = None
        self._profiled = False

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(method=type(self).__name__)

    # --------------------------------------------------------------------------- hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not isinstance(pl_module, UnlearningTask):
            raise TypeError(f"{type(self).__name__} runs inside an UnlearningTask, got {type(pl_module).__name__}")
        dm = trainer.datamodule
        if not isinstance(dm, UnlearningDataModule):
            raise TypeError("an unlearning run needs an UnlearningDataModule (source data + forget request)")
        from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

        if isinstance(trainer.strategy, (FSDPStrategy, DeepSpeedStrategy)):
            raise ValueError(
                f"{type(self).__name__} supports single-device and DDP strategies, not {type(trainer.strategy).__name__}: "
                "its gradient edits (masks, scales) and profiles need every parameter whole on every rank. "
                "Use strategy='ddp' (the model is replicated; see README 'Cluster runs' for the size limit)"
            )
        self._datamodule = dm

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # runs after a checkpoint's callback state is restored
        dm: UnlearningDataModule = trainer.datamodule  # type: ignore[assignment]
        model = pl_module.model  # type: ignore[attr-defined]
        if self._fingerprint is not None and self._fingerprint != dm.forget.fingerprint:
            raise ValueError(
                f"this callback state belongs to request {self._fingerprint[:12]}, the data holds "
                f"{dm.forget.fingerprint[:12]}: resume with the same deletion request"
            )
        self._fingerprint = dm.forget.fingerprint
        if self._profiled:
            self.restore_profile(model)
        else:
            if self.target_recall is None:
                self.target_recall = self.reference_recall(model, dm)
            with isolate_rng():
                model.train(self.train_mode)
                self.profile(trainer, model, dm)
            self._profiled = True
            self.history.append({"step": 0.0, **self.verify(model, dm)})
            rank_zero_info(
                f"{type(self).__name__}: {len(dm.forget.forget_pairs)} forget pairs, forget recall@{self.k} "
                f"{self.history[0][f'forget_recall@{self.k}']:.4f}, target {self.target_recall:.4f}"
            )

    @override
    def on_after_backward(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.edit_gradients(pl_module.model)  # type: ignore[attr-defined]

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.steps += 1
        if self.steps % self.eval_every:
            return
        dm: UnlearningDataModule = trainer.datamodule  # type: ignore[assignment]
        res = self.verify(pl_module.model, dm)  # type: ignore[attr-defined]
        self.history.append({"step": float(self.steps), **res})
        pl_module.log_dict({f"unlearn/{k}": v for k, v in res.items()}, batch_size=1)
        reached = res[f"forget_recall@{self.k}"] <= float(self.target_recall)  # type: ignore[arg-type]
        if trainer.strategy.reduce_boolean_decision(reached, all=False):
            self.stopping_reason = f"forget recall@{self.k} reached the target after {self.steps} steps"
            trainer.should_stop = True

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.stopping_reason is None:
            self.stopping_reason = f"step budget spent ({self.steps} steps)"
        rank_zero_info(f"{type(self).__name__}: {self.stopping_reason}")

    # ------------------------------------------------------------------- method surface
    @abc.abstractmethod
    def training_losses(self, model: nn.Module, batch: UnlearnBatch) -> dict[str, Tensor]:
        """The update objective of one step, by term (summed by the task)."""

    def profile(self, trainer: Trainer, model: nn.Module, dm: UnlearningDataModule) -> None:
        """One-off analysis before the first step (runs under ``isolate_rng``)."""

    def restore_profile(self, model: nn.Module) -> None:
        """Rebuild derived views of a profile restored from a checkpoint (no re-profiling)."""

    def edit_gradients(self, model: nn.Module) -> None:
        """Edit ``p.grad`` after each backward (masks, scales)."""

    def configure_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=self.lr)

    # -------------------------------------------------------------------- verification
    def verify(self, model: nn.Module, dm: UnlearningDataModule) -> dict[str, float]:
        """Forget Recall@K and exposure@K of the current model (identical on every rank)."""
        was_training = model.training
        model.eval()
        try:
            return forget_metrics(model, dm.retained_train_csr(), dm.forget_csr(), self.k)
        finally:
            model.train(was_training)

    def reference_recall(self, model: nn.Module, dm: UnlearningDataModule) -> float:
        """The default target: what Retrain is expected to leave of the forget pairs.

        User- and item-wise: the expected recall of a uniformly random ranking (Retrain has no
        interaction left for the forgotten side; chance level is the conservative bound: the
        forgotten items end up no more exposed than by chance); interaction-wise: Recall@K of
        held-out test pairs (a forgotten pair looks like any unobserved one), measured on the
        model before the first step.
        """
        if dm.forget.regime in ("user", "item"):
            return random_recall(dm.retained_train_csr(), dm.forget_csr(), self.k)
        return self.heldout_recall(model, dm)

    def heldout_recall(self, model: nn.Module, dm: UnlearningDataModule) -> float:
        """Recall@K of held-out test pairs (train and valid masked): what non-members score."""
        data = dm.source.data
        was_training = model.training
        model.eval()
        try:
            res = forget_metrics(model, data.csr("train", "valid"), data.csr("test"), self.k)
        finally:
            model.train(was_training)
        return res[f"forget_recall@{self.k}"]

    # --------------------------------------------------------------------------- state
    def extra_state(self) -> dict[str, Any]:
        """Method-specific state to checkpoint (plain values)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self._fingerprint,
            "steps": self.steps,
            "profiled": self._profiled,
            "target_recall": self.target_recall,
            "history": list(self.history),
            "extra": self.extra_state(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._fingerprint = state_dict.get("fingerprint")
        self.steps = int(state_dict.get("steps", 0))
        self._profiled = bool(state_dict.get("profiled", False))
        self.target_recall = state_dict.get("target_recall", self.target_recall)
        self.history = list(state_dict.get("history", []))
        self.load_extra_state(state_dict.get("extra", {}))

