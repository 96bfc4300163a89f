"""The datamodule of an unlearning run: forget and retain batches over the surgically cut graph."""
from __future__ import annotations

from functools import cached_property
from typing import Callable, Iterator, NamedTuple, Optional

import numpy as np
import scipy.sparse as sp
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lightning_tru.datamodules.datamodule import RecDataModule
from lightning_tru.datamodules.datasets import identity_collate, sample_negatives
from lightning_tru.datamodules.forget import ForgetRequest, ForgetSet


class UnlearnBatch(NamedTuple):
    """One unlearning step's data: forget triples and retain triples ``(users, items, negatives)``."""

    forget_users: Tensor
    forget_items: Tensor
    forget_neg: Tensor
    retain_users: Tensor
    retain_items: Tensor
    retain_neg: Tensor


StepKey = tuple[int, int]  # (epoch, rank): what one unlearning step's batch is drawn from


class UnlearnSteps(Dataset):
    """The unlearning batches, keyed by ``(epoch, rank)``: ``steps[(e, r)] = draw(e, r)``."""

    def __init__(self, draw: Callable[[int, int], UnlearnBatch]) -> None:
        self.draw = draw

    def __getitem__(self, key: StepKey) -> UnlearnBatch:
        epoch, rank = key
        return self.draw(epoch, rank)


class StepSampler(DistributedSampler):
    """One key per epoch for this rank: ``(epoch, rank)``, the epoch set by Lightning's ``set_epoch``.

    A :class:`~torch.utils.data.DistributedSampler` (each rank its own shard), so Lightning
    leaves it in place under DDP; resumed at epoch :math:`e`, it yields what an uninterrupted
    run yields at :math:`e`.
    """

    def __init__(self, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(torch.arange(num_replicas), num_replicas=num_replicas, rank=rank, shuffle=False)

    def __iter__(self) -> Iterator[StepKey]:  # type: ignore[override]
        yield (self.epoch, self.rank)

    def __len__(self) -> int:
        return 1


class UnlearningDataModule(LightningDataModule):
    r"""Serves an unlearning run as ``Trainer.fit``: one optimisation step per epoch.

    Epoch :math:`e` on rank :math:`r` draws its batch from a generator seeded by
    ``(seed, e, r)``, so a run resumed from a checkpoint replays exactly the batches an
    uninterrupted run would see; the train DataLoader yields that :class:`UnlearnBatch` (Lightning
    moves it to the device). The train graph is the retained one (graph surgery): a model
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
        self.forget_batch_size = forget_batch_size
        self.retain_batch_size = retain_batch_size
        self.seed = seed
        self._forget_pairs = torch.from_numpy(self.forget.forget_pairs)
        self._retain_pairs = torch.from_numpy(self.forget.retain_pairs)
        p = self.forget.forget_pairs
        self.forget_matrix = sp.csr_matrix(
            (np.ones(len(p), np.float32), (p[:, 0], p[:, 1])), shape=(source.num_users, source.num_items)
        )
        self.retained_train_matrix = self.retained.data.csr("train")
        # negatives of forget pairs avoid every original train item, retain negatives the retained ones: sorted keys
        # u * I + i, read off the retained CSR (rows and columns sorted) with the forget keys merged in (no sort of E keys)
        r, n_items = self.retained_train_matrix, source.num_items
        retained = np.repeat(np.arange(r.shape[0], dtype=np.int64), np.diff(r.indptr)) * n_items + r.indices
        forgotten = np.sort(p[:, 0].astype(np.int64) * n_items + p[:, 1])
        self._retain_keys = torch.from_numpy(retained)
        self._train_keys = torch.from_numpy(np.insert(retained, np.searchsorted(retained, forgotten), forgotten))

    @cached_property
    def deployed(self) -> RecDataModule:
        """The deployed model's view: the original train graph, the retained held-out rows (built on first use)."""
        return self.source.without(self.forget, graph_surgery=False)

    @cached_property
    def seen_matrix(self) -> sp.csr_matrix:
        """Items a forgetting user must not be ranked against: retained train + forgotten (the gate's candidates exclude
        both); built on first use."""
        return (self.retained_train_matrix + self.forget_matrix).tocsr()

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
        """``(2, E)`` retained train edges (graph surgery), read off the retained CSR: distinct, sorted."""
        r = self.retained_train_matrix
        users = np.repeat(np.arange(r.shape[0], dtype=np.int64), np.diff(r.indptr))
        return torch.from_numpy(np.stack([users, r.indices.astype(np.int64)]))

    def feature_tensors(self) -> dict[str, Tensor]:
        return self.source.feature_tensors()

    def item_graphs(self, knn_k: Optional[int] = None) -> dict[str, sp.csr_matrix]:
        return self.source.item_graphs(knn_k)

    def forget_csr(self) -> sp.csr_matrix:
        """Binary ``(U, I)`` matrix of the forget pairs."""
        return self.forget_matrix

    def retained_train_csr(self) -> sp.csr_matrix:
        """Binary ``(U, I)`` matrix of the retained train pairs."""
        return self.retained_train_matrix

    # batches
    def train_dataloader(self) -> DataLoader:
        """One :class:`UnlearnBatch` per rank per epoch: ``make_batch(epoch, rank)``."""
        trainer = self.trainer
        world, rank = (int(trainer.world_size), int(trainer.global_rank)) if trainer is not None else (1, 0)
        sampler = StepSampler(num_replicas=world, rank=rank)
        return DataLoader(UnlearnSteps(self.make_batch), sampler=sampler, batch_size=None, collate_fn=identity_collate)

    def forget_negatives(self, users: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One uniform negative per forget user, outside every item of the user's original train set."""
        return sample_negatives(self._train_keys, self.num_items, users, generator)

    def retain_negatives(self, users: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One uniform negative per retain user, outside the user's retained train items."""
        return sample_negatives(self._retain_keys, self.num_items, users, generator)

    def profile_batch(self, max_forget: int) -> UnlearnBatch:
        """The profiling draw, identical on every rank: the forget pairs of ``make_batch(-1, 0)`` or, when
        the forget batch does not hold them all, up to ``max_forget`` forget pairs (seeded by ``seed``),
        and as many retain pairs drawn with replacement."""
        g = torch.Generator().manual_seed(self.seed)
        batch = self.make_batch(epoch=-1, index=0)
        fu, fi, fj = batch.forget_users, batch.forget_items, batch.forget_neg
        pairs = self.forget.forget_pairs
        if len(pairs) > len(fu):  # forget_batch_size < F: up to max_forget pairs
            idx = torch.randperm(len(pairs), generator=g)[: min(max_forget, len(pairs))].numpy()
            fu, fi = torch.from_numpy(pairs[idx, 0]), torch.from_numpy(pairs[idx, 1])
            fj = self.forget_negatives(fu, generator=g)
        retain = self.forget.retain_pairs
        ridx = torch.randint(len(retain), (len(fu),), generator=g).numpy()
        ru, ri = torch.from_numpy(retain[ridx, 0]), torch.from_numpy(retain[ridx, 1])
        return UnlearnBatch(fu, fi, fj, ru, ri, self.retain_negatives(ru, generator=g))

    def _draw(self, pairs: Tensor, keys: Tensor, size: int, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        idx = torch.arange(len(pairs)) if size >= len(pairs) else choose(len(pairs), size, g)
        users, items = pairs[idx, 0], pairs[idx, 1]
        return users, items, sample_negatives(keys, self.num_items, users, g)

    def make_batch(self, epoch: int, index: int) -> UnlearnBatch:
        """The batch of step ``epoch`` on data-parallel slot ``index`` (deterministic; :math:`O(\\text{batch})`)."""
        g = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + int(epoch) * 1_009 + int(index))
        f = self._draw(self._forget_pairs, self._train_keys, self.forget_batch_size, g)
        r = self._draw(self._retain_pairs, self._retain_keys, self.retain_batch_size, g)
        return UnlearnBatch(*f, *r)


#: :func:`choose` permutes all ``n`` indices while ``n`` is at most this many times ``size`` (then also O(size))
PERMUTE_UP_TO = 16


def choose(n: int, size: int, generator: torch.Generator) -> Tensor:
    """``size`` distinct indices of ``range(n)``, a uniformly random subset in random order, in expected
    :math:`O(\\text{size})`: ``randperm(n)[:size]`` while ``n <= PERMUTE_UP_TO * size`` (the draws of earlier
    versions, at O(size) cost); above, no permutation of ``n``: the distinct values of ``2 size`` i.i.d. uniform draws
    are a uniformly random subset of their count (exchangeability), and a random ``size`` of them is one of
    ``range(n)``."""
    if not 0 <= size <= n:
        raise ValueError(f"size={size} must be in [0, n={n}]")
    if n <= PERMUTE_UP_TO * size:
        return torch.randperm(n, generator=generator)[:size]
    m = 2 * size
    while True:
        distinct = torch.unique(torch.randint(n, (m,), generator=generator))
        if len(distinct) >= size:
            return distinct[torch.randperm(len(distinct), generator=generator)[:size]]
        m *= 2
