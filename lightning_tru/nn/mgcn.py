r"""MGCN generalised to any number of modalities."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

import scipy.sparse as sp
import torch
from torch import Tensor, nn

from lightning_tru.nn.losses import bpr_loss, info_nce, l2_penalty
from lightning_tru.nn.base import Backbone, Propagation, entity_rows, xavier_uniform_table
from lightning_tru.nn.graph import (
    Backend,
    SparseGraph,
    interaction_matrix,
    knn_graph,
    normalized_bipartite,
    normalized_interactions,
)


class MGCN(Backbone):
    r"""Multi-View Graph Convolutional Network (Yu et al., ACM MM 2023, https://arxiv.org/abs/2308.03588).

    For each modality :math:`m` with features :math:`F_m`:

    .. math::
        H_m &= E_I \odot \sigma\big(W_g^m (W_t^m F_m + b_t^m) + b_g^m\big)
            && \text{(behaviour-guided purifier)} \\
        H_m &\leftarrow S_m^{L_{ii}} H_m, \quad U_m = \tilde R H_m
            && \text{(item-item view; } \tilde R = D_U^{-1/2} R D_I^{-1/2}) \\
        C &= \tfrac{1}{L_{ui}+1}\textstyle\sum_{l=0}^{L_{ui}} \hat A^l [E_U; E_I]
            && \text{(user-item view)} \\
        e_m &= [U_m; H_m], \quad \alpha = \mathrm{softmax}_m\big(q(e_m)\big), \quad
            c = \textstyle\sum_m \alpha_m e_m && \text{(common part)} \\
        \text{side} &= \tfrac{1}{M+1}\Big(c + \textstyle\sum_m \sigma(W_p^m C) \odot (e_m - c)\Big), \quad
            E = C + \text{side}

    with :math:`S_m` the normalised top-k cosine kNN graph of :math:`F_m` and
    :math:`q = W_2 \tanh(W_1 \cdot)`. Loss terms beside BPR: ``reg_weight`` times L2 of the
    batch's final embeddings and ``cl_weight`` times InfoNCE(side, C) over the batch's items
    and users (temperature 0.2). For two modalities this is MMRec's MGCN; features are fixed
    buffers here (MMRec fine-tunes the raw feature table).

    Branches: ``id`` (:math:`C`), one per modality (:math:`\sigma(W_p^m C)\odot(e_m-c)/(M+1)`) and
    ``fusion`` (:math:`c/(M+1)`); they sum to :math:`E`.

    Args:
        num_users, num_items: sizes.
        feature_dims: modality -> feature width; at least one modality.
        embedding_dim: ``d``.
        num_ui_layers: :math:`L_{ui}` (2).
        num_ii_layers: :math:`L_{ii}` (1).
        knn_k: neighbours of the kNN graphs built from features (10).
        cl_weight: InfoNCE weight (MMRec searches {0.001, 0.01, 0.1}).
        cl_temperature: InfoNCE temperature (0.2).
        reg_weight: L2 weight (1e-4).
        graph_backend: ``"torch"`` or ``"torch_sparse"``.

    Shapes:
        - ``propagate().user``: ``(U, d)``; ``.item``: ``(I, d)``.
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        feature_dims: Optional[Mapping[str, int]] = None,
        embedding_dim: int = 64,
        num_ui_layers: int = 2,
        num_ii_layers: int = 1,
        knn_k: int = 10,
        cl_weight: float = 0.01,
        cl_temperature: float = 0.2,
        reg_weight: float = 1e-4,
        graph_backend: Backend = "torch",
    ) -> None:
        super().__init__(num_users, num_items, feature_dims)
        if not self.feature_dims:
            raise ValueError("MGCN needs at least one modality: link feature_dims from the datamodule")
        if "id" in self.feature_dims or "fusion" in self.feature_dims:
            raise ValueError("modality names 'id' and 'fusion' are reserved for MGCN's branches; rename the modality")
        d = embedding_dim
        self.num_ui_layers, self.num_ii_layers, self.knn_k = num_ui_layers, num_ii_layers, knn_k
        self.cl_weight, self.cl_temperature, self.reg_weight = cl_weight, cl_temperature, reg_weight
        self.graph_backend = graph_backend
        self.modalities = sorted(self.feature_dims)
        self.user_embedding = nn.Embedding(num_users, d)
        self.item_id_embedding = nn.Embedding(num_items, d)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_id_embedding.weight)
        self.transform = nn.ModuleDict({m: nn.Linear(self.feature_dims[m], d) for m in self.modalities})
        self.gate = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, d), nn.Sigmoid()) for m in self.modalities})
        self.prefer = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, d), nn.Sigmoid()) for m in self.modalities})
        self.query_common = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1, bias=False))
        self.adj: Optional[SparseGraph] = None
        self.user_item: Optional[SparseGraph] = None
        self.item_graphs = nn.ModuleDict()
        for m in self.modalities:
            self.register_buffer(f"feat_{m}", torch.zeros(0), persistent=False)

    def set_graph(self, edge_index: Tensor) -> None:
        r = interaction_matrix(edge_index, self.num_users, self.num_items)
        dev = self._device()
        self.adj = SparseGraph(normalized_bipartite(r), self.graph_backend, symmetric=True).to(dev)
        self.user_item = SparseGraph(normalized_interactions(r), self.graph_backend).to(dev)

    def set_features(
        self, features: Mapping[str, Tensor], item_graphs: Optional[Mapping[str, sp.spmatrix]] = None
    ) -> None:
        super().set_features(features, item_graphs)
        dev = self._device()
        graphs = dict(item_graphs or {})
        for m in self.modalities:
            f = features[m].float()
            setattr(self, f"feat_{m}", f.to(dev))
            g = graphs[m] if m in graphs else knn_graph(f, self.knn_k)
            if g.shape != (self.num_items, self.num_items):
                raise ValueError(f"item graph '{m}' has shape {g.shape}; expected ({self.num_items}, {self.num_items})")
            self.item_graphs[m] = SparseGraph(g, self.graph_backend).to(dev)

    def propagate(self) -> Propagation:
        return self._propagate(None)

    def training_propagation(self, users: Tensor, items: Tensor) -> Propagation:
        r""":meth:`propagate` on the batch's rows only: the rows ``users`` of ``.user`` and ``items`` of ``.item``
        (and of the branches and ``extras``) equal :meth:`propagate`'s, the other rows are zero.

        The graph views mix every node, so all but their last product run over the whole graph; the last one
        and the fuser (node-wise) run on the rows. With :math:`\hat A` bipartite (blocks :math:`\tilde R`,
        :math:`\tilde R^\top`) the user-item view is :math:`u_l = \tilde R\, i_{l-1}`,
        :math:`i_l = \tilde R^\top u_{l-1}` (no :math:`(U+I, d)` stack), and the users' rows of its last layer
        and of the modality views come from one product of :math:`\tilde R`'s rows with
        :math:`[i_{L-1}, H_1, \dots, H_M]` (``(I, (M+1) d)``).
        """
        nodes = torch.unique(torch.cat([users, items + self.num_users]))
        content, side, fusion, specific = self._batch_rows(nodes)

        def full(t: Tensor) -> Tensor:  # (U+I, d), zeros off the rows
            return t.new_zeros(self.num_users + self.num_items, t.shape[1]).index_copy_(0, nodes, t)

        return self._output(full(content), full(side), full(fusion), {m: full(t) for m, t in specific.items()})

    def training_losses(self, users: Tensor, pos: Tensor, neg: Tensor) -> dict[str, Tensor]:
        """:meth:`Backbone.training_losses` (the same values) read from the batch rows' ``(N, d)`` tables of
        :meth:`training_propagation`, never expanded to ``(U+I, d)`` (inside :meth:`sampling`: the base's)."""
        if self._sampling is not None:
            return super().training_losses(users, pos, neg)
        nu = self.num_users
        nodes = torch.unique(torch.cat([users, pos + nu, neg + nu]))  # sorted: users first
        content, side, _, _ = self._batch_rows(nodes)
        final = content + side  # (N, d)

        def rows(ids: Tensor) -> Tensor:
            return torch.searchsorted(nodes, ids)

        fu, fi = final[rows(users)], final[rows(torch.cat([pos, neg]) + nu)]  # (B, d), (2B, d)
        pos_s, neg_s = (fu.repeat(2, 1) * fi).sum(-1).split(len(users))
        fp, fn = fi.split(len(users))
        uniq_u, count_u = torch.unique(users, return_counts=True)
        uniq_i, count_i = torch.unique(pos, return_counts=True)
        at = rows(torch.cat([uniq_u, uniq_i + nu]))
        return {"bpr": bpr_loss(pos_s, neg_s), **self._aux(fu, fp, fn, side[at], content[at], count_u, count_i)}

    def _batch_rows(self, nodes: Tensor) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """``(content, side, fusion, {modality: specific})`` on ``nodes`` (sorted distinct ids of the stacked
        ``[users; items]``), each ``(N, d)``: :meth:`training_propagation`'s rows."""
        if self.adj is None or self.user_item is None:
            raise RuntimeError("MGCN has no graph: call set_graph(edge_index) first")
        if len(self.item_graphs) != len(self.modalities):
            raise RuntimeError("MGCN has no features: call set_features(features) first")
        nu, r, layers = self.num_users, self.user_item, self.num_ui_layers
        split = int(torch.searchsorted(nodes, nu))
        node_u, node_i = nodes[:split], nodes[split:] - nu
        u, i = self.user_embedding.weight, self.item_id_embedding.weight
        acc_u, acc_i = u[node_u], i[node_i]  # (Nu, d), (Ni, d): layer 0 of the user-item view
        for _ in range(layers - 1):  # the full layers 1 .. L-1
            u, i = r(i), r(u, transpose=True)  # (U, d), (I, d)
            acc_u, acc_i = acc_u + u[node_u], acc_i + i[node_i]
        hs = []
        for m in self.modalities:  # the modality views' item part H_m (I, d): purifier, L_ii kNN hops
            h = self.item_id_embedding.weight * self.gate[m](self.transform[m](getattr(self, f"feat_{m}")))
            for _ in range(self.num_ii_layers):
                h = self.item_graphs[m](h)
            hs.append(h)
        d = u.shape[1]
        # user rows: the last user-item layer and the modality views, one product of R~'s rows
        wide = r.rows_product(node_u, torch.cat([i, *hs], 1) if layers else torch.cat(hs, 1))  # (Nu, (M+1) d)
        parts = list(wide.split(d, 1))
        if layers:
            acc_u, acc_i = acc_u + parts.pop(0), acc_i + r(u, transpose=True)[node_i]  # the last layer
        content = torch.cat([acc_u, acc_i]) / (layers + 1)  # (N, d)
        views = [torch.cat([pu, h[node_i]]) for pu, h in zip(parts, hs)]  # [(N, d)]
        side, fusion, specific = self._fuse(content, views)
        return content, side, fusion, specific

    def _propagate(self, nodes: Optional[Tensor]) -> Propagation:
        if self.adj is None or self.user_item is None:
            raise RuntimeError("MGCN has no graph: call set_graph(edge_index) first")
        if len(self.item_graphs) != len(self.modalities):
            raise RuntimeError("MGCN has no features: call set_features(features) first")
        item_id = self.item_id_embedding.weight
        # user-item view (LightGCN, mean over layers)
        x = torch.cat([self.user_embedding.weight, item_id])  # (U+I, d)
        content = x
        for _ in range(self.num_ui_layers):
            x = self.adj(x)
            content = content + x
        content = content / (self.num_ui_layers + 1)
        # item-item views
        if nodes is not None:  # the rows' users and items (``nodes`` is sorted: users first)
            split = int(torch.searchsorted(nodes, self.num_users))
            node_u, node_i = nodes[:split], nodes[split:] - self.num_users
        views = []
        for m in self.modalities:
            h = item_id * self.gate[m](self.transform[m](getattr(self, f"feat_{m}")))  # (I, d)
            for _ in range(self.num_ii_layers):
                h = self.item_graphs[m](h)
            hu = self.user_item(h)  # (U, d)
            # (U+I, d), or its rows ``nodes`` gathered from the two parts (no (U+I, d) copy)
            views.append(torch.cat([hu, h]) if nodes is None else torch.cat([hu[node_u], h[node_i]]))
        # behaviour-aware fuser, node-wise: on the rows asked for (N = U+I without ``nodes``)
        rows = content if nodes is None else content[nodes]  # (N, d)
        side, fusion, specific = self._fuse(rows, views)
        if nodes is not None:  # back to (U+I, d), zeros off the rows

            def full(t: Tensor) -> Tensor:
                return content.new_zeros(content.shape).index_copy_(0, nodes, t)

            side, fusion, specific = full(side), full(fusion), {m: full(t) for m, t in specific.items()}
        return self._output(content, side, fusion, specific)

    def _fuse(self, rows: Tensor, views: list[Tensor]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """The behaviour-aware fuser on ``N`` rows: ``(side, fusion, {modality: specific})``, each ``(N, d)``,
        from the user-item view's rows ``(N, d)`` and the modality views' ``[(N, d)]``."""
        nm = len(self.modalities)
        stacked = torch.stack(views)  # (M, N, d)
        att = torch.softmax(self.query_common(stacked).squeeze(-1), dim=0)  # (M, N)
        common = (att.unsqueeze(-1) * stacked).sum(0)  # (N, d)
        specific = {m: self.prefer[m](rows) * (views[k] - common) / (nm + 1) for k, m in enumerate(self.modalities)}
        fusion = common / (nm + 1)
        return fusion + sum(specific.values()), fusion, specific  # type: ignore[return-value]

    def _output(self, content: Tensor, side: Tensor, fusion: Tensor, specific: dict[str, Tensor]) -> Propagation:
        nu, ni = self.num_users, self.num_items
        final = content + side
        user, item = final.split([nu, ni])

        def split(t: Tensor) -> tuple[Tensor, Tensor]:
            a, b = t.split([nu, ni])
            return a, b

        branches = {"id": split(content), **{m: split(s) for m, s in specific.items()}, "fusion": split(fusion)}
        return Propagation(user, item, branches, {"side": side, "content": content})

    def local_propagation(self, users: Tensor, items: Tensor) -> Propagation:
        r""":meth:`propagate` on the rows ``users`` / ``items`` only (zeros elsewhere), every view over the rows'
        computation graph: :math:`L_{ui}` hops of :math:`\hat A` for :math:`C`; for the modality views the
        items :math:`J` the rows read (the target items and the user rows' items in :math:`\tilde R`) and
        their :math:`L_{ii}`-hop kNN computation graph, the purifier run on those items only. Exact (the full
        graphs' values). When a computation graph holds more than ``local_max_share`` of the full products'
        entries: the graph views in full, the fuser on the rows only."""
        return self._local(users, items, None)

    def sampled_propagation(
        self, users: Tensor, items: Tensor, fanout: int, generator: Optional[torch.Generator] = None
    ) -> Propagation:
        r""":meth:`local_propagation` with every computation graph sampled (:meth:`SparseGraph.sample_block`: at most
        ``fanout`` neighbours per node of :math:`\hat A`, of :math:`\tilde R`'s user rows and of the kNN graphs): the
        graph views are unbiased estimates, the fuser (non-linear, node-wise) runs on them; never the full graphs."""
        return self._local(users, items, (fanout, generator))

    def _local(self, users: Tensor, items: Tensor, sample: Optional[tuple[int, Optional[torch.Generator]]]) -> Propagation:
        if self.adj is None or self.user_item is None or len(self.item_graphs) != len(self.modalities):
            raise RuntimeError("MGCN has no graph or features: call set_graph(edge_index) and set_features(features)")
        nu = self.num_users
        seeds = torch.cat([users.reshape(-1), items.reshape(-1) + nu])
        share = self.local_max_share
        if sample is not None:
            fr = self.adj.sampled_frontiers(seeds, self.num_ui_layers, *sample)
        else:
            fr = self.adj.frontiers(seeds, self.num_ui_layers, int(share * self.num_ui_layers * self.adj.nnz)) if share > 0 else None
        if fr is None:
            return self._propagate(torch.unique(seeds))
        nodes = fr.nodes[0]
        split = int(torch.searchsorted(nodes, nu))
        tu, ti = nodes[:split], nodes[split:] - nu
        item_id = self.item_id_embedding.weight
        content = fr.apply(entity_rows(self.user_embedding.weight, item_id, fr.nodes[-1]), mean=True)  # (N, d)
        # R~[tu, J], J: the items the rows read
        user_item, read = self.user_item.block(tu, also=ti) if sample is None else self.user_item.sample_block(tu, *sample, also=ti)
        views = []
        for m in self.modalities:
            g = self.item_graphs[m]
            if sample is None:
                fm = g.frontiers(read, self.num_ii_layers, int(share * max(1, self.num_ii_layers) * g.nnz))
                if fm is None:
                    return self._propagate(nodes)
            else:
                fm = g.sampled_frontiers(read, self.num_ii_layers, *sample)
            hop = fm.nodes[-1]
            h = item_id[hop] * self.gate[m](self.transform[m](getattr(self, f"feat_{m}")[hop]))  # purifier on J's hops
            h = fm.apply(h, mean=False)  # (|J|, d)
            views.append(torch.cat([user_item @ h, h[torch.searchsorted(read, ti)]]))  # (N, d)
        side, fusion, specific = self._fuse(content, views)

        def full(t: Tensor) -> Tensor:
            return t.new_zeros(self.num_users + self.num_items, t.shape[1]).index_copy_(0, nodes, t)

        return self._output(full(content), full(side), full(fusion), {m: full(t) for m, t in specific.items()})

    def auxiliary_losses(self, propagation: Propagation, users: Tensor, pos: Tensor, neg: Tensor) -> dict[str, Tensor]:
        p = propagation
        # over the batch's distinct items and users, each weighted by its repeats: the batch's value, at less cost
        # (info_nce_batch's, with one gather per (U+I, d) table for users and items together)
        uniq_u, count_u = torch.unique(users, return_counts=True)
        uniq_i, count_i = torch.unique(pos, return_counts=True)
        rows = torch.cat([uniq_u, uniq_i + self.num_users])
        return self._aux(p.user[users], p.item[pos], p.item[neg], p.extras["side"][rows], p.extras["content"][rows], count_u, count_i)

    def _aux(self, user: Tensor, pos: Tensor, neg: Tensor, side: Tensor, content: Tensor, count_u: Tensor,
             count_i: Tensor) -> dict[str, Tensor]:
        """L2 of the batch's final rows ``(B, d)`` and InfoNCE(side, content) over the distinct users then items
        (``side``, ``content``: ``(D_u + D_i, d)``, ``count_u`` ``(D_u,)`` and ``count_i`` ``(D_i,)`` their repeats)."""
        n = len(count_u)
        cl = info_nce(side[n:], content[n:], self.cl_temperature, count_i) + info_nce(
            side[:n], content[:n], self.cl_temperature, count_u
        )
        return {"l2": self.reg_weight * l2_penalty(user, pos, neg), "cl": self.cl_weight * cl}

    def branch_parameters(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {"id": ["user_embedding.weight", "item_id_embedding.weight"]}
        for m in self.modalities:
            groups[m] = [
                n
                for n, _ in self.named_parameters()
                if n.startswith((f"transform.{m}.", f"gate.{m}.", f"prefer.{m}."))
            ]
        groups["fusion"] = [n for n, _ in self.named_parameters() if n.startswith("query_common.")]
        return groups

    def entity_parameters(self) -> dict[str, list[str]]:
        return {"user": ["user_embedding.weight"], "item": ["item_id_embedding.weight"]}

    def initial_entity_table(self, name: str, generator: torch.Generator) -> Tensor:
        """Xavier-uniform, as ``__init__`` draws the embedding tables."""
        return xavier_uniform_table(self._entity_table(name).shape, generator)
