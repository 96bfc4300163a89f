"""Tests for lightning_tru.metrics against a naive per-user pure-Python reference."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor
from torchmetrics import MetricCollection

from lightning_tru.metrics import (
    ExposureAtK,
    HitRateAtK,
    NDCGAtK,
    PrecisionAtK,
    RecallAtK,
    hit_rate_at_k,
    ndcg_at_k,
    precision_at_k,
    ranking_hits,
    ranking_metrics,
    recall_at_k,
)

NUM_USERS = 17
NUM_ITEMS = 30
K_MAX = 10
KS = (1, 3, 5, 10)
SEEDS = (0, 1, 2, 3)


# --------------------------------------------------------------------------- reference


def _ref_recall(ranked: list[int], relevant: set[int], k: int) -> float:
    return sum(1 for item in ranked[:k] if item in relevant) / len(relevant)


def _ref_precision(ranked: list[int], relevant: set[int], k: int) -> float:
    return sum(1 for item in ranked[:k] if item in relevant) / k


def _ref_hit(ranked: list[int], relevant: set[int], k: int) -> float:
    return 1.0 if any(item in relevant for item in ranked[:k]) else 0.0


def _ref_ndcg(ranked: list[int], relevant: set[int], k: int) -> float:
    dcg = 0.0
    for rank, item in enumerate(ranked[:k]):
        if item in relevant:
            dcg += 1.0 / math.log2(rank + 2)
    idcg = 0.0
    for rank in range(min(len(relevant), k)):
        idcg += 1.0 / math.log2(rank + 2)
    return dcg / idcg


def _reference(
    per_user: Callable[[list[int], set[int], int], float], topk: Tensor, target: Tensor, k: int
) -> float:
    """Mean of ``per_user`` over users with at least one relevant item (0.0 if none)."""
    values = []
    for u in range(topk.shape[0]):
        relevant = {i for i in range(target.shape[1]) if bool(target[u, i])}
        if not relevant:
            continue
        values.append(per_user([int(x) for x in topk[u].tolist()], relevant, k))
    return sum(values) / len(values) if values else 0.0


CASES = [
    ("recall", RecallAtK, recall_at_k, _ref_recall),
    ("ndcg", NDCGAtK, ndcg_at_k, _ref_ndcg),
    ("precision", PrecisionAtK, precision_at_k, _ref_precision),
    ("hit", HitRateAtK, hit_rate_at_k, _ref_hit),
]
CASE_IDS = [c[0] for c in CASES]


# --------------------------------------------------------------------------- data


def _make_batch(seed: int, num_users: int = NUM_USERS, k_max: int = K_MAX) -> tuple[Tensor, Tensor]:
    """Random scores with train items masked before topk; some users have no relevant item."""
    gen = torch.Generator().manual_seed(seed)
    scores = torch.rand(num_users, NUM_ITEMS, generator=gen)
    train = torch.rand(num_users, NUM_ITEMS, generator=gen) < 0.2
    # Test items are disjoint from train items; density varies per user so that
    # num_relevant spans 0, small values (< k) and values above k.
    density = torch.rand(num_users, 1, generator=gen) * 0.6
    target = (torch.rand(num_users, NUM_ITEMS, generator=gen) < density) & ~train
    target[::4] = False  # users 0, 4, 8, ... have no relevant item and must be skipped
    # Give users 1 and 2 high scores on their relevant items so that some high-recall/NDCG
    # rankings are exercised, not only random ones.
    scores[1:3] += target[1:3].float()
    masked = scores.masked_fill(train, float("-inf"))
    topk = torch.topk(masked, k_max, dim=1).indices
    return topk, target


def test_batch_fixture_is_informative() -> None:
    topk, target = _make_batch(0)
    num_relevant = target.sum(1)
    assert (num_relevant == 0).any()  # skipped users exist
    assert (num_relevant > K_MAX).any()  # IDCG truncated at k
    assert ((num_relevant > 0) & (num_relevant < 3)).any()  # IDCG truncated at num_relevant
    hits = ranking_hits(topk, target)
    assert hits.any()
    assert not hits.all()


# --------------------------------------------------------------------------- correctness


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize(("name", "metric_cls", "functional", "per_user"), CASES, ids=CASE_IDS)
def test_matches_reference(
    name: str,
    metric_cls: type,
    functional: Callable[[Tensor, Tensor, int], Tensor],
    per_user: Callable[[list[int], set[int], int], float],
    k: int,
    seed: int,
) -> None:
    topk, target = _make_batch(seed)
    expected = _reference(per_user, topk, target, k)

    metric = metric_cls(k=k)
    metric.update(topk, target)
    assert metric.compute().item() == pytest.approx(expected, rel=1e-6, abs=1e-7)
    assert functional(topk, target, k).item() == pytest.approx(expected, rel=1e-6, abs=1e-7)


@pytest.mark.parametrize(("name", "metric_cls", "functional", "per_user"), CASES, ids=CASE_IDS)
def test_zero_relevant_users_are_skipped(
    name: str,
    metric_cls: type,
    functional: Callable[[Tensor, Tensor, int], Tensor],
    per_user: Callable[[list[int], set[int], int], float],
) -> None:
    topk, target = _make_batch(5)
    keep = target.sum(1) > 0
    k = 5
    assert not keep.all()
    full = functional(topk, target, k)
    only_relevant = functional(topk[keep], target[keep], k)
    torch.testing.assert_close(full, only_relevant)

    metric = metric_cls(k=k)
    metric.update(topk, target)
    assert int(metric.total) == int(keep.sum())


@pytest.mark.parametrize(("name", "metric_cls", "functional", "per_user"), CASES, ids=CASE_IDS)
def test_no_relevant_user_at_all_gives_zero(
    name: str,
    metric_cls: type,
    functional: Callable[[Tensor, Tensor, int], Tensor],
    per_user: Callable[[list[int], set[int], int], float],
) -> None:
    topk, target = _make_batch(0)
    target = torch.zeros_like(target)
    metric = metric_cls(k=3)
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert metric.compute().item() == 0.0  # no update at all
    metric.update(topk, target)
    assert metric.compute().item() == 0.0
    assert functional(topk, target, 3).item() == 0.0


def test_hand_computed_values() -> None:
    # user 0 ranks [3, 1, 0, 2]; relevant {1, 2}  -> hits at ranks 1 and 3
    # user 1 ranks [0, 2, 1, 3]; relevant {0}     -> hit at rank 0
    # user 2 has no relevant item                  -> skipped
    topk = torch.tensor([[3, 1, 0, 2], [0, 2, 1, 3], [0, 1, 2, 3]])
    target = torch.tensor(
        [[False, True, True, False], [True, False, False, False], [False, False, False, False]]
    )
    k = 2
    # recall@2: user0 1/2, user1 1/1 -> 0.75
    assert recall_at_k(topk, target, k).item() == pytest.approx(0.75)
    # precision@2: user0 1/2, user1 1/2 -> 0.5
    assert precision_at_k(topk, target, k).item() == pytest.approx(0.5)
    # hit@2: both hit -> 1.0
    assert hit_rate_at_k(topk, target, k).item() == pytest.approx(1.0)
    # ndcg@2: user0 (1/log2(3)) / (1 + 1/log2(3)); user1 1/1
    u0 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(topk, target, k).item() == pytest.approx((u0 + 1.0) / 2)


def test_ranking_hits() -> None:
    topk = torch.tensor([[2, 0], [1, 3]])
    target = torch.tensor([[True, False, False, False], [False, True, False, True]])
    expected = torch.tensor([[False, True], [True, True]])
    assert torch.equal(ranking_hits(topk, target), expected)
    # non-bool targets are read as target != 0
    assert torch.equal(ranking_hits(topk, target.float()), expected)


def test_only_first_k_columns_are_used() -> None:
    topk, target = _make_batch(3)
    for k in KS:
        torch.testing.assert_close(recall_at_k(topk, target, k), recall_at_k(topk[:, :k], target, k))
        torch.testing.assert_close(ndcg_at_k(topk, target, k), ndcg_at_k(topk[:, :k], target, k))


# --------------------------------------------------------------------------- accumulation / states


@pytest.mark.parametrize(("name", "metric_cls", "functional", "per_user"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("seed", SEEDS[:2])
def test_accumulation_equals_single_update(
    name: str,
    metric_cls: type,
    functional: Callable[[Tensor, Tensor, int], Tensor],
    per_user: Callable[[list[int], set[int], int], float],
    seed: int,
) -> None:
    k = 5
    topk, target = _make_batch(seed)
    single = metric_cls(k=k)
    single.update(topk, target)

    accumulated = metric_cls(k=k)
    # uneven splits, including a chunk made only of zero-relevant users (row 0)
    bounds = [0, 1, 6, 7, 17]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        accumulated.update(topk[lo:hi], target[lo:hi])

    torch.testing.assert_close(accumulated.accum, single.accum)
    assert torch.equal(accumulated.total, single.total)
    torch.testing.assert_close(accumulated.compute(), single.compute())
    expected = _reference(per_user, topk, target, k)
    assert accumulated.compute().item() == pytest.approx(expected, rel=1e-6, abs=1e-7)
    # the mean of per-batch means would differ: make sure the batches are informative
    batch_means = [functional(topk[lo:hi], target[lo:hi], k).item() for lo, hi in zip(bounds[:-1], bounds[1:])]
    assert sum(batch_means) / len(batch_means) != pytest.approx(expected)


@pytest.mark.parametrize(("name", "metric_cls", "functional", "per_user"), CASES, ids=CASE_IDS)
def test_reset(
    name: str,
    metric_cls: type,
    functional: Callable[[Tensor, Tensor, int], Tensor],
    per_user: Callable[[list[int], set[int], int], float],
) -> None:
    k = 3
    topk_a, target_a = _make_batch(0)
    topk_b, target_b = _make_batch(1)
    metric = metric_cls(k=k)
    metric.update(topk_a, target_a)
    assert metric.compute().item() > 0
    metric.reset()
    assert metric.accum.item() == 0.0
    assert metric.total.item() == 0
    assert metric.accum.dtype == torch.float64
    assert metric.total.dtype == torch.long
    metric.update(topk_b, target_b)
    expected = _reference(per_user, topk_b, target_b, k)
    assert metric.compute().item() == pytest.approx(expected, rel=1e-6, abs=1e-7)


@pytest.mark.parametrize(("name", "metric_cls", "functional", "per_user"), CASES, ids=CASE_IDS)
def test_states_are_sum_reduced(
    name: str,
    metric_cls: type,
    functional: Callable[[Tensor, Tensor, int], Tensor],
    per_user: Callable[[list[int], set[int], int], float],
) -> None:
    metric = metric_cls(k=5)
    assert metric_cls.full_state_update is False
    assert metric_cls.higher_is_better is True
    assert metric_cls.is_differentiable is False

    # simulate two ranks, each seeing a disjoint part of the users, then merge
    topk, target = _make_batch(2)
    rank0, rank1 = metric_cls(k=5), metric_cls(k=5)
    rank0.update(topk[:9], target[:9])
    rank1.update(topk[9:], target[9:])
    parts = [{n: v.clone() for n, v in m.metric_state.items()} for m in (rank0, rank1)]
    rank0.merge_state(rank1)
    for name, merged in rank0.metric_state.items():  # every state is a sum over ranks
        torch.testing.assert_close(merged, parts[0][name] + parts[1][name])
    single = metric_cls(k=5)
    single.update(topk, target)
    torch.testing.assert_close(rank0.compute(), single.compute())
    assert rank0.compute().item() == pytest.approx(_reference(per_user, topk, target, 5), rel=1e-6, abs=1e-7)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(("name", "metric_cls", "functional", "per_user"), CASES, ids=CASE_IDS)
def test_k_larger_than_k_max_raises(
    name: str,
    metric_cls: type,
    functional: Callable[[Tensor, Tensor, int], Tensor],
    per_user: Callable[[list[int], set[int], int], float],
) -> None:
    topk, target = _make_batch(0, k_max=4)
    metric = metric_cls(k=5)
    with pytest.raises(ValueError, match=r"K_max=4.*k=5"):
        metric.update(topk, target)
    with pytest.raises(ValueError, match=r"K_max=4.*k=5"):
        functional(topk, target, 5)


@pytest.mark.parametrize("bad_k", [0, -1, 2.5, True, "5"])
@pytest.mark.parametrize(("name", "metric_cls", "functional", "per_user"), CASES, ids=CASE_IDS)
def test_invalid_k_raises(
    name: str,
    metric_cls: type,
    functional: Callable[[Tensor, Tensor, int], Tensor],
    per_user: Callable[[list[int], set[int], int], float],
    bad_k: object,
) -> None:
    with pytest.raises(ValueError, match="positive integer"):
        metric_cls(k=bad_k)
    topk, target = _make_batch(0)
    with pytest.raises(ValueError, match="positive integer"):
        functional(topk, target, bad_k)


def test_shape_mismatch_raises() -> None:
    topk, target = _make_batch(0)
    with pytest.raises(ValueError, match="same number of users"):
        recall_at_k(topk[:5], target, 3)
    with pytest.raises(ValueError, match="shape"):
        recall_at_k(topk[0], target, 3)
    with pytest.raises(ValueError, match="integer item indices"):
        recall_at_k(topk.float(), target, 3)


# --------------------------------------------------------------------------- collection


def test_ranking_metrics_collection() -> None:
    collection = ranking_metrics(ks=(3, 5), prefix="val/")
    assert isinstance(collection, MetricCollection)
    expected_keys = {f"val/{name}@{k}" for name in ("recall", "ndcg", "precision", "hit") for k in (3, 5)}
    assert set(collection.keys()) == expected_keys

    refs = {"recall": _ref_recall, "ndcg": _ref_ndcg, "precision": _ref_precision, "hit": _ref_hit}
    batches = [_make_batch(seed, k_max=5) for seed in (0, 1)]
    for topk, target in batches:
        collection.update(topk, target)
    result = collection.compute()
    assert set(result.keys()) == expected_keys

    all_topk = torch.cat([b[0] for b in batches])
    all_target = torch.cat([b[1] for b in batches])
    for name, per_user in refs.items():
        for k in (3, 5):
            expected = _reference(per_user, all_topk, all_target, k)
            assert result[f"val/{name}@{k}"].item() == pytest.approx(expected, rel=1e-6, abs=1e-7)


def test_ranking_metrics_no_false_compute_groups() -> None:
    # Every user has exactly one relevant item on the first batch, so recall@k == hit@k
    # states coincide there; later batches must still update every metric independently.
    k = 3
    collection = ranking_metrics(ks=(k,))
    topk = torch.tensor([[0, 1, 2], [3, 4, 5]])
    first_target = torch.zeros(2, 6, dtype=torch.bool)
    first_target[0, 0] = True
    first_target[1, 5] = True
    collection.update(topk, first_target)
    second_target = torch.zeros(2, 6, dtype=torch.bool)
    second_target[0, [0, 1, 3, 4]] = True  # recall 2/4, hit 1
    second_target[1, [0, 1]] = True  # recall 0, hit 0
    collection.update(topk, second_target)
    result = collection.compute()
    assert result[f"recall@{k}"].item() == pytest.approx((1 + 1 + 0.5 + 0) / 4)
    assert result[f"hit@{k}"].item() == pytest.approx((1 + 1 + 1 + 0) / 4)


def test_ranking_metrics_default_and_validation() -> None:
    collection = ranking_metrics()
    assert {"recall@10", "ndcg@20", "precision@50", "hit@50"} <= set(collection.keys())
    assert len(collection) == 12
    with pytest.raises(ValueError):
        ranking_metrics(ks=())
    with pytest.raises(ValueError, match="positive integer"):
        ranking_metrics(ks=(0,))


def test_forward_returns_batch_value() -> None:
    topk_a, target_a = _make_batch(0)
    topk_b, target_b = _make_batch(1)
    metric = NDCGAtK(k=5)
    batch_value = metric(topk_a, target_a)
    torch.testing.assert_close(batch_value, ndcg_at_k(topk_a, target_a, 5))
    metric(topk_b, target_b)
    expected = _reference(_ref_ndcg, torch.cat([topk_a, topk_b]), torch.cat([target_a, target_b]), 5)
    assert metric.compute().item() == pytest.approx(expected, rel=1e-6, abs=1e-7)


# ------------------------------------------------------------------------------- exposure
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exposure_matches_a_naive_pair_count(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    num_users, num_items, k = 7, 15, 4
    topk = torch.stack([torch.randperm(num_items, generator=g)[:6] for _ in range(num_users)])  # K_max = 6
    target = torch.rand(num_users, num_items, generator=g) < 0.3
    target[0] = False  # a user without targets counts for nothing
    metric = ExposureAtK(k=k)
    metric.update(topk[:3], target[:3])
    metric.update(topk[3:], target[3:])
    shown = sum(int(target[u, i]) for u in range(num_users) for i in topk[u, :k].tolist())
    assert metric.compute().item() == pytest.approx(shown / int(target.sum()), rel=1e-6)
    assert ExposureAtK(k=k).compute().item() == 0.0  # nothing seen: 0, not NaN


@pytest.mark.parametrize("width", [1, 7, 8, 13, 64, 1003])
def test_count_relevant_matches_a_naive_row_sum(width: int) -> None:
    from lightning_tru.metrics.functional import count_relevant

    g = torch.Generator().manual_seed(width)
    target = torch.rand(9, width, generator=g) < 0.4
    target[0] = True  # a full row (every byte 1)
    target[1] = False
    naive = torch.tensor([int(sum(bool(x) for x in row)) for row in target])
    assert torch.equal(count_relevant(target), naive)
    assert torch.equal(count_relevant(target[3:7]), naive[3:7])  # a row slice (storage offset)
    flat = torch.zeros(9 * width + 3, dtype=torch.bool)
    flat[3:] = target.reshape(-1)
    shifted = flat[3:].view(9, width)  # storage offset 3: not 8-byte aligned
    assert torch.equal(count_relevant(shifted), naive)
    assert torch.equal(count_relevant(target.float()), naive)
