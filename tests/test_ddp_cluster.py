"""The SLURM recipes: the command each task runs, run under torchrun with 2 CPU processes."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

SMALL = ["--data.init_args.num_users", "300", "--data.init_args.num_items", "150"]
QUIET = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _command(script: str, *args: str, **env: str) -> list[str]:
    """The command line ``scripts/<script>`` hands to ``srun`` (its DRY_RUN mode), for CPU devices."""
    out = subprocess.run(["bash", f"scripts/{script}", *args], cwd=REPO, capture_output=True, text=True, check=True,
                         env={**ENV, "DRY_RUN": "1", "ACCELERATOR": "cpu", "DEVICES": "2", "PYTHON": sys.executable,
                              **env})
    return shlex.split(out.stdout)


def _torchrun(cmd: list[str]) -> None:
    """Run ``python script.py args`` as ``torchrun --nproc_per_node 2 script.py args`` (what srun does per task)."""
    assert cmd[0] == sys.executable and cmd[1].endswith(".py")
    full = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *cmd[1:]]
    proc = subprocess.run(full, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_dry_run_prints_the_ddp_command_and_ckpt_is_required() -> None:
    cmd = _command("slurm_train.sh", "--trainer.max_epochs", "a b", SLURM_NNODES="3", DEVICES="")
    assert cmd[1:5] == ["train.py", "fit", "--config", "configs/train/mgcn_synthetic.yaml"]
    joined = " ".join(cmd)
    assert "--trainer.strategy ddp" in joined and "--trainer.num_nodes 3" in joined
    assert cmd[-2:] == ["--trainer.max_epochs", "a b"]  # extra arguments pass through, quoted
    bad = subprocess.run(["bash", "scripts/slurm_unlearn.sh"], cwd=REPO, capture_output=True, text=True,
                         env={**ENV, "DRY_RUN": "1"})
    assert bad.returncode != 0 and "CKPT" in bad.stderr


@pytest.mark.slow
def test_slurm_commands_train_and_unlearn_under_torchrun(tmp_path: Path) -> None:
    _torchrun(_command("slurm_train.sh", *SMALL, *QUIET, "--trainer.max_epochs", "2",
                       "--trainer.default_root_dir", str(tmp_path), "--checkpoint.dirpath", str(tmp_path / "ckpt"),
                       "--test_after_fit", "false"))
    ckpts = sorted((tmp_path / "ckpt").glob("*.ckpt"))
    assert ckpts, "training wrote no checkpoint"
    _torchrun(_command("slurm_unlearn.sh", *SMALL, *QUIET, "--trainer.max_epochs", "4",
                       "--output_root", str(tmp_path / "out"), "--ledger", str(tmp_path / "ledger.jsonl"),
                       CKPT=str(ckpts[0])))
    lines = (tmp_path / "ledger.jsonl").read_text().splitlines()
    assert len(lines) == 1  # written once, by rank 0
    run = Path(json.loads(lines[0])["run_dir"])
    assert json.loads((run / "report.json").read_text())["method"] == "TRU"
    assert len(list((tmp_path / "out").iterdir())) == 1  # one run directory, not one per rank
