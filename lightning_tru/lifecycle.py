r"""The deletion lifecycle as a library: answer one request end to end, serve a checkpoint.

:func:`answer_request` is what ``unlearn.py``, ``make demo``, the benchmarks and a user's cluster
job call: load the trained (or previously unlearned) checkpoint against the data with its deletion
state applied, run the unlearning method (or Retrain), evaluate before / after / Retrain, publish the
run directory atomically, record the request in the deletion store and append the ledger entry.

.. code-block:: python

    dm = MMRecDataModule("data/baby", deletions="runs/deletions")
    model = RecommenderModule(MGCN, dm.num_users, dm.num_items, dm.feature_dims)
    trainer = Trainer(max_epochs=200, callbacks=[TRU(lr=0.05)], logger=False)
    report = answer_request(model, dm, ForgetRequest(file="forget.csv"), "best.ckpt", trainer=trainer)
    assert report["status"]["target_reached"]
"""
from __future__ import annotations


import copy
import json
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, Optional, Union

import lightning
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.utilities import rank_zero_info

from lightning_tru.audit.efficiency import Efficiency, efficiency_ratio
from lightning_tru.audit.report import checkpoint_bytes, evaluate, format_table, publish_run_dir
from lightning_tru.audit.suite import Shadow, run_audits, train_shadow
from lightning_tru.callbacks.base import UnlearningCallback
from lightning_tru.callbacks.topk_writer import HEADER as RECS_HEADER
from lightning_tru.datamodules.datamodule import RecDataModule
from lightning_tru.datamodules.deletions import LINEAGE_KEY, LineageError, check_answered, check_lineage, record_digest
from lightning_tru.datamodules.interactions import DataFormatError
from lightning_tru.datamodules.forget import ForgetRequest, ForgetSet
from lightning_tru.datamodules.purge import write_mmrec
from lightning_tru.datamodules.unlearning import UnlearningDataModule
from lightning_tru.ledger import append_entry, check_entry, check_ledger_path
from lightning_tru.models.recommender import CHECKPOINT_KEY, RecommenderModule
from lightning_tru.models.retrain import retrain
from lightning_tru.models.unlearning import UnlearningTask

PathLike = Union[str, Path]


class OutputPathError(ValueError):
    """An output root, ledger or purge folder a run cannot use; the message names it and the fix."""


@dataclass
class RetrainSettings:
    """How Retrain runs: from the untrained model, early stopping on ``monitor`` (the training config),
    on one device or, with ``strategy="ddp"`` and ``devices``, data-parallel like an unlearning run under
    DDP (every rank retrains, rank 0 evaluates and writes)."""

    max_epochs: int = 1000
    patience: int = 20
    monitor: str = "val/recall@20"
    seed: Optional[int] = None
    strategy: str = "auto"
    devices: Union[int, str] = 1
    #: ``"auto"``: the device type the unlearning trainer runs on (Retrain runs where the method ran, so the
    #: speed-up compares like with like; before, a GPU was taken for Retrain beside a CPU run), else Lightning's choice
    accelerator: str = "auto"


@dataclass
class AuditSettings:
    """Which audits :func:`answer_request` adds to ``report.json`` and the ledger (see
    :func:`~lightning_tru.audit.run_audits`).

    Attributes:
        enabled: the cheap audits (pair-level membership inference, global exposure, fairness gap,
            distance to Retrain when Retrain runs, efficiency).
        user_level: the user-level membership attack (trains a shadow model: a Retrain's cost).
        retrain_floor: a second Retrain with another seed, the noise floor of the distance to Retrain
            (needs ``compare_retrain``; costs one more Retrain).
    """

    enabled: bool = True
    user_level: bool = False
    retrain_floor: bool = False


# ------------------------------------------------------------------------------- checks
def stale_run_dirs(output_root: PathLike) -> list[Path]:
    """``.incomplete-*`` folders under ``output_root``: runs that crashed before publishing."""
    root = Path(output_root)
    return sorted(p for p in root.glob(".incomplete-*") if p.is_dir()) if root.is_dir() else []


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_outputs(
    output_root: PathLike,
    ledger: PathLike,
    forbidden: Sequence[PathLike] = (),
    write_retained: Optional[PathLike] = None,
    data_root: Optional[PathLike] = None,
) -> None:
    """Validate where a run will write, before any work starts; nothing is created.

    ``output_root`` must be (or become) a writable folder; ``ledger`` a file that is none of
    ``forbidden`` (the input checkpoint, data files, the deletion store) and not a folder;
    ``write_retained`` a new folder, never the input data. Stale ``.incomplete-*`` folders of
    crashed runs are reported with a warning that says how to remove them.

    Raises:
        OutputPathError: a path is unusable; the message names it and the fix.
    """
    out, led = Path(output_root).expanduser(), Path(ledger).expanduser()
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"--output_root {out} is a file; pass a folder for the run directories")
    if not os.access(_nearest_existing(out.absolute()), os.W_OK):
        raise OutputPathError(f"--output_root {out} is not writable; pass a folder you can write to")
    data_files = [p for p in Path(data_root).iterdir() if p.is_file()] if data_root and Path(data_root).is_dir() else []
    check_ledger_path(led, [*forbidden, *data_files])
    if not os.access(_nearest_existing(led.absolute()), os.W_OK):
        raise OutputPathError(f"--ledger {led} is not writable; pass a path you can write to")
    if write_retained is not None:
        w = Path(write_retained).expanduser()
        if data_root is not None and w.resolve() == Path(data_root).resolve():
            raise OutputPathError(f"--write_retained {w} is the input data folder; refusing to overwrite it: pass a new folder")
        if w.exists():
            raise OutputPathError(f"--write_retained {w} already exists; pass a new folder (it is written atomically)")
        wr = w.resolve()
        for what, other in (("--output_root", out), ("--ledger", led), *(("an input or the deletion store", Path(f))
                                                                         for f in forbidden)):
            o = Path(other).expanduser().resolve()
            if wr == o or wr in o.parents or (what != "--output_root" and o in wr.parents):
                raise OutputPathError(
                    f"--write_retained {w} would hold or overlap {what} {other}; the run writes there itself: "
                    "pass a separate new folder for the retained data"
                )
    stale = stale_run_dirs(out)
    if stale:
        warnings.warn(
            f"{len(stale)} incomplete run folder(s) of crashed runs under {out}: {[p.name for p in stale]}; "
            f"they hold no published result: remove them (rm -r {out}/.incomplete-*) unless a run is in progress",
            stacklevel=1,  # one location: shown once even when the CLI and answer_request both check
        )


def load_trained_weights(
    model: RecommenderModule, path: PathLike, datamodule: Optional[RecDataModule] = None
) -> dict[str, Any]:
    """Load a checkpoint into ``model`` with ``weights_only=True`` after checking it was written for
    the same backbone, sizes and modalities and, given ``datamodule``, for the same data with the same
    deletion state (:func:`~lightning_tru.datamodules.deletions.check_lineage`). Returns the checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; train first: python train.py fit --config ...")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    mine = model.model_signature()
    theirs = ckpt.get(CHECKPOINT_KEY)
    if theirs is None or "state_dict" not in ckpt:
        raise LineageError(f"{path} is not a lightning_tru checkpoint (no '{CHECKPOINT_KEY}' entry); pass one written by train.py")
    if theirs != mine:
        diff = {k: (theirs.get(k), mine[k]) for k in mine if theirs.get(k) != mine[k]}
        raise LineageError(
            f"{path} holds another model: checkpoint vs config differ in {diff}; "
            "use the model and data config the checkpoint was trained with (purged data whose largest ids were "
            "deleted: pass --data.init_args.min_users / min_items)"
        )
    check_answered(ckpt, f"checkpoint {path}")
    lineage = ckpt.get(LINEAGE_KEY)
    if lineage is not None and datamodule is not None:
        check_lineage(lineage, datamodule.lineage(), f"checkpoint {path}")
    elif lineage is None and datamodule is not None:
        warnings.warn(
            f"checkpoint {path} records no training-data lineage (written before deletion tracking); it cannot be "
            "checked against the data and its deletion store: retrain it with this version to get one",
            stacklevel=2,
        )
    model.load_state_dict(ckpt["state_dict"])
    model.lineage = lineage
    return ckpt


# ------------------------------------------------------------------------------ answer
def _finite(obj: Any) -> Any:
    """``obj`` with non-finite floats as ``None`` (the ledger holds strict JSON)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _changed(before: dict[str, torch.Tensor], model: torch.nn.Module) -> bool:
    """Whether any parameter differs from ``before`` (buffers such as BatchNorm's running statistics move in every
    forward pass in train mode: they are no unlearning)."""
    return any(not torch.equal(before[n], p.detach().cpu()) for n, p in model.named_parameters() if n in before)


def _retrain(initial: Any, udm: UnlearningDataModule, rs: RetrainSettings) -> tuple[Any, dict[str, Any]]:
    return retrain(initial, udm.retained, rs.max_epochs, rs.patience, rs.monitor, seed=rs.seed,
                   strategy=rs.strategy, devices=rs.devices, accelerator=rs.accelerator)


def request_shadow(
    model: RecommenderModule,
    datamodule: RecDataModule,
    request: Union[ForgetRequest, ForgetSet],
    *,
    retrain_settings: Optional[RetrainSettings] = None,
    forget_batch_size: int = 2048,
    retain_batch_size: int = 2048,
    seed: int = 0,
    weights: Optional[dict[str, Any]] = None,
    **_: Any,
) -> Shadow:
    """Train the user-level MIA's shadow for ``request`` once (from the untrained ``model``, with
    Retrain's budget), to pass to :func:`answer_request` (``shadow=``) for every method answering it.
    Takes :func:`answer_request`'s keyword arguments (``**cli.job()``); ``model`` is not changed.
    ``weights``: the state dict of the shadow trained earlier for this request and seed (not trained again)."""
    rs = retrain_settings or RetrainSettings()
    udm = UnlearningDataModule(datamodule, request, forget_batch_size, retain_batch_size, seed=seed)
    return train_shadow(udm, copy.deepcopy(model), seed, rs.max_epochs, rs.patience, weights=weights)


def answer_request(
    model: RecommenderModule,
    datamodule: RecDataModule,
    request: Union[ForgetRequest, ForgetSet],
    checkpoint: PathLike,
    *,
    trainer: Optional[Trainer] = None,
    method: Literal["callback", "retrain"] = "callback",
    retrain_settings: Optional[RetrainSettings] = None,
    compare_retrain: bool = False,
    output_root: PathLike = "runs/unlearn",
    ledger: PathLike = "runs/deletion_ledger.jsonl",
    write_retained: Optional[PathLike] = None,
    forget_batch_size: int = 2048,
    retain_batch_size: int = 2048,
    seed: int = 0,
    audit: Optional[AuditSettings] = None,
    retrained: Optional[tuple[Any, dict[str, Any]]] = None,
    retrained_seed2: Optional[Any] = None,
    shadow: Optional[Shadow] = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Answer one deletion request end to end and return the report (``{}`` on ranks other than 0).

    Steps: validate the outputs; load ``checkpoint`` into ``model`` (weights only) against
    ``datamodule`` (its deletion store applied: a checkpoint that belongs to other data or another
    deletion state is refused); resolve ``request`` on the retained data; run the
    :class:`UnlearningCallback` of ``trainer`` (``method="callback"``) or Retrain; evaluate ``before``
    (deployed graph), the method and, with ``compare_retrain``, Retrain; publish
    ``<output_root>/<method>-<fp12>-<time>/{model.ckpt, report.json}``; record the request in the
    deletion store; append the ledger entry; optionally write the retained data (MMRec folder).

    Status: the request counts as answered (``status.target_reached``) only when the method changed
    the weights and its stopping rule was met (``UnlearningCallback.target_reached``: the forget pairs
    look like non-members as much as Retrain's would, or forget Recall@K at most its target with
    ``stop_rule="recall"``; Retrain: always). The floors Surgery and Reset have no stopping rule: they
    are reference points, never answers. Otherwise the report
    and the ledger say ``target_reached: false``, the store does not record
    the request, so it is never taken for a completed deletion; its ``model.ckpt`` is kept for
    inspection but refused by every loader (serving, a later request, ``train.py test``).

    Args:
        model: the freshly built module (seeded: its untrained state is Retrain's start).
        datamodule: the data the checkpoint was trained on, built with ``deletions=DIR``.
        request: the request (resolved on ``datamodule``) or an already resolved :class:`ForgetSet`.
        checkpoint: the trained or previously unlearned checkpoint (read only).
        trainer: the unlearning trainer holding exactly one :class:`UnlearningCallback`.
        method: ``"callback"`` or ``"retrain"``.
        retrain_settings: Retrain's budget and early stopping (default :class:`RetrainSettings`).
        compare_retrain: also run Retrain and report it beside the method.
        output_root, ledger: where run directories and the ledger go.
        write_retained: a new folder for the retained interactions (MMRec format), written when the
            request is answered.
        forget_batch_size, retain_batch_size, seed: the unlearning batches.
        audit: which audits go into ``report["audits"]`` (per column, :func:`~lightning_tru.audit.run_audits`'s
            schema), ``report["efficiency"]`` and the ledger line; default :class:`AuditSettings` (cheap ones on).
        retrained: ``(model, info)`` of a Retrain of this very request made earlier (e.g. by a benchmark
            comparing several methods): used as the Retrain column (``info["seconds"]``, ``info["epochs"]``)
            instead of training again; implies ``compare_retrain``.
        retrained_seed2: a Retrain with another seed, for the distance-to-Retrain noise floor (instead of
            ``audit.retrain_floor`` training one).
        shadow: the user-level MIA's shadow for this request and ``seed`` (:func:`request_shadow`),
            instead of ``audit.user_level`` training one (benchmarks comparing methods train it once).
        verbose: print the table.
    """
    if not isinstance(model, RecommenderModule):
        raise TypeError(
            f"answer_request takes a RecommenderModule (its checkpoints carry the signature and lineage the lifecycle "
            f"checks), got {type(model).__name__}; for your own model run the callback directly: "
            "Trainer(callbacks=[TRU()]).fit(UnlearningTask(model), datamodule=UnlearningDataModule(...)) (docs/dropin.md)"
        )
    if datamodule.deletions is None:
        raise ValueError(
            "the datamodule has no deletion store, so later runs would not honour this request: "
            "build it with deletions=DIR (CLI: --deletions runs/deletions)"
        )
    check_outputs(output_root, ledger, [checkpoint, datamodule.deletions.root], write_retained,
                  getattr(datamodule, "root", None))
    callbacks = [c for c in (trainer.callbacks if trainer is not None else []) if isinstance(c, UnlearningCallback)]
    if method == "callback" and len(callbacks) != 1:
        raise ValueError(
            f"method 'callback' needs exactly one UnlearningCallback in trainer.callbacks (found {len(callbacks)}); "
            "stack configs/unlearn/tru.yaml or pass --method retrain"
        )
    if method not in ("callback", "retrain"):
        raise ValueError(f"method={method!r}: choose 'callback' or 'retrain'")
    rs = retrain_settings or RetrainSettings()
    if rs.accelerator == "auto" and trainer is not None:  # Retrain on the unlearning run's device type
        rs = replace(rs, accelerator=trainer.strategy.root_device.type)
    distributed_retrain = rs.strategy not in ("auto", "single_device") and retrained is None and (
        method == "retrain" or compare_retrain)
    prior: Optional[tuple[Any, dict[str, Any]]] = None
    initial = copy.deepcopy(model)  # seeded like the original run: Retrain's starting point
    ckpt = load_trained_weights(model, checkpoint, datamodule)
    udm = UnlearningDataModule(datamodule, request, forget_batch_size, retain_batch_size, seed=seed)
    fs = udm.forget
    rank_zero_info(f"request {fs.fingerprint[:12]}: {fs.summary()}")
    is_zero = trainer.is_global_zero if trainer is not None else True
    columns: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    details: dict[str, Any] = {}
    au = audit or AuditSettings()
    if is_zero:
        columns["before"] = evaluate(model, udm, original_graph=True)
    deployed = copy.deepcopy(model) if au.enabled and is_zero else None  # the model as served before the request
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    efficiency: dict[str, dict[str, float]] = {}
    status: dict[str, Any]
    if method == "callback":
        assert trainer is not None
        cb = callbacks[0]
        name = type(cb).__name__
        weights = {k: v.detach().cpu().clone() for k, v in model.named_parameters()}
        if hasattr(cb, "use_initial"):  # Reset / TRU: deleted rows exactly as Retrain leaves them
            cb.use_initial(initial)
        model.train()
        with Efficiency(device) as eff:
            trainer.fit(UnlearningTask(model), datamodule=udm)
        seconds[name] = eff.seconds
        if distributed_retrain:  # every rank retrains before the process group goes
            with Efficiency(device) as eff_retrain:
                prior = _retrain(initial, udm, rs)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # the DDP run is over: rank 0 evaluates and writes alone, without collectives
            torch.distributed.destroy_process_group()
        if not is_zero:
            return {}
        details[name] = {"steps": cb.steps, "stopping_reason": cb.stopping_reason, "target_recall": cb.target_recall,
                         "timings": dict(cb.timings), **cb.extra_state()}
        changed = _changed(weights, model)
        final = cb.verify(model, udm)
        reached = changed and cb.target_reached
        reason = cb.stopping_reason if changed else (
            f"the weights did not change ({cb.steps} steps): nothing was unlearned ({name}: {cb.stopping_reason})")
        steps = cb.steps if cb.steps or not changed else 1  # a one-shot edit (a reset, a Newton step) is one update
        status = {"target_reached": bool(reached), "stopping_reason": reason, "steps": steps,
                  "stop_rule": cb.stop_rule, "target_recall": cb.target_recall, "expected_retrain_mia_auc": cb.reference,
                  "overshoot": cb.overshoot, **final}
        efficiency[name] = eff.result(cb.steps)
    else:
        name = "Retrain"
    compare_retrain = compare_retrain or retrained is not None
    if method == "retrain" or compare_retrain:
        if retrained is not None:
            retrained, info = retrained
            efficiency["Retrain"] = {"seconds": float(info["seconds"]), "steps": float(info.get("epochs", 0))}
        elif prior is not None:
            retrained, info = prior
            efficiency["Retrain"] = eff_retrain.result(info["epochs"])
        else:
            with Efficiency(device) as eff:
                retrained, info = _retrain(initial, udm, rs)
            efficiency["Retrain"] = eff.result(info["epochs"])
        seconds["Retrain"], details["Retrain"] = info["seconds"], info
        columns["Retrain"] = evaluate(retrained, udm)
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # a DDP Retrain is over
            rank = torch.distributed.get_rank()
            torch.distributed.destroy_process_group()
            if rank != 0:
                return {}
        if method == "retrain":
            model = retrained
            status = {"target_reached": True, "stopping_reason": "retrained from scratch on the retained data (exact)",
                      "steps": info["epochs"]}
    if method == "callback":
        columns[name] = evaluate(model, udm)
        columns = {"before": columns["before"], name: columns[name],
                   **{k: v for k, v in columns.items() if k not in ("before", name)}}
    audits: dict[str, Any] = {}
    if au.enabled:
        gold = retrained if (method == "retrain" or compare_retrain) else None
        second = retrained_seed2
        if second is None and au.retrain_floor and gold is not None:
            second, _ = retrain(initial, udm.retained, rs.max_epochs, rs.patience, rs.monitor, seed=int(rs.seed or 0) + 1,
                                accelerator=rs.accelerator)
        audits = run_audits(model, udm, retrain=gold if method != "retrain" else None, retrain_seed2=second,
                            before=deployed, name="method" if method == "retrain" else name,
                            user_level=au.user_level, initial=initial, seed=seed, shadow=shadow)
        if method == "retrain":  # the run's own model is the Retrain column
            audits["Retrain"] = audits.pop("method")
        if name in efficiency and "Retrain" in efficiency:
            efficiency[name].update(efficiency_ratio(efficiency[name], efficiency["Retrain"]))
    store = datamodule.deletions
    with store.locked():  # one run at a time from the chain check to the ledger line
        try:  # a request answered meanwhile by another run makes this one's data stale: never recorded
            store.check_chain(datamodule.deletion_chain)
        except LineageError as err:
            if status["target_reached"]:
                status = {**status, "target_reached": False, "stopping_reason": f"not recorded: {err}"}
        reached = bool(status["target_reached"])
        lineage = udm.retained.lineage()
        source = str(Path(checkpoint).resolve())
        report: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "method": name,
            "checkpoint": source,
            "request": fs.summary(),
            "status": status,
            "lineage": {"before": ckpt.get(LINEAGE_KEY), "after": lineage},
            "metrics": columns,
            "seconds": seconds,
            "details": details,
            "audits": audits,
            "efficiency": efficiency,
            "retrain_settings": asdict(rs) if (method == "retrain" or compare_retrain) else None,
        }
        entry = _finite({
            "time": report["time"], "fingerprint": fs.fingerprint, "method": name, "run_dir": "",
            "status": status, "request": fs.summary(), "chain": lineage["deletions"],
            "train_fingerprint": lineage["train_fingerprint"], "source_checkpoint": source,
            "metrics": columns[name], "seconds": seconds.get(name),
            "audits": {col: {"pair_mia_auc_rank": a.get("membership", {}).get("auc_rank"),
                             "pair_mia_flag": a.get("membership", {}).get("flag_rank"),
                             "global_exposure": a.get("global_exposure", {})} for col, a in audits.items()},
        })
        resolved_on = str(datamodule.lineage()["train_fingerprint"])
        if reached:  # the record's digest: `ledger verify --deletions` detects an edited or removed record
            entry["store_record"] = record_digest(store.as_record(fs, resolved_on))
        check_entry(entry)  # a ledger line that cannot be written fails here, before anything is recorded
        files = {"report.json": json.dumps(_finite(report), indent=2, default=str).encode()}  # strict JSON
        files["model.ckpt"] = checkpoint_bytes({
            "pytorch-lightning_version": lightning.__version__,  # loadable by Trainer.validate/test/predict too
            "epoch": 0,
            "global_step": 0,
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            CHECKPOINT_KEY: model.model_signature(),
            LINEAGE_KEY: lineage,
            "unlearning": {"fingerprint": fs.fingerprint, "method": name, "source": source, "status": status},
        })
        run_dir = publish_run_dir(Path(output_root), name.lower(), fs.fingerprint, files)
        report["run_dir"] = entry["run_dir"] = str(run_dir)
        if reached:  # the purged copy first: a failure there leaves the request unrecorded
            if write_retained is not None:
                write_mmrec(udm.retained.data, Path(write_retained), datamodule.data.name)
                report["retained_data"] = str(write_retained)
            store.record(fs, resolved_on=resolved_on)  # the chain was checked above, under the same lock
        append_entry(Path(ledger), entry)
    if verbose:
        print(format_table(columns, seconds))
        print(f"\n{'answered' if reached else 'NOT answered'} ({status['stopping_reason']}); run directory: {run_dir}")
        timings = details.get(name, {}).get("timings") or {}
        if timings.get("total"):
            print(f"{name}'s {timings['total']:.2f} s: " + ", ".join(
                f"{k} {v:.2f}" for k, v in timings.items() if k != "total"))
        if "retained_data" in report:
            d = udm.retained.data
            print(f"retained data written to {write_retained}: load it with --data.init_args.root {write_retained} "
                  f"--data.init_args.min_users {d.num_users} --data.init_args.min_items {d.num_items} (no store needed)")
    return report


# ------------------------------------------------------------------------------ serving
def read_user_ids(path: PathLike) -> list[int]:
    """User ids of a serving request: one integer per line, an optional ``userID`` header."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"users file {path} does not exist; write one user id per line")
    ids = []
    for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        s = line.strip()
        if not s or (n == 1 and s == "userID"):
            continue
        try:
            ids.append(int(s))
        except ValueError as e:
            raise DataFormatError(f"{path}: line {n}: {s!r} is not an integer user id") from e
    return ids


def check_recommend_output(output: PathLike, checkpoint: PathLike, datamodule: RecDataModule,
                           inputs: Sequence[PathLike] = ()) -> None:
    """Refuse a serving output that would replace an input: the checkpoint, a data file, the deletion store (or
    anything inside it), one of ``inputs`` (e.g. the users file), or an existing file that is not a recommendations
    file (a ledger, a config): only an earlier output of this kind is replaced.

    Raises:
        OutputPathError: the message names the input and the fix.
    """
    out = Path(output).expanduser().resolve()
    root = getattr(datamodule, "root", None)
    data_files = [p for p in Path(root).iterdir() if p.is_file()] if root and Path(root).is_dir() else []
    store = datamodule.deletions.root.resolve() if datamodule.deletions is not None else None
    for other in [checkpoint, *inputs, *data_files]:
        if out == Path(other).expanduser().resolve():
            raise OutputPathError(f"--output {output} is {other}, an input of this run; pass a new file such as recs.tsv")
    if store is not None and (out == store or store in out.parents):
        raise OutputPathError(f"--output {output} is inside the deletion store {store}; pass a new file such as recs.tsv")
    if out.is_dir():
        raise OutputPathError(f"--output {output} is a folder; pass a file such as {Path(output) / 'recs.tsv'}")
    if out.is_file() and out.stat().st_size:
        with out.open("rb") as fh:
            first = fh.readline().decode("utf-8", errors="replace").rstrip("\r\n")
        if first != RECS_HEADER:
            raise OutputPathError(
                f"--output {output} exists and is not a recommendations file (its first line is not {RECS_HEADER!r}); "
                "refusing to replace it: pass a new file such as recs.tsv"
            )


def recommend(
    model: RecommenderModule,
    datamodule: RecDataModule,
    checkpoint: PathLike,
    output: PathLike,
    k: int = 20,
    users: Optional[Sequence[int]] = None,
    accelerator: str = "auto",
) -> Path:
    """Write the top-``k`` items of ``users`` (default all) from ``checkpoint`` to ``output`` (TSV).

    The model propagates over the graph the checkpoint belongs to: ``datamodule``'s train split
    with its deletion store applied (a checkpoint of other data or another deletion state is
    refused); each user's train items are masked. See :class:`TopKWriter` for the format.
    """
    from lightning_tru.callbacks.topk_writer import TopKWriter

    check_recommend_output(output, checkpoint, datamodule)
    writer = TopKWriter(output, k)
    loader = datamodule.predict_dataloader(users)
    load_trained_weights(model, checkpoint, datamodule)
    model.attach(datamodule)
    trainer = Trainer(accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[writer])
    trainer.predict(model, dataloaders=loader, return_predictions=False)
    return Path(output)
