"""unlearn.py end to end: weights-only loading, outputs in a new run dir, the ledger, bad input."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from conftest import REPO
from lightning_tru.cli import train_cli, unlearn_cli

SMALL = ["--data.init_args.num_users", "300", "--data.init_args.num_items", "150"]
QUIET = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def _train(tmp: Path, config: str = "configs/train/mgcn_synthetic.yaml") -> Path:
    cli = train_cli(["fit", "--config", config, *SMALL, *QUIET, "--trainer.max_epochs", "3",
                     "--trainer.default_root_dir", str(tmp), "--checkpoint.dirpath", str(tmp / "ckpt"),
                     "--test_after_fit", "false"])
    return Path(cli.trainer.checkpoint_callback.best_model_path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("train")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)
        return _train(tmp)


def _unlearn(ckpt: Path, tmp: Path, *extra: str, method_config: str = "configs/unlearn/tru.yaml") -> dict:
    return unlearn_cli(["--config", "configs/train/mgcn_synthetic.yaml", "--config", method_config, *SMALL, *QUIET,
                        "--ckpt_path", str(ckpt), "--output_root", str(tmp / "out"),
                        "--ledger", str(tmp / "ledger.jsonl"), "--deletions", str(tmp / "deletions"), *extra])


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_unlearn_writes_run_dir_report_and_ledger(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(REPO)
    digest = _digest(trained)
    report = _unlearn(trained, tmp_path, "--trainer.max_epochs", "20")
    assert _digest(trained) == digest  # the trained checkpoint is never touched
    run = Path(report["run_dir"])
    assert run.parent == tmp_path / "out" and (run / "model.ckpt").is_file()
    on_disk = json.loads((run / "report.json").read_text())
    assert on_disk["method"] == "TRU" and on_disk["request"]["fingerprint"] == report["request"]["fingerprint"]
    m = on_disk["metrics"]
    assert m["TRU"]["forget_recall@20"] < m["before"]["forget_recall@20"]
    ckpt = torch.load(run / "model.ckpt", weights_only=True)
    assert ckpt["unlearning"]["fingerprint"] == report["request"]["fingerprint"]
    assert not list(run.glob(".*tmp"))  # no temporary leftovers
    out = capsys.readouterr().out
    assert "forget_recall@20" in out and "before" in out and "TRU" in out
    timings = report["details"]["TRU"]["timings"]  # where the run's time went, summing to its total
    assert {"prepare", "verify", "update", "total"} <= set(timings) and timings["verify"] > 0
    assert sum(v for k, v in timings.items() if k != "total") == pytest.approx(timings["total"])
    assert f"TRU's {timings['total']:.2f} s: prepare" in out
    assert report["status"]["target_reached"] and ckpt["lightning_tru_lineage"]["deletions"] == [
        report["request"]["fingerprint"]]
    # a second request: from the first one's checkpoint (the original now predates the store)
    second = _unlearn(run / "model.ckpt", tmp_path, "--trainer.max_epochs", "20", "--request.seed", "5")
    assert second["run_dir"] != report["run_dir"]
    lines = [json.loads(x) for x in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    assert [x["fingerprint"] for x in lines] == [report["request"]["fingerprint"], second["request"]["fingerprint"]]
    assert all({"time", "fingerprint", "method", "metrics", "status", "hash", "prev_hash"} <= set(x) for x in lines)
    assert all(x["status"]["target_reached"] and x["status"]["steps"] >= 1 for x in lines)
    from lightning_tru.ledger import verify

    assert verify(tmp_path / "ledger.jsonl").ok
    assert lines[1]["chain"] == [report["request"]["fingerprint"], second["request"]["fingerprint"]]


def test_retrain_method(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    report = _unlearn(trained, tmp_path, "--retrain_max_epochs", "3", method_config="configs/unlearn/retrain.yaml")
    assert report["method"] == "Retrain" and set(report["metrics"]) == {"before", "Retrain"}
    retrained = report["details"]["Retrain"]
    assert retrained["epochs"] == 3 and 0 <= retrained["best_epoch"] < 3  # patience 20: the whole budget runs


def test_checkpoint_of_another_model_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    other = _train(tmp_path, "configs/train/lightgcn_synthetic.yaml")
    with pytest.raises(ValueError, match="another model"):
        _unlearn(other, tmp_path)
    assert not (tmp_path / "out").exists() and not (tmp_path / "ledger.jsonl").exists()
    assert not (tmp_path / "deletions").exists()


def test_missing_checkpoint_and_missing_callback(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _unlearn(tmp_path / "nope.ckpt", tmp_path)
    with pytest.raises(ValueError, match="exactly one UnlearningCallback"):
        _unlearn(trained, tmp_path, "--trainer.callbacks", "[]")


def test_whole_dataset_request_is_refused(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    with pytest.raises(ValueError, match="share"):
        _unlearn(trained, tmp_path, "--request.share", "1.0")


@pytest.mark.slow
def test_unlearn_script_under_ddp(trained: Path, tmp_path: Path) -> None:
    """`ddp` re-launches the command in child processes, so run the script in a subprocess."""
    import subprocess
    import sys

    import yaml

    cfg = yaml.safe_load((REPO / "configs/unlearn/tru.yaml").read_text())
    cfg["trainer"]["callbacks"][0]["init_args"]["target_recall"] = 0.0  # one-sided rule: steps run under DDP
    cfg["trainer"]["callbacks"][0]["init_args"]["keep_reset"] = False  # the user rows may move: 0.0 is reachable
    (tmp_path / "tru.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "unlearn.py", "--config", "configs/train/mgcn_synthetic.yaml", "--config",
           str(tmp_path / "tru.yaml"), "--config", "configs/trainer/ddp_cpu.yaml", *SMALL, *QUIET,
           "--compare_retrain", "true", "--retrain_strategy", "ddp", "--retrain_devices", "2", "--retrain_max_epochs", "2",
           "--trainer.max_epochs", "6", "--ckpt_path", str(trained), "--output_root", str(tmp_path / "out"),
           "--ledger", str(tmp_path / "ledger.jsonl"), "--deletions", str(tmp_path / "deletions")]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = (tmp_path / "ledger.jsonl").read_text().splitlines()
    assert len(lines) == 1  # written once, by rank 0
    run = Path(json.loads(lines[0])["run_dir"])
    report = json.loads((run / "report.json").read_text())
    assert report["details"]["TRU"]["steps"] >= 1
    assert report["details"]["Retrain"]["world_size"] == 2 and "Retrain" in report["metrics"]  # Retrain under DDP too


def test_publish_run_dir_is_atomic_and_never_reuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_tru.audit import report as rep

    a = rep.publish_run_dir(tmp_path, "tru", "ab" * 32, {"x.json": b"1"})
    b = rep.publish_run_dir(tmp_path, "tru", "ab" * 32, {"x.json": b"2"})
    assert a != b and (a / "x.json").read_bytes() == b"1" and (b / "x.json").read_bytes() == b"2"

    def boom(path: Path, data: bytes) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(rep, "atomic_write_bytes", boom)
    with pytest.raises(OSError, match="disk full"):
        rep.publish_run_dir(tmp_path, "tru", "cd" * 32, {"x.json": b"3"})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([a.name, b.name])  # nothing half-written left
    monkeypatch.undo()

    def denied(src: Path, dst: Path) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(rep.os, "rename", denied)  # an error other than a name taken: raised, never retried forever
    with pytest.raises(PermissionError):
        rep.publish_run_dir(tmp_path, "tru", "ef" * 32, {"x.json": b"4"})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([a.name, b.name])


def test_outputs_are_validated_before_any_work(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_tru import lifecycle

    monkeypatch.chdir(REPO)
    started = []
    monkeypatch.setattr(lifecycle, "load_trained_weights", lambda *a, **k: started.append(1))
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    cases = [
        (["--output_root", str(tmp_path / "file")], "is a file"),
        (["--ledger", str(tmp_path / "dir")], "is a directory"),
        (["--ledger", str(trained)], "an input of this run"),
        (["--write_retained", str(tmp_path / "dir")], "already exists"),
    ]
    from lightning_tru.cli import main

    for extra, match in cases:
        with pytest.raises(ValueError, match=match):
            _unlearn(trained, tmp_path, *extra)
        assert main(lambda: _unlearn(trained, tmp_path, *extra)) == 2  # the script: one short line, status 2
    assert not started and not (tmp_path / "out").exists() and not (tmp_path / "ledger.jsonl").exists()
    assert not (tmp_path / "deletions").exists()


def test_stale_incomplete_run_folders_are_reported(tmp_path: Path) -> None:
    from lightning_tru.lifecycle import check_outputs

    (tmp_path / "out" / ".incomplete-abc").mkdir(parents=True)
    with pytest.warns(UserWarning, match=r"1 incomplete run folder.*\.incomplete-abc.*rm -r"):
        check_outputs(tmp_path / "out", tmp_path / "ledger.jsonl")
    with pytest.raises(ValueError, match="input data folder"):
        check_outputs(tmp_path / "out", tmp_path / "out" / "ledger.jsonl", write_retained=tmp_path, data_root=tmp_path)
    (tmp_path / "d.inter").write_text("userID\titemID\tx_label\n")
    with pytest.raises(ValueError, match="an input of this run"):
        check_outputs(tmp_path / "out", tmp_path / "d.inter", data_root=tmp_path)  # a data file


def test_no_op_run_exits_non_zero_and_is_not_a_completed_deletion(trained: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture) -> None:
    from lightning_tru.cli import main

    monkeypatch.chdir(REPO)
    assert main(lambda: _unlearn(trained, tmp_path, "--trainer.max_epochs", "0")) == 3
    assert "NOT answered" in capsys.readouterr().err
    (entry,) = [json.loads(x) for x in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    assert entry["status"]["target_reached"] is False and entry["status"]["steps"] == 0
    assert not (tmp_path / "deletions").exists()


def test_unlearn_logs_under_output_root_and_train_test_honours_the_store(trained: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory
    cfg = str(REPO / "configs/train/mgcn_synthetic.yaml")
    report = unlearn_cli(["--config", cfg, "--config", str(REPO / "configs/unlearn/tru.yaml"), *SMALL,
                          "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                          "--trainer.max_epochs", "20", "--request.regime", "item", "--ckpt_path", str(trained), "--output_root", "out",
                          "--trainer.callbacks.init_args.negative_epochs", "0",  # no simulated Retrain rows: steps run, logs
                          "--ledger", "out/ledger.jsonl"])  # the store defaults to out/deletions, beside the ledger
    assert report["status"]["target_reached"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert list((tmp_path / "out" / "logs").rglob("metrics.csv"))
    unlearned = str(Path(report["run_dir"]) / "model.ckpt")
    test = ["test", "--config", cfg, *SMALL, *QUIET, "--ckpt_path", unlearned]
    from lightning_tru.datamodules.deletions import LineageError

    with pytest.raises(LineageError, match="--deletions"):
        train_cli(test)  # the raw data still holds the forgotten pairs
    cli = train_cli([*test, "--deletions", "out/deletions"])
    assert "test/recall@20" in cli.trainer.callback_metrics


def test_recommend_script(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_tru.cli import recommend_cli

    monkeypatch.chdir(REPO)
    (tmp_path / "users.txt").write_text("userID\n4\n2\n")
    out = recommend_cli(["--config", "configs/train/mgcn_synthetic.yaml", *SMALL, "--ckpt_path", str(trained),
                         "--deletions", str(tmp_path / "deletions"), "--users", str(tmp_path / "users.txt"),
                         "--k", "3", "--output", str(tmp_path / "recs.tsv"), "--trainer.accelerator", "cpu"])
    rows = [line.split("\t") for line in out.read_text().splitlines()[1:]]
    assert [(r[0], r[1]) for r in rows] == [("4", "1"), ("4", "2"), ("4", "3"), ("2", "1"), ("2", "2"), ("2", "3")]
    # train.py predict with the writer callback gives the same rows (for every user)
    train_cli(["predict", "--config", "configs/train/mgcn_synthetic.yaml", *SMALL, *QUIET, "--ckpt_path", str(trained),
               "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(tmp_path),
               "--trainer.callbacks", "lightning_tru.callbacks.topk_writer.TopKWriter",
               "--trainer.callbacks.output", str(tmp_path / "all.tsv"), "--trainer.callbacks.k", "3",
               "--return_predictions", "false"])
    every = [line.split("\t") for line in (tmp_path / "all.tsv").read_text().splitlines()[1:]]
    assert len(every) == 3 * 300
    by_user = {u: [r[:3] for r in every if r[0] == u] for u in ("4", "2")}
    assert [r[:3] for r in rows] == by_user["4"] + by_user["2"]
