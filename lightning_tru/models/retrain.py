"""Retrain: the gold standard — train from scratch on the retained interactions, same config."""
from __future__ import annotations

import copy
import tempfile
import time
from typing import Any, Optional

import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from lightning_tru.datamodules.datamodule import RecDataModule
from lightning_tru.models.recommender import RecommenderModule


def retrain(
    initial: RecommenderModule,
    datamodule: RecDataModule,
    max_epochs: int = 1000,
    patience: int = 20,
    monitor: str = "val/recall@20",
    seed: Optional[int] = None,
    accelerator: str = "auto",
    enable_progress_bar: bool = False,
) -> tuple[RecommenderModule, dict[str, Any]]:
    """Train a copy of ``initial`` (the untrained model, same seed and hyper-parameters as the
    original run) on ``datamodule`` (the retained data) with early stopping on ``monitor``,
    and return it at its best valid epoch with ``{"seconds", "best_epoch", "epochs"}``.
    """
    model = copy.deepcopy(initial)
    if seed is not None:
        seed_everything(seed, verbose=False)
    with tempfile.TemporaryDirectory(prefix="retrain-") as tmp:
        ckpt = ModelCheckpoint(dirpath=tmp, monitor=monitor, mode="max", filename="best")
        trainer = Trainer(
            accelerator=accelerator,
            devices=1,
            max_epochs=max_epochs,
            num_sanity_val_steps=0,
            logger=False,
            enable_model_summary=False,
            enable_progress_bar=enable_progress_bar,
            callbacks=[EarlyStopping(monitor=monitor, mode="max", patience=patience), ckpt],
        )
        start = time.perf_counter()
        trainer.fit(model, datamodule=datamodule)
        seconds = time.perf_counter() - start
        best = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=True)
        model.load_state_dict(best["state_dict"])
        best_epoch = int(best["epoch"])
    return model, {"seconds": seconds, "best_epoch": best_epoch, "epochs": int(trainer.current_epoch)}
