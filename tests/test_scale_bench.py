"""The scale benchmark's helpers (benchmarks/scale_bench.py): real-data rows and Retrain's estimate."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import scale_bench  # noqa: E402

INTER = "userID\titemID\tx_label\n" + "".join(
    f"{u}\t{i}\t{s}\n" for u, i, s in [(0, 0, 0), (0, 2, 1), (1, 1, 0), (1, 3, 2), (2, 0, 0), (2, 4, 0), (3, 1, 0)]
)


def _folder(tmp_path: Path) -> Path:
    """An interaction-only data root: <root>/interactions_only/tiny.inter (5 items, 4 users)."""
    (tmp_path / "interactions_only").mkdir()
    (tmp_path / "interactions_only" / "tiny.inter").write_text(INTER)
    return tmp_path


def test_real_source_finds_interaction_only_and_folder_sets(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    (root / "other").mkdir()
    (root / "other" / "other.inter").write_text(INTER)
    assert scale_bench.real_source("tiny", root) == root / "interactions_only" / "tiny.inter"
    assert scale_bench.real_source("other", root) == root / "other" / "other.inter"
    path = root / "interactions_only" / "tiny.inter"
    assert scale_bench.real_source(str(path), root) == path
    with pytest.raises(SystemExit, match=r"--real beuty: .*found under .*: other, tiny"):
        scale_bench.real_source("beuty", root)


def test_load_real_generates_seeded_features_in_memory(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    before = sorted(p.name for p in (root / "interactions_only").iterdir())
    path = root / "interactions_only" / "tiny.inter"
    data, generated = scale_bench.load_real(path, {"image": 6, "text": 3}, seed=1)
    assert generated
    assert (data.num_users, data.num_items, len(data.pairs), data.name) == (4, 5, 7, "tiny")
    assert data.feature_dims == {"image": 6, "text": 3}
    assert all(f.dtype == np.float32 for f in data.features.values())
    again, _ = scale_bench.load_real(path, {"image": 6, "text": 3}, seed=1)
    other, _ = scale_bench.load_real(path, {"image": 6, "text": 3}, seed=2)
    np.testing.assert_array_equal(data.features["image"], again.features["image"])
    assert not np.allclose(data.features["image"], other.features["image"])
    assert sorted(p.name for p in (root / "interactions_only").iterdir()) == before  # nothing written


def test_load_real_keeps_a_folders_own_features(tmp_path: Path) -> None:
    (tmp_path / "tiny.inter").write_text(INTER)
    own = np.arange(10, dtype=np.float32).reshape(5, 2)
    np.save(tmp_path / "image_feat.npy", own)
    data, generated = scale_bench.load_real(tmp_path / "tiny.inter", {"image": 6, "text": 3}, seed=0)
    assert not generated
    assert data.feature_dims == {"image": 2}
    np.testing.assert_array_equal(data.features["image"], own)


def test_epochs_source_prefers_own_then_nearest_of_its_kind() -> None:
    rows = [(True, 1e5, 40), (True, 3e5, None), (True, 1e6, 25), (False, 2e5, None), (False, 9e5, 60), (False, 5e6, None)]
    # own measurement; else the nearest measured row of the same kind (log scale)
    assert scale_bench.epochs_source(rows) == [0, 0, 2, 4, 4, 4]
    assert scale_bench.epochs_source([(False, 2e5, None), (True, 1e5, 40), (True, 1e6, 25)]) == [1, 1, 2]
    assert scale_bench.epochs_source([(True, 1e5, None), (False, 2e5, 30)]) == [1, 1]  # no synthetic one measured
    assert scale_bench.epochs_source([(True, 1e5, None)]) == [None]


def test_retrain_estimate_arithmetic() -> None:
    est, speed = scale_bench.retrain_estimate(2.5, 40, {"full": 4.0, "sampled": 0.5})
    assert est == pytest.approx(100.0)
    assert speed == pytest.approx({"full": 25.0, "sampled": 200.0})
    assert np.isnan(scale_bench.retrain_estimate(1.0, 3, {"full": 0.0})[1]["full"])
