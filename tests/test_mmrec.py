"""Tests of the MMRec folder loader."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from lightning_tru.datamodules import DataFormatError, InteractionData, load_mmrec
from lightning_tru.datamodules.mmrec import read_inter

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

HEADER = "userID\titemID\tx_label\n"
ROWS = [(0, 0, 0), (0, 1, 0), (0, 2, 2), (1, 1, 0), (1, 3, 1), (2, 2, 0), (2, 0, 2), (3, 3, 0)]


def _inter_text(rows: list[tuple[int, int, int]] = ROWS) -> str:
    return HEADER + "".join(f"{u}\t{i}\t{x}\n" for u, i, x in rows)


def make_folder(
    root: Path,
    inter: str | None = None,
    name: str = "toy",
    features: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write ``<name>.inter`` and ``<m>_feat.npy`` files into ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{name}.inter").write_text(_inter_text() if inter is None else inter)
    for m, f in (features or {}).items():
        np.save(root / f"{m}_feat.npy", f)
    return root


def _feat(rows: int = 4, dim: int = 3, seed: int = 0, dtype: type = np.float16) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, dim)).astype(dtype)


def _graph(n: int, seed: int = 0) -> sp.csr_matrix:
    return sp.random(n, n, density=0.5, format="csr", random_state=seed, dtype=np.float64)


def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


# ---------------------------------------------------------------- parsing


def test_basic_load_counts_and_dtypes(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "toy", features={"image": _feat(), "text": _feat(dim=2, seed=1)})
    data = load_mmrec(root)
    assert isinstance(data, InteractionData)
    assert (data.num_users, data.num_items, data.name) == (4, 4, "toy")
    assert data.pairs.dtype == np.int64 and data.split.dtype == np.int8
    np.testing.assert_array_equal(data.pairs, np.array([r[:2] for r in ROWS]))
    np.testing.assert_array_equal(data.split, np.array([r[2] for r in ROWS]))
    assert list(data.features) == ["image", "text"]
    assert data.feature_dims == {"image": 3, "text": 2}
    assert data.item_graphs == {}


def test_float16_features_become_float32(tmp_path: Path) -> None:
    f = _feat(dtype=np.float16)
    data = load_mmrec(make_folder(tmp_path, features={"image": f}))
    assert data.features["image"].dtype == np.float32
    np.testing.assert_array_equal(data.features["image"], f.astype(np.float32))


def test_extra_columns_and_other_order(tmp_path: Path) -> None:
    text = "timestamp\tx_label\trating\titemID\tuserID\n" + "".join(
        f"{1000 + k}\t{x}\t4.5\t{i}\t{u}\n" for k, (u, i, x) in enumerate(ROWS)
    )
    pairs, split = read_inter(make_folder(tmp_path, inter=text) / "toy.inter")
    np.testing.assert_array_equal(pairs, np.array([r[:2] for r in ROWS]))
    np.testing.assert_array_equal(split, np.array([r[2] for r in ROWS]))


def test_blank_lines_and_crlf_are_tolerated(tmp_path: Path) -> None:
    text = _inter_text().replace("\n", "\r\n", 3) + "\n\n"
    text = text.replace("1\t1\t0\n", "\n1\t1\t0\n")
    pairs, split = read_inter(make_folder(tmp_path, inter=text) / "toy.inter")
    assert len(pairs) == len(ROWS) and len(split) == len(ROWS)


def test_modalities_list_selects_files(tmp_path: Path) -> None:
    root = make_folder(tmp_path, features={"image": _feat(), "text": _feat(dim=2), "audio": _feat(dim=5)})
    assert list(load_mmrec(root).features) == ["audio", "image", "text"]
    assert list(load_mmrec(root, modalities=["text", "image"]).features) == ["text", "image"]
    assert load_mmrec(root, modalities=[]).features == {}


def test_explicit_modality_mapping(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d")
    np.save(root / "image_spectral_feat.npy", _feat(dim=6))
    elsewhere = tmp_path / "other" / "txt.npy"
    elsewhere.parent.mkdir()
    np.save(elsewhere, _feat(dim=7))
    data = load_mmrec(root, modalities={"image": "image_spectral_feat.npy", "text": str(elsewhere)})
    assert data.feature_dims == {"image": 6, "text": 7}


def test_name_selects_inter_file(tmp_path: Path) -> None:
    root = make_folder(tmp_path, name="a")
    (root / "b.inter").write_text(_inter_text(ROWS[:3]))
    assert load_mmrec(root, name="b").num_users == 1
    assert load_mmrec(root, name="a.inter").num_users == 4


def test_items_only_in_features(tmp_path: Path) -> None:
    root = make_folder(tmp_path, features={"image": _feat(rows=6), "text": _feat(rows=6, dim=2)})
    data = load_mmrec(root)
    assert data.num_items == 6
    trained = {i for _, i, x in ROWS if x == 0}
    assert data.summary()["items_without_train"] == 6 - len(trained)


def test_knn_graph_folder_and_mapping(tmp_path: Path) -> None:
    root = make_folder(tmp_path, features={"image": _feat(), "text": _feat()})
    gdir = root / "knn_graphs"
    gdir.mkdir()
    sp.save_npz(gdir / "image_adj_10_True.npz", _graph(4, 0))
    sp.save_npz(gdir / "text_adj_10_True.npz", _graph(4, 1).tocoo())
    data = load_mmrec(root, knn_graphs="knn_graphs")
    assert sorted(data.item_graphs) == ["image", "text"]
    for m, seed in (("image", 0), ("text", 1)):
        g = data.item_graphs[m]
        assert sp.isspmatrix_csr(g) and g.dtype == np.float32 and g.shape == (4, 4)
        np.testing.assert_allclose(g.toarray(), _graph(4, seed).toarray(), rtol=1e-6)
    only_image = load_mmrec(root, modalities=["image"], knn_graphs=gdir)  # absolute folder
    assert list(only_image.item_graphs) == ["image"]
    mapped = load_mmrec(root, knn_graphs={"text": "knn_graphs/text_adj_10_True.npz"})
    assert list(mapped.item_graphs) == ["text"]


def test_graph_without_features_is_allowed(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    sp.save_npz(root / "g.npz", _graph(4))
    data = load_mmrec(root, knn_graphs={"image": "g.npz"})
    assert data.features == {} and data.item_graphs["image"].shape == (4, 4)


def test_duplicates_dropped_with_warning(tmp_path: Path) -> None:
    rows = ROWS + [(0, 1, 0), (1, 3, 1), (0, 1, 0)]  # repeated rows of the same split
    root = make_folder(tmp_path, inter=_inter_text(rows))
    with pytest.warns(UserWarning, match=r"toy\.inter: dropped 3 duplicated"):
        data = load_mmrec(root)
    np.testing.assert_array_equal(data.pairs, np.array([r[:2] for r in ROWS]))
    np.testing.assert_array_equal(data.split, np.array([r[2] for r in ROWS]))


def test_blank_and_whitespace_lines_are_skipped_and_bad_ids_named(tmp_path: Path) -> None:
    text = _inter_text()
    lines = text.split("\n")
    root = make_folder(tmp_path / "ok", inter="\n".join(lines[:3] + ["   ", "\t", ""] + lines[3:]))
    np.testing.assert_array_equal(load_mmrec(root).pairs, np.array([r[:2] for r in ROWS]))
    for bad in ("1_0", "\u0661"):
        root = make_folder(tmp_path / f"bad{len(bad)}", inter="\n".join(lines[:4] + [f"{bad}\t1\t0"] + lines[4:]))
        with pytest.raises(DataFormatError, match=rf"line 5, column 'userID': '{bad}' is not an integer"):
            load_mmrec(root)


def test_graph_and_feature_files_that_cannot_be_used_are_errors(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "a", features={"image": _feat()})
    (root / "g.npz").write_bytes(b"PK\x03\x04junk")  # a broken zip
    with pytest.raises(DataFormatError, match="not a scipy sparse .npz matrix"):
        load_mmrec(root, knn_graphs={"image": "g.npz"})
    sp.save_npz(root / "h.npz", _graph(4))
    with pytest.raises(DataFormatError, match=r"knn_graphs names the modalities \['imgae'\].*\['image'\]"):
        load_mmrec(root, knn_graphs={"imgae": "h.npz"})  # a typo: the graph would be loaded and never used
    root = make_folder(tmp_path / "c", features={"image": _feat().astype(np.complex64)})
    with pytest.raises(DataFormatError, match="is not numeric"):
        load_mmrec(root)


@pytest.mark.parametrize("extra", [(0, 1, 2), (1, 3, 0)])
def test_a_pair_in_two_splits_is_an_error_naming_both_lines(tmp_path: Path, extra: tuple[int, int, int]) -> None:
    """Which split wins would depend on the row order, and either way train and evaluation share the pair."""
    root = make_folder(tmp_path, inter=_inter_text(ROWS + [extra]))
    first = 2 + next(k for k, r in enumerate(ROWS) if r[:2] == extra[:2])
    with pytest.raises(DataFormatError, match=rf"line {len(ROWS) + 2}: pair \(userID {extra[0]}, itemID {extra[1]}\) "
                                               rf"has x_label {extra[2]}, but line {first} gives it x_label"):
        load_mmrec(root)


def test_loading_does_not_modify_folder(tmp_path: Path) -> None:
    root = make_folder(tmp_path, features={"image": _feat(), "text": _feat()})
    (root / "knn").mkdir()
    sp.save_npz(root / "knn" / "image_adj_3_True.npz", _graph(4))
    before = _snapshot(root)
    load_mmrec(root, knn_graphs="knn")
    assert _snapshot(root) == before


def test_quirks_are_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [(0, 0, 0), (1, 1, 2), (1, 0, 1)]  # user 1 has no train row, item 1 is never trained on
    root = make_folder(tmp_path, inter=_inter_text(rows))
    with caplog.at_level(logging.INFO, logger="lightning_tru"):
        data = load_mmrec(root)
    assert data.summary()["users_without_train"] == 1
    assert "1 user(s) have no train interaction" in caplog.text
    assert "1 item(s) never occur in train" in caplog.text


def test_non_strict_features_impute_zeros(tmp_path: Path) -> None:
    f = _feat(dtype=np.float32)
    f[2, 1] = np.nan
    root = make_folder(tmp_path, features={"image": f})
    with pytest.warns(UserWarning, match="replaced non-finite"):
        data = load_mmrec(root, strict_features=False)
    assert np.isfinite(data.features["image"]).all() and data.features["image"][2, 1] == 0.0


# ---------------------------------------------------------------- errors


def test_error_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match=r"nope: data folder not found"):
        load_mmrec(tmp_path / "nope")


def test_error_no_inter_lists_folder(tmp_path: Path) -> None:
    np.save(tmp_path / "image_feat.npy", _feat())
    with pytest.raises(DataFormatError, match=r"no \.inter file.*image_feat\.npy"):
        load_mmrec(tmp_path)


def test_error_several_inter_files(tmp_path: Path) -> None:
    root = make_folder(tmp_path, name="a")
    (root / "b.inter").write_text(_inter_text())
    with pytest.raises(DataFormatError, match=r"2 \.inter files \['a\.inter', 'b\.inter'\].*name="):
        load_mmrec(root)


def test_error_named_inter_missing(tmp_path: Path) -> None:
    make_folder(tmp_path, name="a")
    with pytest.raises(DataFormatError, match=r"b\.inter: interaction file not found.*a\.inter"):
        load_mmrec(tmp_path, name="b")


def test_error_missing_feature_file_lists_folder(tmp_path: Path) -> None:
    root = make_folder(tmp_path, features={"image": _feat()})
    with pytest.raises(DataFormatError, match=r"text_feat\.npy: feature file for modality 'text' not found.*image_feat\.npy"):
        load_mmrec(root, modalities=["image", "text"])


def test_error_header_missing_column(tmp_path: Path) -> None:
    root = make_folder(tmp_path, inter="userID\titem\tx_label\n0\t0\t0\n")
    with pytest.raises(DataFormatError, match=r"toy\.inter: line 1 \(header\) lacks .*\['itemID'\].*\['userID', 'item', 'x_label'\]"):
        load_mmrec(root)


def test_error_header_not_tab_separated(tmp_path: Path) -> None:
    root = make_folder(tmp_path, inter="userID itemID x_label\n0 0 0\n")
    with pytest.raises(DataFormatError, match="not tab-separated"):
        load_mmrec(root)


def test_error_empty_file(tmp_path: Path) -> None:
    root = make_folder(tmp_path, inter="")
    with pytest.raises(DataFormatError, match=r"toy\.inter: line 1 must be a header"):
        load_mmrec(root)


def test_error_non_integer_value(tmp_path: Path) -> None:
    text = _inter_text().replace("1\t3\t1\n", "1\t3.0\t1\n")
    root = make_folder(tmp_path, inter=text)
    with pytest.raises(DataFormatError, match=r"toy\.inter: line 6, column 'itemID': '3\.0' is not an integer"):
        load_mmrec(root)


def test_error_non_integer_in_reordered_columns(tmp_path: Path) -> None:
    text = "x_label\tuserID\titemID\n0\t0\t0\n0\tbob\t1\n"
    root = make_folder(tmp_path, inter=text)
    with pytest.raises(DataFormatError, match=r"line 3, column 'userID': 'bob'"):
        load_mmrec(root)


def test_error_short_row(tmp_path: Path) -> None:
    root = make_folder(tmp_path, inter=HEADER + "0\t0\t0\n1\t1\n")
    with pytest.raises(DataFormatError, match=r"toy\.inter: line 3 has 2 tab-separated field"):
        load_mmrec(root)


def test_error_negative_id_line_counts_blank_lines(tmp_path: Path) -> None:
    root = make_folder(tmp_path, inter=HEADER + "0\t0\t0\n\n1\t-4\t0\n")
    with pytest.raises(DataFormatError, match=r"toy\.inter: line 4, column 'itemID': negative id -4"):
        load_mmrec(root)


def test_error_bad_x_label(tmp_path: Path) -> None:
    root = make_folder(tmp_path, inter=HEADER + "0\t0\t0\n1\t1\t0\n1\t2\t3\n")
    with pytest.raises(DataFormatError, match=r"toy\.inter: line 4, column 'x_label': value 3 .*0 \(train\), 1 \(valid\) or 2 \(test\)"):
        load_mmrec(root)


def test_error_too_few_feature_rows(tmp_path: Path) -> None:
    root = make_folder(tmp_path, features={"image": _feat(rows=3)})
    with pytest.raises(DataFormatError, match=r"image_feat\.npy: feature 'image' has 3 rows but toy\.inter uses item ids up to 3 \(4 items\)"):
        load_mmrec(root)


def test_error_feature_row_counts_disagree(tmp_path: Path) -> None:
    root = make_folder(tmp_path, features={"image": _feat(rows=5), "text": _feat(rows=6)})
    with pytest.raises(DataFormatError, match=r"disagree.*image_feat\.npy: 5 rows, text_feat\.npy: 6 rows"):
        load_mmrec(root)


def test_error_feature_not_2d(tmp_path: Path) -> None:
    root = make_folder(tmp_path, features={"image": np.zeros(4, dtype=np.float32)})
    with pytest.raises(DataFormatError, match=r"image_feat\.npy: feature 'image' has shape \(4,\) \(1-D\); expected a 2-D"):
        load_mmrec(root)


def test_error_feature_not_numeric(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    (root / "image_feat.npy").write_text("not an array")
    with pytest.raises(DataFormatError, match=r"image_feat\.npy: not a readable numeric \.npy"):
        load_mmrec(root)


def test_error_nan_features(tmp_path: Path) -> None:
    f = _feat(rows=6, dtype=np.float32)
    f[4, 0], f[2, 1], f[2, 2] = np.nan, np.inf, -np.inf
    root = make_folder(tmp_path, features={"image": f})
    with pytest.raises(DataFormatError, match=r"image_feat\.npy: .*NaN or inf values in 2 row\(s\) \(first at row 2\).*impute"):
        load_mmrec(root)


def test_error_empty_train(tmp_path: Path) -> None:
    root = make_folder(tmp_path, inter=HEADER + "0\t0\t1\n1\t1\t2\n")
    with pytest.raises(DataFormatError, match=r"toy\.inter: the train split is empty.*x_label 0"):
        load_mmrec(root)


def test_error_header_only(tmp_path: Path) -> None:
    root = make_folder(tmp_path, inter=HEADER)
    with pytest.raises(DataFormatError, match=r"toy\.inter: the train split is empty \(0 row"):
        load_mmrec(root)


def test_error_knn_wrong_shape(tmp_path: Path) -> None:
    root = make_folder(tmp_path, features={"image": _feat()})
    (root / "knn").mkdir()
    sp.save_npz(root / "knn" / "image_adj_10_True.npz", _graph(5))
    with pytest.raises(DataFormatError, match=r"image_adj_10_True\.npz: kNN graph for modality 'image' has shape \(5, 5\); expected \(4, 4\)"):
        load_mmrec(root, knn_graphs="knn")


def test_error_knn_folder_missing_or_ambiguous(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    with pytest.raises(DataFormatError, match=r"knn: kNN graph folder not found.*toy\.inter"):
        load_mmrec(root, knn_graphs="knn")
    (root / "knn").mkdir()
    with pytest.raises(DataFormatError, match=r"no <modality>_adj_\*\.npz kNN graph files"):
        load_mmrec(root, knn_graphs="knn")
    sp.save_npz(root / "knn" / "image_adj_5_True.npz", _graph(4))
    sp.save_npz(root / "knn" / "image_adj_10_True.npz", _graph(4))
    with pytest.raises(DataFormatError, match=re.escape("several kNN graphs for modality 'image'")):
        load_mmrec(root, knn_graphs="knn")


def test_error_modalities_as_string(tmp_path: Path) -> None:
    root = make_folder(tmp_path, features={"image": _feat()})
    with pytest.raises(DataFormatError, match=r"modalities='image' is a string"):
        load_mmrec(root, modalities="image")  # type: ignore[arg-type]


def _unchained(e: BaseException) -> bool:
    """One short error: no "the above exception was the direct cause" / "during handling" noise."""
    return e.__cause__ is None and (e.__context__ is None or e.__suppress_context__)


def test_error_stray_huge_id_names_line_and_fix(tmp_path: Path) -> None:
    for col, row in (("userID", "1000000000000\t1\t0\n"), ("itemID", "1\t1000000000000\t0\n")):
        root = make_folder(tmp_path / col, inter=_inter_text() + "\n" + row)  # a blank line before it: line 11
        with pytest.raises(DataFormatError, match=rf"toy\.inter: line 11, column '{col}': id 1000000000000 is far "
                           r"beyond the other 4 distinct .*\(the next largest is 3\).*Remove the stray row or remap ids to contiguous") as err:
            load_mmrec(root)
        assert _unchained(err.value)


def test_id_range_rule_and_feature_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_tru.datamodules import mmrec

    monkeypatch.setattr(mmrec, "MAX_UNUSED_IDS", 0)  # the ratio rule alone: 5 distinct item ids span at most 50
    ok = make_folder(tmp_path / "ok", inter=_inter_text([*ROWS, (3, 49, 0)]))
    assert load_mmrec(ok).num_items == 50
    bad = make_folder(tmp_path / "bad", inter=_inter_text([*ROWS, (3, 50, 0)]))
    with pytest.raises(DataFormatError, match=r"line 10, column 'itemID': id 50 is far beyond the other 4"):
        load_mmrec(bad)
    # feature rows declare the item catalogue: ids below them are never stray
    covered = make_folder(tmp_path / "covered", inter=_inter_text([*ROWS, (3, 50, 0)]), features={"image": _feat(rows=51)})
    assert load_mmrec(covered).num_items == 51


def test_error_feature_without_columns(tmp_path: Path) -> None:
    root = make_folder(tmp_path, features={"image": np.zeros((4, 0), dtype=np.float32)})
    with pytest.raises(DataFormatError, match=r"image_feat\.npy: feature 'image' has shape \(4, 0\): no feature columns"):
        load_mmrec(root)
    with pytest.raises(DataFormatError, match=r"feature 'image' has shape \(4, 0\).*d >= 1"):
        InteractionData(4, 4, np.array([[0, 0]]), np.array([0]), {"image": np.zeros((4, 0), dtype=np.float32)})


def test_interaction_data_names_the_id_beyond_the_range() -> None:
    with pytest.raises(DataFormatError, match=r"item id 9 \(pair 1\) exceeds num_items=4"):
        InteractionData(4, 4, np.array([[0, 0], [1, 9]]), np.array([0, 0]))


def test_parse_errors_are_not_chained(tmp_path: Path) -> None:
    root = make_folder(tmp_path, inter=HEADER + "0\t0\t0\n1\tx\t0\n")
    with pytest.raises(DataFormatError, match=r"line 3, column 'itemID'") as err:
        load_mmrec(root)
    assert _unchained(err.value)


# ---------------------------------------------------------------- real data


def _real(name: str) -> Path:
    path = DATA / name
    if not (path / f"{name}.inter").is_file():
        pytest.skip(f"real data set {path} not available")
    return path


def test_real_tiktok(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="lightning_tru"):
        data = load_mmrec(_real("tiktok"))
    s = data.summary()
    assert (s["users"], s["items"], len(data.pairs)) == (9308, 6710, 68722)
    assert (s["train"], s["valid"], s["test"]) == (59541, 3051, 6130)
    assert data.feature_dims == {"audio": 128, "image": 128}
    assert all(f.dtype == np.float32 for f in data.features.values())
    assert (s["users_without_train"], s["items_without_train"]) == (10, 465)
    assert "10 user(s) have no train interaction" in caplog.text
    assert "465 item(s) never occur in train" in caplog.text


def test_real_baby_with_graphs() -> None:
    data = load_mmrec(
        _real("baby"),
        modalities={"image": "image_spectral_feat.npy", "text": "text_spectral_feat.npy"},
        knn_graphs="knn_graphs",
    )
    s = data.summary()
    assert (s["users"], s["items"], len(data.pairs)) == (19445, 7050, 160792)
    assert (s["train"], s["valid"], s["test"]) == (119674, 20559, 20559)
    assert data.feature_dims == {"image": 64, "text": 64}
    assert sorted(data.item_graphs) == ["image", "text"]
    for g in data.item_graphs.values():
        assert g.shape == (7050, 7050) and g.nnz == 70500 and g.dtype == np.float32
