"""Every training config runs through the CLI with fast_dev_run (real-data configs skip without data)."""
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, shared_data
from lightning_tru.cli import train_cli

CONFIGS = sorted((REPO / "configs" / "train").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_train_config_fast_dev_run(config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_name = config.stem.split("_", 1)[1]
    if data_name != "synthetic":
        shared_data(data_name)
    monkeypatch.chdir(REPO)
    cli = train_cli(
        ["fit", "--config", str(config), "--trainer.fast_dev_run", "2", "--trainer.accelerator", "cpu",
         "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path),
         "--trainer.enable_progress_bar", "false"]
    )
    assert cli.trainer.state.finished
    assert "test/recall@20" in cli.trainer.callback_metrics
    # the logged recall is the naive one: per test user, hits in the top 20 (train and valid masked) / test items,
    # averaged over the users of the 2 test batches fast_dev_run evaluates
    model = cli.model.eval()
    recalls = []
    with torch.no_grad():
        u, i = model.backbone.embeddings()
        for _, (users, exclude, target) in zip(range(2), cli.datamodule.test_dataloader()):
            for user, ex, tg in zip(users.tolist(), exclude, target):
                scores = (u[user] @ i.T).masked_fill(ex, float("-inf"))
                top = set(torch.topk(scores, 20).indices.tolist())
                relevant = set(tg.nonzero().flatten().tolist())
                if relevant:
                    recalls.append(len(top & relevant) / len(relevant))
    assert len(recalls) > 100 and np.mean(recalls) > 0  # a measurable value, not a trivial 0 (2 batches: near chance on real data)
    assert float(cli.trainer.callback_metrics["test/recall@20"]) == pytest.approx(float(np.mean(recalls)), abs=1e-6)


def test_train_cli_links_sizes_and_rejects_typos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    cli = train_cli(["--config", str(REPO / "configs/train/mgcn_synthetic.yaml"),
                     "--data.init_args.num_users", "120", "--data.init_args.num_items", "90"], run=False)
    assert cli.model.backbone.num_users == 120 and cli.model.backbone.num_items == 90
    assert cli.model.backbone.feature_dims == cli.datamodule.feature_dims
    with pytest.raises(SystemExit):
        train_cli(["--config", str(REPO / "configs/train/mgcn_synthetic.yaml"),
                   "--model.backbone.init_args.knn_kk", "3"], run=False)


QUIET = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
SMALL = ["--data.init_args.num_users", "120", "--data.init_args.num_items", "90"]


def test_fit_without_checkpointing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cli = train_cli(["fit", "--config", str(REPO / "configs/train/lightgcn_synthetic.yaml"), *SMALL, *QUIET,
                     "--trainer.max_epochs", "1", "--trainer.enable_checkpointing", "false"])
    assert cli.trainer.state.finished and cli.trainer.checkpoint_callback is None
    assert "test/recall@20" in cli.trainer.callback_metrics  # tested with the last weights
    assert not list(tmp_path.rglob("*.ckpt"))


def test_checkpoints_load_weights_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``train.py fit`` tests its best checkpoint and ``train.py test --ckpt_path`` loads one with weights_only=True."""
    import torch

    monkeypatch.chdir(tmp_path)
    calls: list[object] = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: (calls.append(k.get("weights_only")), real(*a, **k))[1])
    cli = train_cli(["fit", "--config", str(REPO / "configs/train/lightgcn_synthetic.yaml"), *SMALL, *QUIET,
                     "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path)])
    best = cli.trainer.checkpoint_callback.best_model_path
    assert best and calls and all(w is True for w in calls), calls
    calls.clear()
    train_cli(["test", "--config", str(REPO / "configs/train/lightgcn_synthetic.yaml"), *SMALL, *QUIET,
               "--ckpt_path", best])
    assert calls and all(w is True for w in calls), calls


@pytest.mark.parametrize(("flag", "value", "match"), [("--data.init_args.batch_size", "0", "batch_size=0"),
                                                       ("--data.init_args.seed", "-1", "seed must be an integer >= 0"),
                                                       ("--data.init_args.num_users", "0", "num_users must be")])
def test_bad_data_arguments_print_one_short_error(flag: str, value: str, match: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from lightning_tru.cli import main

    monkeypatch.chdir(tmp_path)
    args = ["--config", str(REPO / "configs/train/lightgcn_synthetic.yaml"), *QUIET, flag, value]
    assert main(lambda: train_cli(args, run=False)) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and match in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing written


def _mmrec(root: Path, inter: str, feat: "np.ndarray | None" = None) -> Path:
    import numpy as np

    root.mkdir()
    (root / "d.inter").write_text(inter)
    np.save(root / "image_feat.npy", feat if feat is not None else np.ones((3, 2), np.float32))
    return root


def test_bad_input_prints_one_short_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture) -> None:
    import numpy as np

    from lightning_tru.cli import main
    from lightning_tru.datamodules import DataFormatError

    monkeypatch.chdir(REPO)
    good = "userID\titemID\tx_label\n0\t1\t0\n1\t2\t0\n1\t0\t1\n"
    bad = _mmrec(tmp_path / "bad", "userID\titemID\tx_label\n0\t1\t0\n1\tx\t0\n")
    args = ["--config", "configs/train/lightgcn_synthetic.yaml", "--data", "lightning_tru.datamodules.MMRecDataModule",
            *QUIET]
    with pytest.raises(DataFormatError, match="line 3"):  # the library raises the data error itself, unwrapped
        train_cli([*args, "--data.root", str(bad)], run=False)
    assert main(lambda: train_cli([*args, "--data.root", str(bad)], run=False)) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "line 3, column 'itemID'" in err and "Traceback" not in err
    # NaN features: the advice names strict_features, and that switch is reachable from the CLI
    feat = np.ones((3, 2), np.float32)
    feat[1, 0] = np.nan
    nan = _mmrec(tmp_path / "nan", good, feat)
    assert main(lambda: train_cli([*args, "--data.root", str(nan)], run=False)) == 2
    assert "strict_features=False" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="replaced non-finite"):
        cli = train_cli([*args, "--data.root", str(nan), "--data.strict_features", "false"], run=False)
    assert np.isfinite(cli.datamodule.data.features["image"]).all()
    # a malformed YAML file is named, with its line
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("trainer:\n  max_epochs: [1\n")
    assert main(lambda: train_cli(["fit", "--config", str(cfg)], run=False)) == 2
    err = capsys.readouterr().err
    assert str(cfg) in err and "line" in err and err.count("error:") == 1


def test_demo_prints_tru_beside_reset_and_retrain_with_the_audits(tmp_path, capsys, monkeypatch) -> None:
    from lightning_tru import demo

    monkeypatch.chdir(tmp_path)
    small = ["--data.init_args.num_users", "200", "--data.init_args.num_items", "100", "--trainer.max_epochs", "3"]
    report = demo.main(str(tmp_path / "demo"), extra=small)
    out = capsys.readouterr().out
    assert report["status"]["stopping_reason"] and "Retrain" in report["metrics"]
    table = out[out.index("| column |"):]
    assert all(f"| {name} |" in table or f"| *{name}* |" in table or f"| **{name}** |" in table
               for name in ("before", "TRU", "Reset", "Retrain"))
    assert "rank AUC" in table and "beats floors on" in table
    assert report["audits"]["TRU"]["membership"]["flag"] in ("ok", "residual_memory", "over_forgetting")
    if not report["status"]["target_reached"]:
        return
    # a second demo in the same folder trains without the first one's deleted users and answers a new request;
    # its Reset floor starts from the same deletion state (the store's earlier requests)
    again = demo.main(str(tmp_path / "demo"), extra=small)
    assert again["request"]["fingerprint"] != report["request"]["fingerprint"]
    assert again["lineage"]["before"]["deletions"] == [report["request"]["fingerprint"]]
    assert "| *Reset* |" in capsys.readouterr().out
