"""The in-memory interaction data every datamodule produces."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

TRAIN, VALID, TEST = 0, 1, 2
SPLITS = {"train": TRAIN, "valid": VALID, "test": TEST}


class DataFormatError(ValueError):
    """Input data is malformed; the message names the file, the position and the fix."""


@dataclass
class InteractionData:
    """Users, items, split interactions and per-item modality features.

    Args:
        num_users: number of user ids; ids are ``0 .. num_users - 1``.
        num_items: number of item ids; ids are ``0 .. num_items - 1``.
        pairs: ``(E, 2)`` int64 ``(user, item)`` interactions.
        split: ``(E,)`` int8 split label per pair: 0 train, 1 valid, 2 test.
        features: modality name -> ``(num_items, d_m)`` float32 features.
        item_graphs: optional modality name -> ``(num_items, num_items)`` normalised
            item-item graph (scipy CSR) precomputed from that modality's features.
        name: human-readable data set name, used in reports.
    """

    num_users: int
    num_items: int
    pairs: np.ndarray
    split: np.ndarray
    features: dict[str, np.ndarray] = field(default_factory=dict)
    item_graphs: dict[str, sp.csr_matrix] = field(default_factory=dict)
    name: str = "data"

    def __post_init__(self) -> None:
        self.pairs = np.ascontiguousarray(self.pairs, dtype=np.int64).reshape(-1, 2)
        self.split = np.ascontiguousarray(self.split, dtype=np.int8).reshape(-1)
        if len(self.split) != len(self.pairs):
            raise DataFormatError(
                f"{self.name}: {len(self.pairs)} pairs but {len(self.split)} split labels; pass one label per pair"
            )
        if len(self.pairs):
            if self.pairs.min() < 0:
                raise DataFormatError(f"{self.name}: negative user or item id; ids must be >= 0")
            for c, (what, n) in enumerate((("user", self.num_users), ("item", self.num_items))):
                top = int(self.pairs[:, c].max())
                if top >= n:
                    raise DataFormatError(
                        f"{self.name}: {what} id {top} (pair {int(np.argmax(self.pairs[:, c]))}) exceeds "
                        f"num_{what}s={n}; ids must be 0 .. num_{what}s - 1: remap them or raise num_{what}s"
                    )
        for m, f in self.features.items():
            if f.ndim != 2 or f.shape[0] != self.num_items or f.shape[1] == 0:
                raise DataFormatError(
                    f"{self.name}: feature '{m}' has shape {tuple(f.shape)}; expected ({self.num_items}, d) with "
                    "d >= 1, one row per item id (leave a modality without features out)"
                )
        if not (self.split == TRAIN).any():
            raise DataFormatError(f"{self.name}: the train split is empty; label training rows with x_label 0")

    def split_pairs(self, split: str | int) -> np.ndarray:
        """``(E_s, 2)`` pairs of one split (``'train'``, ``'valid'``, ``'test'`` or 0/1/2)."""
        code = SPLITS[split] if isinstance(split, str) else int(split)
        return self.pairs[self.split == code]

    def csr(self, *splits: str | int) -> sp.csr_matrix:
        """Binary ``(num_users, num_items)`` CSR matrix of the union of the given splits."""
        codes = [SPLITS[s] if isinstance(s, str) else int(s) for s in splits]
        p = self.pairs[np.isin(self.split, codes)]
        m = sp.csr_matrix(
            (np.ones(len(p), dtype=np.float32), (p[:, 0], p[:, 1])), shape=(self.num_users, self.num_items)
        )
        m.sum_duplicates()
        m.data[:] = 1.0
        return m

    @property
    def feature_dims(self) -> dict[str, int]:
        return {m: int(f.shape[1]) for m, f in self.features.items()}

    def summary(self) -> dict[str, int]:
        """Counts a loader reports: sizes per split, users without train rows, items never trained on."""
        train = self.split_pairs(TRAIN)
        return {
            "users": self.num_users,
            "items": self.num_items,
            "train": int((self.split == TRAIN).sum()),
            "valid": int((self.split == VALID).sum()),
            "test": int((self.split == TEST).sum()),
            "users_without_train": int(self.num_users - len(np.unique(train[:, 0]))),
            "items_without_train": int(self.num_items - len(np.unique(train[:, 1]))),
        }
