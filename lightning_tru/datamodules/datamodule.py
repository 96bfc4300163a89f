"""LightningDataModules: BPR training batches and full-ranking evaluation batches."""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional, Union

import numpy as np
import scipy.sparse as sp
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_tru.datamodules.forget import ForgetSet
from lightning_tru.datamodules.interactions import TRAIN, InteractionData
from lightning_tru.datamodules.mmrec import load_mmrec
from lightning_tru.datamodules.synthetic import make_synthetic

log = logging.getLogger("lightning_tru")


def _passthrough(batch: object) -> object:
    return batch


class BPRDataset(Dataset):
    r"""Training pairs; a batch of indices becomes ``(users, pos, neg)`` with one uniform negative each.

    Negatives are drawn uniformly from the items outside the user's training set, vectorised:
    draw all, then redraw the collisions (membership by binary search in the sorted keys
    :math:`u \cdot I + i`). Uses torch's global RNG, so ``seed_everything`` makes it reproducible.
    """

    def __init__(self, pairs: np.ndarray, num_items: int) -> None:
        self.users = torch.from_numpy(np.ascontiguousarray(pairs[:, 0]))
        self.items = torch.from_numpy(np.ascontiguousarray(pairs[:, 1]))
        self.num_items = num_items
        self.keys = torch.sort(self.users * num_items + self.items).values

    def __len__(self) -> int:
        return len(self.users)

    def sample_negatives(self, users: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """One uniform item per user outside that user's training set."""
        neg = torch.randint(self.num_items, users.shape, generator=generator)
        todo = torch.arange(len(users))
        for _ in range(100):
            key = users[todo] * self.num_items + neg[todo]
            pos = torch.searchsorted(self.keys, key).clamp_max(len(self.keys) - 1)
            todo = todo[self.keys[pos] == key]
            if len(todo) == 0:
                break
            neg[todo] = torch.randint(self.num_items, (len(todo),), generator=generator)
        return neg

    def __getitems__(self, idx: list[int]) -> tuple[Tensor, Tensor, Tensor]:
        i = torch.as_tensor(idx, dtype=torch.long)
        users = self.users[i]
        return users, self.items[i], self.sample_negatives(users)

    def __getitem__(self, idx: int) -> tuple[Tensor, Tensor, Tensor]:
        u, p, n = self.__getitems__([idx])
        return u[0], p[0], n[0]


class RankingDataset(Dataset):
    """Evaluation users; a batch becomes ``(users (B,), exclude (B, I) bool, target (B, I) bool)``."""

    def __init__(self, exclude: sp.csr_matrix, target: sp.csr_matrix) -> None:
        self.exclude = exclude.tocsr()
        self.target = target.tocsr()
        self.users = np.flatnonzero(np.diff(self.target.indptr) > 0)

    def __len__(self) -> int:
        return len(self.users)

    @staticmethod
    def dense(m: sp.csr_matrix) -> Tensor:
        """``(rows, I)`` bool tensor of a binary CSR matrix."""
        out = np.zeros(m.shape, dtype=bool)
        rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
        out[rows, m.indices] = True
        return torch.from_numpy(out)

    def __getitems__(self, idx: list[int]) -> tuple[Tensor, Tensor, Tensor]:
        users = self.users[np.asarray(idx, dtype=np.int64)]
        return torch.from_numpy(users), self.dense(self.exclude[users]), self.dense(self.target[users])

    def __getitem__(self, idx: int) -> tuple[Tensor, Tensor, Tensor]:
        u, e, t = self.__getitems__([idx])
        return u[0], e[0], t[0]


class RecDataModule(LightningDataModule):
    """Base datamodule over an :class:`InteractionData`.

    Sizes (``num_users``, ``num_items``, ``feature_dims``) are known right after ``__init__`` so
    LightningCLI links them into the model. Valid ranking masks train items; test ranking masks
    train and valid items (MMRec's protocol).

    Args:
        data: the interactions (subclasses build it from their own arguments).
        batch_size: BPR batch size.
        eval_batch_size: users per full-ranking batch.
        num_workers: DataLoader workers.
    """

    def __init__(
        self, data: InteractionData, batch_size: int = 2048, eval_batch_size: int = 1024, num_workers: int = 0
    ) -> None:
        super().__init__()
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError(f"batch_size={batch_size} and eval_batch_size={eval_batch_size} must be >= 1")
        self.data = data
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        log.info("%s: %s", data.name, data.summary())

    @property
    def num_users(self) -> int:
        return self.data.num_users

    @property
    def num_items(self) -> int:
        return self.data.num_items

    @property
    def feature_dims(self) -> dict[str, int]:
        return self.data.feature_dims

    def train_pairs(self) -> np.ndarray:
        return self.data.split_pairs(TRAIN)

    def train_edge_index(self) -> Tensor:
        """``(2, E)`` training (user, item) edges: the graph the backbone propagates over."""
        return torch.from_numpy(np.ascontiguousarray(self.train_pairs().T))

    def feature_tensors(self) -> dict[str, Tensor]:
        return {m: torch.from_numpy(f) for m, f in self.data.features.items()}

    def item_graphs(self) -> dict[str, sp.csr_matrix]:
        return dict(self.data.item_graphs)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            BPRDataset(self.train_pairs(), self.num_items),
            batch_size=self.batch_size,
            shuffle=True,
            collate_fn=_passthrough,
            num_workers=self.num_workers,
        )

    def _ranking_loader(self, exclude: sp.csr_matrix, target: sp.csr_matrix) -> DataLoader:
        return DataLoader(
            RankingDataset(exclude, target),
            batch_size=self.eval_batch_size,
            collate_fn=_passthrough,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        return self._ranking_loader(self.data.csr("train"), self.data.csr("valid"))

    def test_dataloader(self) -> DataLoader:
        return self._ranking_loader(self.data.csr("train", "valid"), self.data.csr("test"))

    def without(self, forget: ForgetSet, graph_surgery: bool = True) -> "RecDataModule":
        """The same data with the forget pairs removed from the train split (graph surgery).

        A user-wise request deletes the forgotten users' held-out (valid/test) rows too, an
        item-wise one the forgotten items' held-out rows: they are the deleted subject's data, so
        retain utility (and Retrain's early stopping) is measured on the retained users/items
        only. An interaction-wise request keeps every held-out row. ``graph_surgery=False`` keeps
        the train split whole (the deployed model's view, evaluated on the same held-out rows).
        """
        d = self.data
        key = d.pairs[:, 0] * d.num_items + d.pairs[:, 1]
        drop = (d.split == TRAIN) & np.isin(key, forget.forget_pairs[:, 0] * d.num_items + forget.forget_pairs[:, 1])
        drop &= graph_surgery
        if forget.regime == "user":
            drop |= (d.split != TRAIN) & np.isin(d.pairs[:, 0], forget.users)
        elif forget.regime == "item":
            drop |= (d.split != TRAIN) & np.isin(d.pairs[:, 1], forget.items)
        retained = InteractionData(
            num_users=d.num_users,
            num_items=d.num_items,
            pairs=d.pairs[~drop],
            split=d.split[~drop],
            features=d.features,
            item_graphs=d.item_graphs,
            name=f"{d.name}-retained",
        )
        return RecDataModule(retained, self.batch_size, self.eval_batch_size, self.num_workers)


class SyntheticDataModule(RecDataModule):
    """The built-in default: a seeded synthetic multimodal data set (see :func:`make_synthetic`).

    Args:
        num_users, num_items, modality_dims, modality_noise, factor_dim, mean_interactions,
        popularity_exponent, seed: passed to :func:`make_synthetic`.
        batch_size, eval_batch_size, num_workers: see :class:`RecDataModule`.
    """

    def __init__(
        self,
        num_users: int = 2000,
        num_items: int = 1000,
        modality_dims: Optional[dict[str, int]] = None,
        modality_noise: Optional[dict[str, float]] = None,
        factor_dim: int = 16,
        mean_interactions: float = 20.0,
        popularity_exponent: float = 1.0,
        seed: int = 0,
        batch_size: int = 2048,
        eval_batch_size: int = 1024,
        num_workers: int = 0,
    ) -> None:
        data = make_synthetic(
            num_users=num_users,
            num_items=num_items,
            modality_dims=modality_dims,
            modality_noise=modality_noise,
            factor_dim=factor_dim,
            mean_interactions=mean_interactions,
            popularity_exponent=popularity_exponent,
            seed=seed,
        )
        super().__init__(data, batch_size, eval_batch_size, num_workers)


class MMRecDataModule(RecDataModule):
    """A data set in the MMRec folder format (see :func:`load_mmrec`).

    Args:
        root: the folder holding ``<name>.inter`` and ``<modality>_feat.npy`` files.
        name: the ``.inter`` file's stem (default: the only one in ``root``).
        modalities: ``None`` (every ``*_feat.npy``), a list of modality names, or name -> file.
        knn_graphs: a folder of ``<modality>_adj_*.npz`` or name -> file (precomputed item graphs).
        batch_size, eval_batch_size, num_workers: see :class:`RecDataModule`.
    """

    def __init__(
        self,
        root: Union[str, Path],
        name: Optional[str] = None,
        modalities: Union[Sequence[str], Mapping[str, str], None] = None,
        knn_graphs: Union[str, Path, Mapping[str, str], None] = None,
        batch_size: int = 2048,
        eval_batch_size: int = 1024,
        num_workers: int = 0,
    ) -> None:
        data = load_mmrec(root, name=name, modalities=modalities, knn_graphs=knn_graphs)
        super().__init__(data, batch_size, eval_batch_size, num_workers)
