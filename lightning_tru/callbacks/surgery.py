r"""Surgery: the zero-cost floor of graph surgery alone, no weight changed."""
from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from typing_extensions import override

from lightning_tru.callbacks.base import UnlearningCallback
from lightning_tru.datamodules.unlearning import UnlearnBatch, UnlearningDataModule


class Surgery(UnlearningCallback):
    r"""Floor: install the retained graph (graph surgery) and change no weight.

    The unlearning task installs the retained train graph before any step
    (:class:`~lightning_tru.models.unlearning.UnlearningTask` ``setup``); this method then stops
    the run before the first optimisation step (``steps == 0``), so every parameter keeps its
    trained value. A method that does not beat this floor on some axis adds nothing beyond
    removing the edges. ``history`` holds forget Recall@K / exposure@K after the surgery.

    Args:
        k: cut-off of the recorded forget recall.
    """

    def __init__(self, k: int = 20) -> None:
        super().__init__(lr=1.0, k=k, target_recall=None, eval_every=1, train_mode=False)
        self.edits: dict[str, Any] = {}

    def edit(self, model: nn.Module, dm: UnlearningDataModule) -> str:
        """The weight edit after the surgery (none here); returns what was done, for ``stopping_reason``."""
        return "graph surgery only: the retained graph is installed, no weight changed"

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        dm: UnlearningDataModule = trainer.datamodule  # type: ignore[assignment]
        if self._fingerprint is not None and self._fingerprint != dm.forget.fingerprint:
            raise ValueError(
                f"this callback state belongs to request {self._fingerprint[:12]}, the data holds "
                f"{dm.forget.fingerprint[:12]}: resume with the same deletion request"
            )
        self._fingerprint = dm.forget.fingerprint
        model = pl_module.model  # type: ignore[attr-defined]
        done = self.edit(model, dm)  # deterministic: every rank makes the same edit
        self._profiled = True
        self.history = [{"step": 0.0, **self.verify(model, dm)}]
        self.stopping_reason = f"{done} (0 optimisation steps)"
        trainer.should_stop = True  # the fit loop ends before its first epoch
        rank_zero_info(f"{type(self).__name__}: {self.stopping_reason}")

    @override
    def training_losses(self, model: nn.Module, batch: UnlearnBatch, dm: UnlearningDataModule) -> dict[str, Tensor]:
        raise RuntimeError(
            f"{type(self).__name__} makes no optimisation step; the run should have stopped at fit start "
            "(is trainer.min_epochs / min_steps set? remove it)"
        )

    @override
    def extra_state(self) -> dict[str, Any]:
        return dict(self.edits)

    @override
    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.edits = dict(state)
