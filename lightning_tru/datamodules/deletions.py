r"""Deletion state: the answered requests of a data set, applied whenever that data set is loaded.

A :class:`DeletionStore` is a folder (next to the ledger, ``runs/deletions`` by default) holding
one ``<fingerprint>.npz`` per answered request: its forgotten train pairs, regime, users, items,
its position in the chain and the fingerprint of the training data it was resolved against.
Every datamodule built with ``deletions=DIR`` removes them on load (:meth:`DeletionStore.apply`),
so no later run (training, unlearning, Retrain, evaluation, serving) sees a deleted pair again.

A model's *lineage* is ``{"train_fingerprint": ..., "deletions": [fingerprints]}``: the training
data its weights were fitted to and the requests they answer. :func:`check_lineage` refuses a
checkpoint whose data is not the data at hand.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from lightning_tru.datamodules.forget import ForgetSet, fingerprint
from lightning_tru.datamodules.interactions import TRAIN, InteractionData
from lightning_tru.io import atomic_write

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: records are not locked against concurrent runs
    fcntl = None  # type: ignore[assignment]

LINEAGE_KEY = "lightning_tru_lineage"


class LineageError(ValueError):
    """A checkpoint or deletion store does not belong to the data at hand; the message says how to fix it."""


def data_fingerprint(data: InteractionData) -> str:
    """SHA-256 of ``(num_users, num_items)`` and the sorted unique train pairs: the training data's identity."""
    p = np.unique(data.split_pairs(TRAIN), axis=0)
    h = hashlib.sha256(np.asarray([data.num_users, data.num_items], dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(p, dtype="<i8").tobytes())
    return h.hexdigest()


def deletion_mask(
    data: InteractionData, forget_pairs: np.ndarray, regime: str, users: np.ndarray, items: np.ndarray
) -> np.ndarray:
    """``(E,)`` rows of ``data`` a request deletes: its train pairs, plus every held-out row of a
    forgotten user (``user`` regime) or item (``item`` regime); interaction-wise requests keep the
    held-out rows."""
    key = data.pairs[:, 0] * data.num_items + data.pairs[:, 1]
    fp = np.asarray(forget_pairs, dtype=np.int64).reshape(-1, 2)
    fk = np.unique(fp[:, 0] * data.num_items + fp[:, 1])  # membership by binary search: O(E log F), no sort of E
    hit = fk[np.searchsorted(fk, key).clip(max=len(fk) - 1)] == key if len(fk) else np.zeros(len(key), dtype=bool)
    drop = (data.split == TRAIN) & hit
    if regime == "user":
        drop |= np.isin(data.pairs[:, 0], users, kind="table")  # a lookup table over the ids: O(E + U)
    elif regime == "item":
        drop |= np.isin(data.pairs[:, 1], items, kind="table")
    return drop


def subset(data: InteractionData, keep: np.ndarray, name: str) -> InteractionData:
    """``data`` restricted to the rows ``keep`` (same ids, features and item graphs)."""
    return InteractionData(
        num_users=data.num_users,
        num_items=data.num_items,
        pairs=data.pairs[keep],
        split=data.split[keep],
        features=data.features,
        item_graphs=data.item_graphs,
        name=name,
    )


@dataclass(frozen=True)
class Deletion:
    """One answered request as stored: forgotten train pairs, regime, users, items, chain position
    and the train fingerprint of the data it was resolved against (``resolved_on``)."""

    fingerprint: str
    regime: str
    forget_pairs: np.ndarray
    users: np.ndarray
    items: np.ndarray
    position: int
    resolved_on: str


def record_digest(d: Deletion) -> str:
    """SHA-256 of a record's fields (fingerprint, regime, users, items, resolved-on data; the pairs are the
    fingerprint): the ledger keeps it, so an edited record is detected (``ledger verify --deletions``)."""
    h = hashlib.sha256(f"{d.fingerprint}|{d.regime}|{d.resolved_on}|".encode())
    for ids in (d.users, d.items):
        h.update(np.ascontiguousarray(np.unique(ids), dtype="<i8").tobytes() + b"|")
    return h.hexdigest()


def _short(fps: list[str]) -> str:
    return "[" + ", ".join(f[:12] for f in fps) + "]"


class DeletionStore:
    """The folder of answered deletion requests of one data set (see the module docstring).

    Args:
        root: the folder; created on the first :meth:`record`.
    """

    def __init__(self, root: Union[str, Path]) -> None:
        self.root = Path(root).expanduser()
        if self.root.exists() and not self.root.is_dir():
            raise LineageError(f"deletion store {self.root} is a file; pass a folder (e.g. runs/deletions)")

    def __repr__(self) -> str:
        return f"DeletionStore({str(self.root)!r})"

    def entries(self) -> list[Deletion]:
        """The recorded requests in the order they were answered."""
        if not self.root.is_dir():
            return []
        out = []
        for path in sorted(self.root.glob("*.npz")):
            try:
                with np.load(path, allow_pickle=False) as z:
                    d = Deletion(
                        fingerprint=str(z["fingerprint"]), regime=str(z["regime"]),
                        forget_pairs=z["forget_pairs"].astype(np.int64).reshape(-1, 2),
                        users=z["users"].astype(np.int64), items=z["items"].astype(np.int64),
                        position=int(z["position"]), resolved_on=str(z["resolved_on"]),
                    )
            except (OSError, ValueError, KeyError, EOFError) as e:
                raise LineageError(f"{path}: unreadable deletion record ({e}); restore it from a backup") from e
            if path.stem != d.fingerprint or fingerprint(d.forget_pairs) != d.fingerprint:
                raise LineageError(
                    f"{path}: the stored pairs do not match the record's fingerprint {d.fingerprint[:12]}; "
                    "the deletion store was edited or damaged: restore it from a backup"
                )
            out.append(d)
        return sorted(out, key=lambda d: (d.position, d.fingerprint))

    def fingerprints(self) -> list[str]:
        return [d.fingerprint for d in self.entries()]

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold an exclusive ``flock`` on ``.<store>.lock`` beside the store (POSIX; the store itself is created
        only by a record): one run at a time reads the chain and records."""
        self.root.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root.parent / f".{self.root.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def check_chain(self, chain: Sequence[str]) -> None:
        """Refuse to record on top of a stale view: ``chain`` (the requests applied when the run loaded the data)
        must still be every recorded request, in order. Two requests answered at the same time from the same
        checkpoint would otherwise both be recorded, each resolved on data the other no longer matches.

        Raises:
            LineageError: other requests were recorded meanwhile (or records were removed).
        """
        now = self.fingerprints()
        if list(chain) != now:
            new = [f for f in now if f not in chain]
            gone = [f for f in chain if f not in now]
            what = (f"the requests {_short(new)} were answered meanwhile" if new else "") + \
                   ("; " if new and gone else "") + (f"the records {_short(gone)} were removed" if gone else "")
            raise LineageError(
                f"deletion store {self.root} changed while this request was answered ({what}); its result is "
                "stale: answer it again from the checkpoint of the latest recorded request (its run_dir in the ledger)"
            )

    @staticmethod
    def as_record(forget: ForgetSet, resolved_on: str, position: int = -1) -> Deletion:
        """The record :meth:`record` writes for ``forget`` (``position`` is set when written)."""
        return Deletion(fingerprint=forget.fingerprint, regime=forget.regime,
                        forget_pairs=forget.forget_pairs.astype(np.int64), users=forget.purged_users.astype(np.int64),
                        items=forget.purged_items.astype(np.int64), position=position, resolved_on=resolved_on)

    def record(self, forget: ForgetSet, resolved_on: str) -> Path:
        """Add an answered request (atomically: a temporary file and a rename), as :meth:`as_record` builds it.
        Recording the same request twice is a no-op. Concurrent runs hold :meth:`locked` around
        :meth:`check_chain` and the record (``lifecycle.answer_request`` does)."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f"{forget.fingerprint}.npz"
        if path.exists():
            return path
        d = self.as_record(forget, resolved_on, position=len(self.entries()))
        atomic_write(path, lambda fh: np.savez(
            fh, fingerprint=np.array(d.fingerprint), regime=np.array(d.regime), forget_pairs=d.forget_pairs,
            users=d.users, items=d.items, position=np.array(d.position), resolved_on=np.array(d.resolved_on),
        ))
        return path

    def apply(self, data: InteractionData) -> tuple[InteractionData, list[str]]:
        """``data`` without every recorded deletion, and the chain of applied fingerprints.

        Each request is checked against the data it was resolved against: a request that still
        removes rows must find exactly that data (else the store belongs to another data set); one
        that removes nothing was already purged (data written by ``--write_retained``).

        Raises:
            LineageError: the store was recorded for other data.
        """
        chain: list[str] = []
        for d in self.entries():
            if d.forget_pairs.size and (
                d.forget_pairs[:, 0].max() >= data.num_users or d.forget_pairs[:, 1].max() >= data.num_items
            ):
                raise LineageError(
                    f"deletion store {self.root}: request {d.fingerprint[:12]} names ids outside {data.name}'s "
                    f"{data.num_users} users x {data.num_items} items; it was recorded for another data set: "
                    "pass that data set or another --deletions folder"
                )
            drop = deletion_mask(data, d.forget_pairs, d.regime, d.users, d.items)
            if drop.any():
                if data_fingerprint(data) != d.resolved_on:
                    raise LineageError(
                        f"deletion store {self.root}: request {d.fingerprint[:12]} was answered on other training data "
                        f"than {data.name} after the requests {_short(chain)}; pass the data set it was recorded for, "
                        "or another --deletions folder for this one"
                    )
                data = subset(data, ~drop, data.name)
            chain.append(d.fingerprint)
        return data, chain


def check_store_applied(data: InteractionData, store: Union[str, Path], applied: bool) -> None:
    """Refuse to load ``data`` without the deletion store ``store`` (the default folder a run may have recorded
    requests in) when that store holds requests answered on exactly this data: training, evaluating or serving
    on it would bring their deleted interactions back. ``applied``: the store was passed (nothing to check).

    Raises:
        LineageError: the store holds requests of this data; the message says to pass it.
    """
    root = Path(store).expanduser()
    if applied or not root.is_dir():
        return
    try:
        entries = DeletionStore(root).entries()
    except LineageError:  # a damaged store is reported by the runs that use it
        return
    here = data_fingerprint(data) if entries else ""
    mine = [d.fingerprint for d in entries if d.resolved_on == here]
    if mine:
        raise LineageError(
            f"the deletion store {root} holds {len(mine)} request(s) answered on this data ({_short(mine)}) but it is "
            f"not applied: their deleted interactions would come back. Pass --deletions {root} (the data set's store), "
            "or load the purged data written by --write_retained"
        )


def check_lineage(recorded: dict[str, Any], current: dict[str, Any], source: str) -> None:
    """Refuse a model whose lineage ``recorded`` does not match the data's lineage ``current``.

    Equal training-data fingerprints are accepted whatever the chains say (purged data needs no
    store). Otherwise the message names what differs and how to fix it.

    Raises:
        LineageError: the model belongs to other data.
    """
    if recorded.get("train_fingerprint") == current.get("train_fingerprint"):
        return
    mine, data = list(recorded.get("deletions", [])), list(current.get("deletions", []))
    missing = [f for f in mine if f not in data]
    pending = [f for f in data if f not in mine]
    if missing:
        raise LineageError(
            f"{source} has answered the deletion requests {_short(missing)}, but the data still holds their pairs: "
            "load the data with the deletion store they were recorded in (--deletions DIR) or load the purged "
            "data written by --write_retained"
        )
    if pending:
        raise LineageError(
            f"{source} predates the deletion requests {_short(pending)} of the deletion store: it still holds "
            "their data. Use the checkpoint written by the latest request (its run_dir in the ledger)"
        )
    raise LineageError(
        f"{source} was trained on other data of the same shape (train fingerprint "
        f"{str(recorded.get('train_fingerprint'))[:12]}, the data's {str(current.get('train_fingerprint'))[:12]}): "
        "pass the data set and deletion store it was trained with"
    )


def check_answered(checkpoint: dict[str, Any], source: str) -> None:
    """Refuse the checkpoint of an unlearning run that did not answer its request (``not_reached``):
    its weights are neither the old deletion state nor the new one.

    Raises:
        LineageError: the run's status says the target was not reached.
    """
    run = checkpoint.get("unlearning") or {}
    status = run.get("status") or {}
    if status.get("target_reached") is False:
        raise LineageError(
            f"{source} is the output of a run that did NOT answer deletion request {str(run.get('fingerprint'))[:12]} "
            f"({status.get('stopping_reason')}); it is kept for inspection only. Answer the request again from "
            f"{run.get('source')} with a larger budget (trainer.max_epochs, lr) or --method retrain"
        )
