"""TRU's defaults on recommenders outside the project's family (written only against ``score``).

Planted synthetic data, 5% user- and interaction-wise requests, default TRU handed the untrained
model (``use_initial``, as ``answer_request`` does). Either TRU ends inside the two-sided band
around Retrain (forget recall in [0.8, 1.25] x Retrain's) at >= 95% of Retrain's held-out recall,
or it says it could not (the utility guard trips, the request is reported NOT answered) and the
model keeps its utility: never a silently wrecked model.
"""
from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything

from lightning_tru.audit import recall_exposure_at_k
from lightning_tru.callbacks import TRU
from lightning_tru.datamodules import SyntheticDataModule
from lightning_tru.datamodules.forget import ForgetRequest
from lightning_tru.datamodules.unlearning import UnlearningDataModule
from lightning_tru.models.unlearning import UnlearningTask
from thirdparty import NeuMF, TwoTower


def _trainer(**kw: Any) -> Trainer:
    return Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, num_sanity_val_steps=0, **kw)


@pytest.fixture(scope="module")
def data() -> SyntheticDataModule:
    seed_everything(0, verbose=False)
    return SyntheticDataModule(num_users=400, num_items=200, seed=3, batch_size=1024, eval_batch_size=256)


def _measure(model: Any, udm: UnlearningDataModule) -> tuple[float, float]:
    """(forget Recall@20 of the forget pairs, held-out test Recall@20 of the retained data)."""
    model.eval()
    forget = recall_exposure_at_k(model, udm.retained_train_csr(), udm.forget_csr(), 20)["forget_recall@20"]
    data = udm.retained.data
    test = recall_exposure_at_k(model, data.csr("train", "valid"), data.csr("test"), 20)["forget_recall@20"]
    return forget, test


@pytest.mark.parametrize("regime", ["user", "interaction"])
@pytest.mark.parametrize("cls", [NeuMF, TwoTower], ids=["neumf", "twotower"])
def test_default_tru_keeps_a_third_party_model_intact(cls: type, regime: str, data: SyntheticDataModule) -> None:
    seed_everything(0, verbose=False)
    initial = cls(data.num_users, data.num_items)
    trained = copy.deepcopy(initial)
    _trainer(max_epochs=30).fit(trained, train_dataloaders=data.train_dataloader())
    udm = UnlearningDataModule(data, ForgetRequest(regime, 0.05, seed=0), seed=0)
    seed_everything(0, verbose=False)
    gold = copy.deepcopy(initial)
    _trainer(max_epochs=30).fit(gold, train_dataloaders=udm.retained.train_dataloader())
    gold_forget, gold_test = _measure(gold, udm)

    model = copy.deepcopy(trained)
    model.train()
    tru = TRU()
    tru.use_initial(initial)
    _trainer(max_epochs=200, limit_val_batches=0, callbacks=[tru]).fit(UnlearningTask(model), datamodule=udm)
    forget, test = _measure(model, udm)

    assert test >= 0.95 * gold_test, (test, gold_test, tru.stopping_reason)  # never wrecked
    if tru.target_reached:
        assert 0.8 * gold_forget <= forget <= 1.25 * gold_forget, (forget, gold_forget, tru.stopping_reason)
    else:  # TRU could not get there without hurting the model: it says so
        assert tru.utility_guard_tripped and "NOT answered" in str(tru.stopping_reason), tru.stopping_reason
    if cls is TwoTower:
        assert tru.target_reached, tru.stopping_reason  # measured: only NeuMF trips the guard (user- and interaction-wise)
