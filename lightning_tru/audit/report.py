"""Before/after evaluation of an unlearning run, atomic report writing (the ledger: :mod:`lightning_tru.ledger`)."""
from __future__ import annotations

import errno
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch import Trainer

from lightning_tru.audit.forgetting import recall_exposure_at_k
from lightning_tru.datamodules.unlearning import UnlearningDataModule
from lightning_tru.io import atomic_write_bytes

REPORT_KEYS = ("val/recall@20", "val/ndcg@20", "test/recall@20", "test/ndcg@20", "forget_recall@20", "exposure@20")


def _quiet_trainer(accelerator: str = "auto") -> Trainer:
    return Trainer(
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def evaluate(model: Any, udm: UnlearningDataModule, original_graph: bool = False, k: int = 20) -> dict[str, float]:
    """Retain valid/test ranking metrics and forget-pair metrics of a :class:`RecommenderModule`.

    ``original_graph=True`` evaluates the model as deployed before the deletion (its training
    graph, its training items masked); otherwise on the retained data (graph surgery done).
    Both use the retained held-out rows (see :meth:`RecDataModule.without`).
    """
    dm = udm.deployed if original_graph else udm.retained
    trainer = _quiet_trainer()
    out: dict[str, float] = {}
    for res in (trainer.validate(model, datamodule=dm, verbose=False), trainer.test(model, datamodule=dm, verbose=False)):
        out.update({key: float(v) for key, v in res[0].items()})
    model.attach(dm)  # the graph the metrics above used
    model.eval()
    out.update(recall_exposure_at_k(model, udm.retained_train_csr(), udm.forget_csr(), k))
    return out


def checkpoint_bytes(checkpoint: dict[str, Any]) -> bytes:
    """A checkpoint serialised with ``torch.save`` (loadable with ``weights_only=True``)."""
    import io

    buf = io.BytesIO()
    torch.save(checkpoint, buf)
    return buf.getvalue()


def publish_run_dir(root: Path, method: str, fingerprint: str, files: dict[str, bytes]) -> Path:
    """Write ``files`` into a fresh ``<root>/<method>-<fp12>-<UTC time>`` directory, atomically.

    The files go to a hidden temporary sibling first; one ``rename`` publishes the directory,
    so a crash leaves either nothing or the complete run. An existing directory is never reused.
    """
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".incomplete-"))
    try:
        for name, data in files.items():
            atomic_write_bytes(tmp / name, data)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        base = root / f"{method}-{fingerprint[:12]}-{stamp}"
        path, n = base, 1
        while True:
            if not path.exists():
                try:
                    os.rename(tmp, path)  # atomic publish; fails if another run took the name meanwhile
                    return path
                except OSError as err:  # another run took the name meanwhile: the next name; anything else is real
                    if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
            n += 1
            path = base.with_name(f"{base.name}-{n}")
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise


def format_table(columns: dict[str, dict[str, float]], seconds: Optional[dict[str, float]] = None) -> str:
    """A fixed-width table: one row per metric, one column per model state."""
    names = list(columns)
    keys = [k for k in REPORT_KEYS if any(k in c for c in columns.values())]
    width = max(len(k) for k in keys + ["seconds"]) + 2
    lines = ["metric".ljust(width) + "".join(n.rjust(14) for n in names)]
    lines.append("-" * len(lines[0]))
    for k in keys:
        lines.append(k.ljust(width) + "".join(
            (f"{columns[n][k]:.4f}" if k in columns[n] else "-").rjust(14) for n in names))
    if seconds:
        lines.append("seconds".ljust(width) + "".join(
            (f"{seconds[n]:.2f}" if n in seconds else "-").rjust(14) for n in names))
    return "\n".join(lines)
