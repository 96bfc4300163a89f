r"""The backbone contract every recommender in :mod:`lightning_tru.nn` follows.

A backbone is a plain :class:`torch.nn.Module` sized by ``(num_users, num_items, feature_dims)``.
Graphs and features are data: they arrive through :meth:`Backbone.set_graph` and
:meth:`Backbone.set_features` and live in non-persistent buffers, so a checkpoint holds
parameters only and unlearning can swap in a graph without the forgotten edges.

The unlearning-facing surface:

* :meth:`Backbone.propagate` returns a :class:`Propagation` whose ``branches`` add up to the
  final embeddings, :math:`e_u = \sum_b e_u^b`, :math:`e_i = \sum_b e_i^b`;
* :meth:`Backbone.branch_scores` splits a score into per-branch contributions that add up to it;
* :meth:`Backbone.branch_parameters` / :meth:`Backbone.layer_parameters` name the parameter groups;
* :meth:`Backbone.pair_propagation`: what scoring a few pairs reads, over their exact computation graph
  (:meth:`Backbone.local_propagation`) or, inside :meth:`Backbone.sampling`, an unbiased estimate over a sampled one
  at a cost independent of the data set's size (:meth:`Backbone.sampled_propagation`).
"""
from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Callable, NamedTuple, Optional

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_tru.nn.losses import bpr_loss, l2_penalty


class Propagation(NamedTuple):
    """Output of :meth:`Backbone.propagate`.

    Attributes:
        user: ``(U, d)`` final user embeddings.
        item: ``(I, d)`` final item embeddings.
        branches: branch name -> ``(user (U, d), item (I, d))``; they sum to ``(user, item)``.
        extras: backbone-specific intermediates used by :meth:`Backbone.auxiliary_losses`.
        index: ``None`` (full tables: row ``u`` of ``.user`` is user ``u``) or, for a *compact* propagation (inside
            :meth:`Backbone.sampling` with ``sparse=True``), ``(users (U_c,), items (I_c,))``: the sorted ids whose rows
            ``.user`` ``(U_c, d)`` / ``.item`` ``(I_c, d)`` and the branches hold, in that order (:meth:`positions`).
    """

    user: Tensor
    item: Tensor
    branches: dict[str, tuple[Tensor, Tensor]]
    extras: dict[str, Tensor]
    index: Optional[tuple[Tensor, Tensor]] = None

    def positions(self, users: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
        """The rows of ``.user`` / ``.item`` (and of the branches) that hold ``users`` / ``items``: the ids themselves
        for full tables, their positions in :attr:`index` for a compact propagation."""
        if self.index is None:
            return users, items
        return torch.searchsorted(self.index[0], users), torch.searchsorted(self.index[1], items)


class Snapshot(NamedTuple):
    """A full propagation's final embeddings and what they were computed from (``Backbone.propagate_from``).

    Attributes:
        final: ``(U+I, d)`` final embeddings, users then items.
        tables: ``(U+I, d)`` the layer-0 entity tables they come from.
        graph: the graph module they were propagated over.
    """

    final: Tensor
    tables: Tensor
    graph: nn.Module


class Backbone(nn.Module, abc.ABC):
    """Base of the recommender backbones.

    Args:
        num_users: number of users ``U``.
        num_items: number of items ``I``.
        feature_dims: modality name -> feature width ``d_m`` (ignored by ID-only backbones).
    """

    def __init__(self, num_users: int, num_items: int, feature_dims: Optional[Mapping[str, int]] = None) -> None:
        super().__init__()
        if num_users < 1 or num_items < 1:
            raise ValueError(
                f"num_users={num_users} and num_items={num_items} must be >= 1; "
                "link them from the datamodule (data.num_users / data.num_items)"
            )
        self.num_users = int(num_users)
        self.num_items = int(num_items)
        self.feature_dims: dict[str, int] = dict(feature_dims or {})

    #: neighbours of the feature kNN item graphs the backbone propagates over (``None``: it uses none);
    #: a datamodule builds them once per data set (:meth:`RecDataModule.item_graphs`)
    knn_k: Optional[int] = None

    # ----------------------------------------------------------------------------- data
    @abc.abstractmethod
    def set_graph(self, edge_index: Tensor) -> None:
        """Build the propagation graphs from ``(2, E)`` training (user, item) edges."""

    def set_features(
        self, features: Mapping[str, Tensor], item_graphs: Optional[Mapping[str, sp.spmatrix]] = None
    ) -> None:
        """Attach per-item modality features (and optional precomputed item-item graphs)."""
        missing = set(self.feature_dims) - set(features)
        if missing:
            raise ValueError(
                f"{type(self).__name__} was built for modalities {sorted(self.feature_dims)} but the data "
                f"lacks {sorted(missing)}; load the same modalities the model was trained with"
            )
        for m, d in self.feature_dims.items():
            f = features[m]
            if f.ndim != 2 or f.shape[0] != self.num_items or f.shape[1] != d:
                raise ValueError(
                    f"feature '{m}' has shape {tuple(f.shape)}; the model expects ({self.num_items}, {d})"
                )
            if not torch.isfinite(f).all():
                raise ValueError(f"feature '{m}' holds NaN or inf values; clean or impute them before training")

    def _device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    # --------------------------------------------------------------------- embeddings
    @abc.abstractmethod
    def propagate(self) -> Propagation:
        """Full-graph forward pass."""

    def training_propagation(self, users: Tensor, items: Tensor) -> Propagation:
        """The propagation a training step reads: only the rows ``users`` of ``.user`` and ``items``
        of ``.item`` (and of branches and extras) are guaranteed to equal :meth:`propagate`'s.

        Default: :meth:`propagate`. A backbone with node-wise layers after its graph propagation
        overrides it to run them on the batch's rows only.
        """
        return self.propagate()

    #: :meth:`local_propagation` restricts the work to the batch's computation graph while that costs at most
    #: this share of a full propagation's sparse products; above it (or at 0) it propagates over the whole graph
    local_max_share: float = 0.2

    def local_propagation(self, users: Tensor, items: Tensor) -> Propagation:
        """The propagation that scoring the pairs of ``users`` x ``items`` reads: only the rows ``users`` of
        ``.user`` and ``items`` of ``.item`` (and of branches and extras) are guaranteed to equal
        :meth:`propagate`'s (the other rows may be zero), values and gradients alike.

        Default: :meth:`propagate`. A graph backbone overrides it to propagate over the L-hop computation
        graph of the rows only (the full graph's normalisation kept), while that is cheaper
        (:attr:`local_max_share`): a deletion request's few users then cost their neighbourhood, not the data set.
        That pays on sparse, clustered graphs with few layers; on popularity-skewed data the L-hop computation
        graph of a TRU step (forget pairs, uniform negatives, retain sample) holds most of the graph
        (benchmarks/RESULTS.md, "Scale ... local vs full TRU": 67-91 % for LightGCN, L = 3), and the full products win.
        """
        return self.propagate()

    def sampled_propagation(
        self, users: Tensor, items: Tensor, fanout: int, generator: Optional[torch.Generator] = None
    ) -> Propagation:
        r"""An unbiased estimate of :meth:`local_propagation` on the rows ``users`` / ``items`` (other rows zero) at a
        cost independent of the data set's size: every graph product over a *sampled* computation graph, each node
        reading at most ``fanout`` neighbours drawn uniformly, re-weighted by degree / ``fanout``
        (:meth:`~lightning_tru.nn.graph.SparseGraph.sample_block`), so each graph product's expectation is the
        exact one with the full graph's normalisation. With ``fanout`` at least the largest degree it is exact.

        Default: :meth:`local_propagation` (exact): a backbone that cannot sample keeps the exact path.
        """
        return self.local_propagation(users, items)

    #: ``(fanout, generator)`` while inside :meth:`sampling`, else ``None``
    _sampling: Optional[tuple[int, Optional[torch.Generator]]] = None
    #: inside ``sampling(..., sparse=True)``: :meth:`sampled_propagation` is row-sparse where the backbone supports it
    _row_sparse: bool = False

    @contextmanager
    def sampling(self, fanout: int, generator: Optional[torch.Generator] = None, sparse: bool = False) -> Iterator["Backbone"]:
        """Inside the block, :meth:`pair_propagation` (what scoring pairs reads) is :meth:`sampled_propagation`
        with this ``fanout`` and ``generator``; the full :meth:`propagate` (rankings, evaluation) stays exact.

        ``sparse``: *row-sparse* where the backbone supports it (LightGCN): the propagation is compact
        (:attr:`Propagation.index`) and the entity tables' gradients are sparse COO tensors holding only the rows the
        sampled computation graph read, so a step's backward and optimiser (:class:`~lightning_tru.nn.RowAdam`) cost
        the computation graph, not the tables. Other backbones keep full tables and dense gradients."""
        if isinstance(fanout, bool) or not isinstance(fanout, int) or fanout < 1:
            raise ValueError(f"fanout={fanout!r} must be an integer >= 1 (neighbours read per node and layer)")
        before = self._sampling, self._row_sparse
        self._sampling, self._row_sparse = (fanout, generator), bool(sparse)
        try:
            yield self
        finally:
            self._sampling, self._row_sparse = before

    def pair_propagation(self, users: Tensor, items: Tensor, training: bool = False) -> Propagation:
        """The propagation scoring the pairs of ``users`` x ``items`` reads: :meth:`sampled_propagation` inside
        :meth:`sampling`, else (exact) :meth:`local_propagation`, or :meth:`training_propagation` for a training
        batch (``training``)."""
        if self._sampling is not None:
            return self.sampled_propagation(users, items, *self._sampling)
        return self.training_propagation(users, items) if training else self.local_propagation(users, items)

    def forward(self) -> tuple[Tensor, Tensor]:
        """``(user (U, d), item (I, d))`` final embeddings."""
        p = self.propagate()
        return p.user, p.item

    def embeddings(self) -> tuple[Tensor, Tensor]:
        return self()

    def score(self, users: Tensor, items: Tensor, propagation: Optional[Propagation] = None) -> Tensor:
        r""":math:`s(u, i) = e_u^\top e_i` for ``(B,)`` pairs."""
        p = propagation if propagation is not None else self.propagate()
        u, i = p.positions(users, items)
        return (p.user[u] * p.item[i]).sum(-1)

    def branch_scores(
        self, users: Tensor, items: Tensor, propagation: Optional[Propagation] = None
    ) -> dict[str, Tensor]:
        r"""Per-branch contributions :math:`s_b = \tfrac12(e_u^\top e_i^b + e_u^{b\top} e_i)`.

        They add up to the score exactly, since :math:`\sum_b e^b = e`.
        """
        p = propagation if propagation is not None else self.propagate()
        pu, pi = p.positions(users, items)
        u, i = p.user[pu], p.item[pi]
        return {b: 0.5 * ((u * bi[pi]).sum(-1) + (bu[pu] * i).sum(-1)) for b, (bu, bi) in p.branches.items()}

    @torch.no_grad()
    def recommend(self, users: Tensor, k: int, exclude: Optional[Tensor] = None) -> Tensor:
        """Top-``k`` item ids ``(B, k)`` per user, items where ``exclude`` ``(B, I)`` is true masked out."""
        u, i = self.embeddings()
        scores = u[users] @ i.T  # (B, I)
        if exclude is not None:
            scores = scores.masked_fill(exclude, float("-inf"))
        return torch.topk(scores, k, dim=1).indices

    # ------------------------------------------------------------------------- losses
    def training_losses(self, users: Tensor, pos: Tensor, neg: Tensor) -> dict[str, Tensor]:
        """The loss terms of a training batch of ``(B,)`` triples by name: ``"bpr"`` over the scores of
        :meth:`pair_propagation` (``training=True``: exact on the batch's rows; inside :meth:`sampling` the sampled
        estimate) plus :meth:`auxiliary_losses`. A backbone may override it with the same values at lower cost."""
        prop = self.pair_propagation(users, torch.cat([pos, neg]), training=True)
        # one gather per table for both terms (each gather of a full table costs a full-size gradient buffer)
        pos_s, neg_s = self.score(torch.cat([users, users]), torch.cat([pos, neg]), prop).split(len(users))
        return {"bpr": bpr_loss(pos_s, neg_s), **self.auxiliary_losses(prop, users, pos, neg)}

    def auxiliary_losses(self, propagation: Propagation, users: Tensor, pos: Tensor, neg: Tensor) -> dict[str, Tensor]:
        """Backbone-specific loss terms added to BPR (default: L2 of the batch's final embeddings)."""
        p = propagation
        return {"l2": self.reg_weight * l2_penalty(p.user[users], p.item[pos], p.item[neg])}

    reg_weight: float = 1e-4

    # ------------------------------------------------------------------ parameter groups
    def branch_parameters(self) -> dict[str, list[str]]:
        """Branch name -> parameter names (default: one ``"all"`` branch)."""
        return {"all": [n for n, _ in self.named_parameters()]}

    def entity_parameters(self) -> dict[str, list[str]]:
        """``{"user": [...], "item": [...]}``: parameters whose rows index users / items (default: none)."""
        return {}

    def initial_entity_table(self, name: str, generator: torch.Generator) -> Tensor:
        """A fresh draw of the entity table ``name`` (a name from :meth:`entity_parameters`) from the
        backbone's own initialiser, on the CPU: what this table's rows are before any training.

        Backbones that declare entity tables implement it (the Reset floor re-draws the rows of
        deleted users / items from it).
        """
        raise TypeError(
            f"{type(self).__name__} does not say how its entity table {name!r} is initialised; "
            "implement initial_entity_table(name, generator) with the initialiser __init__ uses"
        )

    def _entity_table(self, name: str) -> Tensor:
        tables = {n for ns in self.entity_parameters().values() for n in ns}
        if name not in tables:
            raise ValueError(f"{name!r} is not an entity table of {type(self).__name__}; choose one of {sorted(tables)}")
        return self.get_parameter(name)

    def layer_parameters(self) -> dict[str, list[str]]:
        """Layer name -> parameter names (default: the owning module's path)."""
        groups: dict[str, list[str]] = {}
        for n, _ in self.named_parameters():
            groups.setdefault(n.rsplit(".", 1)[0] if "." in n else n, []).append(n)
        return groups


BackboneFactory = Callable[[int, int, Optional[dict[str, int]]], Backbone]
"""What :class:`~lightning_tru.models.RecommenderModule` takes: a backbone class with its
hyper-parameters bound, called with ``(num_users, num_items, feature_dims)``."""


def xavier_uniform_table(shape: torch.Size, generator: torch.Generator) -> Tensor:
    """``nn.init.xavier_uniform_`` of a fresh CPU table of ``shape`` drawn from ``generator``."""
    return nn.init.xavier_uniform_(torch.empty(shape), generator=generator)


def edge_index_from_pairs(pairs: np.ndarray) -> Tensor:
    """``(E, 2)`` numpy pairs -> ``(2, E)`` long tensor."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(pairs, dtype=np.int64).reshape(-1, 2).T))


def entity_rows(user_table: Tensor, item_table: Tensor, nodes: Tensor, sparse: bool = False) -> Tensor:
    """Rows ``nodes`` (sorted ids of the stacked ``[users; items]`` table) of ``[user_table; item_table]``,
    gathered without stacking the tables: ``(len(nodes), d)``. ``sparse``: the tables' gradients are sparse COO
    tensors on the gathered rows (``F.embedding(..., sparse=True)``) instead of dense tables."""
    split = int(torch.searchsorted(nodes, user_table.shape[0]))
    users, items = nodes[:split], nodes[split:] - user_table.shape[0]
    if sparse:
        return torch.cat([F.embedding(users, user_table, sparse=True), F.embedding(items, item_table, sparse=True)])
    return torch.cat([user_table[users], item_table[items]])
