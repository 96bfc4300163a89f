r"""The small protocol a recommender must offer for the unlearning callbacks.

Required: ``score(users, items) -> (B,)`` differentiable scores of (user, item) pairs. Its cost is
the model's business: :class:`~lightning_tru.models.RecommenderModule` propagates over the pairs'
L-hop computation graph where the backbone offers it and it is cheaper
(:meth:`~lightning_tru.nn.Backbone.local_propagation`, exact; else over the whole graph), so every
method's forget / retain scores (TRU, NegGrad, fine-tuning, ...) get it without asking.

Optional, each with a fallback:

* ``embeddings() -> (user (U, d), item (I, d))`` with :math:`s = e_u^\top e_i`: fast full
  ranking. Fallback: ``score`` over all pairs in chunks.
* ``branch_scores(users, items) -> {branch: (B,)}`` adding up to ``score``: the ranking gate
  fuses graph (``"id"``) and content branches. Fallback: the gate acts on ``score``.
* ``branch_parameters() -> {branch: [param names]}``: modality scaling. Fallback: one branch
  per top-level child module.
* ``layer_parameters() -> {layer: [param names]}``: layer isolation. Fallback: one layer per
  module owning parameters.
* ``entity_parameters() -> {"user": [names], "item": [names]}``: embedding tables whose rows
  index users / items (row isolation). Fallback: ``nn.Embedding`` modules with exactly
  ``num_users`` (or ``num_items``) rows, when the two counts differ.
* ``initial_entity_table(name, generator) -> (rows, d)``: a fresh draw of an entity table from
  the model's own initialiser (the Reset floor). A wrapper with a ``backbone`` attribute may leave
  it to the backbone (names prefixed ``backbone.``). Fallback: none (Reset then needs the initial
  model, :meth:`~lightning_tru.callbacks.Reset.use_initial`).
* ``attach(datamodule)`` or ``set_graph(edge_index)``: graph surgery (the retained graph is
  installed before any update). Fallback: none needed (no graph).

Parameter names are those of ``model.named_parameters()``.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Optional, Sequence

import torch
from torch import Tensor, nn


@contextmanager
def eval_mode(model: Any) -> Iterator[Any]:
    """Run the block with ``model`` in eval mode and restore every submodule's own mode afterwards (also on
    error: a submodule the user keeps in another mode than its parent stays so).

    A model without ``train``/``eval`` (a plain scorer) is left as it is.
    """
    modes = [(m, m.training) for m in model.modules()] if hasattr(model, "modules") else []
    if hasattr(model, "eval"):
        model.eval()
    try:
        yield model
    finally:
        for m, was in modes:
            m.training = was


def propagation(model: Any) -> Any:
    """``model.backbone.propagate()`` when the model wraps a propagating backbone, else ``None``.

    One propagation serves every score and auxiliary term of a step (MMRecUn, MultiDelete).
    """
    backbone = getattr(model, "backbone", None)
    return backbone.propagate() if backbone is not None and hasattr(backbone, "propagate") else None


class FrozenScorer(nn.Module):
    r"""A model's final embeddings, propagated once: :math:`s(u, i) = e_u^\top e_i` with the
    ``(U, d)`` / ``(I, d)`` tables held fixed (no gradients).

    :meth:`of` takes a model between two edits; several audits of that same state (forget recall,
    pair-level MIA, the utility guard) then share one propagation instead of running one each.
    Explicit, never kept across an edit: build it again after the model changes.
    """

    def __init__(self, user: Tensor, item: Tensor) -> None:
        super().__init__()
        # parameters (frozen) rather than buffers: audits find the device through ``parameters()``
        self.user = nn.Parameter(user.detach().clone(), requires_grad=False)  # a copy: later in-place edits stay out
        self.item = nn.Parameter(item.detach().clone(), requires_grad=False)

    @classmethod
    def of(cls, model: Any) -> Any:
        """The frozen scorer of ``model`` in eval mode; ``model`` itself when it is one or offers no ``embeddings()``."""
        if isinstance(model, FrozenScorer) or not callable(getattr(model, "embeddings", None)):
            return model
        with eval_mode(model), torch.no_grad():
            user, item = model.embeddings()
        return cls(user, item)

    def embeddings(self) -> tuple[Tensor, Tensor]:
        return self.user, self.item

    def score(self, users: Tensor, items: Tensor) -> Tensor:
        return (self.user[users] * self.item[items]).sum(-1)


def group_scores(model: Any, groups: Sequence[tuple[Tensor, Tensor]], prop: Any = None) -> list[Tensor]:
    """Differentiable scores of several ``(users, items)`` groups in one forward pass.

    The groups are concatenated, scored (through ``model.backbone.score(users, items, prop)`` when
    a propagation ``prop`` is given, else ``model.score``) and split back: one ``(B_g,)`` tensor per group.
    """
    users, items = torch.cat([u for u, _ in groups]), torch.cat([i for _, i in groups])
    s = model.backbone.score(users, items, prop) if prop is not None else model.score(users, items)
    return list(s.split([len(u) for u, _ in groups]))


def group_pair_scores(
    model: Any, groups: Sequence[tuple[Tensor, Tensor]]
) -> tuple[list[Tensor], Optional[dict[str, list[Tensor]]]]:
    """As :func:`group_scores` through :func:`pair_scores`: the groups' scores and, when the model
    offers them, each branch's contributions split the same way."""
    users, items = torch.cat([u for u, _ in groups]), torch.cat([i for _, i in groups])
    s, parts = pair_scores(model, users, items)
    sizes = [len(u) for u, _ in groups]
    split = None if parts is None else {b: list(t.split(sizes)) for b, t in parts.items()}
    return list(s.split(sizes)), split


def all_scores(model: Any, users: Tensor, num_items: int, chunk: int = 1 << 20) -> Tensor:
    """``(B, I)`` scores of ``users`` against every item, without gradients."""
    with torch.no_grad():
        if hasattr(model, "embeddings"):
            u, i = model.embeddings()
            return u[users] @ i.T
        items = torch.arange(num_items, device=users.device)
        out = torch.empty(len(users), num_items, device=users.device)
        rows = max(1, chunk // num_items)
        for s in range(0, len(users), rows):
            ub = users[s : s + rows]
            out[s : s + len(ub)] = model.score(ub.repeat_interleave(num_items), items.repeat(len(ub))).view(
                len(ub), num_items
            )
        return out


def pair_scores(model: Any, users: Tensor, items: Tensor) -> tuple[Tensor, Optional[dict[str, Tensor]]]:
    """Scores of ``(B,)`` pairs and, when the model offers them, their branch contributions."""
    if hasattr(model, "branch_scores"):
        parts = model.branch_scores(users, items)
        return torch.stack(list(parts.values())).sum(0), parts
    return model.score(users, items), None


def branch_groups(model: nn.Module) -> dict[str, list[str]]:
    """Branch -> parameter names (the model's own grouping, else one per top-level child)."""
    if hasattr(model, "branch_parameters"):
        return dict(model.branch_parameters())
    groups: dict[str, list[str]] = {}
    for n, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault(n.split(".", 1)[0], []).append(n)
    return groups


def layer_groups(model: nn.Module) -> dict[str, list[str]]:
    """Layer -> parameter names (the model's own grouping, else the owning module's path)."""
    if hasattr(model, "layer_parameters"):
        return dict(model.layer_parameters())
    groups: dict[str, list[str]] = {}
    for n, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault(n.rsplit(".", 1)[0] if "." in n else n, []).append(n)
    return groups


def entity_groups(model: nn.Module, num_users: int, num_items: int) -> dict[str, list[str]]:
    """``"user"`` / ``"item"`` -> names of parameters whose rows index users / items."""
    if hasattr(model, "entity_parameters"):
        return {e: list(ns) for e, ns in model.entity_parameters().items() if e in ("user", "item")}
    groups: dict[str, list[str]] = {}
    if num_users == num_items:  # a table's size does not tell users from items
        return groups
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Embedding) and mod.weight.requires_grad:
            entity = {num_users: "user", num_items: "item"}.get(mod.num_embeddings)
            if entity is not None:
                groups.setdefault(entity, []).append(f"{name}.weight" if name else "weight")
    return groups


def attach_graph(model: Any, datamodule: Any) -> None:
    """Graph surgery: install the datamodule's (retained) train graph in the model."""
    if hasattr(model, "attach"):
        model.attach(datamodule)
    elif hasattr(model, "set_graph"):
        model.set_graph(datamodule.train_edge_index())


def initial_entity_table(model: Any, name: str, generator: torch.Generator) -> Tensor:
    """A fresh draw of entity table ``name`` (a ``model.named_parameters()`` name) from the model's
    initialiser: ``model.initial_entity_table`` or, for ``backbone.<name>``, the backbone's."""
    if hasattr(model, "initial_entity_table"):
        return model.initial_entity_table(name, generator)
    backbone = getattr(model, "backbone", None)
    if backbone is not None and name.startswith("backbone.") and hasattr(backbone, "initial_entity_table"):
        return backbone.initial_entity_table(name[len("backbone."):], generator)
    raise TypeError(
        f"{type(model).__name__} offers no initial_entity_table(name, generator) for {name!r}; "
        "implement it or hand Reset the untrained model with Reset.use_initial(initial_model)"
    )
