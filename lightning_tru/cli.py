"""LightningCLI entry points (``train.py``, ``unlearn.py``)."""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from lightning_tru.audit.report import (
    append_ledger,
    checkpoint_bytes,
    evaluate,
    format_table,
    publish_run_dir,
)
from lightning_tru.callbacks.base import UnlearningCallback
from lightning_tru.datamodules import RecDataModule
from lightning_tru.datamodules.forget import ForgetRequest
from lightning_tru.datamodules.unlearning import UnlearningDataModule
from lightning_tru.models import RecommenderModule
from lightning_tru.models.recommender import CHECKPOINT_KEY
from lightning_tru.models.retrain import retrain
from lightning_tru.models.unlearning import UnlearningTask

MONITOR = "val/recall@20"


def _add_common_arguments(parser: LightningArgumentParser, as_callbacks: bool = True) -> None:
    """Size links plus best-checkpoint / early stopping on valid Recall@20 (shared by both CLIs).

    With ``as_callbacks=False`` (``unlearn.py``) the two groups are parsed but not added to the
    trainer: they configure Retrain.
    """
    for k in ("num_users", "num_items", "feature_dims"):
        parser.link_arguments(f"data.{k}", f"model.{k}", apply_on="instantiate")
    if as_callbacks:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
    else:
        parser.add_class_arguments(ModelCheckpoint, "checkpoint", instantiate=False)
        parser.add_class_arguments(EarlyStopping, "early_stopping", instantiate=False)
    parser.set_defaults({"checkpoint.monitor": MONITOR, "checkpoint.mode": "max", "checkpoint.filename": "best-{epoch}"})
    parser.set_defaults({"early_stopping.monitor": MONITOR, "early_stopping.mode": "max", "early_stopping.patience": 20})


class TrainCLI(LightningCLI):
    """Training CLI: links data sizes into the model, adds best-checkpoint and early stopping on
    valid Recall@20 (``checkpoint.*`` and ``early_stopping.*`` in YAML), and tests the best
    checkpoint after ``fit`` (``--test_after_fit false`` to skip)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        _add_common_arguments(parser)
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


def load_trained_weights(model: RecommenderModule, path: str | Path) -> dict[str, Any]:
    """Load a trained checkpoint into ``model`` with ``weights_only=True`` after checking it was
    written for the same backbone, sizes and modalities. Returns the checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; train first: python train.py fit --config ...")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    mine = model.model_signature()
    theirs = ckpt.get(CHECKPOINT_KEY)
    if theirs is None or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a lightning_tru checkpoint (no '{CHECKPOINT_KEY}' entry); pass one written by train.py")
    if theirs != mine:
        diff = {k: (theirs.get(k), mine[k]) for k in mine if theirs.get(k) != mine[k]}
        raise ValueError(
            f"{path} holds another model: checkpoint vs config differ in {diff}; "
            "use the model and data config the checkpoint was trained with"
        )
    model.load_state_dict(ckpt["state_dict"])
    return ckpt


class UnlearnCLI(LightningCLI):
    """Answer one deletion request: ``python unlearn.py --config configs/train/X.yaml
    --config configs/unlearn/tru.yaml --ckpt_path best.ckpt``.

    The unlearning method is the :class:`UnlearningCallback` in ``trainer.callbacks`` (the
    trainer is the unlearning trainer: one step per epoch, ``max_epochs`` = step budget), or
    ``--method retrain``. The ``checkpoint`` / ``early_stopping`` groups of the training config
    drive Retrain. Outputs go to a new run directory; the input checkpoint is never written.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        _add_common_arguments(parser, as_callbacks=False)
        parser.add_argument("--ckpt_path", type=str, required=True, help="the trained checkpoint (read only)")
        parser.add_class_arguments(ForgetRequest, "request")
        parser.add_argument("--method", type=Literal["callback", "retrain"], default="callback",
                            help="'callback': the UnlearningCallback in trainer.callbacks; 'retrain': Retrain")
        parser.add_argument("--compare_retrain", type=bool, default=False, help="also run Retrain and report it")
        parser.add_argument("--retrain_max_epochs", type=int, default=1000)
        parser.add_argument("--forget_batch_size", type=int, default=2048)
        parser.add_argument("--retain_batch_size", type=int, default=2048)
        parser.add_argument("--output_root", type=str, default="runs/unlearn")
        parser.add_argument("--ledger", type=str, default="runs/deletion_ledger.jsonl")
        parser.add_argument("--test_after_fit", type=bool, default=True, help="accepted for stacking train configs; unused")

    def unlearn(self) -> dict[str, Any]:
        """Run the request end to end and return the report (also written to disk on rank 0)."""
        cfg = self.config
        model: RecommenderModule = self.model
        initial = copy.deepcopy(model)  # seeded like the original run: Retrain's starting point
        load_trained_weights(model, cfg.ckpt_path)
        request = ForgetRequest(**{k: v for k, v in dict(cfg.request).items()})
        udm = UnlearningDataModule(
            self.datamodule, request, cfg.forget_batch_size, cfg.retain_batch_size, seed=int(cfg.seed_everything or 0)
        )
        fs = udm.forget
        rank_zero_info(f"request {fs.fingerprint[:12]}: {fs.summary()}")
        callbacks = [c for c in self.trainer.callbacks if isinstance(c, UnlearningCallback)]
        if cfg.method == "callback" and len(callbacks) != 1:
            raise ValueError(
                f"--method callback needs exactly one UnlearningCallback in trainer.callbacks (found {len(callbacks)}); "
                "stack configs/unlearn/tru.yaml or pass --method retrain"
            )
        columns: dict[str, dict[str, float]] = {}
        seconds: dict[str, float] = {}
        details: dict[str, Any] = {}
        if self.trainer.is_global_zero:
            columns["before"] = evaluate(model, udm, original_graph=True)
        if cfg.method == "callback":
            name = type(callbacks[0]).__name__
            model.train()
            start = time.perf_counter()
            self.trainer.fit(UnlearningTask(model), datamodule=udm)
            seconds[name] = time.perf_counter() - start
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                # the DDP run is over: rank 0 evaluates and writes alone, without collectives
                torch.distributed.destroy_process_group()
            cb = callbacks[0]
            details[name] = {"steps": cb.steps, "stopping_reason": cb.stopping_reason, "target_recall": cb.target_recall,
                             **cb.extra_state()}
        else:
            name = "Retrain"
        if not self.trainer.is_global_zero:
            return {}
        es = cfg.early_stopping
        if cfg.method == "retrain" or cfg.compare_retrain:
            retrained, info = retrain(initial, udm.retained, cfg.retrain_max_epochs, es.patience, es.monitor,
                                      seed=cfg.seed_everything)
            seconds["Retrain"], details["Retrain"] = info["seconds"], info
            columns["Retrain"] = evaluate(retrained, udm)
            if cfg.method == "retrain":
                model = retrained
        if cfg.method == "callback":
            columns[name] = evaluate(model, udm)
            columns = {"before": columns["before"], name: columns[name], **{k: v for k, v in columns.items() if k not in ("before", name)}}
        report = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "method": name,
            "checkpoint": str(Path(cfg.ckpt_path).resolve()),
            "request": {**fs.summary(), **{k: (str(v) if isinstance(v, Path) else v) for k, v in dict(cfg.request).items()}},
            "metrics": columns,
            "seconds": seconds,
            "details": details,
        }
        ckpt = {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            CHECKPOINT_KEY: model.model_signature(),
            "unlearning": {"fingerprint": fs.fingerprint, "method": name, "source": report["checkpoint"]},
        }
        run_dir = publish_run_dir(Path(cfg.output_root), name.lower(), fs.fingerprint, {
            "model.ckpt": checkpoint_bytes(ckpt),
            "report.json": json.dumps(report, indent=2, default=str).encode(),
        })
        report["run_dir"] = str(run_dir)
        append_ledger(Path(cfg.ledger), {"time": report["time"], "fingerprint": fs.fingerprint, "method": name,
                                         "run_dir": str(run_dir), "metrics": columns[name], "seconds": seconds.get(name)})
        print(format_table(columns, seconds))
        print(f"\nunlearned checkpoint and report: {run_dir}")
        return report


def unlearn_cli(args: Optional[list[str]] = None) -> dict[str, Any]:
    """``python unlearn.py --config ... --ckpt_path ...``; returns the report."""
    cli = UnlearnCLI(
        RecommenderModule,
        RecDataModule,
        subclass_mode_data=True,
        seed_everything_default=2024,
        save_config_callback=None,
        trainer_defaults={**TRAINER_DEFAULTS, "max_epochs": 200, "limit_val_batches": 0, "enable_checkpointing": False},
        args=args,
        run=False,
    )
    return cli.unlearn()
