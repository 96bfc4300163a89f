r"""Fairness after unlearning (CURE4Rec, NeurIPS 2024): the NDCG@K gap between active and inactive users.

.. math::
    \Delta\mathrm{NDCG@}K = \overline{\mathrm{NDCG@}K}_{A} - \overline{\mathrm{NDCG@}K}_{\bar A}

with :math:`A` the top ``active_share`` (5%) of the evaluated users by train interactions (ties
broken by user id) and :math:`\bar A` the rest; NDCG on the held-out ``target`` rows with the
``exclude`` items (train, or train + valid) masked.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from lightning_tru.audit.scoring import dense_rows, score_batches
from lightning_tru.metrics.functional import count_relevant
from lightning_tru.metrics.ranking import NDCGAtK

__all__ = ["active_users", "ndcg_gap"]


def active_users(train: sp.csr_matrix, users: np.ndarray, share: float = 0.05) -> np.ndarray:
    """The ``ceil(share * len(users))`` users with the most train interactions (ties: lower id first)."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"active share={share} must be in (0, 1), e.g. 0.05 for the top 5%")
    users = np.asarray(users, dtype=np.int64)
    counts = np.diff(train.tocsr().indptr)[users]
    n = int(np.ceil(share * len(users)))
    return np.sort(users[np.lexsort((users, -counts))[:n]])


def ndcg_gap(
    model: Any,
    train: sp.csr_matrix,
    exclude: sp.csr_matrix,
    target: sp.csr_matrix,
    k: int = 20,
    active_share: float = 0.05,
    batch_users: int = 1024,
) -> dict[str, float]:
    """``{"ndcg_active", "ndcg_inactive", "ndcg_gap"}`` over the users with a held-out ``target`` row."""
    target = target.tocsr()
    users = np.flatnonzero(np.diff(target.indptr) > 0)
    if len(users) < 2:
        raise ValueError("the fairness gap needs at least two users with held-out interactions")
    active = active_users(train, users, active_share)
    metrics = {"active": NDCGAtK(k, sync_on_compute=False), "inactive": NDCGAtK(k, sync_on_compute=False)}
    num_items = target.shape[1]
    for ub, scores in score_batches(model, users, num_items, exclude, batch_users):
        top = torch.topk(scores, min(k, num_items), dim=1).indices
        t = dense_rows(target, ub, scores.device)
        is_active = np.isin(ub, active)
        for name, sel in (("active", is_active), ("inactive", ~is_active)):
            if sel.any():
                rows = np.flatnonzero(sel)
                metrics[name].update(top[rows], t[rows], num_relevant=count_relevant(t[rows]))
    a, b = float(metrics["active"].compute()), float(metrics["inactive"].compute())
    return {f"ndcg@{k}_active": a, f"ndcg@{k}_inactive": b, f"ndcg@{k}_gap": a - b}

