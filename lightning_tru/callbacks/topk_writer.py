"""Serving: write each user's top-K recommendations of ``trainer.predict`` to a TSV file."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor
from typing_extensions import override

from lightning_tru.metrics.functional import check_k


#: the first line of a recommendations file
HEADER = "userID\trank\titemID\tscore"


class TopKWriter(BasePredictionWriter):
    """Writes ``userID  rank  itemID  score`` rows (rank 1 = best) for every predicted user.

    Consumes ``(users (B,), scores (B, I))`` predictions (:meth:`RecommenderModule.predict_step`,
    excluded items at ``-inf``, never written). The file is written to a temporary sibling and
    renamed at the end, so a crash leaves the previous file (or none). Use it with
    ``trainer.predict(..., return_predictions=False)`` so scores are not kept in memory.

    Args:
        output: the TSV file.
        k: recommendations per user.
    """

    def __init__(self, output: Union[str, Path], k: int = 20) -> None:
        super().__init__(write_interval="batch")
        check_k(k)
        self.output = Path(output).expanduser()
        if self.output.is_dir():
            raise ValueError(f"output {self.output} is a folder; pass a file path such as recs.tsv")
        self.k = k
        self._fh: Optional[Any] = None
        self._tmp: Optional[Path] = None

    @override
    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.world_size > 1:
            raise ValueError("TopKWriter writes one file: serve with devices=1")
        self.output.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.output.parent, prefix=f".{self.output.name}.", suffix=".tmp")
        self._tmp = Path(tmp)
        self._fh = os.fdopen(fd, "w", encoding="utf-8")
        self._fh.write(HEADER + "\n")

    @override
    def write_on_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, prediction: tuple[Tensor, Tensor],
        batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int,
    ) -> None:
        users, scores = prediction
        top = torch.topk(scores, min(self.k, scores.shape[1]), dim=1)  # (B, K)
        lines = []
        for u, vals, items in zip(users.tolist(), top.values.cpu().tolist(), top.indices.cpu().tolist()):
            lines += [f"{u}\t{r}\t{i}\t{v:.6g}" for r, (v, i) in enumerate(zip(vals, items), start=1)
                      if v != float("-inf")]
        assert self._fh is not None
        self._fh.write("".join(line + "\n" for line in lines))

    @override
    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        assert self._fh is not None and self._tmp is not None
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self._tmp, self.output)
        self._fh = self._tmp = None

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if self._fh is not None:
            self._fh.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
        self._fh = self._tmp = None
