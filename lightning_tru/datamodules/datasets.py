"""Datasets and samplers: BPR training triples, ranking and serving users, data-parallel shards."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Optional

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler


def dense(m: sp.csr_matrix) -> Tensor:
    """``(rows, I)`` bool tensor of a binary CSR matrix."""
    out = np.zeros(m.shape, dtype=bool)
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    out[rows, m.indices] = True
    return torch.from_numpy(out)


def identity_collate(batch: object) -> object:
    """``collate_fn`` for datasets whose ``__getitems__`` already returns the batch."""
    return batch


def sample_negatives(keys: Tensor, num_items: int, users: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """One uniform item per user outside that user's items, the pairs given as sorted keys :math:`u \\cdot I + i`
    (``keys``): draw all, then redraw the collisions (membership by binary search)."""
    neg = torch.randint(num_items, users.shape, generator=generator)
    todo = torch.arange(len(users))
    for _ in range(100):
        key = users[todo] * num_items + neg[todo]
        pos = torch.searchsorted(keys, key).clamp_max(len(keys) - 1)
        todo = todo[keys[pos] == key]
        if len(todo) == 0:
            break
        neg[todo] = torch.randint(num_items, (len(todo),), generator=generator)
    return neg


class BPRDataset(Dataset):
    r"""Training pairs; a batch of indices becomes ``(users, pos, neg)`` with one uniform negative each.

    Negatives are drawn uniformly from the items outside the user's training set, vectorised:
    draw all, then redraw the collisions (membership by binary search in the sorted keys
    :math:`u \cdot I + i`). Uses torch's global RNG, so ``seed_everything`` makes it reproducible.
    Under data parallelism (``num_replicas > 1``) every rank's global RNG holds the same seed, so
    each batch draws one number from it and samples from a generator seeded by
    ``draw * num_replicas + rank``: the ranks' negatives are independent, still reproducible.

    Args:
        pairs: ``(N, 2)`` (user, item) training pairs.
        num_items: catalogue size.
        rank, num_replicas: this process's data-parallel rank and the world size.
    """

    def __init__(self, pairs: np.ndarray, num_items: int, rank: int = 0, num_replicas: int = 1) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank} must be in [0, num_replicas={num_replicas})")
        self.users = torch.from_numpy(np.ascontiguousarray(pairs[:, 0]))
        self.items = torch.from_numpy(np.ascontiguousarray(pairs[:, 1]))
        self.num_items = num_items
        self.rank, self.num_replicas = rank, num_replicas
        self.keys = torch.sort(self.users * num_items + self.items).values

    def __len__(self) -> int:
        return len(self.users)

    def sample_negatives(self, users: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """One uniform item per user outside that user's training set."""
        return sample_negatives(self.keys, self.num_items, users, generator)

    def __getitems__(self, idx: list[int]) -> tuple[Tensor, Tensor, Tensor]:
        i = torch.as_tensor(idx, dtype=torch.long)
        users = self.users[i]
        g = None
        if self.num_replicas > 1:
            draw = int(torch.randint(2**40, ()))
            g = torch.Generator().manual_seed(draw * self.num_replicas + self.rank)
        return users, self.items[i], self.sample_negatives(users, generator=g)

    def __getitem__(self, idx: int) -> tuple[Tensor, Tensor, Tensor]:
        u, p, n = self.__getitems__([idx])
        return u[0], p[0], n[0]


class BPRShardSampler(DistributedSampler):
    r"""One data-parallel rank's share of an epoch of BPR triples, without overlap or padding.

    Epoch :math:`e` shuffles the :math:`N` triples with ``randperm(N)`` seeded by ``seed + e``
    (every rank holds the same ``seed``) and cuts the permutation into global batches of
    :math:`R \cdot B` triples (:math:`R` ranks, per-rank batch :math:`B`). Rank :math:`r` takes
    the :math:`r`-th slice of :math:`B` triples of each global batch; the last global batch
    (:math:`m < RB` triples) is split into :math:`R` equal slices of :math:`\lfloor m/R \rfloor`
    and its :math:`m \bmod R < R` leftover triples are skipped this epoch (a different few each
    epoch). So the shards are disjoint, every rank runs the same number of equal-size batches
    (DDP's gradient average is the mean over the global batch), and with :math:`R = 1` it is a
    plain shuffled pass; the union of the ranks' :math:`k`-th batches is the :math:`k`-th batch
    a single process with batch size :math:`RB` reads from the same permutation.

    Args:
        num_samples: :math:`N`, the number of triples.
        batch_size: :math:`B`, the per-rank batch size (the DataLoader's).
        num_replicas, rank: :math:`R` and :math:`r`.
        seed: the permutation seed, the same on every rank.
    """

    def __init__(self, num_samples: int, batch_size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        if batch_size < 1 or num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"batch_size={batch_size} must be >= 1, num_replicas={num_replicas} >= 1, rank={rank} in [0, num_replicas)"
            )
        # not super().__init__: it reads the process group; these are the attributes it sets
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, int(seed), 0
        self.shuffle, self.drop_last = True, False
        self.n, self.batch_size = int(num_samples), int(batch_size)
        full, last = divmod(self.n, num_replicas * batch_size)
        self.num_samples = full * batch_size + last // num_replicas
        self.total_size = self.num_samples * num_replicas

    def indices(self) -> Tensor:
        """This rank's triples of the current epoch, in batch order."""
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(self.n, generator=g)
        step = self.num_replicas * self.batch_size
        full = self.n // step
        head = perm[: full * step].view(full, self.num_replicas, self.batch_size)[:, self.rank].reshape(-1)
        piece = (self.n - full * step) // self.num_replicas
        tail = perm[full * step + self.rank * piece : full * step + (self.rank + 1) * piece]
        return torch.cat([head, tail])

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.num_samples


class EvalShardSampler(DistributedSampler):
    """Rank ``r`` of ``R`` evaluates users ``r, r + R, r + 2R, ...``: every user exactly once, no padding.

    ``DistributedSampler`` pads the last round by repeating users, which would count them twice in
    the metrics' sum states; here the shards differ in size by at most one user instead (evaluation
    has no per-step collective, so uneven shards are safe; the metric states are summed at
    ``compute``).
    """

    def __init__(self, num_samples: int, num_replicas: int = 1, rank: int = 0) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"num_replicas={num_replicas} must be >= 1 and rank={rank} in [0, num_replicas)")
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, 0, 0
        self.shuffle, self.drop_last = False, False
        self.n = int(num_samples)
        self.num_samples = len(range(rank, self.n, num_replicas))
        self.total_size = self.n

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


class RankingDataset(Dataset):
    """Evaluation users; a batch becomes ``(users (B,), exclude (B, I) bool, target (B, I) bool)``."""

    def __init__(self, exclude: sp.csr_matrix, target: sp.csr_matrix) -> None:
        self.exclude = exclude.tocsr()
        self.target = target.tocsr()
        self.users = np.flatnonzero(np.diff(self.target.indptr) > 0)

    def __len__(self) -> int:
        return len(self.users)

    def __getitems__(self, idx: list[int]) -> tuple[Tensor, Tensor, Tensor]:
        users = self.users[np.asarray(idx, dtype=np.int64)]
        return torch.from_numpy(users), dense(self.exclude[users]), dense(self.target[users])

    def __getitem__(self, idx: int) -> tuple[Tensor, Tensor, Tensor]:
        u, e, t = self.__getitems__([idx])
        return u[0], e[0], t[0]


class UserDataset(Dataset):
    """Users to serve; a batch becomes ``(users (B,), exclude (B, I) bool)`` (their train items)."""

    def __init__(self, users: np.ndarray, exclude: sp.csr_matrix) -> None:
        self.users = np.asarray(users, dtype=np.int64)
        self.exclude = exclude.tocsr()

    def __len__(self) -> int:
        return len(self.users)

    def __getitems__(self, idx: list[int]) -> tuple[Tensor, Tensor]:
        users = self.users[np.asarray(idx, dtype=np.int64)]
        return torch.from_numpy(users), dense(self.exclude[users])

    def __getitem__(self, idx: int) -> tuple[Tensor, Tensor]:
        u, e = self.__getitems__([idx])
        return u[0], e[0]
