"""The datamodule of an unlearning run: forget and retain batches over the surgically cut graph."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_tru.datamodules.datamodule import BPRDataset, RecDataModule, _passthrough
from lightning_tru.datamodules.forget import ForgetRequest, ForgetSet


class UnlearnBatch(NamedTuple):
    """One unlearning step's data: forget triples and retain triples ``(users, items, negatives)``."""

    forget_users: Tensor
    forget_items: Tensor
    forget_neg: Tensor
    retain_users: Tensor
    retain_items: Tensor
    retain_neg: Tensor


class UnlearningDataModule(LightningDataModule):
    r"""Serves an unlearning run as ``Trainer.fit``: one optimisation step per epoch.

    Epoch :math:`e` on rank :math:`r` draws its batch from a generator seeded by
    ``(seed, e, r)``, so a run resumed from a checkpoint replays exactly the batches an
    uninterrupted run would see. The train graph is the retained one (graph surgery): a model
    attached to this datamodule never propagates over a forgotten edge.

    Args:
        source: the datamodule the model was trained on.
        request: the deletion request (resolved against ``source``'s train split).
        forget_batch_size: forget pairs per step (all of them when fewer).
        retain_batch_size: retain pairs per step.
        seed: seed of the batch sampling.
    """

    def __init__(
        self,
        source: RecDataModule,
        request: ForgetRequest | ForgetSet,
        forget_batch_size: int = 2048,
        retain_batch_size: int = 2048,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, size in (("forget_batch_size", forget_batch_size), ("retain_batch_size", retain_batch_size)):
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ValueError(
                    f"{name}={size!r} must be an integer >= 1 (pairs per step; an empty batch has a NaN mean "
                    f"loss), e.g. 2048; to drop the retain term set the callback's retain_weight=0"
                )
        self.source = source
        self.forget = request if isinstance(request, ForgetSet) else request.resolve(source.data)
        self.retained = source.without(self.forget)
        self.deployed = source.without(self.forget, graph_surgery=False)  # original graph, retained held-out rows
        self.forget_batch_size = forget_batch_size
        self.retain_batch_size = retain_batch_size
        self.seed = seed
        full_train = source.train_pairs()
        # negatives of forget pairs avoid every original train item; retain negatives avoid retained items
        self._forget_sampler = BPRDataset(full_train, source.num_items)
        self._retain_sampler = BPRDataset(self.forget.retain_pairs, source.num_items)
        self._forget_pairs = torch.from_numpy(self.forget.forget_pairs)
        self._retain_pairs = torch.from_numpy(self.forget.retain_pairs)
        p = self.forget.forget_pairs
        self.forget_matrix = sp.csr_matrix(
            (np.ones(len(p), np.float32), (p[:, 0], p[:, 1])), shape=(source.num_users, source.num_items)
        )
        self.retained_train_matrix = self.retained.data.csr("train")
        # items a forgetting user must not be ranked against: retained train + forgotten (the gate's candidates exclude both)
        self.seen_matrix = (self.retained_train_matrix + self.forget_matrix).tocsr()

    # sizes and graph, as RecDataModule offers them
    @property
    def num_users(self) -> int:
        return self.source.num_users

    @property
    def num_items(self) -> int:
        return self.source.num_items

    @property
    def feature_dims(self) -> dict[str, int]:
        return self.source.feature_dims

    def train_edge_index(self) -> Tensor:
        return self.retained.train_edge_index()

    def feature_tensors(self) -> dict[str, Tensor]:
        return self.source.feature_tensors()

    def item_graphs(self) -> dict[str, sp.csr_matrix]:
        return self.source.item_graphs()

    def forget_csr(self) -> sp.csr_matrix:
        """Binary ``(U, I)`` matrix of the forget pairs."""
        return self.forget_matrix

    def retained_train_csr(self) -> sp.csr_matrix:
        """Binary ``(U, I)`` matrix of the retained train pairs."""
        return self.retained_train_matrix

    # batches
    def _world_size(self) -> int:
        trainer = self.trainer
        return int(trainer.world_size) if trainer is not None else 1

    def train_dataloader(self) -> DataLoader:
        # one index per rank per epoch; the batch itself is drawn in make_batch
        return DataLoader(torch.arange(self._world_size()), batch_size=1, collate_fn=_passthrough)

    def _draw(self, pairs: Tensor, sampler: BPRDataset, size: int, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        if size >= len(pairs):
            idx = torch.arange(len(pairs))
        else:
            idx = torch.randperm(len(pairs), generator=g)[:size]
        users, items = pairs[idx, 0], pairs[idx, 1]
        return users, items, sampler.sample_negatives(users, generator=g)

    def make_batch(self, epoch: int, index: int) -> UnlearnBatch:
        """The batch of step ``epoch`` on data-parallel slot ``index`` (deterministic)."""
        g = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + int(epoch) * 1_009 + int(index))
        f = self._draw(self._forget_pairs, self._forget_sampler, self.forget_batch_size, g)
        r = self._draw(self._retain_pairs, self._retain_sampler, self.retain_batch_size, g)
        return UnlearnBatch(*f, *r)
