"""Tiny seeded fixtures shared by the test suite."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, Trainer

from lightning_tru.datamodules import InteractionData, SyntheticDataModule, UnlearningDataModule
from lightning_tru.models.unlearning import UnlearningTask

# tiny tensors: one thread avoids OpenMP overhead (measured up to 10x faster on 2 shared cores)
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def quiet_trainer(**kw: Any) -> Trainer:
    """A CPU ``Trainer`` without logger, checkpoints, progress bar, model summary or validation (``kw`` overrides)."""
    defaults: dict[str, Any] = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                    enable_model_summary=False, accelerator="cpu", limit_val_batches=0,
                                    num_sanity_val_steps=0)
    return Trainer(**{**defaults, **kw})


def unlearn(trained: torch.nn.Module, udm: UnlearningDataModule, cb: Callback, steps: int, **kw: Any) -> Any:
    """A copy of ``trained`` (in training mode) unlearned by ``cb`` for at most ``steps`` steps."""
    model = copy.deepcopy(trained)
    model.train()
    quiet_trainer(max_epochs=steps, callbacks=[cb], **kw).fit(UnlearningTask(model), datamodule=udm)
    return model


def shared_data(name: str) -> Path:
    """Path of a real data set, or skip the test when ../shared/data is absent."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data {path} is not available")
    return path


@pytest.fixture
def tiny_data() -> InteractionData:
    """8 users x 12 items, two modalities of dim 4 and 6, every user with train/valid/test rows."""
    rng = np.random.default_rng(0)
    pairs, split = [], []
    for u in range(8):
        items = rng.choice(12, size=6, replace=False)
        pairs += [(u, int(i)) for i in items]
        split += [0, 0, 0, 0, 1, 2]
    return InteractionData(
        num_users=8,
        num_items=12,
        pairs=np.array(pairs),
        split=np.array(split),
        features={
            "image": rng.standard_normal((12, 4)).astype(np.float32),
            "text": rng.standard_normal((12, 6)).astype(np.float32),
        },
        name="tiny",
    )


@pytest.fixture
def small_dm() -> SyntheticDataModule:
    """A small planted synthetic data set that trains in seconds."""
    torch.manual_seed(0)
    return SyntheticDataModule(num_users=300, num_items=150, seed=1, batch_size=512, eval_batch_size=128)
