"""Shared helpers of the benchmark scripts: machine header, timing callback, subprocess runs."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any

import lightning
import numpy as np
import torch
import torchmetrics
from lightning.pytorch import Callback, LightningModule, Trainer

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LT_DATA", REPO.parent / "shared" / "data"))  # LT_DATA: the real data sets' folder


def machine_header() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"- machine: {cpu}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}\n"
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, lightning {lightning.__version__}, "
        f"torchmetrics {torchmetrics.__version__}, numpy {np.__version__}\n"
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )


class EpochTimer(Callback):
    """Wall-clock of every training epoch without its validation pass, and of every validation pass.

    Lightning runs validation inside the training epoch (before ``on_train_epoch_end``), so the
    validation time measured in an epoch is subtracted from that epoch's time.
    """

    def __init__(self) -> None:
        self.train: list[float] = []
        self.valid: list[float] = []
        self._t = 0.0
        self._v = 0.0
        self._in_epoch_valid = 0.0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._in_epoch_valid = 0.0
        self._t = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.train.append(time.perf_counter() - self._t - self._in_epoch_valid)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._v = time.perf_counter()

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.valid.append(time.perf_counter() - self._v)
        self._in_epoch_valid += self.valid[-1]


def peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_isolated(args: list[str], timeout: int = 3600, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``python <script> *args`` in a fresh process (own peak memory; ``env`` added to the environment);
    parse its last JSON line."""
    full_env = dict(os.environ, **(env or {}))
    cwd = Path(full_env.get("LT_REPO", REPO))
    out = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)
    lines = [x for x in out.stdout.splitlines() if x.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark run failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


def med(xs: list[float]) -> float:
    return float(median(xs)) if xs else float("nan")


def mean_std(xs: list[float]) -> str:
    a = np.asarray(xs, dtype=float)
    return f"{a.mean():.4f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.4f}"


def write_section(path: Path, title: str, body: str) -> None:
    """Replace (or append) the ``## title`` section of a markdown file, atomically."""
    text = path.read_text() if path.exists() else "# Benchmark results\n\nMeasured by the scripts in this folder; never edited by hand.\n"
    head = f"## {title}\n"
    if head in text:
        start = text.index(head)
        nxt = text.find("\n## ", start + len(head))
        text = text[:start] + head + body + ("\n" + text[nxt + 1 :] if nxt >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + head + body
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
