"""A thin LightningModule that runs an unlearning method over any recommender."""
from __future__ import annotations

from typing import Any, Optional, Protocol, runtime_checkable

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from typing_extensions import override

from lightning_tru.datamodules.unlearning import UnlearnBatch
from lightning_tru.models.protocol import attach_graph


class NonFiniteLossError(FloatingPointError):
    """An unlearning step produced a NaN or infinite loss; the run stops before the update is applied."""


@runtime_checkable
class UnlearningMethod(Protocol):
    """What the task needs of an unlearning method (an :class:`~lightning_tru.callbacks.UnlearningCallback`)."""

    train_mode: bool
    lr: float

    def training_losses(self, model: nn.Module, batch: UnlearnBatch, datamodule: Any) -> dict[str, Tensor]:
        """The update objective of one step, by term."""

    def configure_optimizer(self, model: nn.Module, datamodule: Any) -> torch.optim.Optimizer:
        """The optimiser of the update."""


class UnlearningTask(LightningModule):
    """Wraps a trained recommender for an unlearning ``Trainer.fit``.

    The contract with the callback: a Lightning callback cannot replace the loss, so the
    unlearning callback binds itself to this module in its ``setup`` (:meth:`bind`); this
    module's ``training_step`` then asks it for the loss of the step's :class:`UnlearnBatch`
    (``training_losses``) and ``configure_optimizers`` for the optimiser. Batches come from the
    DataLoader of :class:`~lightning_tru.datamodules.UnlearningDataModule`.

    Args:
        model: a recommender offering the protocol of :mod:`lightning_tru.models.protocol`.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not hasattr(model, "score"):
            raise TypeError(
                f"{type(model).__name__} has no score(users, items) method; "
                "the unlearning callbacks need at least that (see lightning_tru.models.protocol)"
            )
        self.model = model
        self._method: Optional[UnlearningMethod] = None

    def bind(self, method: Optional[UnlearningMethod]) -> None:
        """Attach the method that supplies losses and optimiser (``None`` detaches it)."""
        if method is not None and not isinstance(method, UnlearningMethod):
            raise TypeError(
                f"{type(method).__name__} does not offer training_losses(model, batch, datamodule), "
                "configure_optimizer(model, datamodule), train_mode and lr"
            )
        self._method = method

    @property
    def method(self) -> UnlearningMethod:
        """The bound unlearning method."""
        if self._method is None:
            raise RuntimeError(
                "no unlearning method is bound to this UnlearningTask: pass exactly one UnlearningCallback "
                "in Trainer(callbacks=[...]); it binds itself in setup"
            )
        return self._method

    @override
    def setup(self, stage: str) -> None:
        attach_graph(self.model, self.trainer.datamodule)

    @override
    def training_step(self, batch: UnlearnBatch, batch_idx: int) -> Tensor:
        method = self.method
        self.model.train(method.train_mode)  # Lightning switched it to train mode for the epoch
        losses = method.training_losses(self.model, batch, self.trainer.datamodule)
        loss = torch.stack(list(losses.values())).sum()
        if not torch.isfinite(loss):
            bad = {k: float(v.detach()) for k, v in losses.items() if not torch.isfinite(v)}
            raise NonFiniteLossError(
                f"unlearning step {self.current_epoch}: the loss is {float(loss.detach())} (non-finite terms {bad}); "
                f"the model is left as after the last finite step. Causes: an empty batch (forget/retain batch "
                f"size < 1) or a diverging update (lower the callback's lr={method.lr})"
            )
        self.log("unlearn/loss", loss, prog_bar=True, batch_size=1)
        self.log_dict({f"unlearn/{k}": v for k, v in losses.items()}, batch_size=1)
        return loss

    @override
    def configure_optimizers(self) -> Any:
        return self.method.configure_optimizer(self.model, self.trainer.datamodule)
