r"""MIG-GT generalised to any number of modalities."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Callable, Optional

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_tru.nn.base import Backbone, Propagation
from lightning_tru.nn.graph import (
    Backend,
    ReweightedSpMM,
    SampledDot,
    SampledMix,
    SparseGraph,
    interaction_matrix,
    normalized_bipartite,
)

RESERVED = ("id", "transformer")


def _dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout from a uniform mask (the same law as ``F.dropout``; faster on CPU)."""
    if not training or p == 0.0:
        return x
    return x * (torch.rand_like(x) >= p) * (1.0 / (1.0 - p))


class _Dropout(nn.Module):
    """:func:`_dropout` as a module (inside the modality MLPs)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return _dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class MIGGT(Backbone):
    r"""MIG-GT: modality-independent receptive fields + a sampling-based global transformer
    (Hu et al., AAAI 2025, https://arxiv.org/abs/2412.13994).

    Every branch :math:`b` (``id`` and each modality) runs its own MGDCF propagation with its
    own depth :math:`K_b` over :math:`\hat A = D^{-1/2}(A + I)D^{-1/2}` (user-item graph with
    self-loops). In training, as MGDCF's dropout of edge weights, every stored entry of
    :math:`\hat A` (both directions of an edge and the self-loops independently) is dropped with
    probability ``edge_dropout`` and the kept ones are scaled by :math:`1/(1-p)`, one mask per
    branch and call, drawn from torch's global RNG:

    .. math::
        h_b^{(0)} &= \begin{cases} [E_U;\ E_I \text{ or } 0] & b = \text{id} \\
            [0;\ \mathrm{MLP}_m(F_m P_m)] & b = m \end{cases} \\
        h_b^{(k+1)} &= \beta \hat A h_b^{(k)} + \alpha h_b^{(0)}, \qquad
            z_b = h_b^{(K_b)} / \gamma_{K_b}, \quad
            \gamma_K = \beta^K + \alpha \textstyle\sum_{i<K} \beta^i \\
        z &= \textstyle\sum_b z_b, \qquad
        e_n = w_r z_n + w_a \sum_{j \in \{n\} \cup S_n} \mathrm{softmax}_j
            \Big(\tfrac{(W_q z_n)^\top (W_k z_j)}{\sqrt{d_a}}\Big) z_j

    where :math:`S_n` are ``num_samples`` items drawn uniformly for each node :math:`n`
    (user or item) and :math:`\mathrm{MLP}_m` is a Linear-BatchNorm-PReLU(-Dropout) stack.
    :math:`P_m` is the identity, or for features wider than ``random_projection_above`` a fixed
    Gaussian projection :math:`P_m \sim \mathcal N(0, 1/d_p)` of shape :math:`(d_m, d_p)`
    (MIG-GT's ``use_rp`` projects 4096-d visual features to the text width), kept as a
    non-persistent buffer regenerated from ``seed`` and applied once in :meth:`set_features`.
    As in MIG-GT, the user side of a modality branch starts from zeros and is obtained by
    propagation only, the ID branch's items start from zeros unless ``use_item_embedding``,
    and the transformer's values are its inputs (only :math:`W_q, W_k` are learnt; one head,
    no layer norm or feed-forward; :math:`W_k` has no bias, which would cancel in the softmax).

    Sampling: in training from torch's global RNG (seed it with ``seed_everything``); in
    evaluation from a ``torch.Generator`` seeded with ``seed`` on every call, so evaluation
    embeddings are deterministic. ``num_samples = 0`` drops the transformer (the MIG ablation).

    Loss terms beside BPR. MIG-GT adds :math:`\lambda \tfrac12\lVert E^{out}\rVert^2` and the
    summed TUR term to a summed BPR; divided by the batch size :math:`B`, so that BPR is the
    mean of :class:`~lightning_tru.models.RecommenderModule`, they read

    .. math::
        \mathcal L_{l2} = \frac{\lambda}{2B}\big(\lVert E^{out}_U\rVert_F^2 + \lVert E^{out}_I\rVert_F^2\big), \qquad
        \mathcal L_{us} = \frac{\mu}{B} \sum_{(u,i)} -\log
            \frac{\exp(e_u^\top \tilde z_{i,0})}{\sum_{j=0}^{S} \exp(e_u^\top \tilde z_{i,j})}

    with :math:`E^{out}` the final embeddings of all nodes and :math:`\tilde z_{i,\cdot}` the
    transformer applied to every position of item :math:`i`'s sequence
    :math:`[z_i, z_{s_1}, \dots, z_{s_S}]` (full self-attention, :math:`\tilde z_{i,0} = e_i`).
    :math:`\mathcal L_{us}` is the transformer unsmooth regulariser (TUR) as the MIG-GT code
    computes it (``unsmooth_loss`` in ``main.py``): a user must score its positive item above
    the random items that item attends to, which counters over-smoothing by the attention.

    Branches: ``id`` and each modality with :math:`K_b > 0` contribute :math:`z_b` (in
    training times the output-dropout mask, one mask shared by all branches, which equals
    dropout of :math:`z`), ``transformer`` contributes :math:`e - z`; they sum to :math:`e`.
    :math:`K_b = 0` turns branch :math:`b` off: it owns no parameters and has no entry in
    ``branches`` or :meth:`branch_parameters`. (MIG-GT's code uses :math:`K < 0` for off and
    :math:`K = 0` for "features without propagation".)

    Args:
        num_users, num_items: sizes.
        feature_dims: modality -> feature width (none: ID only).
        embedding_dim: ``d``.
        num_layers: branch name (``"id"`` or a modality) -> :math:`K_b`; ``None`` means
            ``{"id": 4}`` (MIG-GT's Baby ID depth). Unlisted branches get ``default_num_layers``.
        default_num_layers: :math:`K` of unlisted branches.
        alpha, beta: MGDCF's :math:`\alpha` (0.1) and :math:`\beta` (0.9).
        mlp_hidden_dims: hidden widths of the modality MLPs (MIG-GT: 512).
        batch_norm: BatchNorm1d after each MLP layer (MIG-GT: on).
        use_item_embedding: give the ID branch trainable item embeddings (MIG-GT Baby: off).
        random_projection_above: project modalities wider than this (``None``: never).
        random_projection_dim: target width; ``None`` = the narrowest modality not above the
            threshold (MIG-GT: visual -> text width), else ``random_projection_above``.
        num_samples: items each node attends to (10).
        attention_dim: :math:`d_a`, width of :math:`W_q, W_k` (4).
        attention_weight, residual_weight: :math:`w_a` (0.1) and :math:`w_r` (0.9).
        feature_dropout: dropout on the (projected) raw features (0.3).
        mlp_dropout: dropout after the hidden MLP layers (0.3).
        user_dropout: dropout on :math:`E_U` entering the ID branch (0.3).
        item_dropout: dropout on item inputs entering a branch (0.3).
        edge_dropout: :math:`p` of the edge dropout (0.2).
        output_dropout: dropout on :math:`z` (one mask shared by the branches) (0.2).
        reg_weight: :math:`\lambda` (MIG-GT Baby: 1e-5).
        unsmooth_weight: :math:`\mu` (1).
        seed: seed of the random projections and of the evaluation sampling.
        graph_backend: ``"torch"`` or ``"torch_sparse"``.

    Shapes:
        - ``propagate().user``: ``(U, d)``; ``.item``: ``(I, d)``.
        - ``propagate().extras``: ``"summed"`` :math:`z` ``(U+I, d)``; ``"samples"`` ``(U+I, S)``.
        - :meth:`diffuse`: ``(U+I, d) -> (U+I, d)``.
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        feature_dims: Optional[Mapping[str, int]] = None,
        embedding_dim: int = 64,
        num_layers: Optional[dict[str, int]] = None,
        default_num_layers: int = 2,
        alpha: float = 0.1,
        beta: float = 0.9,
        mlp_hidden_dims: Sequence[int] = (512,),
        batch_norm: bool = True,
        use_item_embedding: bool = False,
        random_projection_above: Optional[int] = 1024,
        random_projection_dim: Optional[int] = None,
        num_samples: int = 10,
        attention_dim: int = 4,
        attention_weight: float = 0.1,
        residual_weight: float = 0.9,
        feature_dropout: float = 0.3,
        mlp_dropout: float = 0.3,
        user_dropout: float = 0.3,
        item_dropout: float = 0.3,
        edge_dropout: float = 0.2,
        output_dropout: float = 0.2,
        reg_weight: float = 1e-5,
        unsmooth_weight: float = 1.0,
        seed: int = 0,
        graph_backend: Backend = "torch",
    ) -> None:
        super().__init__(num_users, num_items, feature_dims)
        bad = sorted(set(self.feature_dims) & set(RESERVED))
        if bad:
            raise ValueError(f"modality names {bad} are reserved for MIG-GT's branches {RESERVED}; rename them")
        if embedding_dim < 1 or attention_dim < 1 or num_samples < 0 or default_num_layers < 0:
            raise ValueError(
                f"embedding_dim={embedding_dim} and attention_dim={attention_dim} must be >= 1, "
                f"num_samples={num_samples} and default_num_layers={default_num_layers} >= 0"
            )
        for name, p in (
            ("feature_dropout", feature_dropout),
            ("mlp_dropout", mlp_dropout),
            ("user_dropout", user_dropout),
            ("item_dropout", item_dropout),
            ("edge_dropout", edge_dropout),
            ("output_dropout", output_dropout),
        ):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name}={p} must be in [0, 1)")
        d = embedding_dim
        self.modalities = sorted(self.feature_dims)
        self.num_layers = self._resolve_layers(num_layers, default_num_layers)
        self.active_branches = [b for b, k in self.num_layers.items() if k > 0]
        self.alpha, self.beta = float(alpha), float(beta)
        self.num_samples, self.attention_dim = int(num_samples), int(attention_dim)
        self.attention_weight, self.residual_weight = float(attention_weight), float(residual_weight)
        self.feature_dropout, self.mlp_dropout = feature_dropout, mlp_dropout
        self.user_dropout, self.item_dropout = user_dropout, item_dropout
        self.edge_dropout, self.output_dropout = edge_dropout, output_dropout
        self.reg_weight, self.unsmooth_weight = reg_weight, unsmooth_weight
        self.seed = int(seed)
        self.graph_backend = graph_backend
        self.use_item_embedding = use_item_embedding

        self.user_embedding: Optional[nn.Embedding] = None
        self.item_embedding: Optional[nn.Embedding] = None
        if self.num_layers["id"] > 0:
            self.user_embedding = nn.Embedding(num_users, d)
            nn.init.normal_(self.user_embedding.weight, std=1.0 / math.sqrt(d))
            if use_item_embedding:
                self.item_embedding = nn.Embedding(num_items, d)
                nn.init.normal_(self.item_embedding.weight, std=1.0 / math.sqrt(d))

        active_mods = [m for m in self.modalities if self.num_layers[m] > 0]
        in_dims = self._projection_dims(active_mods, random_projection_above, random_projection_dim)
        gen = torch.Generator().manual_seed(self.seed)
        self.encoder = nn.ModuleDict()
        for m in active_mods:
            d_in = self.feature_dims[m]
            if in_dims[m] != d_in:  # fixed Johnson-Lindenstrauss projection, regenerated from `seed`
                proj = torch.randn(d_in, in_dims[m], generator=gen) / math.sqrt(in_dims[m])
                self.register_buffer(f"proj_{m}", proj, persistent=False)
            self.encoder[m] = self._mlp(in_dims[m], list(mlp_hidden_dims), d, batch_norm, mlp_dropout)
            self.register_buffer(f"feat_{m}", torch.zeros(0), persistent=False)
        self.projected = {m: in_dims[m] for m in active_mods if in_dims[m] != self.feature_dims[m]}

        self.query: Optional[nn.Linear] = None
        self.key: Optional[nn.Linear] = None
        if self.num_samples > 0:
            self.query = nn.Linear(d, attention_dim)
            self.key = nn.Linear(d, attention_dim, bias=False)  # a key bias cancels in the softmax
            nn.init.xavier_uniform_(self.query.weight)
            nn.init.zeros_(self.query.bias)
            nn.init.xavier_uniform_(self.key.weight)
        self.adj: Optional[SparseGraph] = None
        self.register_buffer("edge_transpose", torch.zeros(0, dtype=torch.long), persistent=False)

    # ------------------------------------------------------------------------- config
    def _resolve_layers(self, num_layers: Optional[Mapping[str, int]], default: int) -> dict[str, int]:
        given = {"id": 4} if num_layers is None else dict(num_layers)
        valid = ["id", *self.modalities]
        unknown = sorted(set(given) - set(valid))
        if unknown:
            raise ValueError(f"num_layers names unknown branches {unknown}; valid branch names are {valid}")
        layers = {b: int(given.get(b, default)) for b in valid}
        negative = {b: k for b, k in layers.items() if k < 0}
        if negative:
            raise ValueError(f"num_layers must be >= 0 (0 turns a branch off), got {negative}")
        if not any(layers.values()):
            raise ValueError(f"every branch is off (num_layers={layers}); give at least one of {valid} a K > 0")
        return layers

    def _projection_dims(
        self, modalities: Sequence[str], above: Optional[int], target: Optional[int]
    ) -> dict[str, int]:
        dims = {m: self.feature_dims[m] for m in modalities}
        if above is None:
            return dims
        if target is None:
            narrow = [w for w in self.feature_dims.values() if w <= above]
            target = min(narrow) if narrow else above
        if target < 1:
            raise ValueError(f"random_projection_dim={target} must be >= 1")
        return {m: (target if w > above else w) for m, w in dims.items()}

    @staticmethod
    def _mlp(d_in: int, hidden: list[int], d_out: int, batch_norm: bool, dropout: float) -> nn.Sequential:
        layers: list[nn.Module] = []
        widths = [d_in, *hidden, d_out]
        for k in range(len(widths) - 1):
            lin = nn.Linear(widths[k], widths[k + 1])
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
            layers.append(lin)
            if batch_norm:
                layers.append(nn.BatchNorm1d(widths[k + 1]))
            layers.append(nn.PReLU())
            if k < len(widths) - 2 and dropout > 0:
                layers.append(_Dropout(dropout))
        return nn.Sequential(*layers)

    def gamma(self, k: int) -> float:
        r""":math:`\gamma_K = \beta^K + \alpha\sum_{i<K}\beta^i`, MGDCF's normaliser."""
        return self.beta**k + self.alpha * sum(self.beta**i for i in range(k))

    # --------------------------------------------------------------------------- data
    def set_graph(self, edge_index: Tensor) -> None:
        r = interaction_matrix(edge_index, self.num_users, self.num_items)
        adj = SparseGraph(normalized_bipartite(r, self_loops=True), self.graph_backend, symmetric=True)
        n = adj.shape[0]
        crow, cols = adj.crow.numpy(), adj.col.numpy()
        rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(crow))
        # CSR position of entry (c, r) for the entry (r, c) at each position (A + I is symmetric)
        perm = np.searchsorted(rows * n + cols, cols * n + rows)
        dev = self._device()
        self.adj = adj.to(dev)
        self.edge_transpose = torch.from_numpy(perm).to(dev)

    def set_features(
        self, features: Mapping[str, Tensor], item_graphs: Optional[Mapping[str, sp.spmatrix]] = None
    ) -> None:
        super().set_features(features, item_graphs)
        dev = self._device()
        for m in self.encoder:
            f = features[m].to(dev, torch.float32)
            if m in self.projected:
                f = f @ getattr(self, f"proj_{m}")  # (I, d_m) @ (d_m, d_p), once per attach
            setattr(self, f"feat_{m}", f)

    # --------------------------------------------------------------------- propagation
    def diffuse(self, h0: Tensor, num_layers: int) -> Tensor:
        r"""One MGDCF branch: :math:`K` steps of :math:`h \leftarrow \beta\tilde A h + \alpha h_0`, divided by :math:`\gamma_K`.

        :math:`\tilde A = \hat A` in evaluation; in training a fresh edge-dropped copy per call.
        Shapes: ``h0`` ``(U+I, d)`` -> ``(U+I, d)``.
        """
        adj = self.adj
        if adj is None:
            raise RuntimeError("MIGGT has no graph: call set_graph(edge_index) first")
        step: Callable[[Tensor], Tensor] = adj
        if self.training and self.edge_dropout > 0:
            keep = torch.rand(adj.nnz, device=adj.val.device) >= self.edge_dropout
            val = adj.val * keep / (1.0 - self.edge_dropout)
            val_t = val[self.edge_transpose]  # the same drops, in the transpose's CSR order
            step = partial(ReweightedSpMM.apply, adj, val, val_t)
        h = h0
        for _ in range(num_layers):
            h = self.beta * step(h) + self.alpha * h0
        return h / self.gamma(num_layers)

    def _branch_inputs(self) -> dict[str, Tensor]:
        nu, ni = self.num_users, self.num_items
        inputs: dict[str, Tensor] = {}
        if self.user_embedding is not None:
            users = _dropout(self.user_embedding.weight, self.user_dropout, self.training)
            if self.item_embedding is not None:
                items = _dropout(self.item_embedding.weight, self.item_dropout, self.training)
            else:
                items = users.new_zeros(ni, users.shape[1])
            inputs["id"] = torch.cat([users, items])  # (U+I, d)
        for m, mlp in self.encoder.items():
            f = getattr(self, f"feat_{m}")
            if f.numel() == 0:
                raise RuntimeError("MIGGT has no features: call set_features(features) first")
            enc = mlp(_dropout(f, self.feature_dropout, self.training))  # (I, d)
            enc = _dropout(enc, self.item_dropout, self.training)
            inputs[m] = torch.cat([enc.new_zeros(nu, enc.shape[1]), enc])  # (U+I, d)
        return inputs

    def sample_items(self, num_nodes: int) -> Tensor:
        """``(num_nodes, S)`` uniform item ids: global RNG in training, ``seed`` in evaluation."""
        dev = self._device()
        if self.training:
            return torch.randint(self.num_items, (num_nodes, self.num_samples), device=dev)
        gen = torch.Generator().manual_seed(self.seed)
        return torch.randint(self.num_items, (num_nodes, self.num_samples), generator=gen).to(dev)

    def attend(self, queries: Tensor, memory: Tensor) -> Tensor:
        r"""The global transformer: :math:`w_r q + w_a\,\mathrm{softmax}(W_q q (W_k m)^\top/\sqrt{d_a})\, m`.

        Shapes: ``queries`` ``(N, L, d)``, ``memory`` ``(N, M, d)`` -> ``(N, L, d)``.
        """
        if self.query is None or self.key is None:
            raise RuntimeError("the transformer is off (num_samples=0)")
        logits = self.query(queries) @ self.key(memory).transpose(1, 2) / math.sqrt(self.attention_dim)  # (N, L, M)
        att = torch.softmax(logits, dim=-1) @ memory  # (N, L, d)
        return self.residual_weight * queries + self.attention_weight * att

    def global_attention(self, h: Tensor, samples: Tensor) -> Tensor:
        r"""Every node attends over itself and its sampled items: :meth:`attend` with query
        :math:`h_n` and memory :math:`[h_n, h_{U+s_{n1}}, \dots]`, without materialising the memory.

        Shapes: ``h`` ``(U+I, d)``, ``samples`` ``(U+I, S)`` item ids -> ``(U+I, d)``.
        """
        if self.query is None or self.key is None:
            raise RuntimeError("the transformer is off (num_samples=0)")
        n, s = samples.shape
        q = self.query(h)  # (N, a)
        k = self.key(h)  # (N, a)
        k_items = torch.index_select(k[self.num_users :], 0, samples.reshape(-1)).view(n, s, -1)  # (N, S, a)
        logits = torch.cat([(q * k).sum(-1, keepdim=True), (q.unsqueeze(1) * k_items).sum(-1)], dim=1)
        w = torch.softmax(logits / math.sqrt(self.attention_dim), dim=1)  # (N, 1+S)
        att = w[:, :1] * h + SampledMix.apply(h[self.num_users :], w[:, 1:], samples)  # (N, d)
        return self.residual_weight * h + self.attention_weight * att

    def propagate(self) -> Propagation:
        if self.adj is None:
            raise RuntimeError("MIGGT has no graph: call set_graph(edge_index) first")
        nu, ni = self.num_users, self.num_items
        inputs = self._branch_inputs()
        outs = {b: self.diffuse(h0, self.num_layers[b]) for b, h0 in inputs.items()}  # each (U+I, d)
        if self.training and self.output_dropout > 0:
            first = next(iter(outs.values()))
            mask = _dropout(torch.ones_like(first), self.output_dropout, True)  # dropout of the sum
            outs = {b: z * mask for b, z in outs.items()}
        summed = torch.stack(list(outs.values())).sum(0)  # (U+I, d)
        extras: dict[str, Tensor] = {"summed": summed}
        if self.num_samples > 0:
            samples = self.sample_items(nu + ni)  # (U+I, S)
            outs["transformer"] = self.global_attention(summed, samples) - summed
            extras["samples"] = samples
            final = summed + outs["transformer"]
        else:
            final = summed
        user, item = final.split([nu, ni])
        branches = {}
        for b, z in outs.items():
            bu, bi = z.split([nu, ni])
            branches[b] = (bu, bi)
        return Propagation(user, item, branches, extras)

    # ------------------------------------------------------------------------- losses
    def auxiliary_losses(self, propagation: Propagation, users: Tensor, pos: Tensor, neg: Tensor) -> dict[str, Tensor]:
        p = propagation
        batch = users.shape[0]
        l2 = (p.user.pow(2).sum() + p.item.pow(2).sum()) / (2.0 * batch)
        losses = {"l2": self.reg_weight * l2}
        if self.num_samples > 0 and "samples" in p.extras:
            nu = self.num_users
            seq = torch.cat([pos.unsqueeze(1), p.extras["samples"][nu + pos]], dim=1)  # (B, 1+S) item ids
            logits = self.unsmooth_logits(p.user[users], p.extras["summed"][nu:], seq)  # (B, 1+S)
            target = torch.zeros(batch, dtype=torch.long, device=logits.device)
            losses["unsmooth"] = self.unsmooth_weight * F.cross_entropy(logits, target)
        return losses

    def unsmooth_logits(self, users: Tensor, items: Tensor, seq: Tensor) -> Tensor:
        r"""TUR's logits :math:`e_u^\top \tilde z_{i,j}`, :math:`\tilde z = ` :meth:`attend` of the item sequence
        :math:`m = z_{\text{seq}}` over itself, without the ``(B, 1+S, d)`` sequence: since the values are the inputs,

        .. math::
            e_u^\top \tilde z_j = w_r\, e_u^\top m_j + w_a \textstyle\sum_l \mathrm{softmax}_l\big(
                (W_q m_j)^\top (W_k m_l)/\sqrt{d_a}\big)\, e_u^\top m_l

        with :math:`W_q m_j`, :math:`W_k m_l` gathered from the items' ``(I, d_a)`` projections and
        :math:`e_u^\top m_l` a sampled dense-dense product (:class:`~lightning_tru.nn.graph.SampledDot`).
        Shapes: ``users`` ``(B, d)``, ``items`` ``(I, d)``, ``seq`` ``(B, L)`` item ids -> ``(B, L)``.
        """
        if self.query is None or self.key is None:
            raise RuntimeError("the transformer is off (num_samples=0)")
        q, k = self.query(items)[seq], self.key(items)[seq]  # (B, L, a)
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(self.attention_dim), dim=-1)  # (B, L, L)
        dots = SampledDot.apply(users, items, seq)  # (B, L): e_u^T m_l
        return self.residual_weight * dots + self.attention_weight * (att @ dots.unsqueeze(-1)).squeeze(-1)

    # ------------------------------------------------------------------ parameter groups
    def branch_parameters(self) -> dict[str, list[str]]:
        names = [n for n, _ in self.named_parameters()]
        groups: dict[str, list[str]] = {}
        if self.num_layers["id"] > 0:
            groups["id"] = [n for n in names if n.startswith(("user_embedding.", "item_embedding."))]
        for m in self.encoder:
            groups[m] = [n for n in names if n.startswith(f"encoder.{m}.")]
        if self.num_samples > 0:
            groups["transformer"] = [n for n in names if n.startswith(("query.", "key."))]
        return groups

    def entity_parameters(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        if self.user_embedding is not None:
            groups["user"] = ["user_embedding.weight"]
        if self.item_embedding is not None:
            groups["item"] = ["item_embedding.weight"]
        return groups

    def initial_entity_table(self, name: str, generator: torch.Generator) -> Tensor:
        r""":math:`\mathcal N(0, 1/d)`, as ``__init__`` draws the embedding tables."""
        t = self._entity_table(name)
        return nn.init.normal_(torch.empty(t.shape), std=1.0 / math.sqrt(t.shape[1]), generator=generator)

    def extra_repr(self) -> str:
        return f"num_layers={self.num_layers}, num_samples={self.num_samples}, projected={self.projected}"
