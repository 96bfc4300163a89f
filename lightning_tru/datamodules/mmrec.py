"""Loader for data sets in the MMRec folder layout.

A folder holds ``<name>.inter`` (tab-separated, header with ``userID``, ``itemID`` and
``x_label``), per-modality item features ``<modality>_feat.npy`` and optionally a folder of
precomputed item-item kNN graphs ``<modality>_adj_*.npz``.
"""
from __future__ import annotations

import io
import logging
import re
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from lightning_tru.datamodules.interactions import DataFormatError, InteractionData

__all__ = ["load_mmrec", "read_inter", "REQUIRED_COLUMNS"]

logger = logging.getLogger("lightning_tru")

REQUIRED_COLUMNS: tuple[str, str, str] = ("userID", "itemID", "x_label")
# An id column may span at most max(MAX_ID_RATIO * distinct ids, distinct ids + MAX_UNUSED_IDS) ids:
# beyond that the ids are not a contiguous 0 .. n-1 range (a stray id such as 10**12, or raw ids
# never remapped) and the model would allocate that many embedding rows.
MAX_ID_RATIO = 10
MAX_UNUSED_IDS = 100_000
_FEATURE_SUFFIX = "_feat.npy"
_GRAPH_INFIX = "_adj_"
_INT = re.compile(r"[+-]?[0-9]+")


def _listing(folder: Path, limit: int = 30) -> str:
    """Comma-separated names in ``folder`` (truncated) for error messages."""
    try:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    except OSError:
        return "<unreadable>"
    if not names:
        return "<empty folder>"
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _data_lines(lines: list[str]) -> list[tuple[int, str]]:
    """Non-blank lines after the header with their 1-based line numbers (header is line 1)."""
    return [(i + 1, line) for i, line in enumerate(lines) if i > 0 and line.strip()]


def _diagnose_parse(path: Path, lines: list[str], header: list[str], cols: dict[str, int], cause: Exception) -> DataFormatError:
    """Find the first line that ``np.loadtxt`` could not parse and describe it."""
    need = max(cols.values()) + 1
    for lineno, line in _data_lines(lines):
        fields = line.split("\t")
        if len(fields) < need:
            return DataFormatError(
                f"{path}: line {lineno} has {len(fields)} tab-separated field(s) but the header "
                f"{header} needs at least {need}; found {line!r}. Fix the row (fields must be separated by tabs)."
            )
        for name, c in cols.items():
            value = fields[c].strip()
            if not _INT.fullmatch(value):  # ASCII digits only, as numpy reads them (int() also takes "1_0", "١")
                return DataFormatError(
                    f"{path}: line {lineno}, column '{name}': {value!r} is not an integer. "
                    f"Ids and x_label must be non-negative integers; fix or remove the row."
                )
            if abs(int(value)) >= 2**63:
                return DataFormatError(
                    f"{path}: line {lineno}, column '{name}': {value!r} does not fit a 64-bit integer. "
                    f"Remap ids to contiguous integers 0 .. n-1."
                )
    return DataFormatError(f"{path}: could not be parsed ({cause}). Check that it is tab-separated with a header line.")


def _line_of_row(lines: list[str], row: int) -> int:
    """1-based line number of the ``row``-th (0-based) data row, skipping blank lines."""
    return _data_lines(lines)[row][0]


def _check_id_range(path: Path, lines: list[str], table: np.ndarray, known_items: int) -> None:
    """Refuse an id column whose largest id is far beyond its distinct ids (see ``MAX_ID_RATIO``).

    Item ids below ``known_items`` (rows of the feature files) are never stray.
    """
    for c, name in enumerate(("userID", "itemID")):
        ids = table[:, c]
        distinct = np.unique(ids)
        top = int(distinct[-1])
        limit = max(MAX_ID_RATIO * len(distinct), len(distinct) + MAX_UNUSED_IDS, known_items if c else 0)
        if top >= limit:
            row = int(np.argmax(ids))
            below = f"the next largest is {int(distinct[-2])}" if len(distinct) > 1 else "it is the only one"
            raise DataFormatError(
                f"{path}: line {_line_of_row(lines, row)}, column '{name}': id {top} is far beyond the other "
                f"{len(distinct) - 1} distinct {name} ids ({below}); the model would allocate {top + 1} embedding "
                f"rows. Remove the stray row or remap ids to contiguous integers 0 .. n-1."
            )


def read_inter(path: str | Path, known_items: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Parse an MMRec ``.inter`` file.

    Returns ``(pairs, split)``: ``(E, 2)`` int64 ``(user, item)`` and ``(E,)`` int8 x_label.
    Columns other than ``userID``, ``itemID`` and ``x_label`` are ignored; blank lines are
    skipped. Duplicated ``(user, item)`` rows are dropped (the first is kept) with a warning.
    An id column may span at most ``max(MAX_ID_RATIO * d, d + MAX_UNUSED_IDS)`` ids for ``d``
    distinct ids (item ids below ``known_items``, the feature rows, always pass): a stray
    huge id is an error naming its line, not an allocation failure later.

    Raises:
        DataFormatError: the file is missing or malformed; the message names the line and column.
    """
    path = Path(path)
    if not path.is_file():
        where = _listing(path.parent) if path.parent.is_dir() else "the folder does not exist"
        raise DataFormatError(f"{path}: interaction file not found. Folder contents: {where}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataFormatError(f"{path}: cannot be read as UTF-8 text ({e}); pass a tab-separated .inter file") from None
    lines = [line.rstrip("\r") for line in text.split("\n")]  # numpy's own line split: the numbers agree
    if lines and not lines[-1]:
        lines.pop()
    if not lines or not lines[0].strip():
        raise DataFormatError(
            f"{path}: line 1 must be a header naming the columns {', '.join(REQUIRED_COLUMNS)} (tab-separated); "
            f"found {'an empty file' if not lines else 'an empty line'}."
        )
    header = [h.strip() for h in lines[0].split("\t")]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        hint = ""
        if "\t" not in lines[0] and all(c in lines[0].split() for c in REQUIRED_COLUMNS):
            hint = " The header is not tab-separated: separate columns with tabs."
        raise DataFormatError(
            f"{path}: line 1 (header) lacks the required column(s) {missing}; header found: {header}. "
            f"Add a header line with {', '.join(REQUIRED_COLUMNS)} separated by tabs.{hint}"
        )
    for c in REQUIRED_COLUMNS:
        if header.count(c) > 1:
            raise DataFormatError(f"{path}: line 1 (header) names column '{c}' {header.count(c)} times; keep one.")
    cols = {c: header.index(c) for c in REQUIRED_COLUMNS}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "input contained no data" for a header-only file
            table = np.loadtxt(
                io.StringIO("\n".join(line for _, line in _data_lines(lines))),  # blank / whitespace lines skipped
                skiprows=0,
                delimiter="\t",
                usecols=tuple(cols.values()),
                dtype=np.int64,
                comments=None,
                ndmin=2,
            )
    except (ValueError, OverflowError) as e:
        raise _diagnose_parse(path, lines, header, cols, e) from None
    table = table.reshape(-1, 3)
    names = list(cols)
    negative = table[:, :2] < 0
    if negative.any():
        row, c = np.argwhere(negative)[0]
        raise DataFormatError(
            f"{path}: line {_line_of_row(lines, int(row))}, column '{names[c]}': negative id {table[row, c]}. "
            f"Ids must be >= 0; remap them to 0 .. n-1."
        )
    bad = (table[:, 2] < 0) | (table[:, 2] > 2)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataFormatError(
            f"{path}: line {_line_of_row(lines, row)}, column 'x_label': value {table[row, 2]} "
            f"({int(bad.sum())} row(s) in all) is not a split label. Use 0 (train), 1 (valid) or 2 (test)."
        )
    if len(table):
        _check_id_range(path, lines, table, known_items)
    pairs = np.ascontiguousarray(table[:, :2])
    split = table[:, 2].astype(np.int8)
    if len(pairs):
        width = int(pairs[:, 1].max()) + 1
        if (int(pairs[:, 0].max()) + 1) * width < 2**62:
            _, first, inverse = np.unique(pairs[:, 0] * width + pairs[:, 1], return_index=True, return_inverse=True)
        else:
            _, first, inverse = np.unique(pairs, axis=0, return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1)
        conflict = split != split[first[inverse]]  # a pair in two splits: train/test leakage, never resolved silently
        if conflict.any():
            row = int(np.flatnonzero(conflict)[0])
            other = int(first[inverse[row]])
            raise DataFormatError(
                f"{path}: line {_line_of_row(lines, row)}: pair (userID {pairs[row, 0]}, itemID {pairs[row, 1]}) has "
                f"x_label {split[row]}, but line {_line_of_row(lines, other)} gives it x_label {split[other]} "
                f"({int(conflict.sum())} such row(s) in all): an interaction in two splits leaks between training "
                f"and evaluation. Keep one row per pair."
            )
        if len(first) < len(pairs):
            keep = np.sort(first)
            warnings.warn(
                f"{path}: dropped {len(pairs) - len(keep)} duplicated (userID, itemID) row(s), keeping the first "
                f"occurrence of each pair.",
                stacklevel=2,
            )
            pairs, split = pairs[keep], split[keep]
    return pairs, split


def _resolve(root: Path, p: str | Path) -> Path:
    """``p`` relative to ``root`` unless absolute."""
    return root / Path(p).expanduser()


def _feature_files(root: Path, modalities: Sequence[str] | Mapping[str, str] | None) -> dict[str, Path]:
    """Modality name -> feature file, in the order the user asked for (sorted when discovered)."""
    if modalities is None:
        found = sorted(root.glob("*" + _FEATURE_SUFFIX))
        return {p.name[: -len(_FEATURE_SUFFIX)]: p for p in found if p.is_file()}
    if isinstance(modalities, Mapping):
        items = [(str(m), _resolve(root, f)) for m, f in modalities.items()]
    elif isinstance(modalities, str):
        raise DataFormatError(
            f"modalities={modalities!r} is a string; pass a list of names such as [{modalities!r}] "
            f"or a mapping name -> file"
        )
    else:
        items = [(str(m), root / f"{m}{_FEATURE_SUFFIX}") for m in modalities]
    out: dict[str, Path] = {}
    for m, f in items:
        if not m:
            raise DataFormatError(f"{root}: empty modality name; give every modality a non-empty name")
        if m in out:
            raise DataFormatError(f"{root}: modality '{m}' is listed twice; list each modality once")
        out[m] = f
    return out


def _load_feature(path: Path, modality: str, strict: bool) -> np.ndarray:
    """One ``(rows, d)`` float32 feature matrix, checked for shape and finiteness."""
    if not path.is_file():
        where = _listing(path.parent) if path.parent.is_dir() else "the folder does not exist"
        raise DataFormatError(
            f"{path}: feature file for modality '{modality}' not found. Folder contents: {where}. "
            f"Pass modalities=[...] or a mapping name -> file to choose existing files."
        )
    try:
        raw = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataFormatError(f"{path}: not a readable numeric .npy array ({e}); save features with np.save") from None
    if not isinstance(raw, np.ndarray) or not (np.issubdtype(raw.dtype, np.number) or raw.dtype == np.bool_) \
            or np.issubdtype(raw.dtype, np.complexfloating):
        raise DataFormatError(f"{path}: dtype {getattr(raw, 'dtype', type(raw))} is not numeric; save a float matrix")
    if raw.ndim != 2:
        raise DataFormatError(
            f"{path}: feature '{modality}' has shape {raw.shape} ({raw.ndim}-D); expected a 2-D (num_items, dim) "
            f"matrix with one row per item id. Reshape it before saving."
        )
    if raw.shape[1] == 0:
        raise DataFormatError(
            f"{path}: feature '{modality}' has shape {raw.shape}: no feature columns. Export at least one "
            f"dimension per item, or leave the modality out (modalities=[...] names the ones to load)."
        )
    feat = np.ascontiguousarray(raw, dtype=np.float32)
    bad_rows = ~np.isfinite(feat).all(axis=1)
    if bad_rows.any():
        n, first = int(bad_rows.sum()), int(np.flatnonzero(bad_rows)[0])
        msg = (
            f"{path}: feature '{modality}' has NaN or inf values in {n} row(s) (first at row {first}"
            f"{', after casting to float32' if np.isfinite(raw).all() else ''}). "
            f"Clean or impute these rows (e.g. with the column mean or zeros)"
        )
        if strict:
            raise DataFormatError(msg + ", or pass strict_features=False to replace them with zeros.")
        warnings.warn(msg + "; replaced non-finite values with 0 because strict_features=False.", stacklevel=3)
        feat = np.nan_to_num(feat, nan=0.0, posinf=0.0, neginf=0.0)
    return feat


def _graph_files(
    root: Path, knn_graphs: str | Path | Mapping[str, str], wanted: set[str] | None
) -> dict[str, Path]:
    """Modality name -> kNN graph file, from a folder or an explicit mapping."""
    if isinstance(knn_graphs, Mapping):
        unknown = sorted(str(m) for m in knn_graphs if wanted is not None and str(m) not in wanted)
        if unknown:
            raise DataFormatError(
                f"knn_graphs names the modalities {unknown}, which have no features in {root} (modalities: "
                f"{sorted(wanted or [])}); a graph is used beside its modality's features: fix the names"
            )
        return {str(m): _resolve(root, f) for m, f in knn_graphs.items()}
    folder = _resolve(root, knn_graphs)
    if not folder.is_dir():
        raise DataFormatError(
            f"{folder}: kNN graph folder not found. Contents of {root}: {_listing(root)}. "
            f"Pass the folder holding <modality>{_GRAPH_INFIX}*.npz files, or a mapping modality -> .npz file."
        )
    by_modality: dict[str, list[Path]] = {}
    for p in sorted(folder.glob(f"*{_GRAPH_INFIX}*.npz")):
        m = p.name.split(_GRAPH_INFIX, 1)[0]
        if m and (wanted is None or m in wanted):
            by_modality.setdefault(m, []).append(p)
    if not by_modality:
        which = "" if wanted is None else f" for modalities {sorted(wanted)}"
        raise DataFormatError(
            f"{folder}: no <modality>{_GRAPH_INFIX}*.npz kNN graph files{which}. Folder contents: {_listing(folder)}"
        )
    for m, ps in by_modality.items():
        if len(ps) > 1:
            raise DataFormatError(
                f"{folder}: several kNN graphs for modality '{m}': {[p.name for p in ps]}. "
                f"Pass knn_graphs as a mapping modality -> file to choose one."
            )
    return {m: ps[0] for m, ps in by_modality.items()}


def _load_graph(path: Path, modality: str, num_items: int) -> sp.csr_matrix:
    """One float32 CSR ``(num_items, num_items)`` item-item graph."""
    if not path.is_file():
        where = _listing(path.parent) if path.parent.is_dir() else "the folder does not exist"
        raise DataFormatError(f"{path}: kNN graph for modality '{modality}' not found. Folder contents: {where}")
    try:
        g = sp.load_npz(path)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise DataFormatError(f"{path}: not a scipy sparse .npz matrix ({e}); save it with scipy.sparse.save_npz") from None
    if g.shape != (num_items, num_items):
        raise DataFormatError(
            f"{path}: kNN graph for modality '{modality}' has shape {g.shape}; expected ({num_items}, {num_items}), "
            f"one row and column per item id. Rebuild the graph for this item set."
        )
    g = sp.csr_matrix(g, dtype=np.float32)
    if not np.isfinite(g.data).all():
        raise DataFormatError(f"{path}: kNN graph for modality '{modality}' has NaN or inf entries; rebuild it.")
    return g


def load_mmrec(
    root: str | Path,
    name: str | None = None,
    modalities: Sequence[str] | Mapping[str, str] | None = None,
    knn_graphs: str | Path | Mapping[str, str] | None = None,
    strict_features: bool = True,
) -> InteractionData:
    """Load an MMRec-layout folder into :class:`InteractionData`.

    Args:
        root: the data set folder.
        name: base name of ``<name>.inter``; default the single ``*.inter`` file in ``root``.
        modalities: ``None`` loads every ``<m>_feat.npy`` (sorted by name); a list of names loads
            those ``<m>_feat.npy``; a mapping name -> file (relative to ``root`` or absolute)
            loads explicit files. Features are cast to float32.
        knn_graphs: a folder (relative to ``root`` or absolute) of ``<m>_adj_*.npz`` graphs, or
            a mapping modality -> ``.npz`` file. From a folder, only graphs of the requested
            modalities are loaded when ``modalities`` is given.
        strict_features: raise on NaN/inf feature values; when ``False`` they are replaced by
            zeros with a warning.

    ``num_users`` is the largest user id + 1. ``num_items`` is the largest item id + 1, or
    the number of feature rows when the features also cover items absent from every split.

    Raises:
        DataFormatError: missing or malformed files; the message names the file and the fix.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        parent = root.parent
        hint = f" Contents of {parent}: {_listing(parent)}" if parent.is_dir() else ""
        raise DataFormatError(f"{root}: data folder not found; pass the folder holding <name>.inter.{hint}")
    if name is None:
        candidates = sorted(p for p in root.glob("*.inter") if p.is_file())
        if len(candidates) != 1:
            what = "no .inter file" if not candidates else f"{len(candidates)} .inter files {[p.name for p in candidates]}"
            raise DataFormatError(
                f"{root}: found {what}; pass name=... to choose the interaction file. Folder contents: {_listing(root)}"
            )
        inter = candidates[0]
        name = inter.name[: -len(".inter")]
    else:
        name = name[: -len(".inter")] if name.endswith(".inter") else name
        inter = root / f"{name}.inter"
    files = _feature_files(root, modalities)
    features = {m: _load_feature(f, m, strict_features) for m, f in files.items()}
    pairs, split = read_inter(inter, known_items=max((f.shape[0] for f in features.values()), default=0))
    if not (split == 0).any():
        raise DataFormatError(
            f"{inter}: the train split is empty ({len(split)} row(s), none with x_label 0). "
            f"Label training interactions with x_label 0."
        )
    num_users = int(pairs[:, 0].max()) + 1
    id_items = int(pairs[:, 1].max()) + 1

    for m, f in features.items():
        if f.shape[0] < id_items:
            raise DataFormatError(
                f"{files[m]}: feature '{m}' has {f.shape[0]} rows but {inter.name} uses item ids up to "
                f"{id_items - 1} ({id_items} items). Provide one feature row per item id."
            )
    rows = {f.shape[0] for f in features.values()}
    if len(rows) > 1:
        shapes = ", ".join(f"{files[m].name}: {f.shape[0]} rows" for m, f in features.items())
        raise DataFormatError(
            f"{root}: feature files disagree on the number of items ({shapes}). Give every modality one row per item."
        )
    num_items = max([id_items, *rows])
    if num_items > id_items:
        logger.info("%s: %d item(s) have features but no interaction in any split", name, num_items - id_items)

    graphs: dict[str, sp.csr_matrix] = {}
    if knn_graphs is not None:
        # beside features, graphs of the loaded modalities only (another name is a typo no model would use);
        # graphs alone (no feature files) are kept for models that use them so
        for m, f in _graph_files(root, knn_graphs, set(files) or None).items():
            graphs[m] = _load_graph(f, m, num_items)

    data = InteractionData(
        num_users=num_users,
        num_items=num_items,
        pairs=pairs,
        split=split,
        features=features,
        item_graphs=graphs,
        name=name,
    )
    s = data.summary()
    logger.info(
        "%s: %d users, %d items, %d/%d/%d train/valid/test interactions, features %s, kNN graphs %s",
        name, s["users"], s["items"], s["train"], s["valid"], s["test"], data.feature_dims, sorted(graphs),
    )
    if s["users_without_train"]:
        logger.info("%s: %d user(s) have no train interaction (only valid/test)", name, s["users_without_train"])
    if s["items_without_train"]:
        logger.info("%s: %d item(s) never occur in train", name, s["items_without_train"])
    return data
