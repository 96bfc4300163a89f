r"""The deletion ledger: a tamper-evident, append-only JSON-lines file, one line per deletion request.

Each line is the canonical JSON (sorted keys, no spaces, ASCII, no NaN) of one entry:

* the caller's fields, which must include ``status`` (see :func:`check_status`);
* ``seq``: the 0-based position of the line;
* ``prev_hash``: SHA-256 (hex) of the previous line's bytes without its newline, ``"0" * 64`` for the first;
* ``hash``: SHA-256 (hex) of the canonical JSON of the entry without ``hash``.

.. math::
    h_n = \mathrm{SHA256}(\mathrm{json}(e_n \setminus \{hash\})), \qquad
    e_n.\mathrm{prev\_hash} = \mathrm{SHA256}(\mathrm{line}_{n-1})

Editing, inserting, removing or reordering a line breaks the chain at that line or the next one
(:func:`verify`). Truncating the file to a prefix keeps a valid chain: the chain proves what a
ledger says, not that it is complete (keep a copy of the last ``hash`` elsewhere for that).

Crash safety: an entry is written with one ``write`` of the whole line, then ``fsync``. A crash
mid-write leaves a *torn* tail: bytes after the last newline. :func:`verify` ignores it and reports its size,
and the next :func:`append_entry` truncates it and records ``torn_tail = {"bytes", "sha256"}`` of what it
removed in the new entry. A tail that is a whole valid next entry without its newline is an entry (never
removed): the next append completes its line. Appends hold an exclusive ``flock`` (POSIX) and refuse a ledger whose
complete lines do not verify, so nothing is ever appended to a broken chain.

``python -m lightning_tru.ledger verify LEDGER [--deletions DIR]`` prints a verdict and exits 0 (intact) or 1;
with ``--deletions`` every answered request must have its unedited record in the deletion store (:func:`check_store`).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: appends are not locked against concurrent writers
    fcntl = None  # type: ignore[assignment]

GENESIS = "0" * 64
RESERVED = ("seq", "prev_hash", "hash", "torn_tail")
STATUS_FIELDS = {"target_reached": bool, "stopping_reason": str, "steps": int}

PathLike = Union[str, os.PathLike]


class LedgerError(ValueError):
    """A ledger that cannot be written or trusted, or an entry that cannot be recorded."""


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify`.

    Attributes:
        ok: every complete line is a valid entry and the hash chain is intact.
        entries: number of valid entries before the first bad line (all of them when ``ok``).
        bad_line: 1-based number of the first bad line, ``None`` when ``ok``.
        reason: why that line is bad (empty when ``ok``).
        torn_bytes: size of a torn tail after the last newline (a crashed append), 0 if none.
    """

    path: str
    ok: bool
    entries: int
    bad_line: Optional[int] = None
    reason: str = ""
    torn_bytes: int = 0

    def __str__(self) -> str:
        if not self.ok:
            return f"TAMPERED {self.path}: line {self.bad_line}: {self.reason} ({self.entries} valid entries before it)"
        torn = (f"; a torn last line of {self.torn_bytes} bytes (a crashed append) follows, the next append "
                "truncates and records it") if self.torn_bytes else ""
        return f"OK {self.path}: {self.entries} entries, hash chain intact{torn}"


def _canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_status(status: Any) -> None:
    """Refuse a ``status`` that does not say what the run achieved.

    Schema: a dict with ``target_reached: bool``, ``stopping_reason: str`` (non-empty) and
    ``steps: int`` (>= 0; update steps, or epochs for Retrain); further keys are kept as given.
    ``target_reached=True`` needs ``steps >= 1``: a run that did nothing is never recorded as a
    completed deletion (record it with ``target_reached=False``).
    """
    if not isinstance(status, dict):
        raise LedgerError(
            f"entry['status'] must be a dict with {sorted(STATUS_FIELDS)}, got {type(status).__name__}; "
            "e.g. {'target_reached': True, 'stopping_reason': 'target reached after 12 steps', 'steps': 12}"
        )
    missing = [k for k in STATUS_FIELDS if k not in status]
    if missing:
        raise LedgerError(f"entry['status'] lacks {missing}; it needs {sorted(STATUS_FIELDS)}")
    for key, kind in STATUS_FIELDS.items():
        value = status[key]
        # bool is an int subclass: a steps of True or a target_reached of 1 is a bug in the caller
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise LedgerError(f"entry['status']['{key}'] must be {kind.__name__}, got {value!r}")
    if not status["stopping_reason"].strip():
        raise LedgerError("entry['status']['stopping_reason'] is empty; say why the run stopped")
    if status["steps"] < 0:
        raise LedgerError(f"entry['status']['steps'] must be >= 0, got {status['steps']}")
    if status["target_reached"] and status["steps"] < 1:
        raise LedgerError(
            "entry['status'] says target_reached with 0 steps: a run that did nothing is not a completed "
            "deletion; record target_reached=False"
        )


def _check_line(line: bytes, seq: int, prev_hash: str) -> tuple[Optional[dict[str, Any]], str]:
    """Parse and check one complete line; return ``(entry, "")`` or ``(None, why)``."""
    try:
        entry = json.loads(line.decode("ascii"), parse_constant=lambda c: math.nan)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, f"not valid JSON ({err})"
    if not isinstance(entry, dict):
        return None, "not a JSON object"
    for key in ("seq", "prev_hash", "hash"):
        if key not in entry:
            return None, f"no '{key}' field"
    try:
        if _canonical(entry) != line:
            return None, "not in canonical form (edited by hand?)"
    except (TypeError, ValueError) as err:
        return None, f"not strict JSON ({err})"
    if entry["seq"] != seq:
        return None, f"seq is {entry['seq']!r}, expected {seq} (a line was removed, inserted or moved)"
    if entry["prev_hash"] != prev_hash:
        return None, "prev_hash does not match the previous line (a line before it was edited, removed or moved)"
    body = {k: v for k, v in entry.items() if k != "hash"}
    if entry["hash"] != _sha256(_canonical(body)):
        return None, "hash does not match its content (the line was edited)"
    try:
        check_status(entry.get("status"))
    except LedgerError as err:
        return None, str(err)
    return entry, ""


def _scan(data: bytes) -> tuple[list[dict[str, Any]], Optional[int], str, int]:
    """``(entries, bad_line, reason, torn_bytes)`` of the ledger bytes ``data``.

    A tail after the last newline that is itself a valid next entry (only its newline missing: a crash between the
    line and its last byte, or an edit) is an entry, never torn: an append completes it instead of removing it."""
    end = data.rfind(b"\n") + 1  # bytes [end:] are a torn tail
    lines = data[:end].split(b"\n")[:-1] if end else []
    entries: list[dict[str, Any]] = []
    prev = GENESIS
    for n, line in enumerate(lines):
        entry, why = _check_line(line, n, prev)
        if entry is None:
            return entries, n + 1, why, len(data) - end
        entries.append(entry)
        prev = _sha256(line)
    if end < len(data):
        entry, _ = _check_line(data[end:], len(lines), prev)
        if entry is not None:
            return [*entries, entry], None, "", 0
    return entries, None, "", len(data) - end


def verify(path: PathLike) -> VerifyResult:
    """Check every complete line of the ledger at ``path`` and its hash chain (a missing file is an error)."""
    return _verify(Path(path))[0]


def _verify(p: Path) -> tuple[VerifyResult, list[dict[str, Any]]]:
    if p.is_dir():
        raise LedgerError(f"ledger {p} is a directory; pass a file path such as {p / 'deletion_ledger.jsonl'}")
    if not p.is_file():
        raise FileNotFoundError(f"ledger {p} does not exist")
    entries, bad, why, torn = _scan(p.read_bytes())
    return VerifyResult(str(p), bad is None, len(entries), bad, why, torn), entries


def read_entries(path: PathLike, missing_ok: bool = True) -> list[dict[str, Any]]:
    """The entries of the ledger at ``path`` (a torn tail ignored), after verifying the chain.

    A ledger that fails :func:`verify` raises :class:`LedgerError`: it is never read as truth.
    A missing file is an empty ledger when ``missing_ok``, else :class:`FileNotFoundError`.
    """
    p = Path(path)
    if not p.exists() and missing_ok:
        return []
    res, entries = _verify(p)
    if not res.ok:
        raise LedgerError(f"{res}; restore the ledger from a backup, it cannot be trusted")
    return entries


def check_ledger_path(path: PathLike, forbidden: Iterable[PathLike] = ()) -> Path:
    """Validate a ledger path before any work starts; return it resolved.

    Refused: a directory; any path in ``forbidden`` (the input checkpoint, the data files),
    compared after ``resolve()`` so symlinks and relative paths cannot slip through; a parent
    that is a file; an existing file that is not an intact ledger (see :func:`verify`).
    """
    p = Path(path)
    if p.is_dir():
        raise LedgerError(f"ledger {p} is a directory; pass a file path such as {p / 'deletion_ledger.jsonl'}")
    resolved = p.resolve()
    for other in forbidden:
        if resolved == Path(other).resolve():
            raise LedgerError(
                f"ledger {p} is {other}, an input of this run; the ledger must be its own file, "
                "e.g. runs/deletion_ledger.jsonl"
            )
    for parent in resolved.parents:
        if parent.exists():
            if not parent.is_dir():
                raise LedgerError(f"ledger {p}: {parent} is a file, not a directory; choose another ledger path")
            break
    if resolved.is_file() and resolved.stat().st_size:
        res = verify(resolved)
        if not res.ok:
            raise LedgerError(f"{res}; pass another --ledger path or restore this one from a backup")
    return resolved


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - directories cannot be opened on some platforms
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_entry(entry: Any) -> None:
    """Refuse an entry :func:`append_entry` could not write: not a dict, a reserved key, no valid ``status``
    (:func:`check_status`), or not strict JSON. Callers check before the work they record is committed."""
    if not isinstance(entry, dict):
        raise LedgerError(f"a ledger entry is a dict, got {type(entry).__name__}")
    clash = [k for k in RESERVED if k in entry]
    if clash:
        raise LedgerError(f"entry uses the reserved keys {clash}; the ledger writes {list(RESERVED)} itself")
    if "status" not in entry:
        raise LedgerError(
            f"entry has no 'status'; it needs {sorted(STATUS_FIELDS)} so that a run that did nothing is never "
            "recorded as a completed deletion"
        )
    check_status(entry["status"])
    try:
        _canonical(entry)
    except (TypeError, ValueError) as err:
        raise LedgerError(f"entry is not strict JSON: {err}; convert paths to str and drop NaN/inf values") from None


def append_entry(path: PathLike, entry: dict[str, Any]) -> dict[str, Any]:
    """Append ``entry`` to the ledger at ``path`` (created if missing); return the entry as written.

    The entry must be a JSON-serialisable dict with a valid ``status`` (:func:`check_status`) and
    without the reserved keys ``seq``, ``prev_hash``, ``hash``, ``torn_tail``. The existing lines
    are verified first (a broken ledger raises and is left as it is); a torn tail is truncated and
    recorded as ``torn_tail``. The line is flushed and ``fsync``-ed before returning.
    """
    check_entry(entry)
    p = Path(path)
    if p.is_dir():
        raise LedgerError(f"ledger {p} is a directory; pass a file path such as {p / 'deletion_ledger.jsonl'}")
    p.parent.mkdir(parents=True, exist_ok=True)
    created = not p.exists()
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        data = b"".join(chunks)
        entries, bad, why, torn = _scan(data)
        if bad is not None:
            raise LedgerError(
                f"ledger {p} is broken at line {bad}: {why}; nothing was appended. Check it with "
                f"`python -m lightning_tru.ledger verify {p}` and restore it from a backup"
            )
        out = dict(entry)
        good = len(data) - torn
        if torn:
            out["torn_tail"] = {"bytes": torn, "sha256": _sha256(data[good:])}
        unterminated = bool(entries) and not data[:good].endswith(b"\n")  # a whole last entry, newline missing
        out["seq"] = len(entries)
        last = data[:good] if unterminated else data[: good - 1]
        out["prev_hash"] = _sha256(last.rsplit(b"\n", 1)[-1]) if entries else GENESIS
        out["hash"] = _sha256(_canonical(out))
        line = (b"\n" if unterminated else b"") + _canonical(out) + b"\n"
        if torn:
            os.ftruncate(fd, good)
        os.lseek(fd, good, os.SEEK_SET)
        written = 0
        while written < len(line):
            written += os.write(fd, line[written:])
        os.fsync(fd)
    finally:
        os.close(fd)  # releases the lock
    if created:
        _fsync_dir(p.parent)
    return out


def check_store(entries: Sequence[dict[str, Any]], store: PathLike) -> list[str]:
    """What a deletion store and the ledger ``entries`` disagree on (empty: they agree).

    Every answered entry (``status.target_reached``) must have its record in ``store``, with the same chain
    position (its ``chain`` a prefix of the store's order) and, where the entry holds one, the record's digest
    (``store_record``: regime, users, items, resolved-on data; :func:`~lightning_tru.datamodules.deletions.record_digest`);
    every record must be answered by some entry. A removed or edited record would let deleted data come back.
    """
    from lightning_tru.datamodules.deletions import DeletionStore, LineageError, record_digest

    try:
        records = DeletionStore(store).entries()
    except LineageError as err:
        return [str(err)]
    order = [d.fingerprint for d in records]
    by_fp = {d.fingerprint: d for d in records}
    problems: list[str] = []
    answered = set()
    for e in entries:
        if not (e.get("status") or {}).get("target_reached"):
            continue
        fp = str(e.get("fingerprint"))
        answered.add(fp)
        d = by_fp.get(fp)
        if d is None:
            problems.append(f"entry {e.get('seq')}: request {fp[:12]} was answered but has no record in {store}: "
                            "its data would come back; restore the record from a backup")
            continue
        chain = list(e.get("chain") or [])
        if chain and order[: len(chain)] != chain:
            problems.append(f"entry {e.get('seq')}: request {fp[:12]} is at another position of the store's chain "
                            "than the ledger says (a record was removed or re-ordered)")
        if "store_record" in e and e["store_record"] != record_digest(d):
            problems.append(f"entry {e.get('seq')}: the record of request {fp[:12]} in {store} was edited "
                            "(regime, users, items or resolved-on data differ from what was answered)")
    problems += [f"record {f[:12]} in {store} is answered by no ledger entry" for f in order if f not in answered]
    return problems


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m lightning_tru.ledger verify LEDGER [--deletions DIR]``: print a verdict; 0 if intact, else 1.
    With ``--deletions`` the deletion store is checked against the ledger too (:func:`check_store`)."""
    parser = argparse.ArgumentParser(prog="python -m lightning_tru.ledger", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("verify", help="check the hash chain of a ledger (and its deletion store)")
    cmd.add_argument("ledger", type=Path)
    cmd.add_argument("--deletions", type=Path, default=None, help="the deletion store to check against the ledger")
    args = parser.parse_args(argv)
    try:
        res, entries = _verify(args.ledger)
    except (OSError, LedgerError) as err:
        print(f"ERROR {args.ledger}: {err}")
        return 1
    print(res)
    if not res.ok:
        return 1
    if args.deletions is not None:
        problems = check_store(entries, args.deletions)
        for p in problems:
            print(f"MISMATCH {args.deletions}: {p}")
        if problems:
            return 1
        print(f"OK {args.deletions}: {len([e for e in entries if (e.get('status') or {}).get('target_reached')])} "
              "answered requests, each recorded as answered")
    return 0


if __name__ == "__main__":
    sys.exit(main())
