"""LightningCLI entry points (``train.py``)."""
from __future__ import annotations

from typing import Any, Optional

from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_tru.datamodules import RecDataModule
from lightning_tru.models import RecommenderModule

MONITOR = "val/recall@20"


class TrainCLI(LightningCLI):
    """Training CLI: links data sizes into the model, adds best-checkpoint and early stopping on
    valid Recall@20 (``checkpoint.*`` and ``early_stopping.*`` in YAML), and tests the best
    checkpoint after ``fit`` (``--test_after_fit false`` to skip)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for k in ("num_users", "num_items", "feature_dims"):
            parser.link_arguments(f"data.{k}", f"model.{k}", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {"checkpoint.monitor": MONITOR, "checkpoint.mode": "max", "checkpoint.filename": "best-{epoch}"}
        )
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.set_defaults(
            {"early_stopping.monitor": MONITOR, "early_stopping.mode": "max", "early_stopping.patience": 20}
        )
        parser.add_argument("--test_after_fit", type=bool, default=True, help="test the best checkpoint after fit")

    def after_fit(self) -> None:
        if not self.config[self.subcommand].get("test_after_fit", True):
            return
        ckpt: Optional[str] = self.trainer.checkpoint_callback.best_model_path if self.trainer.checkpoint_callback else None
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt or None)


TRAINER_DEFAULTS: dict[str, Any] = {
    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs"}},
    "max_epochs": 1000,
    "num_sanity_val_steps": 0,
}


def train_cli(args: Optional[list[str]] = None, run: bool = True) -> TrainCLI:
    """``python train.py fit --config configs/train/mgcn_synthetic.yaml``."""
    return TrainCLI(
        RecommenderModule,
        RecDataModule,
        subclass_mode_data=True,
        seed_everything_default=2024,
        save_config_kwargs={"overwrite": True},
        trainer_defaults=TRAINER_DEFAULTS,
        args=args,
        run=run,
    )
