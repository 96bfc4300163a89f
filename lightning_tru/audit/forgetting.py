r"""Forgetting audits: forget-pair recall and target-item exposure under full ranking."""
from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from lightning_tru.datamodules.datamodule import RankingDataset
from lightning_tru.metrics import RecallAtK
from lightning_tru.metrics.exposure import ExposureAtK
from lightning_tru.models.protocol import all_scores


def _dense_rows(m: sp.csr_matrix, rows: np.ndarray, device: torch.device) -> torch.Tensor:
    return RankingDataset.dense(m[rows]).to(device)


def forget_metrics(
    model: Any, retained_train: sp.csr_matrix, forget: sp.csr_matrix, k: int = 20, batch_users: int = 1024
) -> dict[str, float]:
    r"""Recall@K and exposure@K of the forget pairs for the users who forgot them.

    Each forgetting user ranks all items with their *retained* train items masked (the
    ranking a deployed model would serve). ``forget_recall`` is the user-averaged share of
    their forgotten items in the top-K; ``exposure`` the pair-level share
    :math:`\sum_u |\mathrm{top}_K(u) \cap F_u| / \sum_u |F_u|`.
    """
    forget = forget.tocsr()
    users = np.flatnonzero(np.diff(forget.indptr) > 0)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    # every rank ranks all forgetting users: no cross-rank sync (identical on every rank)
    recall = RecallAtK(k, sync_on_compute=False).to(device)
    exposure = ExposureAtK(k, sync_on_compute=False).to(device)
    num_items = forget.shape[1]
    for s in range(0, len(users), batch_users):
        ub = users[s : s + batch_users]
        ut = torch.from_numpy(ub).to(device)
        scores = all_scores(model, ut, num_items).masked_fill(_dense_rows(retained_train, ub, device), float("-inf"))
        top = torch.topk(scores, min(k, num_items), dim=1).indices
        target = _dense_rows(forget, ub, device)
        recall.update(top, target)
        exposure.update(top, target)
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
