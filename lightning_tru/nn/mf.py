r"""Matrix factorisation: the ID-only backbone without a graph."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

import torch
from torch import Tensor, nn

from lightning_tru.nn.base import Backbone, Propagation, xavier_uniform_table


class MF(Backbone):
    r"""BPR matrix factorisation (Rendle et al., UAI 2009, https://arxiv.org/abs/1205.2618).

    .. math:: s(u, i) = e_u^\top e_i

    No message passing: graph surgery changes nothing, every deleted interaction lives in the
    weights only (the reference ID-only model of the backdoor audit). Item features are ignored.

    Args:
        num_users, num_items: sizes.
        feature_dims: accepted for a uniform constructor; unused.
        embedding_dim: ``d``.
        reg_weight: weight of the L2 term on the batch's embeddings.

    Shapes:
        - ``propagate().user``: ``(U, d)``; ``.item``: ``(I, d)``.
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        feature_dims: Optional[Mapping[str, int]] = None,
        embedding_dim: int = 64,
        reg_weight: float = 1e-4,
    ) -> None:
        super().__init__(num_users, num_items, None)
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim={embedding_dim} must be >= 1")
        self.reg_weight = reg_weight
        self.user_embedding = nn.Embedding(num_users, embedding_dim)
        self.item_embedding = nn.Embedding(num_items, embedding_dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)

    def set_graph(self, edge_index: Tensor) -> None:
        """No graph: the interactions reach the model through training only."""

    def propagate(self) -> Propagation:
        u, i = self.user_embedding.weight, self.item_embedding.weight
        return Propagation(u, i, {"id": (u, i)}, {})

    def branch_parameters(self) -> dict[str, list[str]]:
        return {"id": ["user_embedding.weight", "item_embedding.weight"]}

    def entity_parameters(self) -> dict[str, list[str]]:
        return {"user": ["user_embedding.weight"], "item": ["item_embedding.weight"]}

    def initial_entity_table(self, name: str, generator: torch.Generator) -> Tensor:
        """Xavier-uniform, as ``__init__`` draws the embedding tables."""
        return xavier_uniform_table(self._entity_table(name).shape, generator)
