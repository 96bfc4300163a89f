"""A planted set shared by the audit tests: a LightGCN trained on all data, two Retrains (seeds 0, 1)
after a user-wise request of 10% of the users. Built once per test process (``lru_cache``)."""
from __future__ import annotations

import copy
from functools import lru_cache, partial
from typing import Any, NamedTuple

import torch
from lightning.pytorch import Trainer, seed_everything

from lightning_tru.datamodules import SyntheticDataModule
from lightning_tru.datamodules.forget import ForgetRequest
from lightning_tru.datamodules.unlearning import UnlearningDataModule
from lightning_tru.models import RecommenderModule
from lightning_tru.nn import LightGCN


class Planted(NamedTuple):
    dm: SyntheticDataModule
    udm: UnlearningDataModule
    initial: RecommenderModule
    trained: RecommenderModule  # on the original graph
    retrain: RecommenderModule  # on the retained graph
    retrain2: RecommenderModule  # another seed, on the retained graph


def fit(model: RecommenderModule, dm: Any, epochs: int) -> RecommenderModule:
    Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            accelerator="cpu", limit_val_batches=0, num_sanity_val_steps=0, max_epochs=epochs).fit(model, datamodule=dm)
    model.eval()
    return model


def new_model(dm: Any, seed: int) -> RecommenderModule:
    seed_everything(seed, verbose=False)
    return RecommenderModule(partial(LightGCN, embedding_dim=16, num_layers=2), dm.num_users, dm.num_items,
                             dm.feature_dims, optimizer=partial(torch.optim.Adam, lr=2e-2))


@lru_cache(maxsize=1)
def planted() -> Planted:
    torch.set_num_threads(1)
    dm = SyntheticDataModule(num_users=300, num_items=150, seed=1, batch_size=1024, eval_batch_size=300)
    udm = UnlearningDataModule(dm, ForgetRequest("user", 0.1, seed=0), seed=0)
    initial = new_model(dm, 0)
    trained = fit(copy.deepcopy(initial), dm, 25)
    retrain = fit(copy.deepcopy(initial), udm.retained, 25)
    retrain2 = fit(new_model(dm, 1), udm.retained, 25)
    return Planted(dm, udm, initial, trained, retrain, retrain2)
