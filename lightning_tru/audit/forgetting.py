r"""Forgetting audits: recall and exposure of target pairs (forgotten, or held out) under full ranking."""
from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from lightning_tru.audit.scoring import dense_rows
from lightning_tru.metrics import RecallAtK
from lightning_tru.metrics.exposure import ExposureAtK
from lightning_tru.models.protocol import all_scores, eval_mode


def recall_exposure_at_k(
    model: Any, exclude: sp.csr_matrix, target: sp.csr_matrix, k: int = 20, batch_users: int = 1024
) -> dict[str, float]:
    r"""Recall@K and exposure@K of the ``target`` pairs, each user with targets ranking all items
    with its ``exclude`` items masked.

    ``recall`` is the user-averaged share of a user's targets in its top-K; ``exposure`` the
    pair-level share :math:`\sum_u |\mathrm{top}_K(u) \cap T_u| / \sum_u |T_u|`. With
    ``exclude`` = retained train pairs and ``target`` = forget pairs: how much of the deleted data
    a deployed model still serves (keys ``forget_recall@K``, ``exposure@K``); with train + valid and
    test pairs: the held-out recall non-members get.
    """
    target = target.tocsr()
    users = np.flatnonzero(np.diff(target.indptr) > 0)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    # every rank ranks all target users: no cross-rank sync (identical on every rank)
    recall = RecallAtK(k, sync_on_compute=False).to(device)
    exposure = ExposureAtK(k, sync_on_compute=False).to(device)
    num_items = target.shape[1]
    with eval_mode(model):  # no dropout in a measurement (every module's own mode comes back afterwards)
        for s in range(0, len(users), batch_users):
            ub = users[s : s + batch_users]
            ut = torch.from_numpy(ub).to(device)
            scores = all_scores(model, ut, num_items).masked_fill(dense_rows(exclude, ub, device), float("-inf"))
            top = torch.topk(scores, min(k, num_items), dim=1).indices
            hits = dense_rows(target, ub, device)
            recall.update(top, hits)
            exposure.update(top, hits)
    return {f"forget_recall@{k}": float(recall.compute()), f"exposure@{k}": float(exposure.compute())}




def random_recall(retained_train: sp.csr_matrix, forget: sp.csr_matrix, k: int = 20) -> float:
    r"""Expected forget Recall@K of a uniformly random ranking: :math:`\frac{1}{|U_f|}\sum_u \min(K, n_u)/n_u`.

    :math:`n_u` = items left after masking the user's retained train items. The reference for
    user- and item-wise deletion with embedding backbones: Retrain never updates the embedding
    of a user (item) without interactions, so it ranks the forgotten pairs about at random.
    """
    forget = forget.tocsr()
    users = np.flatnonzero(np.diff(forget.indptr) > 0)
    n = forget.shape[1] - np.diff(retained_train.tocsr().indptr)[users]
    n = np.maximum(n, 1)
    return float(np.mean(np.minimum(k, n) / n)) if len(users) else 0.0
