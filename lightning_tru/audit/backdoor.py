r"""Backdoor removal: a promotion attack by fake users, and its success rate.

Poisoning (Fang et al., WWW 2020 style, data side only): :math:`n_f = \lceil \text{share}\cdot U\rceil`
fake users are appended (ids :math:`U, \dots, U + n_f - 1`), each with the one unpopular *target*
item plus ``num_fillers`` filler items drawn without replacement with probability proportional to
train popularity (so that fake users look like ordinary ones), all in the train split. Train on
the poisoned data, delete exactly the fake users, then

.. math::
    \mathrm{success@}K = \frac{|\{u \in N : t \in T_K(u)\}|}{|N|}

with :math:`N` the normal users who never interacted with the target :math:`t` and
:math:`T_K(u)` their top-K outside their train items. After unlearning it should sit at
Retrain's level. On graph backbones graph surgery alone may already remove the promotion (the
fake users' edges no longer carry it); on an ID-only model (:class:`~lightning_tru.nn.MF`) it
lives in the weights.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

import numpy as np
import scipy.sparse as sp

from lightning_tru.audit.scoring import top_k
from lightning_tru.audit.requests import users_forget_set
from lightning_tru.datamodules.forget import ForgetSet
from lightning_tru.datamodules.interactions import TRAIN, InteractionData

__all__ = ["Poisoned", "poison", "fake_user_request", "attack_success"]


class Poisoned(NamedTuple):
    """Output of :func:`poison`: the poisoned data, the fake user ids and the target item."""

    data: InteractionData
    fake_users: np.ndarray
    target: int


def poison(
    data: InteractionData,
    share: float = 0.03,
    num_fillers: Optional[int] = None,
    target: Optional[int] = None,
    target_quantile: float = 0.2,
    seed: int = 0,
) -> Poisoned:
    """Append fake users promoting one unpopular item.

    Args:
        data: the clean data (not modified).
        share: fake users as a share of ``data.num_users`` (rounded up; > 0).
        num_fillers: filler items per fake user; default the mean train interactions per user, minus one.
        target: the promoted item; default a seeded draw among the items in the bottom
            ``target_quantile`` of train popularity.
        target_quantile: see ``target``.
        seed: seed of the target and filler draws.
    """
    if not 0.0 < share < 1.0:
        raise ValueError(f"share={share} must be in (0, 1), e.g. 0.03 for 3% fake users")
    rng = np.random.default_rng(seed)
    train = data.split_pairs(TRAIN)
    pop = np.bincount(train[:, 1], minlength=data.num_items).astype(np.float64)
    if target is None:
        if not 0.0 < target_quantile <= 1.0:
            raise ValueError(f"target_quantile={target_quantile} must be in (0, 1]")
        cold = np.flatnonzero(pop <= np.quantile(pop, target_quantile))
        target = int(rng.choice(cold))
    elif not 0 <= target < data.num_items:
        raise ValueError(f"target={target} is not an item id (0..{data.num_items - 1})")
    if num_fillers is None:
        num_fillers = max(1, int(round(len(train) / max(1, len(np.unique(train[:, 0]))))) - 1)
    if not 0 <= num_fillers < data.num_items:
        raise ValueError(f"num_fillers={num_fillers} must be in [0, {data.num_items - 1}]")
    n_fake = math.ceil(share * data.num_users)
    weights = pop.copy()
    weights[target] = 0.0
    if weights.sum() <= 0:
        weights = np.ones(data.num_items)
        weights[target] = 0.0
    weights /= weights.sum()
    fake_users = np.arange(data.num_users, data.num_users + n_fake, dtype=np.int64)
    rows = []
    for u in fake_users:
        fillers = rng.choice(data.num_items, size=min(num_fillers, int((weights > 0).sum())), replace=False, p=weights)
        items = np.r_[target, fillers]
        rows.append(np.stack([np.full(len(items), u), items], axis=1))
    fake = np.concatenate(rows).astype(np.int64)
    poisoned = InteractionData(
        num_users=data.num_users + n_fake,
        num_items=data.num_items,
        pairs=np.concatenate([data.pairs, fake]),
        split=np.concatenate([data.split, np.full(len(fake), TRAIN, dtype=np.int8)]),
        features=data.features,
        item_graphs=data.item_graphs,
        name=f"{data.name}-poisoned",
    )
    return Poisoned(poisoned, fake_users, target)


def fake_user_request(poisoned: Poisoned) -> ForgetSet:
    """The user-wise deletion request of exactly the fake users."""
    return users_forget_set(poisoned.data, poisoned.fake_users)


def attack_success(
    model: Any,
    target: int,
    interactions: sp.csr_matrix,
    exclude: sp.csr_matrix,
    users: np.ndarray,
    k: int = 20,
    batch_users: int = 1024,
) -> float:
    """Share of ``users`` (normal users) without any ``interactions`` with ``target`` that get it in
    their top-K (``exclude``, e.g. train items, masked)."""
    users = np.asarray(users, dtype=np.int64)
    touched = np.asarray(interactions.tocsc()[:, target].todense()).ravel() > 0
    users = users[~touched[users]]
    if len(users) == 0:
        raise ValueError(f"every audited user interacted with the target item {target}; pick another target")
    top = top_k(model, users, exclude.shape[1], k, exclude, batch_users)
    return float((top == target).any(1).float().mean())
