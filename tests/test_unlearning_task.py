"""The unlearning task's wiring: the callback binds itself, batches arrive through the DataLoader."""
from __future__ import annotations

from functools import partial
from typing import Any

import pytest
import torch
from lightning.pytorch import Trainer

from conftest import quiet_trainer
from lightning_tru.callbacks import FineTune, NegGrad
from lightning_tru.datamodules import ForgetRequest, InteractionData, RecDataModule, UnlearningDataModule
from lightning_tru.datamodules.unlearning import UnlearnBatch
from lightning_tru.models import RecommenderModule
from lightning_tru.models.unlearning import UnlearningTask
from lightning_tru.nn import LightGCN


def _trainer(callbacks: list, steps: int = 3) -> Trainer:
    return quiet_trainer(max_epochs=steps, callbacks=callbacks)


def _setup(tiny_data: InteractionData, **kw: Any) -> tuple[UnlearningTask, UnlearningDataModule]:
    dm = RecDataModule(tiny_data)
    udm = UnlearningDataModule(dm, ForgetRequest("user", 0.25, seed=0), forget_batch_size=3, retain_batch_size=5, **kw)
    torch.manual_seed(0)
    return UnlearningTask(RecommenderModule(partial(LightGCN, embedding_dim=4), dm.num_users, dm.num_items)), udm


class _Recorder(FineTune):
    """Records the batch of every step."""

    def __init__(self) -> None:
        super().__init__(k=5, eval_every=100, target_recall=0.0)
        self.batches: list[UnlearnBatch] = []

    def training_losses(self, model: torch.nn.Module, batch: UnlearnBatch, dm: Any) -> dict[str, torch.Tensor]:
        self.batches.append(batch)
        return super().training_losses(model, batch, dm)


def test_the_dataloader_yields_each_epochs_batch(tiny_data: InteractionData) -> None:
    task, udm = _setup(tiny_data, seed=3)
    cb = _Recorder()
    _trainer([cb], steps=3).fit(task, datamodule=udm)
    assert len(cb.batches) == 3
    for epoch, got in enumerate(cb.batches):
        assert isinstance(got, UnlearnBatch)
        want = udm.make_batch(epoch, 0)  # (seed, epoch, rank): the same draw outside the trainer
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert not torch.equal(cb.batches[0].retain_users, cb.batches[1].retain_users)
    assert task._method is None  # unbound after the run


def test_the_sampler_resumes_at_the_epoch_it_is_given(tiny_data: InteractionData) -> None:
    _, udm = _setup(tiny_data)
    loader = udm.train_dataloader()
    loader.sampler.set_epoch(7)  # what Lightning does at each epoch start (and after a resume)
    (got,) = list(loader)
    assert all(torch.equal(a, b) for a, b in zip(got, udm.make_batch(7, 0)))


def test_exactly_one_unlearning_callback_is_required(tiny_data: InteractionData) -> None:
    task, udm = _setup(tiny_data)
    with pytest.raises(RuntimeError, match="exactly one UnlearningCallback.*found 2"):
        _trainer([FineTune(k=5), NegGrad(k=5)]).fit(task, datamodule=udm)
    with pytest.raises(RuntimeError, match="no unlearning method is bound"):
        _trainer([]).fit(task, datamodule=udm)
    with pytest.raises(TypeError, match="does not offer training_losses"):
        task.bind(object())  # type: ignore[arg-type]


def test_profile_batch_is_deterministic_bounded_and_from_the_right_sets(tiny_data: InteractionData) -> None:
    _, udm = _setup(tiny_data)
    a, b = udm.profile_batch(4), udm.profile_batch(4)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert len(a.forget_users) == len(a.retain_users) == 4  # 8 forget pairs > forget batch of 3: 4 drawn
    forget = {tuple(p) for p in udm.forget.forget_pairs.tolist()}
    retain = {tuple(p) for p in udm.forget.retain_pairs.tolist()}
    assert set(zip(a.forget_users.tolist(), a.forget_items.tolist())) <= forget
    assert set(zip(a.retain_users.tolist(), a.retain_items.tolist())) <= retain
    full_train = {tuple(p) for p in udm.source.train_pairs().tolist()}
    assert not set(zip(a.forget_users.tolist(), a.forget_neg.tolist())) & full_train
    assert not set(zip(a.retain_users.tolist(), a.retain_neg.tolist())) & retain
    _, all_fit = _setup(tiny_data)
    all_fit.forget_batch_size = 100  # the forget batch holds every pair: the profile uses it whole
    p = all_fit.profile_batch(4)
    assert torch.equal(p.forget_users, all_fit.make_batch(-1, 0).forget_users) and len(p.forget_users) == 8


@pytest.mark.parametrize("k", [0, -1, True, 2.5])
def test_one_k_check_for_methods_metrics_and_writers(k: Any, tmp_path: Any) -> None:
    from lightning_tru.callbacks import TRU
    from lightning_tru.callbacks.topk_writer import TopKWriter
    from lightning_tru.metrics import RecallAtK

    for make in (lambda: TRU(k=k), lambda: FineTune(k=k), lambda: RecallAtK(k=k), lambda: TopKWriter(tmp_path / "r.tsv", k=k)):
        with pytest.raises(ValueError, match=r"`k` to be a positive integer \(k >= 1\)"):
            make()


def test_retain_weight_belongs_to_the_methods_that_weigh_a_retain_term() -> None:
    from lightning_tru.callbacks import TRU, MMRecUn, MultiDelete, ScaleGUN

    for cls in (TRU, NegGrad, ScaleGUN):
        assert cls(retain_weight=0.25).retain_weight == 0.25
        with pytest.raises(ValueError, match="retain_weight=-1.0 must be >= 0"):
            cls(retain_weight=-1.0)
    for cls in (FineTune, MMRecUn, MultiDelete):  # no such knob (MMRecUn calls it alpha)
        with pytest.raises(TypeError, match="retain_weight"):
            cls(retain_weight=0.5)
        assert not hasattr(cls(), "retain_weight")
