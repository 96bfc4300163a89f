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
from torch.utils.data import DataLoader

from lightning_tru.datamodules.content import ItemContent
from lightning_tru.datamodules.datasets import (
    BPRDataset,
    BPRShardSampler,
    EvalShardSampler,
    RankingDataset,
    UserDataset,
    identity_collate,
)
from lightning_tru.datamodules.deletions import DeletionStore, data_fingerprint, deletion_mask, subset
from lightning_tru.datamodules.forget import ForgetSet
from lightning_tru.datamodules.interactions import TRAIN, DataFormatError, InteractionData
from lightning_tru.datamodules.mmrec import load_mmrec
from lightning_tru.datamodules.synthetic import make_synthetic

log = logging.getLogger("lightning_tru")


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
        deletions: a deletion store folder (:class:`DeletionStore`); every request recorded there is
            removed from ``data`` here, before anything else sees it.
    """

    def __init__(
        self,
        data: InteractionData,
        batch_size: int = 2048,
        eval_batch_size: int = 1024,
        num_workers: int = 0,
        deletions: Union[str, Path, None] = None,
    ) -> None:
        super().__init__()
        if batch_size < 1 or eval_batch_size < 1:
            raise DataFormatError(f"batch_size={batch_size} and eval_batch_size={eval_batch_size} must be >= 1")
        self.deletions = DeletionStore(deletions) if deletions is not None else None
        #: fingerprints of the deletion requests removed from ``data``, in the order they were answered
        self.deletion_chain: tuple[str, ...] = ()
        if self.deletions is not None:
            data, chain = self.deletions.apply(data)
            self.deletion_chain = tuple(chain)
            if chain:
                log.info("%s: applied %d deletion request(s) from %s", data.name, len(chain), self.deletions.root)
        self.data = data
        #: features and feature-derived item graphs, shared with every datamodule derived by :meth:`without`
        self.content = ItemContent(data.features, data.item_graphs)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        if log.isEnabledFor(logging.INFO):  # the summary costs sorts of every train pair: only when it is shown
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

    def lineage(self) -> dict[str, object]:
        """What a model fitted here is fitted to: the train fingerprint and the deletion chain."""
        return {"train_fingerprint": data_fingerprint(self.data), "deletions": list(self.deletion_chain)}

    def train_pairs(self) -> np.ndarray:
        return self.data.split_pairs(TRAIN)

    def train_edge_index(self) -> Tensor:
        """``(2, E)`` training (user, item) edges: the graph the backbone propagates over."""
        return torch.from_numpy(np.ascontiguousarray(self.train_pairs().T))

    def feature_tensors(self) -> dict[str, Tensor]:
        """Modality -> ``(I, d_m)`` features; the same tensors on every call and in every derived datamodule."""
        return self.content.feature_tensors()

    def item_graphs(self, knn_k: Optional[int] = None) -> dict[str, sp.csr_matrix]:
        """Precomputed item graphs, plus, with ``knn_k``, cosine kNN graphs of the other modalities (built once
        per data set and ``knn_k``, see :class:`ItemContent`)."""
        return self.content.item_graphs(knn_k)

    def _replicas(self) -> tuple[int, int]:
        """``(rank, world size)`` of the attached trainer (``(0, 1)`` without one)."""
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def train_dataloader(self) -> DataLoader:
        """Shuffled BPR triples; under data parallelism each rank reads its :class:`BPRShardSampler` shard."""
        rank, world = self._replicas()
        if world == 1:
            return DataLoader(
                BPRDataset(self.train_pairs(), self.num_items),
                batch_size=self.batch_size,
                shuffle=True,
                collate_fn=identity_collate,
                num_workers=self.num_workers,
            )
        # one seed for all ranks: drawn from the (seeded) global RNG, taken from rank 0
        seed = self.trainer.strategy.broadcast(int(torch.randint(2**31, ())), src=0)  # type: ignore[union-attr]
        pairs = self.train_pairs()
        return DataLoader(
            BPRDataset(pairs, self.num_items, rank=rank, num_replicas=world),
            batch_size=self.batch_size,
            sampler=BPRShardSampler(len(pairs), self.batch_size, world, rank, seed),
            collate_fn=identity_collate,
            num_workers=self.num_workers,
        )

    def _ranking_loader(self, exclude: sp.csr_matrix, target: sp.csr_matrix) -> DataLoader:
        dataset = RankingDataset(exclude, target)
        rank, world = self._replicas()
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            sampler=EvalShardSampler(len(dataset), world, rank) if world > 1 else None,
            collate_fn=identity_collate,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        return self._ranking_loader(self.data.csr("train"), self.data.csr("valid"))

    def test_dataloader(self) -> DataLoader:
        return self._ranking_loader(self.data.csr("train", "valid"), self.data.csr("test"))

    def predict_dataloader(self, users: Optional[Sequence[int]] = None) -> DataLoader:
        """Serving batches ``(users, exclude)``: ``users`` (default every user id), train items excluded."""
        ids = np.arange(self.num_users) if users is None else np.asarray(users, dtype=np.int64).reshape(-1)
        bad = ids[(ids < 0) | (ids >= self.num_users)]
        if len(bad):
            raise DataFormatError(f"unknown user ids {bad[:5].tolist()} ({len(bad)} in all); valid ids are 0..{self.num_users - 1}")
        return DataLoader(UserDataset(ids, self.data.csr("train")), batch_size=self.eval_batch_size,
                          collate_fn=identity_collate, num_workers=self.num_workers)

    def without(self, forget: ForgetSet, graph_surgery: bool = True) -> "RecDataModule":
        """The same data with the forget pairs removed from the train split (graph surgery).

        A user-wise request deletes the forgotten users' held-out (valid/test) rows too, an
        item-wise one the forgotten items' held-out rows: they are the deleted subject's data, so
        retain utility (and Retrain's early stopping) is measured on the retained users/items
        only. An interaction-wise request keeps every held-out row. ``graph_surgery=False`` keeps
        the train split whole (the deployed model's view, evaluated on the same held-out rows).
        """
        d = self.data
        drop = deletion_mask(d, forget.forget_pairs, forget.regime, forget.purged_users, forget.purged_items)
        if not graph_surgery:
            drop &= d.split != TRAIN
        out = RecDataModule(subset(d, ~drop, f"{d.name}-retained"), self.batch_size, self.eval_batch_size,
                            self.num_workers)
        out.deletion_chain = self.deletion_chain + ((forget.fingerprint,) if graph_surgery else ())
        out.content = self.content  # same items, same features: no kNN rebuild after graph surgery
        return out


class SyntheticDataModule(RecDataModule):
    """The built-in default: a seeded synthetic multimodal data set (see :func:`make_synthetic`).

    Args:
        num_users, num_items, modality_dims, modality_noise, factor_dim, mean_interactions,
        popularity_exponent, seed: passed to :func:`make_synthetic`.
        batch_size, eval_batch_size, num_workers, deletions: see :class:`RecDataModule`.
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
        deletions: Union[str, Path, None] = None,
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
        super().__init__(data, batch_size, eval_batch_size, num_workers, deletions)


class MMRecDataModule(RecDataModule):
    """A data set in the MMRec folder format (see :func:`load_mmrec`).

    Args:
        root: the folder holding ``<name>.inter`` and ``<modality>_feat.npy`` files.
        name: the ``.inter`` file's stem (default: the only one in ``root``).
        modalities: ``None`` (every ``*_feat.npy``), a list of modality names, or name -> file.
        knn_graphs: a folder of ``<modality>_adj_*.npz`` or name -> file (precomputed item graphs).
        strict_features: raise on NaN/inf feature values (``False``: replace them with zeros, with a warning).
        min_users, min_items: the id space when it is larger than the ids in the file (purged data
            whose largest ids were deleted: pass the sizes the model was trained with).
        batch_size, eval_batch_size, num_workers, deletions: see :class:`RecDataModule`.
    """

    def __init__(
        self,
        root: Union[str, Path],
        name: Optional[str] = None,
        modalities: Union[Sequence[str], Mapping[str, str], None] = None,
        knn_graphs: Union[str, Path, Mapping[str, str], None] = None,
        strict_features: bool = True,
        min_users: Optional[int] = None,
        min_items: Optional[int] = None,
        batch_size: int = 2048,
        eval_batch_size: int = 1024,
        num_workers: int = 0,
        deletions: Union[str, Path, None] = None,
    ) -> None:
        data = load_mmrec(root, name=name, modalities=modalities, knn_graphs=knn_graphs, strict_features=strict_features)
        if (min_items or 0) > data.num_items and data.features:
            raise DataFormatError(
                f"{root}: min_items={min_items} but the feature files hold {data.num_items} rows; omit min_items"
            )
        if (min_users or 0) > data.num_users or (min_items or 0) > data.num_items:
            data = InteractionData(
                num_users=max(min_users or 0, data.num_users), num_items=max(min_items or 0, data.num_items),
                pairs=data.pairs, split=data.split, features=data.features, item_graphs=data.item_graphs, name=data.name,
            )
        super().__init__(data, batch_size, eval_batch_size, num_workers, deletions)
        self.root = Path(root).expanduser()
