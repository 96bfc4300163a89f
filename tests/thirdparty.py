"""Third-party recommenders written only against the documented protocol (score(users, items)).

Neither is of the project's family: no ``embeddings()``, no ``branch_scores``, no parameter
groups, no graph. They train with their own BPR ``training_step`` on ``RecDataModule`` batches.
"""
from __future__ import annotations

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn


class _BPR(LightningModule):
    """BPR training on ``(users, pos, neg)`` batches with the subclass's ``score``; Adam."""

    def __init__(self, lr: float) -> None:
        super().__init__()
        self.lr = lr

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        users, pos, neg = batch
        s_pos, s_neg = self.score(torch.cat([users, users]), torch.cat([pos, neg])).chunk(2)
        return -nn.functional.logsigmoid(s_pos - s_neg).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class NeuMF(_BPR):
    r"""NeuMF-style: :math:`s_{ui} = w^\top [p_u \odot q_i;\ \mathrm{MLP}([m_u; n_i])] + b` (not a dot product;
    the MLP and the head are shared non-linear layers)."""

    def __init__(self, num_users: int, num_items: int, dim: int = 16, lr: float = 5e-3) -> None:
        super().__init__(lr)
        self.gmf_user, self.gmf_item = nn.Embedding(num_users, dim), nn.Embedding(num_items, dim)
        self.mlp_user, self.mlp_item = nn.Embedding(num_users, dim), nn.Embedding(num_items, dim)
        for table in (self.gmf_user, self.gmf_item, self.mlp_user, self.mlp_item):
            nn.init.normal_(table.weight, std=0.1)
        self.mlp = nn.Sequential(nn.Linear(2 * dim, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU())
        self.head = nn.Linear(dim + 16, 1)

    def score(self, users: Tensor, items: Tensor) -> Tensor:
        gmf = self.gmf_user(users) * self.gmf_item(items)  # (B, d)
        mlp = self.mlp(torch.cat([self.mlp_user(users), self.mlp_item(items)], -1))  # (B, 16)
        return self.head(torch.cat([gmf, mlp], -1)).squeeze(-1)


class TwoTower(_BPR):
    r"""Two towers of MLPs over ID embeddings: :math:`s_{ui} = f(p_u)^\top g(q_i)`."""

    def __init__(self, num_users: int, num_items: int, dim: int = 16, lr: float = 5e-3) -> None:
        super().__init__(lr)
        self.user, self.item = nn.Embedding(num_users, dim), nn.Embedding(num_items, dim)
        nn.init.normal_(self.user.weight, std=0.1)
        nn.init.normal_(self.item.weight, std=0.1)
        self.user_tower = nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Linear(32, 16))
        self.item_tower = nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Linear(32, 16))

    def score(self, users: Tensor, items: Tensor) -> Tensor:
        return (self.user_tower(self.user(users)) * self.item_tower(self.item(items))).sum(-1)
