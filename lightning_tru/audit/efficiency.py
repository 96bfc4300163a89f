r"""Efficiency: wall-clock, optimisation steps and peak memory of a run, and its ratio to Retrain.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over the measured block (its counter is
reset at entry); on CPU the growth of the process's peak resident set size
(``resource.getrusage(...).ru_maxrss``) during the block, which is 0 when the block stays below
an earlier peak of the process (a lower bound, documented as such).
"""
from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Optional, Union

import torch

__all__ = ["Efficiency", "efficiency_ratio"]


def _max_rss_bytes() -> int:
    try:
        import resource
    except ImportError:  # not on POSIX
        return 0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, KiB on Linux


class Efficiency:
    """Context manager measuring a block: ``with Efficiency(device) as e: ...; e.result(steps)``.

    Args:
        device: the device the block computes on (CUDA selects the CUDA counter).
    """

    def __init__(self, device: Union[str, torch.device] = "cpu") -> None:
        self.device = torch.device(device)
        self.seconds = 0.0
        self.peak_memory_bytes = 0
        self._start = 0.0
        self._rss0 = 0

    def __enter__(self) -> "Efficiency":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self._rss0 = _max_rss_bytes()
        self._start = time.perf_counter()
        return self

    def __exit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_memory_bytes = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self.peak_memory_bytes = max(0, _max_rss_bytes() - self._rss0)
        self.seconds = time.perf_counter() - self._start

    def result(self, steps: Optional[int] = None) -> dict[str, float]:
        """``{"seconds", "peak_memory_bytes"[, "steps"]}`` (JSON-ready)."""
        out: dict[str, float] = {"seconds": self.seconds, "peak_memory_bytes": float(self.peak_memory_bytes)}
        if steps is not None:
            out["steps"] = float(steps)
        return out


def efficiency_ratio(method: dict[str, float], retrain: dict[str, float]) -> dict[str, float]:
    """Ratios method / Retrain of every shared positive quantity (``seconds_ratio``, ...) and the
    speed-up ``retrain seconds / method seconds``."""
    out = {f"{k}_ratio": method[k] / retrain[k] for k in method if k in retrain and retrain[k] > 0}
    if method.get("seconds", 0) > 0 and "seconds" in retrain:
        out["speedup"] = retrain["seconds"] / method["seconds"]
    return out
