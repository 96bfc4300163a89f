"""Pair-level membership inference: exact AUC, popularity matching, and verdicts on planted models."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import Tensor, nn

from _audit_setup import planted
from lightning_tru.audit.membership import (
    mann_whitney_auc,
    matched_nonmembers,
    membership_verdict,
    pair_membership,
    popularity_bins,
)


def _naive_auc(p: np.ndarray, n: np.ndarray) -> float:
    return float(np.mean([(a > b) + 0.5 * (a == b) for a in p for b in n]))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("levels", [3, 1000])  # heavy ties / almost none
def test_auc_matches_naive_pairwise_count(seed: int, levels: int) -> None:
    rng = np.random.default_rng(seed)
    p, n = rng.integers(0, levels, 40).astype(float), rng.integers(0, levels, 25).astype(float) - 0.3 * seed
    assert mann_whitney_auc(p, n) == pytest.approx(_naive_auc(p, n), abs=1e-12)


def test_auc_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="both classes"):
        mann_whitney_auc([], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        mann_whitney_auc([np.nan], [1.0])


def test_popularity_bins_keep_equal_counts_together() -> None:
    pop = np.array([0, 0, 0, 0, 1, 1, 2, 5, 9, 30])
    bins = popularity_bins(pop, 4)
    for v in np.unique(pop):
        assert len(np.unique(bins[pop == v])) == 1
    assert np.all(np.diff(bins[np.argsort(pop, kind="stable")]) >= 0)  # monotone in popularity
    with pytest.raises(ValueError, match="num_bins"):
        popularity_bins(pop, 0)


def _setting() -> tuple:
    p = planted()
    udm = p.udm
    known = udm.source.data.csr("train", "valid", "test")
    pop = np.asarray(udm.retained_train_csr().sum(0)).ravel()
    return p, udm, known, pop


def test_nonmembers_are_unknown_same_user_same_bin_and_seeded() -> None:
    _, udm, known, pop = _setting()
    members, non = matched_nonmembers(udm.forget.forget_pairs, known, pop, num_bins=10, seed=3)
    assert len(members) == len(udm.forget.forget_pairs)
    assert np.array_equal(members[:, 0], non[:, 0])
    assert not np.asarray(known[non[:, 0], non[:, 1]]).any()  # never interacted with
    bins = popularity_bins(pop, 10)
    assert np.array_equal(bins[members[:, 1]], bins[non[:, 1]])
    again = matched_nonmembers(udm.forget.forget_pairs, known, pop, num_bins=10, seed=3)[1]
    assert np.array_equal(non, again)


class _Popularity(nn.Module):
    """Scores every pair by the item's popularity alone."""

    def __init__(self, pop: np.ndarray, num_users: int) -> None:
        super().__init__()
        self.u = nn.Parameter(torch.ones(num_users, 1))
        self.i = nn.Parameter(torch.from_numpy(pop.astype(np.float32))[:, None])

    def embeddings(self) -> tuple[Tensor, Tensor]:
        return self.u, self.i


def test_popularity_alone_gives_half_only_when_matched() -> None:
    _, udm, known, pop = _setting()
    model = _Popularity(pop, udm.num_users)
    members, non = matched_nonmembers(udm.forget.forget_pairs, known, pop, num_bins=10, seed=0)
    matched = pair_membership(model, members, non, udm.retained_train_csr())["auc"]
    rng = np.random.default_rng(0)  # uniform unknown items instead: popularity leaks membership
    uniform = []
    for u, _ in members:
        cand = np.flatnonzero(~known[u].toarray().ravel().astype(bool))
        uniform.append((u, rng.choice(cand)))
    unmatched = pair_membership(model, members, np.array(uniform), udm.retained_train_csr())["auc"]
    assert abs(matched - 0.5) < 0.1 < unmatched - 0.5


class _PushDown(nn.Module):
    """A model that sends the forget pairs to the bottom of their users' rankings (no embeddings())."""

    def __init__(self, base: nn.Module, forget: sp.csr_matrix) -> None:
        super().__init__()
        self.base = base
        self.register_buffer("mask", torch.from_numpy(forget.toarray() > 0))

    def score(self, users: Tensor, items: Tensor) -> Tensor:
        return self.base.score(users, items) - 100.0 * self.mask[users, items].float()


def test_trained_retrain_and_pushdown_on_planted_data() -> None:
    p, udm, known, pop = _setting()
    members, non = matched_nonmembers(udm.forget.forget_pairs, known, pop, num_bins=10, seed=0)
    excl = udm.retained_train_csr()
    trained = pair_membership(p.trained, members, non, excl)
    retrain = pair_membership(p.retrain, members, non, excl)
    pushed = pair_membership(_PushDown(p.retrain, udm.forget_csr()), members, non, excl)
    assert trained["auc"] > retrain["auc"] + 0.1 and trained["auc_rank"] > retrain["auc_rank"] + 0.1
    assert abs(retrain["auc"] - 0.5) < 3 * retrain["se"] + 0.02
    assert pushed["auc"] < 0.1 and pushed["auc_rank"] < 0.1 and pushed["member_percentile"] < 0.15  # all of a user's forget items share the bottom
    assert membership_verdict(trained["auc"], retrain["auc"])["flag"] == "residual_memory"
    assert membership_verdict(pushed["auc"], retrain["auc"])["flag"] == "over_forgetting"
    assert membership_verdict(pushed["auc"])["flag"] == "over_forgetting"  # reference 0.5 without Retrain
    other_seed = pair_membership(p.retrain2, members, non, excl)["auc"]
    assert membership_verdict(other_seed, retrain["auc"])["flag"] == "ok"


class _Fixed(nn.Module):
    """Scores from fixed tables (quantised: many ties)."""

    def __init__(self, users: int, items: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.u = nn.Parameter(torch.randint(-2, 3, (users, 3), generator=g).float())
        self.i = nn.Parameter(torch.randint(-2, 3, (items, 3), generator=g).float())

    def embeddings(self) -> tuple[Tensor, Tensor]:
        return self.u, self.i

    def score(self, users: Tensor, items: Tensor) -> Tensor:
        return (self.u[users] * self.i[items]).sum(-1)


@pytest.mark.parametrize("by_sort", [True, False, None])
@pytest.mark.parametrize("max_cells", [7, 1 << 24])  # one pair per comparison block / all at once
def test_rank_percentiles_match_a_naive_count(max_cells: int, by_sort: bool) -> None:
    from lightning_tru.audit.membership import _scores_and_percentiles

    rng = np.random.default_rng(0)
    model = _Fixed(12, 9, 0)
    exclude = sp.csr_matrix((rng.random((12, 9)) < 0.3).astype(np.float32))
    free = np.argwhere(exclude.toarray() == 0)
    pairs = free[rng.choice(len(free), 25, replace=False)]
    scores, pct = _scores_and_percentiles(model, pairs, exclude, 9, batch_users=5, max_cells=max_cells,
                                          by_sort=by_sort)
    full = (model.u @ model.i.T).detach().numpy()
    for (u, i), s, p in zip(pairs, scores, pct):
        cand = full[u][exclude.toarray()[u] == 0]
        less, equal = (cand < full[u, i]).sum(), (cand == full[u, i]).sum()
        assert s == pytest.approx(full[u, i])
        assert p == pytest.approx((less + 0.5 * (equal - 1)) / max(len(cand) - 1, 1))


def test_frozen_scorer_scores_like_its_model_and_passes_through_others() -> None:
    from lightning_tru.models.protocol import FrozenScorer, all_scores

    model = _Fixed(6, 5, 1)
    frozen = FrozenScorer.of(model)
    users = torch.arange(6)
    assert torch.equal(all_scores(frozen, users, 5), all_scores(model, users, 5))
    assert torch.equal(frozen.score(users, users % 5), model.score(users, users % 5))
    assert not any(p.requires_grad for p in frozen.parameters())
    with torch.no_grad():
        model.u.add_(1.0)  # an edit after freezing: the frozen scorer keeps the state it was built from
    assert not torch.equal(all_scores(frozen, users, 5), all_scores(model, users, 5))
    plain = nn.Linear(2, 2)  # no embeddings(): scored through the model itself
    assert FrozenScorer.of(plain) is plain


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sorted_rows_is_torch_sort(dtype: torch.dtype) -> None:
    """The CPU sort through NumPy gives torch.sort's values exactly: ties, -inf (excluded items) first, +inf last."""
    from lightning_tru.audit.scoring import sorted_rows

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 7, (50, 300), generator=g).to(dtype) / 3  # many ties
    x[torch.rand(x.shape, generator=g) < 0.1] = float("-inf")
    x[0, :5] = float("inf")
    out = sorted_rows(x)
    assert out.dtype == dtype and torch.equal(out, torch.sort(x, dim=1).values)
    assert torch.equal(sorted_rows(x.T.contiguous().T), torch.sort(x, dim=1).values)  # a non-contiguous input
