r"""Deletion requests: which interactions to forget, resolved against the training data."""
from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union

import numpy as np

from lightning_tru.datamodules.interactions import TRAIN, DataFormatError, InteractionData

Regime = Literal["user", "item", "interaction"]
Selection = Literal["random", "core", "edge"]
REGIMES: tuple[str, ...] = ("user", "item", "interaction")
SELECTIONS: tuple[str, ...] = ("random", "core", "edge")
JSON_KEYS: tuple[str, ...] = ("users", "items", "pairs")
CSV_COLUMNS: tuple[str, ...] = ("userID", "itemID")
_ID = re.compile(r"[+-]?[0-9]+")


class ForgetRequestError(ValueError):
    """A deletion request that cannot be honoured as given; the message says why and what to do."""


@dataclass(frozen=True)
class ForgetSet:
    """A resolved deletion request.

    Attributes:
        forget_pairs: ``(F, 2)`` sorted unique (user, item) train interactions to forget.
        retain_pairs: ``(R, 2)`` the remaining train interactions.
        users: forgetting users (unique, sorted).
        items: forgotten items (unique, sorted).
        fingerprint: SHA-256 of the sorted forget pairs: a stable id of the request.
        regime: the regime actually resolved; an explicit file counts as ``user`` (user ids),
            ``item`` (item ids) or ``interaction`` (pairs), whatever ``ForgetRequest.regime`` says.
        skipped: requested pairs that were not train interactions and were skipped.
        source: ``"regime"`` (drawn by share / selection / seed) or ``"file"`` (an explicit file).
        share, selection, seed: how a ``"regime"`` request was drawn; ``None`` for a file.
        file: the request file of a ``"file"`` request; ``None`` otherwise.
        named_users, named_items: the ids a file request names (users / items form), also those without a
            train interaction left (e.g. an earlier interaction-wise request took them all): their held-out
            rows are deleted with the request (:attr:`purged_users`); ``None`` for other requests.
    """

    forget_pairs: np.ndarray
    retain_pairs: np.ndarray
    users: np.ndarray
    items: np.ndarray
    fingerprint: str
    regime: str
    skipped: int = 0
    source: Literal["regime", "file"] = "regime"
    share: Optional[float] = None
    selection: Optional[str] = None
    seed: Optional[int] = None
    file: Optional[str] = None
    named_users: Optional[np.ndarray] = None
    named_items: Optional[np.ndarray] = None

    @property
    def purged_users(self) -> np.ndarray:
        """Users whose held-out rows a user-wise request deletes: the forgetting users and every named one."""
        return self.users if self.named_users is None else np.union1d(self.users, self.named_users)

    @property
    def purged_items(self) -> np.ndarray:
        """Items whose held-out rows an item-wise request deletes: the forgotten items and every named one."""
        return self.items if self.named_items is None else np.union1d(self.items, self.named_items)

    def summary(self) -> dict[str, object]:
        """What the request resolved to: only the fields that apply to its ``source``.

        A ``"regime"`` request reports ``share`` / ``selection`` / ``seed``; a ``"file"`` request
        reports ``file`` and ``skipped`` instead (a file has no share or selection).
        """
        out: dict[str, object] = {
            "fingerprint": self.fingerprint,
            "source": self.source,
            "regime": self.regime,
            "forget_pairs": int(len(self.forget_pairs)),
            "retain_pairs": int(len(self.retain_pairs)),
            "users": int(len(self.users)),
            "items": int(len(self.items)),
        }
        if self.source == "file":
            out.update(file=self.file, skipped=self.skipped)
        else:
            out.update(share=self.share, selection=self.selection, seed=self.seed)
        return out

    @classmethod
    def split(cls, train: np.ndarray, mask: np.ndarray, regime: str, **provenance: Any) -> "ForgetSet":
        """The set that forgets the train pairs under ``mask`` and retains the others; ``provenance``
        are the remaining fields (``source``, ``share``, ``file``, ...)."""
        forget = np.unique(train[mask], axis=0)
        return cls(
            forget_pairs=forget,
            retain_pairs=train[~mask],
            users=np.unique(forget[:, 0]),
            items=np.unique(forget[:, 1]),
            fingerprint=fingerprint(forget),
            regime=regime,
            **provenance,
        )


def fingerprint(pairs: np.ndarray) -> str:
    """SHA-256 hex digest of the lexicographically sorted ``(F, 2)`` int64 pairs."""
    p = np.unique(np.asarray(pairs, dtype=np.int64).reshape(-1, 2), axis=0)
    return hashlib.sha256(np.ascontiguousarray(p, dtype="<i8").tobytes()).hexdigest()


class ForgetRequest:
    r"""A deletion request: a regime with a share and a selection, or an explicit file.

    Regimes (CURE4Rec's): ``user`` forgets all train interactions of ``share`` of the users
    that have train interactions; ``item`` all interactions with ``share`` of the trained items
    (the items stay in the catalogue); ``interaction`` a random ``share`` of train pairs.
    Selection: ``random``, ``core`` (most active users / most popular items) or ``edge``
    (least active / least popular). ``interaction`` supports ``random`` only.

    A file (``.csv`` with a header of ``userID`` and/or ``itemID``, or ``.json`` holding
    ``{"users": [...]}``, ``{"items": [...]}`` or ``{"pairs": [[u, i], ...]}``) overrides the regime,
    share and selection. Any other column or key (a typo such as ``itemid`` or ``"itmes"``) is an
    error, never a silent change of regime.

    Args:
        regime: ``"user"``, ``"item"`` or ``"interaction"``.
        share: fraction in (0, 1) of users / items / interactions.
        selection: ``"random"``, ``"core"`` or ``"edge"``.
        file: explicit request file.
        on_missing: for explicit pairs that are not train interactions: ``"error"`` or ``"skip"``.
        seed: seed of the random selection.
    """

    def __init__(
        self,
        regime: Regime = "user",
        share: float = 0.05,
        selection: Selection = "random",
        file: Optional[Union[str, Path]] = None,
        on_missing: Literal["error", "skip"] = "error",
        seed: int = 0,
    ) -> None:
        if regime not in REGIMES:
            raise ForgetRequestError(f"unknown regime {regime!r}; choose one of {REGIMES}")
        if selection not in SELECTIONS:
            raise ForgetRequestError(f"unknown selection {selection!r}; choose one of {SELECTIONS}")
        if regime == "interaction" and selection != "random":
            raise ForgetRequestError("the interaction regime supports selection='random' only")
        if not 0.0 < share < 1.0:
            raise ForgetRequestError(f"share={share} must be in (0, 1), e.g. 0.05 for 5%")
        if on_missing not in ("error", "skip"):
            raise ForgetRequestError(f"on_missing={on_missing!r} must be 'error' or 'skip'")
        self.regime, self.share, self.selection = regime, share, selection
        self.file = Path(file) if file is not None else None
        self.on_missing, self.seed = on_missing, seed

    # --------------------------------------------------------------------------- resolve
    def resolve(self, data: InteractionData) -> ForgetSet:
        """Turn the request into forget / retain pairs of ``data``'s train split."""
        train = data.split_pairs(TRAIN)
        named: dict[str, np.ndarray] = {}
        if self.file is not None:
            mask, skipped, regime = self._from_file(data, train, named)
        else:
            mask, skipped, regime = self._from_regime(data, train), 0, self.regime
        if not mask.any():
            col = {"named_users": 0, "named_items": 1}
            held = {k: np.intersect1d(v, data.pairs[data.split != TRAIN, col[k]]) for k, v in named.items()}
            held = {k: v for k, v in held.items() if len(v)}
            if held:
                (k, v), = held.items()
                raise ForgetRequestError(
                    f"the request selects no train interaction: the {k.split('_')[1]} {v[:5].tolist()} have none (never "
                    "had one, or earlier requests deleted them), only held-out rows, which no model was fitted to; name "
                    "them together with ids that have train rows, and their held-out rows go with that request"
                )
            if self.file is not None:
                raise ForgetRequestError(
                    f"{self.file}: the request selects no train interaction (an empty list, or ids without train "
                    "rows); name the users, items or pairs to delete"
                )
            raise ForgetRequestError("the request selects no train interaction; raise the share")
        if mask.all():
            raise ForgetRequestError(
                f"the request would delete all {len(train)} train interactions of {data.name}; "
                "nothing would be left to learn from: lower the share"
            )
        return ForgetSet.split(
            train,
            mask,
            regime,
            skipped=skipped,
            **named,
            **(
                {"source": "file", "file": str(self.file)}
                if self.file is not None
                else {"source": "regime", "share": self.share, "selection": self.selection, "seed": self.seed}
            ),
        )

    def _pick(self, ids: np.ndarray, counts: np.ndarray) -> np.ndarray:
        n = max(1, int(round(self.share * len(ids))))
        rng = np.random.default_rng(self.seed)
        if self.selection == "random":
            return rng.choice(ids, size=n, replace=False)
        tie = rng.random(len(ids))  # random tie-break among equal counts
        order = np.lexsort((tie, -counts if self.selection == "core" else counts))
        return ids[order[:n]]

    def _from_regime(self, data: InteractionData, train: np.ndarray) -> np.ndarray:
        if self.regime == "interaction":
            rng = np.random.default_rng(self.seed)
            n = max(1, int(round(self.share * len(train))))
            mask = np.zeros(len(train), dtype=bool)
            mask[rng.choice(len(train), size=n, replace=False)] = True
            return mask
        col = 0 if self.regime == "user" else 1
        n = data.num_users if col == 0 else data.num_items
        counts = np.bincount(train[:, col], minlength=n)  # O(E), no sort: the ids with train rows, in order
        ids = np.flatnonzero(counts)
        chosen = np.zeros(n, dtype=bool)
        chosen[self._pick(ids, counts[ids])] = True
        return chosen[train[:, col]]

    def _from_file(
        self, data: InteractionData, train: np.ndarray, named: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, int, str]:
        """The mask of the file's train pairs, the skipped pairs and the regime; ``named`` receives the named ids."""
        users, items, pairs = _read_request_file(self.file)  # type: ignore[arg-type]
        f = self.file
        for name, ids, n in (("user", users, data.num_users), ("item", items, data.num_items)):
            if ids is not None and len(ids) and (ids.min() < 0 or ids.max() >= n):
                bad = ids[(ids < 0) | (ids >= n)]
                raise ForgetRequestError(
                    f"{f}: unknown {name} ids {bad[:5].tolist()} ({len(bad)} in all); valid ids are 0..{n - 1}"
                )
        if pairs is not None:
            bad = pairs[(pairs < 0).any(axis=1) | (pairs[:, 0] >= data.num_users) | (pairs[:, 1] >= data.num_items)]
            if len(bad):
                raise ForgetRequestError(
                    f"{f}: pairs with unknown ids {bad[:5].tolist()} ({len(bad)} in all); "
                    f"valid users 0..{data.num_users - 1}, items 0..{data.num_items - 1}"
                )
            key = train[:, 0] * data.num_items + train[:, 1]
            want = np.unique(pairs[:, 0] * data.num_items + pairs[:, 1])
            present = np.isin(want, key)
            missing = int((~present).sum())
            if missing and self.on_missing == "error":
                raise ForgetRequestError(
                    f"{f}: {missing} of {len(want)} pairs are not train interactions; "
                    "fix the file or pass on_missing='skip' to ignore them"
                )
            return np.isin(key, want), missing, "interaction"
        if users is not None:
            named["named_users"] = np.unique(users)
            return np.isin(train[:, 0], users), 0, "user"
        named["named_items"] = np.unique(items)  # type: ignore[arg-type]
        return np.isin(train[:, 1], items), 0, "item"  # type: ignore[arg-type]


def _read_request_file(path: Path) -> tuple[Optional[np.ndarray], Optional[np.ndarray], Optional[np.ndarray]]:
    """``(users, items, pairs)`` of a request file; exactly one of the forms is filled in."""
    if not path.is_file():
        raise ForgetRequestError(f"request file {path} does not exist")
    if path.suffix.lower() == ".json":

        def no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
            keys = [k for k, _ in pairs]
            twice = sorted({k for k in keys if keys.count(k) > 1})
            if twice:  # json keeps the last one: the first list would be dropped without a word
                raise ForgetRequestError(f'{path}: key(s) {twice} given more than once; merge their lists into one')
            return dict(pairs)

        try:
            obj = json.loads(path.read_text(encoding="utf-8-sig"), object_pairs_hook=no_repeats)
        except UnicodeDecodeError as e:
            raise ForgetRequestError(f"{path}: not UTF-8 text ({e}); save the request file as UTF-8") from None
        except json.JSONDecodeError as e:
            raise ForgetRequestError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
        if not isinstance(obj, dict):
            raise ForgetRequestError(f'{path}: expected an object with one of the keys {list(JSON_KEYS)}')
        unknown = [k for k in obj if k not in JSON_KEYS]
        if unknown:
            raise ForgetRequestError(
                f"{path}: unknown key(s) {unknown}; the allowed keys are {list(JSON_KEYS)} (exactly one)"
            )
        keys = sorted(obj)
        if not keys:
            raise ForgetRequestError(f'{path}: expected an object with one of the keys {list(JSON_KEYS)}')
        if len(keys) > 1:
            raise ForgetRequestError(f'{path}: give exactly one of "users", "items" or "pairs", got {keys}')
        key, value = keys[0], obj[keys[0]]
        if key == "pairs":
            if not isinstance(value, list) or not all(isinstance(r, list) and len(r) == 2 for r in value):
                raise ForgetRequestError(f'{path}: "pairs" must be a list of [user, item] pairs')
            value = [x for r in value for x in r]
        if not isinstance(value, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in value):
            raise ForgetRequestError(f'{path}: "{key}" ids must be integers')
        huge = [x for x in value if abs(x) >= 2**63]
        if huge:
            raise ForgetRequestError(f'{path}: "{key}" id {huge[0]} does not fit a 64-bit integer; it names no id')
        ids = np.asarray(value, dtype=np.int64)
        if key == "pairs":
            return None, None, ids.reshape(-1, 2)
        return (ids, None, None) if key == "users" else (None, ids, None)
    if path.suffix.lower() not in (".csv", ".tsv", ".txt"):
        raise ForgetRequestError(f"{path}: unsupported request file type; use .csv or .json")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            sample = fh.read(2048)
            if not sample.strip():
                raise ForgetRequestError(f"{path}: empty request file; write a header naming userID and/or itemID")
            fh.seek(0)
            delim = "\t" if "\t" in sample.splitlines()[0] else ","
            rows = list(csv.reader(fh, delimiter=delim))
    except UnicodeDecodeError as e:
        raise ForgetRequestError(f"{path}: not UTF-8 text ({e}); save the request file as UTF-8") from None
    if not rows or not any(c.strip() for c in rows[0]):
        raise ForgetRequestError(f"{path}: line 1 must be the header naming userID and/or itemID; found an empty line")
    header = [h.strip() for h in rows[0]]
    unknown = [h for h in header if h not in CSV_COLUMNS]
    if unknown:
        raise ForgetRequestError(
            f"{path}: line 1: unknown column(s) {unknown} in header {header}; the allowed columns are "
            f"{list(CSV_COLUMNS)} (userID: users, itemID: items, both: pairs), spelled exactly"
        )
    if len(set(header)) != len(header):
        raise ForgetRequestError(f"{path}: line 1: header {header} repeats a column; name each of {list(CSV_COLUMNS)} once")
    cols = {h: k for k, h in enumerate(header)}
    out: dict[str, list[int]] = {"userID": [], "itemID": []}
    for line, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):  # blank line
            continue
        if len(row) > len(header):  # e.g. "userID" over "0,5": the 5 would be dropped, the whole user deleted
            raise ForgetRequestError(
                f"{path}: line {line} has {len(row)} fields but the header {header} names {len(header)}; "
                "name every column in the header (userID,itemID for pairs)"
            )
        for name in ("userID", "itemID"):
            if name in cols:
                value = row[cols[name]].strip() if cols[name] < len(row) else ""
                if not _ID.fullmatch(value):  # ASCII digits only (int() also reads "1_0" as 10)
                    raise ForgetRequestError(f"{path}: line {line}, column {name}: {value!r} is not an integer id")
                if abs(int(value)) >= 2**63:
                    raise ForgetRequestError(f"{path}: line {line}, column {name}: {value} does not fit a 64-bit integer")
                out[name].append(int(value))
    u = np.asarray(out["userID"], dtype=np.int64) if "userID" in cols else None
    i = np.asarray(out["itemID"], dtype=np.int64) if "itemID" in cols else None
    if u is not None and i is not None:
        return None, None, np.stack([u, i], axis=1)
    return u, i, None
