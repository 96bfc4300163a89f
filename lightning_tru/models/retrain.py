"""Retrain: the gold standard — train from scratch on the retained interactions, same config."""
from __future__ import annotations

import copy
import tempfile
import time
from typing import Any, Optional, Union

import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from lightning_tru.datamodules.datamodule import RecDataModule
from lightning_tru.models.recommender import RecommenderModule


class _EpochCount(Callback):
    """Logs the number of finished epochs: ``callback_metrics`` is what a ``ddp_spawn`` fit hands back."""

    KEY = "retrain/epochs"

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pl_module.log(self.KEY, float(trainer.current_epoch + 1), sync_dist=True)


def retrain(
    initial: RecommenderModule,
    datamodule: RecDataModule,
    max_epochs: int = 1000,
    patience: int = 20,
    monitor: str = "val/recall@20",
    seed: Optional[int] = None,
    accelerator: str = "auto",
    enable_progress_bar: bool = False,
    strategy: str = "auto",
    devices: Union[int, str] = 1,
    num_nodes: int = 1,
) -> tuple[RecommenderModule, dict[str, Any]]:
    """Train a copy of ``initial`` (the untrained model, same seed and hyper-parameters as the
    original run) on ``datamodule`` (the retained data) with early stopping on ``monitor``,
    and return it at its best valid epoch with ``{"seconds", "best_epoch", "best_score", "epochs"}``
    (``best_score``: ``monitor`` at that epoch).

    ``accelerator``, ``strategy``, ``devices`` and ``num_nodes`` are the Trainer's, so Retrain can
    run under the same data parallelism as the unlearning run (default: one device). Under
    ``ddp`` (processes launched by ``torchrun``, SLURM or a first ``ddp`` Trainer) every rank
    calls this function and gets the same best weights: rank 0 reads its checkpoint and
    broadcasts it. Under ``ddp_spawn`` the calling process gets them.
    """
    model = copy.deepcopy(initial)
    if seed is not None:
        seed_everything(seed, verbose=False)
    with tempfile.TemporaryDirectory(prefix="retrain-") as tmp:
        # under ddp the dirpath is rank 0's (ModelCheckpoint broadcasts it); only rank 0 writes there
        ckpt = ModelCheckpoint(dirpath=tmp, monitor=monitor, mode="max", filename="best")
        trainer = Trainer(
            accelerator=accelerator,
            strategy=strategy,
            devices=devices,
            num_nodes=num_nodes,
            max_epochs=max_epochs,
            num_sanity_val_steps=0,
            logger=False,
            enable_model_summary=False,
            enable_progress_bar=enable_progress_bar,
            callbacks=[EarlyStopping(monitor=monitor, mode="max", patience=patience), ckpt, _EpochCount()],
        )
        start = time.perf_counter()
        trainer.fit(model, datamodule=datamodule)
        seconds = time.perf_counter() - start
        best = None
        if trainer.is_global_zero:
            ckpt_state = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=True)
            score = next(v["best_model_score"] for k, v in ckpt_state["callbacks"].items() if k.startswith("ModelCheckpoint"))
            best = {"state_dict": ckpt_state["state_dict"], "epoch": int(ckpt_state["epoch"]), "score": float(score),
                    "epochs": int(trainer.callback_metrics[_EpochCount.KEY])}
        best = trainer.strategy.broadcast(best, src=0)  # identity without a process group
        model.load_state_dict(best["state_dict"])
        best_epoch, best_score, epochs = int(best["epoch"]), float(best["score"]), int(best["epochs"])
        trainer.strategy.barrier("retrain-best-loaded")  # rank 0 removes its directory only after this
    return model, {"seconds": seconds, "best_epoch": best_epoch, "best_score": best_score, "epochs": epochs,
                   "world_size": int(trainer.world_size)}
