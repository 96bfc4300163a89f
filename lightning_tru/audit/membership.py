r"""Pair-level membership inference: can the scores tell forget pairs from popularity-matched non-members?

For the forget pairs :math:`(u, i)` and as many non-member pairs :math:`(u, j)` of the same users
(:math:`j` never interacted with by :math:`u`, drawn from :math:`i`'s train-popularity bin), the
audit reports the exact Mann-Whitney AUC

.. math::
    \mathrm{AUC} = \frac{1}{|P||N|}\sum_{p \in P}\sum_{n \in N}
        \big(\mathbb 1[s_p > s_n] + \tfrac12 \mathbb 1[s_p = s_n]\big)

of the raw scores and, separately, of the within-user rank percentiles (scores are not
comparable across users). Popularity matching makes popularity alone give AUC 0.5. Retrain's AUC
is the reference: above it = residual memory, below it = over-forgetting (the deleted items are
pushed down, which an attacker sees just as well). Without a Retrain the reference is 0.5.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import scipy.sparse as sp
import torch
from scipy.stats import rankdata

from lightning_tru.audit.scoring import score_batches, sorted_rows
from lightning_tru.models.protocol import FrozenScorer

__all__ = ["mann_whitney_auc", "popularity_bins", "matched_nonmembers", "pair_membership", "pair_percentiles",
           "membership_verdict"]


def mann_whitney_auc(positives: Any, negatives: Any) -> float:
    r"""Exact AUC :math:`P(s_p > s_n) + \tfrac12 P(s_p = s_n)` from average ranks (ties handled).

    :math:`\mathrm{AUC} = (R_P - |P|(|P|+1)/2) / (|P||N|)` with :math:`R_P` the sum of the
    positives' ranks in the pooled sample (mid-ranks for ties). O(n log n).
    """
    p = np.asarray(positives, dtype=np.float64).reshape(-1)
    n = np.asarray(negatives, dtype=np.float64).reshape(-1)
    if len(p) == 0 or len(n) == 0:
        raise ValueError(f"AUC needs both classes: got {len(p)} positives and {len(n)} negatives")
    if np.isnan(p).any() or np.isnan(n).any():
        raise ValueError("AUC inputs hold NaN scores; check the model's outputs")
    ranks = rankdata(np.concatenate([p, n]))  # average ranks for ties
    u = ranks[: len(p)].sum() - len(p) * (len(p) + 1) / 2.0
    return float(u / (len(p) * len(n)))


def popularity_bins(popularity: np.ndarray, num_bins: int = 10) -> np.ndarray:
    """``(I,)`` bin id per item: quantile bins of the train popularity; equal counts share a bin."""
    if num_bins < 1:
        raise ValueError(f"num_bins={num_bins} must be >= 1")
    pop = np.asarray(popularity, dtype=np.float64)
    edges = np.unique(np.quantile(pop, np.linspace(0.0, 1.0, num_bins + 1)))
    return np.searchsorted(edges[1:-1], pop, side="right").astype(np.int64)


def matched_nonmembers(
    members: np.ndarray,
    known: sp.csr_matrix,
    popularity: np.ndarray,
    num_bins: int = 10,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """One popularity-matched non-member pair per member pair, for the same user.

    Args:
        members: ``(M, 2)`` member (forget) pairs.
        known: ``(U, I)`` every interaction the data holds (all splits, forgotten ones included):
            a non-member item is outside its user's row.
        popularity: ``(I,)`` train interaction counts (the retained ones: the popularity Retrain sees).
        num_bins: quantile bins of popularity.
        seed: seed of the draw.

    Returns:
        ``(members_kept (M', 2), nonmembers (M', 2))``: member pairs whose bin holds no unknown
        item of their user are dropped (``M - M'`` of them).
    """
    members = np.asarray(members, dtype=np.int64).reshape(-1, 2)
    known = known.tocsr()
    num_items = known.shape[1]
    if len(popularity) != num_items:
        raise ValueError(f"popularity has {len(popularity)} entries; expected one per item ({num_items})")
    bins = popularity_bins(popularity, num_bins)
    by_bin = {int(b): np.flatnonzero(bins == b) for b in np.unique(bins)}
    rng = np.random.default_rng(seed)
    order = np.lexsort((members[:, 1], members[:, 0]))
    members = members[order]
    kept, drawn = [], []
    starts = np.flatnonzero(np.r_[True, members[1:, 0] != members[:-1, 0]])
    for s, e in zip(starts, np.r_[starts[1:], len(members)]):
        u = int(members[s, 0])
        allowed = np.ones(num_items, dtype=bool)
        allowed[known.indices[known.indptr[u] : known.indptr[u + 1]]] = False
        allowed[members[s:e, 1]] = False
        item_bins = bins[members[s:e, 1]]
        for b in np.unique(item_bins):
            rows = s + np.flatnonzero(item_bins == b)
            cand = by_bin[int(b)][allowed[by_bin[int(b)]]]
            if len(cand) == 0:
                continue
            pick = rng.choice(cand, size=len(rows), replace=len(cand) < len(rows))
            kept.append(members[rows])
            drawn.append(np.stack([np.full(len(rows), u), pick], axis=1))
    if not kept:
        raise ValueError("no member pair has an unknown item of its popularity bin; lower num_bins")
    return np.concatenate(kept), np.concatenate(drawn).astype(np.int64)


def _scores_and_percentiles(
    model: Any, pairs: np.ndarray, exclude: sp.csr_matrix, num_items: int, batch_users: int,
    max_cells: int = 1 << 24, by_sort: Optional[bool] = None,
) -> tuple[np.ndarray, np.ndarray]:
    r"""Scores of ``pairs`` and their within-user rank percentiles among the non-excluded items,
    :math:`(\#\{j: s_{uj} < s\} + \tfrac12(\#\{j: s_{uj} = s\} - 1)) / (|C_u| - 1)`.

    The counts come from the users' sorted rows (:math:`O(UI\log I)`) on the CPU (:func:`sorted_rows`: cheaper than
    comparing even at one pair per user) and elsewhere when the users have many pairs each, else by direct comparison
    (:math:`O(PI)`, ``max_cells`` comparisons at a time); ``by_sort`` forces one (``None``: the cheaper)."""
    users = np.unique(pairs[:, 0])
    score_out = np.empty(len(pairs))
    pct_out = np.empty(len(pairs))
    chunk = max(1, max_cells // max(num_items, 1))
    for ub, scores in score_batches(model, users, num_items, exclude, batch_users):
        sel = np.flatnonzero(np.isin(pairs[:, 0], ub))
        row = torch.from_numpy(np.searchsorted(ub, pairs[sel, 0])).to(scores.device)
        col = torch.from_numpy(pairs[sel, 1]).to(scores.device)
        s = scores[row, col]
        if torch.isinf(s).any():
            raise ValueError("an audited pair is among the excluded items; pass pairs outside `exclude`")
        n_excl = torch.isinf(scores).sum(1)
        less, equal = torch.empty_like(s), torch.empty_like(s)
        many = 2 * len(sel) > len(ub) * max(math.log2(num_items), 1.0)
        sort = by_sort if by_sort is not None else scores.device.type == "cpu" or many
        if sort:  # each user's pairs as one padded row of queries into the user's sorted scores (no row copies)
            ordered = sorted_rows(scores)  # -inf (excluded) first
            order = torch.argsort(row, stable=True)
            per_row = torch.bincount(row, minlength=len(ub))
            start = torch.cumsum(per_row, 0) - per_row
            pos = torch.empty_like(row)
            pos[order] = torch.arange(len(row), device=row.device) - start[row[order]]
            queries = torch.full((len(ub), int(per_row.max())), float("inf"), device=scores.device)
            queries[row, pos] = s
            lo = torch.searchsorted(ordered, queries, right=False)
            hi = torch.searchsorted(ordered, queries, right=True)
            less, equal = lo[row, pos].float(), (hi - lo)[row, pos].float()
        else:
            for c in range(0, len(s), chunk):
                block, q = scores[row[c : c + chunk]], s[c : c + chunk, None]
                less[c : c + chunk] = (block < q).sum(1).float()
                equal[c : c + chunk] = (block == q).sum(1).float()
        n_cand = (num_items - n_excl[row]).float()
        less = less - n_excl[row].float()  # the excluded items (-inf) were counted as lower
        pct = (less + 0.5 * (equal - 1.0)) / (n_cand - 1.0).clamp_min(1.0)
        score_out[sel] = s.double().cpu().numpy()
        pct_out[sel] = pct.double().cpu().numpy()
    return score_out, pct_out


def pair_percentiles(model: Any, pairs: np.ndarray, exclude: sp.csr_matrix, batch_users: int = 1024) -> np.ndarray:
    """Within-user rank percentiles of ``pairs`` among the items outside ``exclude`` (1: the user's best, 0: the worst),
    as :func:`pair_membership` ranks them."""
    pairs = np.asarray(pairs).reshape(-1, 2)
    if len(pairs) == 0:
        return np.zeros(0)
    return _scores_and_percentiles(FrozenScorer.of(model), pairs, exclude, exclude.shape[1], batch_users)[1]


def pair_membership(
    model: Any,
    members: np.ndarray,
    nonmembers: np.ndarray,
    exclude: sp.csr_matrix,
    batch_users: int = 1024,
) -> dict[str, float]:
    """AUC of member vs non-member pairs by raw score (``auc``) and by within-user rank percentile
    (``auc_rank``), with the mean percentiles and the null standard error of the AUC.

    ``exclude`` (``(U, I)``, e.g. the retained train items) is left out of the percentile ranking;
    neither pair set may lie in it. The model is scored with the graph it holds.
    """
    num_items = exclude.shape[1]
    members, nonmembers = np.asarray(members), np.asarray(nonmembers)
    both = np.concatenate([members, nonmembers]).reshape(-1, 2)  # one scoring pass: the users mostly coincide
    scores, pct = _scores_and_percentiles(FrozenScorer.of(model), both, exclude, num_items, batch_users)
    n1, n2 = len(members), len(nonmembers)
    ms, mp, ns, np_ = scores[:n1], pct[:n1], scores[n1:], pct[n1:]
    return {
        "auc": mann_whitney_auc(ms, ns),
        "auc_rank": mann_whitney_auc(mp, np_),
        "member_percentile": float(mp.mean()),
        "nonmember_percentile": float(np_.mean()),
        "pairs": float(n1),
        "se": float(np.sqrt((n1 + n2 + 1) / (12.0 * n1 * n2))),  # Mann-Whitney null SE
    }


def membership_verdict(auc: float, reference: Optional[float] = None, tolerance: float = 0.05) -> dict[str, Any]:
    """Two-sided verdict against the reference AUC (Retrain's, else 0.5).

    ``flag``: ``"residual_memory"`` when ``auc - reference > tolerance``, ``"over_forgetting"``
    when ``< -tolerance``, else ``"ok"``.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance={tolerance} must be >= 0")
    ref = 0.5 if reference is None else float(reference)
    delta = float(auc) - ref
    flag = "residual_memory" if delta > tolerance else "over_forgetting" if delta < -tolerance else "ok"
    return {"reference": ref, "delta": delta, "flag": flag}
