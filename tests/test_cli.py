"""Every training config runs through the CLI with fast_dev_run (real-data configs skip without data)."""
from pathlib import Path

import pytest

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
    assert 0.0 <= float(cli.trainer.callback_metrics["test/recall@20"]) <= 1.0


def test_train_cli_links_sizes_and_rejects_typos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    cli = train_cli(["--config", str(REPO / "configs/train/mgcn_synthetic.yaml"),
                     "--data.init_args.num_users", "120", "--data.init_args.num_items", "90"], run=False)
    assert cli.model.backbone.num_users == 120 and cli.model.backbone.num_items == 90
    assert cli.model.backbone.feature_dims == cli.datamodule.feature_dims
    with pytest.raises(SystemExit):
        train_cli(["--config", str(REPO / "configs/train/mgcn_synthetic.yaml"),
                   "--model.backbone.init_args.knn_kk", "3"], run=False)
