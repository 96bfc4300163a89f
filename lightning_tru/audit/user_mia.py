r"""User-level membership inference (Zhang et al., CCS 2021, https://arxiv.org/abs/2109.08045;
code: minxingzhang/MIARS).

Feature of user :math:`u` under a recommender: the mean item vector of the user's history minus
the rank-weighted centroid of their top-:math:`n` recommendations (:math:`n = 100`),

.. math::
    f_u = \frac{1}{|H_u|}\sum_{i \in H_u} v_i - \sum_{j=0}^{n-1} w_j\, v_{r_j(u)},
    \qquad w_j = \frac{n - j}{n(n+1)/2} \;\; (= (100 - j)/5050),

a member's recommendations sit close to their history. Item vectors :math:`v`: the model's own
item table (``embeddings()[1]``); a model without ``embeddings()`` falls back to the item factors
of a rank-``d`` truncated SVD of the train interaction matrix (Zhang et al.'s own choice for
black-box recommenders). The attack, an MLP :math:`d \to 32 \to 8 \to 2` trained with SGD
(lr 0.01, momentum 0.9, seeded, full batch, cross-entropy), learns members vs non-members of a
*shadow* recommender trained on other users, and is then applied to the target.
"""
from __future__ import annotations

from typing import Any, Literal, Optional

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import svds
from torch import Tensor, nn

from lightning_tru.audit.membership import mann_whitney_auc
from lightning_tru.audit.scoring import top_k
from lightning_tru.models.protocol import eval_mode

__all__ = ["rank_weights", "item_vectors", "user_features", "AttackMLP", "train_attack", "member_probability",
           "user_mia"]


def rank_weights(n: int = 100) -> Tensor:
    """``(n,)`` weights :math:`(n - j) / (n(n+1)/2)`, best rank first; they sum to 1."""
    if n < 1:
        raise ValueError(f"n={n} recommendations must be >= 1")
    j = torch.arange(n, dtype=torch.float64)
    return (n - j) / (n * (n + 1) / 2.0)


def item_vectors(model: Any, train: Optional[sp.csr_matrix] = None, dim: int = 32) -> Tensor:
    """``(I, d)`` item vectors: the model's item table, else a truncated SVD of ``train`` (CPU, float64)."""
    if hasattr(model, "embeddings"):  # eval mode: no dropout, BatchNorm's running statistics used and left unchanged
        with eval_mode(model), torch.no_grad():
            return model.embeddings()[1].detach().double().cpu()
    if train is None:
        raise ValueError(f"{type(model).__name__} has no embeddings(); pass the train matrix for the SVD fallback")
    k = max(1, min(dim, min(train.shape) - 1))
    _, s, vt = svds(train.astype(np.float64), k=k, random_state=0)
    return torch.from_numpy((vt.T * np.sqrt(s))[:, ::-1].copy())


def user_features(
    model: Any,
    users: np.ndarray,
    history: sp.csr_matrix,
    exclude: sp.csr_matrix,
    n: int = 100,
    vectors: Optional[Tensor] = None,
    batch_users: int = 1024,
) -> Tensor:
    """``(B, d)`` features :math:`f_u` of ``users``: ``history`` rows give :math:`H_u`, the top-``n``
    is ranked with ``exclude`` masked (the items the recommender knows the user has)."""
    users = np.asarray(users, dtype=np.int64)
    v = item_vectors(model, exclude) if vectors is None else vectors.double().cpu()
    hist = history.tocsr()[users]
    counts = np.diff(hist.indptr)
    if (counts == 0).any():
        raise ValueError(f"{int((counts == 0).sum())} audited users have an empty history; audit users with interactions")
    h = torch.from_numpy(np.asarray(hist.astype(np.float64) @ v.numpy())) / torch.from_numpy(counts)[:, None]
    n = min(n, exclude.shape[1])
    top = top_k(model, users, exclude.shape[1], n, exclude, batch_users)  # (B, n)
    centroid = (rank_weights(n)[None, :, None] * v[top]).sum(1)  # (B, d), weights sum to 1
    return (h - centroid).float()


class AttackMLP(nn.Sequential):
    r"""The attack classifier :math:`d \to 32 \to 8 \to 2` with ReLU; logits of (non-member, member)."""

    def __init__(self, in_dim: int, hidden: tuple[int, int] = (32, 8)) -> None:
        super().__init__(nn.Linear(in_dim, hidden[0]), nn.ReLU(), nn.Linear(hidden[0], hidden[1]), nn.ReLU(),
                         nn.Linear(hidden[1], 2))


def _standardise(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    return (x - mean) / std


def train_attack(
    features: Tensor, labels: Tensor, epochs: int = 300, lr: float = 0.01, momentum: float = 0.9, seed: int = 0
) -> tuple[AttackMLP, Tensor, Tensor]:
    """Full-batch SGD on cross-entropy; features are standardised with the shadow's statistics.

    Returns ``(attack, mean, std)`` (pass the last two to :func:`member_probability`).
    """
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"features {tuple(features.shape)} and labels {tuple(labels.shape)} do not match")
    if len(torch.unique(labels)) != 2:
        raise ValueError("the attack needs both members (1) and non-members (0) of the shadow model")
    mean, std = features.mean(0), features.std(0).clamp_min(1e-8)
    g = torch.Generator().manual_seed(seed)
    attack = AttackMLP(features.shape[1])
    with torch.no_grad():
        for p in attack.parameters():  # seeded re-initialisation, independent of the global RNG
            p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) / np.sqrt(p.shape[-1]))
    opt = torch.optim.SGD(attack.parameters(), lr=lr, momentum=momentum)
    x, y = _standardise(features.float(), mean, std), labels.long()
    with torch.enable_grad():
        for _ in range(epochs):
            opt.zero_grad()
            nn.functional.cross_entropy(attack(x), y).backward()
            opt.step()
    return attack.eval(), mean, std


def member_probability(attack: AttackMLP, features: Tensor, mean: Tensor, std: Tensor) -> np.ndarray:
    """``(B,)`` probability the attack assigns to "member"."""
    with torch.no_grad():
        return torch.softmax(attack(_standardise(features.float(), mean, std)), dim=1)[:, 1].double().numpy()


def user_mia(
    shadow: Any,
    shadow_members: np.ndarray,
    shadow_nonmembers: np.ndarray,
    shadow_exclude: sp.csr_matrix,
    history: sp.csr_matrix,
    targets: dict[str, tuple[Any, sp.csr_matrix]],
    positives: np.ndarray,
    negatives: np.ndarray,
    n: int = 100,
    epochs: int = 300,
    seed: int = 0,
    positive_history: Optional[sp.csr_matrix] = None,
    vectors: Literal["model", "data"] = "model",
) -> dict[str, dict[str, float]]:
    """Train the attack on ``shadow`` and apply it to each target model.

    Args:
        shadow: the shadow recommender (trained on ``shadow_members`` only).
        shadow_members, shadow_nonmembers: its labelled users.
        shadow_exclude: items masked in the shadow's recommendations (its train items).
        history: every user's history :math:`H_u` (e.g. all train interactions of the data).
        targets: name -> ``(model, exclude)``, the items each target masks.
        positives, negatives: audited users; per target ``auc`` = AUC of the member probability
            of ``positives`` against ``negatives``.
        n: recommendations per user; epochs, seed: attack training.
        positive_history: the positives' history when it differs (e.g. the forgotten pairs).
        vectors: ``"model"``: each model's own item table (the attack then transfers only when the
            shadow starts from the target's initial model, so that their spaces align); ``"data"``:
            one shared SVD of ``history`` for every model (Zhang et al.'s black-box setting).

    Returns:
        ``{"shadow": {"auc"}, <target>: {"auc", "positive_member_rate", "negative_member_rate"}}``;
        shadow ``auc`` is the attack's fit on its own training users.
    """
    if vectors not in ("model", "data"):
        raise ValueError(f"vectors={vectors!r} must be 'model' or 'data'")
    v = item_vectors(object(), history) if vectors == "data" else None
    fs = torch.cat([user_features(shadow, shadow_members, history, shadow_exclude, n, v),
                    user_features(shadow, shadow_nonmembers, history, shadow_exclude, n, v)])
    ys = torch.cat([torch.ones(len(shadow_members)), torch.zeros(len(shadow_nonmembers))])
    attack, mean, std = train_attack(fs, ys, epochs=epochs, seed=seed)
    ps = member_probability(attack, fs, mean, std)
    out = {"shadow": {"auc": mann_whitney_auc(ps[ys.numpy() == 1], ps[ys.numpy() == 0])}}
    ph = history if positive_history is None else positive_history
    for name, (model, exclude) in targets.items():
        pp = member_probability(attack, user_features(model, positives, ph, exclude, n, v), mean, std)
        pn = member_probability(attack, user_features(model, negatives, history, exclude, n, v), mean, std)
        out[name] = {"auc": mann_whitney_auc(pp, pn), "positive_member_rate": float((pp > 0.5).mean()),
                     "negative_member_rate": float((pn > 0.5).mean())}
    return out
