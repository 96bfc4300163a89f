"""The results grid (benchmarks/grid.py): cells on disk, resumption without training, sub-grids, aggregation."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lightning_tru.lifecycle import request_shadow

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import grid  # noqa: E402

TINY = ["--backbones", "lightgcn", "--data", "synthetic", "--regimes", "user", "--seeds", "0", "--synthetic-size", "150",
        "70", "--embedding-dim", "8", "--max-epochs", "3", "--patience", "2", "--threads", "1", "--core-edge-on"]


def _argv(tmp: Path, *extra: str) -> list[str]:
    return [*TINY, "--work", str(tmp / "work"), "--out", str(tmp / "RESULTS.md"), *extra]


def _lines(tmp: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (tmp / "grid_results.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("grid")
    assert grid.main(_argv(tmp, "--methods", "retrain", "tru", "--no-retrain-floor")) == 0
    return tmp


def test_cells_written_with_every_audit(tiny_grid: Path) -> None:
    recs = {r["method"]: r for r in _lines(tiny_grid)}
    assert set(recs) == {"retrain", "tru"}
    gold, tru = recs["retrain"], recs["tru"]
    assert gold["util_ratio"] == 1.0 and gold["mia_delta"] == 0.0 and gold["answered"] is True
    assert tru["request"]["fingerprint"] == gold["request"]["fingerprint"]  # the same request, the same Retrain
    assert tru["retrain_ndcg"] == pytest.approx(gold["ndcg"]) and tru["retrain_seconds"] == pytest.approx(gold["seconds"])
    assert tru["util_ratio"] == pytest.approx(tru["ndcg"] / gold["ndcg"])
    assert tru["mia_delta"] == pytest.approx(tru["mia_auc"] - gold["mia_auc"])
    assert tru["speedup"] == pytest.approx(gold["seconds"] / tru["seconds"])
    for key in ("recall", "forget_recall", "global_exposure", "fairness_before", "fairness_after", "fairness_retrain",
                "peak_mib", "steps"):
        assert isinstance(tru[key], (int, float)), key
    assert isinstance(tru["answered"], bool) and tru["caps"]["max_epochs"] == 3
    text = (tiny_grid / "RESULTS.md").read_text()
    assert "## Results grid" in text and "capped at 3 epochs" in text and "| synthetic | random | tru |" in text


def test_rerun_skips_finished_cells_and_reuses_the_retrain(tiny_grid: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = grid.answer_request

    def counting(**kw: Any) -> dict[str, Any]:
        calls.append("retrain" if kw["method"] == "retrain" else "method")
        assert kw.get("retrained") is not None  # every method compared with the cached Retrain
        return real(**kw)

    def no_training(*_: Any, **__: Any) -> None:
        raise AssertionError("the trained checkpoint is cached: no training on a rerun")

    monkeypatch.setattr(grid, "answer_request", counting)
    monkeypatch.setattr(grid, "train_cli", no_training)
    before = _lines(tiny_grid)
    assert grid.main(_argv(tiny_grid, "--methods", "retrain", "tru", "--no-retrain-floor")) == 0
    assert calls == [] and _lines(tiny_grid) == before  # nothing ran, nothing appended
    assert grid.main(_argv(tiny_grid, "--methods", "retrain", "tru", "surgery", "--no-retrain-floor")) == 0
    assert calls == ["method"]  # only the new cell ran, against the cached Retrain
    assert [r["method"] for r in _lines(tiny_grid)] == ["retrain", "tru", "surgery"]


def test_sub_grid_selection() -> None:
    a = grid.parse_args(["--backbones", "mgcn", "--data", "synthetic", "--regimes", "user", "interaction",
                         "--selections", "random", "core", "--methods", "tru", "surgery", "--seeds", "0", "1"])
    keys = {(c.regime, c.selection, c.method, c.seed) for c in grid.cells_of(a)}
    assert keys == {(r, s, m, seed) for r, s in (("user", "random"), ("user", "core"), ("interaction", "random"))
                    for m in ("tru", "surgery") for seed in (0, 1)}  # interaction-wise: random only
    default = grid.cells_of(grid.parse_args([]))  # MGCN and MIG-GT x TikTok and Baby, core/edge on MGCN/TikTok only
    extra = {(c.backbone, c.data) for c in default if c.selection != "random"}
    assert extra == {("mgcn", "tiktok")} and {c.regime for c in default if c.selection != "random"} == {"user", "item"}
    assert len(default) == (2 * 2 * 3 + 2 * 2) * 3 * len(grid.METHODS)
    assert {"tru_no_gate", "tru_no_layer", "tru_no_row", "tru_no_scaling"} <= set(grid.METHODS)
    quick = grid.parse_args(["--quick", "--seeds", "3"])
    assert quick.data == ["synthetic"] and quick.seeds == [3]  # an explicit flag wins over --quick's


@pytest.mark.parametrize("argv, message", [
    (["--regimes", "users"], "invalid choice: 'users'"),
    (["--methods", "tru_no_gates"], "invalid choice: 'tru_no_gates'"),
])
def test_bad_axis_value_one_clear_error(argv: list[str], message: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        grid.main([*argv, "--out", str(tmp_path / "RESULTS.md")])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("argv, message", [
    (["--data", "synthetic", "--share", "1.5"], "--share 1.5"),
    (["--data", "synthetic", "--core-edge-on", "mgcn-tiktok"], "BACKBONE/DATA"),
    (["--data", "synthetic", "--successive", "--methods", "retrain", "reset"], "--successive"),
])
def test_bad_values_give_one_error_and_write_nothing(argv: list[str], message: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert grid.main([*argv, "--work", str(tmp_path / "w"), "--out", str(tmp_path / "RESULTS.md")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not list(tmp_path.iterdir())


def test_aggregate_mean_std_matches_naive() -> None:
    rng = np.random.default_rng(0)
    recs = [{"backbone": b, "method": m, "seed": s, "x": float(rng.normal()), "ok": bool(rng.random() > 0.5),
             "y": None if s == 2 else float(rng.normal())}
            for b in ("mgcn", "miggt") for m in ("tru", "reset") for s in range(4)]
    stats = grid.aggregate(recs, ("backbone", "method"), ("x", "ok", "y"))
    for (b, m), st in stats.items():
        group = [r for r in recs if r["backbone"] == b and r["method"] == m]
        for f in ("x", "ok", "y"):
            xs = np.array([float(r[f]) for r in group if r[f] is not None])
            assert st[f][0] == pytest.approx(xs.mean()) and st[f][1] == pytest.approx(xs.std(ddof=1))
            assert st[f][2] == len(xs)
    assert stats[("mgcn", "tru")]["y"][2] == 3  # a missing value is skipped, not counted as 0
    assert grid._ms((0.5, 0.1, 3), ".1f", 100) == "50.0 ± 10.0" and grid._ms((0.5, 0.0, 1), ".2f") == "0.50"


def test_pareto_front_known_answer() -> None:
    points = {"a": (1.0, 0.10), "b": (0.9, 0.01), "c": (0.8, 0.05), "d": (1.0, 0.20), "e": (0.9, 0.01)}
    assert grid.pareto_front(points) == {"a", "b", "e"}  # c dominated by b, d by a; ties both stay


def test_successive_chain_vs_one_request_of_the_union(tmp_path: Path) -> None:
    # 1.25% of the users must hold enough forget pairs for the attack to verify (max_band): 500 users, not TINY's
    assert grid.main(_argv(tmp_path, "--successive", "--methods", "tru", "--no-retrain-floor",
                           "--synthetic-size", "500", "120")) == 0
    recs = _lines(tmp_path)
    gold = [r for r in recs if r["method"] == "retrain"]
    steps = {r["step"]: r for r in recs if r["method"] == "tru"}
    assert len(gold) == 1 and gold[0]["step"] == "union" and set(steps) == {"1", "2", "3", "4", "union"}
    assert all(steps[s]["answered"] for s in "1234")  # user-wise on planted data: every request answered
    chain = [steps[s]["request"] for s in "1234"]
    assert len({c["fingerprint"] for c in chain}) == 4 and all(c["share"] == 0.0125 for c in chain)
    union = steps["union"]["request"]
    assert union["fingerprint"] == gold[0]["request"]["fingerprint"] and union["source"] == "file"
    assert union["forget_pairs"] == sum(c["forget_pairs"] for c in chain)  # disjoint users: the union of the four
    assert union["users"] == sum(c["users"] for c in chain)
    for s in ("1", "2", "3"):  # no Retrain beside the intermediate requests; the last and the union have it
        assert steps[s]["util_ratio"] is None
    assert steps["4"]["retrain_ndcg"] == pytest.approx(gold[0]["ndcg"]) == steps["union"]["retrain_ndcg"]
    text = (tmp_path / "RESULTS.md").read_text()
    assert "## Results grid, successive requests" in text and "4.0 of 4" in text


def test_user_level_mia_opt_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shadows = []
    monkeypatch.setattr(grid, "request_shadow", lambda **job: shadows.append(1) or request_shadow(**job))
    assert grid.main(_argv(tmp_path, "--methods", "tru", "reset", "--no-retrain-floor", "--user-mia", "--no-render")) == 0
    recs = _lines(tmp_path)
    assert len(recs) == 2 and len(shadows) == 1  # one shadow for the request, shared by both methods
    rec = recs[0]
    assert isinstance(rec["user_mia_auc"], float) and isinstance(rec["user_mia_delta"], float)
    assert not (tmp_path / "RESULTS.md").exists()  # --no-render
    off = grid.parse_args(_argv(tmp_path, "--methods", "tru", "--no-retrain-floor"))
    assert grid.setup_id(off) != rec["setup"]  # cells with and without the user-level MIA are different cells


def test_a_method_whose_config_exits_does_not_lose_the_other_cells(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A method whose run exits (a config the CLI rejects raises SystemExit) is reported FAILED; the grid goes on."""
    real = grid.Runner.answer

    def answer(self: Any, *args: Any, **kw: Any) -> Any:
        if args[6] == "reset":
            raise SystemExit(2)
        return real(self, *args, **kw)

    monkeypatch.setattr(grid.Runner, "answer", answer)
    assert grid.main(_argv(tmp_path, "--methods", "reset", "surgery", "--no-retrain-floor", "--no-render")) == 0
    assert [r["method"] for r in _lines(tmp_path)] == ["surgery"]
    assert "FAILED" in capsys.readouterr().out


def test_second_retrain_is_the_seed_floor_of_every_audit(tmp_path: Path) -> None:
    """``retrain2``: a Retrain of seed + 1 audited against the first one (same non-members), as the floor row."""
    assert grid.main(_argv(tmp_path, "--methods", "retrain", "retrain2", "reset", "--no-retrain-floor")) == 0
    recs = {r["method"]: r for r in _lines(tmp_path)}
    gold, second, reset = recs["retrain"], recs["retrain2"], recs["reset"]
    assert second["request"]["fingerprint"] == gold["request"]["fingerprint"] and second["answered"] is True
    assert second["retrain_mia_auc"] == pytest.approx(gold["mia_auc"])  # the first Retrain's AUC on the same pairs
    assert second["mia_delta"] == pytest.approx(second["mia_auc"] - gold["mia_auc"])
    assert second["mia_delta"] != 0.0 and second["ndcg"] != gold["ndcg"]  # another seed: another model
    assert 0.0 < second["jaccard"] < 1.0 and second["util_ratio"] == pytest.approx(second["ndcg"] / gold["ndcg"])
    assert reset["retrain_mia_auc"] == pytest.approx(gold["mia_auc"])
    table = grid.main_tables(_lines(tmp_path))
    assert "| synthetic | random | **retrain2** |" in table and "retrain2" not in table.split("front")[-1]


def test_a_cut_line_never_swallows_the_next_record(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    grid.append_records(path, [{"key": "a", "x": 1}])
    with path.open("ab") as fh:
        fh.write(b'{"key": "b", "x"')  # a crash mid-write
    grid.append_records(path, [{"key": "c", "x": 3}])
    assert [r["key"] for r in grid.load_records(path)] == ["a", "c"]


def test_flags_are_exact_deduplicated_and_checked_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a = grid.parse_args(["--quick", "--methods", "tru", "reset", "tru", "--seeds", "3", "3"])
    assert a.methods == ["tru", "reset"] and a.seeds == [3]  # a value given twice runs once; explicit flags win
    with pytest.raises(SystemExit):
        grid.parse_args(["--quick", "--seed", "3"])  # an abbreviation is refused (it would lose to --quick)
    capsys.readouterr()
    for bad, msg in ((["--threads", "0"], "--threads 0"), (["--seeds", "-1"], "seeds are integers >= 0"),
                     (["--embedding-dim", "0"], "--embedding-dim 0"), (["--synthetic-size", "0", "70"], "at least 2")):
        assert grid.main([*_argv(tmp_path), *bad]) == 2
        assert msg in capsys.readouterr().err
    assert grid.main([*_argv(tmp_path), "--dry-run", "--render-only"]) == 0
    assert not list(tmp_path.iterdir())  # nothing written by any of them


def test_rendering_skips_over_a_method_this_version_does_not_know() -> None:
    rec = {"backbone": "mgcn", "data": "synthetic", "selection": "random", "regime": "user", "share": 0.05, "seed": 0,
           "ndcg": 0.1, "recall": 0.2, "forget_recall": 0.1, "mia_auc": 0.5, "answered": True, "seconds": 1.0}
    table = grid.detail_table([{**rec, "method": "tru"}, {**rec, "method": "tru_no_oldablation"}])
    assert table.index("| tru |") < table.index("| tru_no_oldablation |")


def test_another_request_size_renders_its_own_section(tiny_grid: Path, tmp_path: Path) -> None:
    recs = _lines(tiny_grid)
    other = [{**r, "share": 0.1, "key": r["key"].replace("/0.05/", "/0.1/"), "ndcg": r["ndcg"] / 2} for r in recs]
    results = tmp_path / "grid_results.jsonl"
    grid.append_records(results, recs + other)
    for share in ("0.05", "0.1"):
        assert grid.main(_argv(tmp_path, "--render-only", "--no-retrain-floor", "--share", share, "--results", str(results))) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    titles = [line for line in text.splitlines() if line.startswith("## Results grid")]
    assert len(titles) == 2 and len(set(titles)) == 2 and "share0.1" in titles[1]  # neither replaced the other
    five, ten = text.split(titles[1])
    assert f"{recs[0]['ndcg']:.4f}" in five and f"{other[0]['ndcg']:.4f}" in ten


def test_a_chain_run_again_replaces_its_earlier_run_and_answers_count_per_seed() -> None:
    """Rendering: a successive chain run again that stops sooner leaves none of its earlier run's later requests behind,
    and "requests answered" is the mean over seeds of each chain's count (a chain that stopped has no later record)."""
    def rec(seed: int, step: str, answered: bool, run: int) -> dict:
        cell = grid.Cell("mgcn", "synthetic", "interaction", "random", 0.05, seed, "tru", "s", "successive", step)
        return {**grid.asdict(cell), "key": cell.key, "ndcg": 0.04 + run / 100, "mia_delta": 0.01, "answered": answered}

    first = [rec(0, s, True, 0) for s in ("1", "2", "3", "4", "union")]  # seed 0, an earlier run: four answered
    again = [rec(0, "1", True, 1), rec(0, "2", False, 1), rec(0, "union", True, 1)]  # run again: stops at the second
    other = [rec(1, s, True, 0) for s in ("1", "2", "3", "4", "union")]  # seed 1: four answered
    latest = grid.latest_records([*first, *other, *again])
    assert sorted(r["step"] for r in latest if r["seed"] == 0) == ["1", "2", "union"]
    assert all(r["ndcg"] == 0.05 for r in latest if r["seed"] == 0)
    table = grid.successive_table(latest)
    assert "| 2.5 of 4 |" in table, table  # (1 + 4) / 2, not the sum of per-request means (1 + 0.5 + 1 + 1)
