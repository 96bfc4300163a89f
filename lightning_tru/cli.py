"""LightningCLI entry points (``train.py``, ``unlearn.py``, ``recommend.py``)."""
from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_tru.datamodules import RecDataModule
from lightning_tru.datamodules.deletions import LineageError, check_store_applied
from lightning_tru.datamodules.forget import ForgetRequest, ForgetRequestError
from lightning_tru.datamodules.interactions import DataFormatError
from lightning_tru.ledger import LedgerError
from lightning_tru.lifecycle import (
    AuditSettings,
    OutputPathError,
    RetrainSettings,
    answer_request,
    check_outputs,
    check_recommend_output,
    load_trained_weights,
    read_user_ids,
    recommend,
)
from lightning_tru.models import RecommenderModule

__all__ = ["load_trained_weights", "recommend_cli", "train_cli", "unlearn_cli", "main"]

#: errors whose message is the whole story: scripts print them once, short, and exit 2
USER_ERRORS = (DataFormatError, ForgetRequestError, LineageError, LedgerError, OutputPathError)


class ConfigFileError(ValueError):
    """A ``--config`` file that is missing or not valid YAML; the message names the file and line."""


def _check_config_files(args: Optional[list[str]]) -> None:
    """Parse every ``--config FILE`` first, so a malformed one is named (jsonargparse does not)."""
    argv = list(sys.argv[1:] if args is None else args)
    files = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
    files += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    for f in files:
        path = Path(f)
        if not path.is_file():
            if path.suffix.lower() in (".yaml", ".yml", ".json"):
                raise ConfigFileError(f"config file {f} does not exist")
            continue  # an inline YAML string: jsonargparse parses it
        try:
            yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark is not None else ""
            raise ConfigFileError(f"config file {f}:{where} {getattr(e, 'problem', None) or e}; fix the YAML") from e


@contextlib.contextmanager
def _unwrapped_data_errors() -> Iterator[None]:
    """Re-raise a data or request error that jsonargparse wrapped while instantiating the data."""
    try:
        yield
    except USER_ERRORS:
        raise
    except ValueError as e:
        cause: Optional[BaseException] = e
        while cause is not None and not isinstance(cause, USER_ERRORS):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        raise cause from None


def main(fn: Callable[[], Any]) -> int:
    """Run a CLI function as a script: data, request, config, path and lineage errors (and a missing
    file) print one short line (``error: ...``) and exit with status 2; an unanswered deletion
    request exits with status 3."""
    try:
        out = fn()
    except (*USER_ERRORS, ConfigFileError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if isinstance(out, dict) and out.get("status", {}).get("target_reached") is False:
        print(f"error: the deletion request was NOT answered: {out['status']['stopping_reason']}; the ledger "
              "records it as not_reached. Raise trainer.max_epochs or the method's lr, or pass --method retrain",
              file=sys.stderr)
        return 3
    return 0


MONITOR = "val/recall@20"
#: where ``unlearn.py`` records requests by default (``deletions`` beside its default ledger ``runs/...``)
DEFAULT_DELETIONS = "runs/deletions"


def _check_default_store(datamodule: Any) -> None:
    """``train.py`` / ``recommend.py`` without ``--deletions``: refuse data whose requests the default store holds."""
    if isinstance(datamodule, RecDataModule):
        check_store_applied(datamodule.data, DEFAULT_DELETIONS, applied=datamodule.deletions is not None)


def _add_common_arguments(parser: LightningArgumentParser, as_callbacks: bool = True) -> None:
    """Size links plus best-checkpoint / early stopping on valid Recall@20 (shared by both CLIs).

    With ``as_callbacks=False`` (``unlearn.py``) the two groups are parsed but not added to the
    trainer: they configure Retrain.
    """
    for k in ("num_users", "num_items", "feature_dims"):
        parser.link_arguments(f"data.{k}", f"model.{k}", apply_on="instantiate")
    parser.add_argument("--deletions", type=Optional[str], default=None,
                        help="deletion store folder: every request recorded there is removed from the data on load "
                             "(unlearn.py default: 'deletions' beside the ledger)")
    if as_callbacks:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
    else:
        parser.add_class_arguments(ModelCheckpoint, "checkpoint", instantiate=False)
        parser.add_class_arguments(EarlyStopping, "early_stopping", instantiate=False)
    parser.set_defaults({"checkpoint.monitor": MONITOR, "checkpoint.mode": "max", "checkpoint.filename": "best-{epoch}"})
    parser.set_defaults({"early_stopping.monitor": MONITOR, "early_stopping.mode": "max", "early_stopping.patience": 20})


def _apply_deletions(cfg: Any) -> None:
    """``--deletions DIR`` goes to the datamodule (``data.init_args.deletions``)."""
    if cfg.get("deletions") is None:
        return
    init = cfg.data.init_args if "init_args" in cfg.data else cfg.data
    given = init.get("deletions")
    if given is not None and str(given) != str(cfg.deletions):
        raise LineageError(f"--deletions {cfg.deletions} and data.init_args.deletions {given} differ; pass one")
    init.deletions = cfg.deletions


class TrainCLI(LightningCLI):
    """Training CLI: links data sizes into the model, adds best-checkpoint and early stopping on
    valid Recall@20 (``checkpoint.*`` and ``early_stopping.*`` in YAML), and tests the best
    checkpoint after ``fit`` (``--test_after_fit false`` to skip). ``--deletions DIR`` applies a
    deletion store to the data of every subcommand (fit, validate, test, predict)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        _add_common_arguments(parser)
        parser.add_argument("--test_after_fit", type=bool, default=True, help="test the best checkpoint after fit")

    def before_instantiate_classes(self) -> None:
        _apply_deletions(self.config[self.subcommand] if self.subcommand else self.config)

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        _check_default_store(self.datamodule)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        cfg = self.config_init[self.subcommand] if self.subcommand else self.config_init
        if cfg.get("trainer", {}).get("enable_checkpointing") is False and isinstance(cfg.get("checkpoint"), ModelCheckpoint):
            cfg.checkpoint = None  # the best-checkpoint callback would contradict enable_checkpointing=False
            parser = self._parser(self.subcommand)
            parser.callback_keys = [k for k in parser.callback_keys if k != "checkpoint"]
        return super().instantiate_trainer(**kwargs)

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        """A checkpoint (``--ckpt_path``) loads with ``weights_only=True`` unless ``--weights_only`` says otherwise
        (Lightning would unpickle it in full)."""
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if "weights_only" in inspect.signature(getattr(self.trainer, subcommand)).parameters:
            kwargs["weights_only"] = True if kwargs.get("weights_only") is None else kwargs["weights_only"]
        return kwargs

    def after_fit(self) -> None:
        if not self.config[self.subcommand].get("test_after_fit", True):
            return
        ckpt: Optional[str] = self.trainer.checkpoint_callback.best_model_path if self.trainer.checkpoint_callback else None
        extra = {"weights_only": True} if "weights_only" in inspect.signature(self.trainer.test).parameters else {}
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt or None, **extra)


TRAINER_DEFAULTS: dict[str, Any] = {
    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs"}},
    "max_epochs": 1000,
    "num_sanity_val_steps": 0,
}


def train_cli(args: Optional[list[str]] = None, run: bool = True) -> TrainCLI:
    """``python train.py fit --config configs/train/mgcn_synthetic.yaml [--deletions runs/deletions]``."""
    _check_config_files(args)
    with _unwrapped_data_errors():
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
        parser.add_argument("--retrain_strategy", type=str, default="auto",
                            help="Retrain's Lightning strategy: 'ddp' retrains data-parallel on --retrain_devices "
                                 "(under a DDP unlearning run every rank retrains; rank 0 evaluates and writes)")
        parser.add_argument("--retrain_devices", type=int, default=1)
        parser.add_argument("--forget_batch_size", type=int, default=2048)
        parser.add_argument("--retain_batch_size", type=int, default=2048)
        parser.add_argument("--output_root", type=str, default="runs/unlearn")
        parser.add_argument("--ledger", type=str, default="runs/deletion_ledger.jsonl")
        parser.add_argument("--write_retained", type=Optional[str], default=None,
                            help="new folder: write the retained interactions there (MMRec format) once answered")
        parser.add_argument("--audit", type=bool, default=True,
                            help="add the cheap audits (pair-level MIA, global exposure, fairness, distance to Retrain) "
                                 "to report.json and the ledger")
        parser.add_argument("--audit_user_level", type=bool, default=False,
                            help="also the user-level membership attack (trains a shadow model)")
        parser.add_argument("--audit_retrain_floor", type=bool, default=False,
                            help="also a second Retrain (another seed): the noise floor of the distance to Retrain")
        parser.add_argument("--test_after_fit", type=bool, default=True, help="accepted for stacking train configs; unused")

    def before_instantiate_classes(self) -> None:
        cfg = self.config
        if cfg.deletions is None:
            init = cfg.data.get("init_args", cfg.data)
            cfg.deletions = init.get("deletions") or str(Path(cfg.ledger).parent / Path(DEFAULT_DELETIONS).name)
        _apply_deletions(cfg)
        root = cfg.data.init_args.get("root") if "init_args" in cfg.data else None
        forbidden = [cfg.ckpt_path] + ([cfg.deletions] if cfg.deletions else [])
        check_outputs(cfg.output_root, cfg.ledger, forbidden, cfg.write_retained, root)  # before any work
        # logger folders go under the output root, not the working directory
        cfg.trainer.default_root_dir = cfg.trainer.get("default_root_dir") or cfg.output_root
        loggers = cfg.trainer.get("logger")
        for lg in loggers if isinstance(loggers, list) else [loggers]:
            if lg is not None and not isinstance(lg, bool) and "save_dir" in lg.get("init_args", {}):
                lg.init_args.save_dir = str(Path(cfg.output_root) / "logs")

    def job(self) -> dict[str, Any]:
        """The keyword arguments of :func:`~lightning_tru.lifecycle.answer_request` this command line asks for."""
        cfg = self.config
        es = cfg.early_stopping
        return {
            "model": self.model,
            "datamodule": self.datamodule,
            "request": ForgetRequest(**dict(cfg.request)),
            "checkpoint": cfg.ckpt_path,
            "trainer": self.trainer,
            "method": cfg.method,
            "retrain_settings": RetrainSettings(cfg.retrain_max_epochs, es.patience, es.monitor, cfg.seed_everything,
                                                cfg.retrain_strategy, cfg.retrain_devices),
            "compare_retrain": cfg.compare_retrain,
            "output_root": cfg.output_root,
            "ledger": cfg.ledger,
            "write_retained": cfg.write_retained,
            "forget_batch_size": cfg.forget_batch_size,
            "retain_batch_size": cfg.retain_batch_size,
            "seed": int(cfg.seed_everything or 0),
            "audit": AuditSettings(cfg.audit, cfg.audit_user_level, cfg.audit_retrain_floor),
        }

    def unlearn(self) -> dict[str, Any]:
        """Run the request end to end (:func:`~lightning_tru.lifecycle.answer_request`); returns the report."""
        return answer_request(**self.job())


def unlearn_cli(args: Optional[list[str]] = None, run: bool = True) -> Any:
    """``python unlearn.py --config ... --ckpt_path ...``; returns the report (``run=False``: the CLI,
    whose :meth:`UnlearnCLI.job` gives :func:`answer_request`'s arguments)."""
    _check_config_files(args)
    with _unwrapped_data_errors():
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
        return cli.unlearn() if run else cli


class RecommendCLI(LightningCLI):
    """Serve a checkpoint: ``python recommend.py --config configs/train/X.yaml --ckpt_path model.ckpt
    --output recs.tsv [--users users.txt] [--k 20] [--deletions runs/deletions]``."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        _add_common_arguments(parser, as_callbacks=False)
        parser.add_argument("--ckpt_path", type=str, required=True, help="the checkpoint to serve (read only)")
        parser.add_argument("--output", type=str, required=True, help="TSV file: userID, rank, itemID, score")
        parser.add_argument("--k", type=int, default=20, help="recommendations per user")
        parser.add_argument("--users", type=Optional[str], default=None, help="file of user ids (default: all users)")
        parser.add_argument("--test_after_fit", type=bool, default=True, help="accepted for stacking train configs; unused")

    def before_instantiate_classes(self) -> None:
        _apply_deletions(self.config)

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        _check_default_store(self.datamodule)


def recommend_cli(args: Optional[list[str]] = None) -> Path:
    """``python recommend.py ...``: top-K recommendations of a checkpoint on its own graph; returns the file."""
    _check_config_files(args)
    with _unwrapped_data_errors():
        cli = RecommendCLI(
            RecommenderModule,
            RecDataModule,
            subclass_mode_data=True,
            seed_everything_default=2024,
            save_config_callback=None,
            trainer_defaults={**TRAINER_DEFAULTS, "logger": False},
            args=args,
            run=False,
        )
    cfg = cli.config
    check_recommend_output(cfg.output, cfg.ckpt_path, cli.datamodule, [cfg.users] if cfg.users else [])
    users = read_user_ids(cfg.users) if cfg.users else None
    accelerator = cfg.trainer.get("accelerator") or "auto"
    return recommend(cli.model, cli.datamodule, cfg.ckpt_path, cfg.output, cfg.k, users,
                     accelerator=accelerator if isinstance(accelerator, str) else "auto")
