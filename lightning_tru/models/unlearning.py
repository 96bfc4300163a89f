"""A thin LightningModule that runs an unlearning method over any recommender."""
from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from typing_extensions import override

from lightning_tru.models.protocol import attach_graph


class NonFiniteLossError(FloatingPointError):
    """An unlearning step produced a NaN or infinite loss; the run stops before the update is applied."""


class UnlearningTask(LightningModule):
    """Wraps a trained recommender for an unlearning ``Trainer.fit``.

    The contract with the callback: a Lightning callback cannot replace the loss, so this
    module's ``training_step`` asks the single attached
    :class:`~lightning_tru.callbacks.UnlearningCallback` for it (``training_losses``), and
    ``configure_optimizers`` asks it for the optimiser. The batch of each step comes from the
    datamodule's ``make_batch(epoch, index)`` (:class:`~lightning_tru.datamodules.UnlearningDataModule`).

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

    @property
    def callback(self) -> Any:
        from lightning_tru.callbacks.base import UnlearningCallback

        found = [c for c in self.trainer.callbacks if isinstance(c, UnlearningCallback)]
        if len(found) != 1:
            raise RuntimeError(
                f"an unlearning run needs exactly one UnlearningCallback in trainer.callbacks, found {len(found)}"
            )
        return found[0]

    @override
    def setup(self, stage: str) -> None:
        attach_graph(self.model, self.trainer.datamodule)

    @override
    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        dm = self.trainer.datamodule
        data = dm.make_batch(self.current_epoch, int(batch[0]))
        data = type(data)(*(t.to(self.device) for t in data))
        self.model.train(self.callback.train_mode)  # Lightning switched it to train mode for the epoch
        losses = self.callback.training_losses(self.model, data)
        loss = torch.stack(list(losses.values())).sum()
        if not torch.isfinite(loss):
            bad = {k: float(v.detach()) for k, v in losses.items() if not torch.isfinite(v)}
            raise NonFiniteLossError(
                f"unlearning step {self.current_epoch}: the loss is {float(loss.detach())} (non-finite terms {bad}); "
                f"the model is left as after the last finite step. Causes: an empty batch (forget/retain batch "
                f"size < 1) or a diverging update (lower the callback's lr={getattr(self.callback, 'lr', '?')})"
            )
        self.log("unlearn/loss", loss, prog_bar=True, batch_size=1)
        self.log_dict({f"unlearn/{k}": v for k, v in losses.items()}, batch_size=1)
        return loss

    @override
    def configure_optimizers(self) -> Any:
        return self.callback.configure_optimizer(self.model)
