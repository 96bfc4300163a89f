"""Tests of the seeded synthetic data generator."""
from __future__ import annotations


import numpy as np
import pytest

from lightning_tru.datamodules import InteractionData, make_synthetic
from lightning_tru.datamodules.synthetic import planted_factors

SMALL = dict(num_users=300, num_items=200, mean_interactions=12.0, min_interactions=3)


def _top_share(data: InteractionData, fraction: float = 0.1) -> float:
    counts = np.sort(np.bincount(data.pairs[:, 1], minlength=data.num_items))[::-1]
    return float(counts[: max(1, int(fraction * data.num_items))].sum() / counts.sum())


def _r2(x: np.ndarray, y: np.ndarray) -> float:
    """R^2 of the least-squares fit (with intercept) of ``y`` from ``x``."""
    x1 = np.c_[x.astype(np.float64), np.ones(len(x))]
    coef, *_ = np.linalg.lstsq(x1, y, rcond=None)
    resid = y - x1 @ coef
    return float(1 - (resid**2).sum() / ((y - y.mean(axis=0)) ** 2).sum())


def test_defaults_sizes_and_dtypes() -> None:
    data = make_synthetic()
    assert (data.num_users, data.num_items, data.name) == (2000, 1000, "synthetic")
    assert data.pairs.dtype == np.int64 and data.split.dtype == np.int8
    assert data.feature_dims == {"image": 64, "text": 32}
    for f in data.features.values():
        assert f.dtype == np.float32 and f.shape[0] == 1000
        np.testing.assert_allclose(f.mean(axis=0), 0, atol=1e-4)
        np.testing.assert_allclose(f.std(axis=0), 1, atol=1e-3)
    per_user = np.bincount(data.pairs[:, 0], minlength=data.num_users)
    assert per_user.min() >= 5 and per_user.max() <= 500
    assert 17 < per_user.mean() < 23
    s = data.summary()
    assert s["valid"] / len(data.pairs) == pytest.approx(0.1, abs=0.03)
    assert s["test"] / len(data.pairs) == pytest.approx(0.1, abs=0.03)


def test_same_seed_same_data_different_seed_different() -> None:
    a, b, c = make_synthetic(**SMALL, seed=3), make_synthetic(**SMALL, seed=3), make_synthetic(**SMALL, seed=4)
    np.testing.assert_array_equal(a.pairs, b.pairs)
    np.testing.assert_array_equal(a.split, b.split)
    for m in a.features:
        np.testing.assert_array_equal(a.features[m], b.features[m])
    assert a.pairs.shape != c.pairs.shape or not np.array_equal(a.pairs, c.pairs)
    assert not np.array_equal(a.features["image"], c.features["image"])


@pytest.mark.parametrize("shares", [(0.1, 0.1), (0.3, 0.4), (0.0, 0.2), (0.0, 0.0)])
def test_split_invariants(shares: tuple[float, float]) -> None:
    valid_share, test_share = shares
    data = make_synthetic(**SMALL, valid_share=valid_share, test_share=test_share, seed=1)
    users = np.arange(data.num_users)
    n = np.bincount(data.pairs[:, 0], minlength=data.num_users)
    n_split = [np.bincount(data.split_pairs(k)[:, 0], minlength=data.num_users) for k in range(3)]
    assert (n_split[0] >= 1).all(), "every user needs a train pair"
    big = users[n >= 3]
    for k, share in ((1, valid_share), (2, test_share)):
        if share > 0:
            assert (n_split[k][big] >= 1).all()
        else:
            assert n_split[k].sum() == 0
    key = data.pairs[:, 0] * data.num_items + data.pairs[:, 1]
    assert len(np.unique(key)) == len(key), "duplicate pairs (also catches a pair in two splits)"


def test_tiny_users_keep_train() -> None:
    data = make_synthetic(num_users=50, num_items=10, mean_interactions=1.5, min_interactions=1, valid_share=0.4, test_share=0.4)
    n_train = np.bincount(data.split_pairs("train")[:, 0], minlength=50)
    assert (n_train >= 1).all()


def test_popularity_is_heavy_tailed() -> None:
    heavy = make_synthetic(**SMALL, popularity_exponent=1.0)
    flat = make_synthetic(**SMALL, popularity_exponent=0.0)
    assert _top_share(heavy) > 0.3
    assert _top_share(flat) < _top_share(heavy) - 0.1


def test_low_noise_modality_is_more_informative() -> None:
    data, factors = make_synthetic(**SMALL), planted_factors(300, 200)
    assert factors["user"].shape == (300, 16) and factors["item"].shape == (200, 16)
    item = factors["item"].astype(np.float64)
    r2_image, r2_text = _r2(data.features["image"], item), _r2(data.features["text"], item)
    assert r2_image > r2_text + 0.2
    assert r2_image > 0.7


def test_swapping_noise_swaps_informativeness() -> None:
    data = make_synthetic(**SMALL, modality_dims={"a": 32, "b": 32}, modality_noise={"a": 3.0, "b": 0.3})
    factors = planted_factors(300, 200)
    item = factors["item"].astype(np.float64)
    assert _r2(data.features["b"], item) > _r2(data.features["a"], item) + 0.2


def test_preferences_follow_planted_factors() -> None:
    data, factors = make_synthetic(**SMALL, popularity_exponent=0.0, temperature=2.0), planted_factors(300, 200)
    scores = factors["user"] @ factors["item"].T
    chosen = scores[data.pairs[:, 0], data.pairs[:, 1]].mean()
    assert chosen > scores.mean() + 1.0


def test_no_modalities() -> None:
    data = make_synthetic(**SMALL, modality_dims={})
    assert data.features == {}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_users": 0}, "num_users must be an integer >= 1"),
        ({"num_items": -3}, "num_items must be an integer >= 2"),
        ({"factor_dim": 0}, "factor_dim must be an integer >= 1"),
        ({"num_users": 2.5}, "num_users must be an integer"),
        ({"min_interactions": 0}, "min_interactions must be an integer >= 1"),
        ({"num_items": 10, "min_interactions": 6}, r"min_interactions=6 exceeds num_items // 2 = 5"),
        ({"mean_interactions": 0.0}, "mean_interactions must be a finite number > 0"),
        ({"mean_interactions": 2.0}, "mean_interactions=2.0 is below min_interactions=5"),
        ({"valid_share": 0.5, "test_share": 0.5}, r"valid_share \+ test_share = 1.0 must be < 1"),
        ({"test_share": -0.1}, "test_share must be a finite number >= 0"),
        ({"popularity_exponent": -1.0}, "popularity_exponent must be"),
        ({"modality_noise": {"audio": 1.0}}, r"unknown modalities \['audio'\]"),
        ({"modality_noise": {"image": -1.0}}, r"modality_noise\['image'\] must be"),
        ({"modality_dims": {"image": 0}}, r"modality_dims\['image'\] must be an integer >= 1"),
        ({"seed": "x"}, "seed must be an integer"),
    ],
)
def test_argument_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_synthetic(**kwargs)  # type: ignore[arg-type]


def test_pooled_sampler_keeps_counts_popularity_and_preferences() -> None:
    exact = make_synthetic(**SMALL, sampler="exact", seed=2)
    pooled = make_synthetic(**SMALL, sampler="pooled", seed=2)
    again = make_synthetic(**SMALL, sampler="pooled", seed=2)
    np.testing.assert_array_equal(pooled.pairs, again.pairs)
    # the same per-user counts (drawn before sampling), no repeated pair
    np.testing.assert_array_equal(np.bincount(pooled.pairs[:, 0], minlength=300), np.bincount(exact.pairs[:, 0], minlength=300))
    key = pooled.pairs[:, 0] * pooled.num_items + pooled.pairs[:, 1]
    assert len(np.unique(key)) == len(key)
    assert _top_share(pooled) > 0.3
    flat = make_synthetic(**SMALL, popularity_exponent=0.0, temperature=2.0, sampler="pooled")
    f = planted_factors(300, 200)
    scores = f["user"] @ f["item"].T
    assert scores[flat.pairs[:, 0], flat.pairs[:, 1]].mean() > scores.mean() + 1.0


def test_auto_sampler_switches_to_pooled_above_the_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    import lightning_tru.datamodules.synthetic as synthetic

    exact, pooled = make_synthetic(**SMALL, sampler="exact"), make_synthetic(**SMALL, sampler="pooled")
    np.testing.assert_array_equal(make_synthetic(**SMALL).pairs, exact.pairs)
    monkeypatch.setattr(synthetic, "EXACT_SAMPLER_MAX_PAIRS", 300 * 200 - 1)
    np.testing.assert_array_equal(make_synthetic(**SMALL).pairs, pooled.pairs)
    with pytest.raises(ValueError, match="sampler='fast': choose 'auto', 'exact' or 'pooled'"):
        make_synthetic(**SMALL, sampler="fast")  # type: ignore[arg-type]
