"""The GPU paths (CUDA only; skipped on a machine without a GPU): training, evaluation, the audits and every
unlearning method on one GPU, each checked against the same computation on the CPU."""
from __future__ import annotations

import copy
from functools import partial
from typing import Any

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer, seed_everything

from conftest import quiet_trainer
from lightning_tru.audit.forgetting import recall_exposure_at_k
from lightning_tru.audit.membership import matched_nonmembers, pair_membership
from lightning_tru.audit.report import evaluate
from lightning_tru.callbacks import TRU, FineTune, MMRecUn, MultiDelete, NegGrad, Reset, ScaleGUN, Surgery
from lightning_tru.datamodules import SyntheticDataModule
from lightning_tru.datamodules.forget import ForgetRequest
from lightning_tru.datamodules.unlearning import UnlearningDataModule
from lightning_tru.lifecycle import answer_request
from lightning_tru.models import RecommenderModule
from lightning_tru.models.protocol import FrozenScorer
from lightning_tru.models.unlearning import UnlearningTask
from lightning_tru.nn import MGCN, MIGGT, LightGCN

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

BACKBONES = {
    "lightgcn": partial(LightGCN, embedding_dim=16, num_layers=2),
    "mgcn": partial(MGCN, embedding_dim=16),
    "miggt": partial(MIGGT, embedding_dim=16, mlp_hidden_dims=(32,)),
}


def gpu_trainer(**kw: Any) -> Trainer:
    return quiet_trainer(**{"accelerator": "gpu", "devices": 1, **kw})


@pytest.fixture(scope="module")
def dm() -> SyntheticDataModule:
    return SyntheticDataModule(num_users=300, num_items=150, seed=1, batch_size=512, eval_batch_size=128)


@pytest.fixture(scope="module")
def trained(dm: SyntheticDataModule) -> dict[str, RecommenderModule]:
    """Each backbone trained for a few epochs on the GPU."""
    out = {}
    for name, backbone in BACKBONES.items():
        seed_everything(0, verbose=False)
        model = RecommenderModule(backbone, dm.num_users, dm.num_items, dm.feature_dims,
                                  optimizer=partial(torch.optim.Adam, lr=1e-2))
        gpu_trainer(max_epochs=8).fit(model, datamodule=dm)
        out[name] = model.cpu()
    return out


@pytest.mark.parametrize("name", list(BACKBONES))
def test_training_on_gpu_learns_and_evaluates_as_on_the_cpu(name: str, dm: SyntheticDataModule,
                                                            trained: dict[str, RecommenderModule]) -> None:
    """Training on the GPU beats the untrained model; the same weights evaluate to the same metrics on GPU and CPU."""
    model = trained[name]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    seed_everything(0, verbose=False)
    untrained = RecommenderModule(BACKBONES[name], dm.num_users, dm.num_items, dm.feature_dims)
    cpu = quiet_trainer(limit_val_batches=None).validate(copy.deepcopy(model), datamodule=dm, verbose=False)[0]
    gpu = gpu_trainer(limit_val_batches=None).validate(copy.deepcopy(model), datamodule=dm, verbose=False)[0]
    base = quiet_trainer(limit_val_batches=None).validate(untrained, datamodule=dm, verbose=False)[0]
    margin = 0.0 if name == "miggt" else 0.02  # MIG-GT's content encoders rank well untrained on planted data
    assert cpu["val/recall@20"] > base["val/recall@20"] + margin, (cpu, base)
    for key, value in cpu.items():
        assert gpu[key] == pytest.approx(value, abs=2e-3), (key, gpu[key], value)


def test_audits_on_gpu_equal_the_cpu(dm: SyntheticDataModule) -> None:
    """Forget recall, exposure and the pair-MIA AUC of a scorer on the GPU equal the CPU's."""
    udm = UnlearningDataModule(dm, ForgetRequest("user", 0.1, seed=0), seed=0)
    g = torch.Generator().manual_seed(0)
    cpu = FrozenScorer(torch.randn(udm.num_users, 16, generator=g), torch.randn(udm.num_items, 16, generator=g))
    gpu = copy.deepcopy(cpu).cuda()
    retained = udm.retained_train_csr()
    a, b = (recall_exposure_at_k(m, retained, udm.forget_csr(), 20) for m in (cpu, gpu))
    assert a == pytest.approx(b, abs=1e-6)
    pop = np.asarray(retained.sum(0)).ravel()
    pairs = matched_nonmembers(udm.forget.forget_pairs, dm.data.csr("train", "valid", "test"), pop, seed=1)
    a, b = (pair_membership(m, *pairs, retained) for m in (cpu, gpu))
    assert a["auc_rank"] == pytest.approx(b["auc_rank"], abs=1e-6) and a["auc"] == pytest.approx(b["auc"], abs=1e-6)


METHODS = {
    "tru": lambda: TRU(),
    "tru_sampled": lambda: TRU(sample_fanout=3),
    "tru_quantile": lambda: TRU(forget_loss="quantile"),
    "finetune": lambda: FineTune(),
    "neggrad": lambda: NegGrad(),
    "mmrecun": lambda: MMRecUn(),
    "multidelete": lambda: MultiDelete(),
    "scalegun": lambda: ScaleGUN(),
    "reset": lambda: Reset(),
    "surgery": lambda: Surgery(),
}


CASES = ([("mgcn", m, r) for m in METHODS for r in ("user", "item", "interaction")]
         + [("lightgcn", m, r) for m in ("tru", "tru_sampled") for r in ("user", "interaction")]
         + [("miggt", m, "user") for m in ("tru", "finetune", "reset")])


@pytest.mark.parametrize(("name", "method", "regime"), CASES)
def test_every_method_runs_on_gpu(name: str, method: str, regime: str, dm: SyntheticDataModule,
                                  trained: dict[str, RecommenderModule]) -> None:
    """Each method answers (or declines) a request on the GPU without a device error and leaves finite weights; the
    result evaluates on the CPU (the weights come back to the host)."""
    udm = UnlearningDataModule(dm, ForgetRequest(regime, 0.05, seed=0), seed=0)
    model = copy.deepcopy(trained[name]).train()
    cb = METHODS[method]()
    if hasattr(cb, "use_initial"):
        seed_everything(0, verbose=False)
        cb.use_initial(RecommenderModule(BACKBONES[name], dm.num_users, dm.num_items, dm.feature_dims))
    gpu_trainer(max_epochs=12, callbacks=[cb]).fit(UnlearningTask(model), datamodule=udm)
    assert cb.stopping_reason is not None
    assert all(torch.isfinite(p).all() for p in model.parameters()), cb.stopping_reason
    res = evaluate(model.cpu(), udm)
    assert np.isfinite(res["test/ndcg@20"]) and np.isfinite(res["forget_recall@20"])


def test_tru_on_gpu_answers_where_it_answers_on_the_cpu(dm: SyntheticDataModule,
                                                      trained: dict[str, RecommenderModule]) -> None:
    """User-wise TRU on MGCN: the GPU run is answered when the CPU run is, and lands at about the same forget recall."""
    udm = UnlearningDataModule(dm, ForgetRequest("user", 0.05, seed=0), seed=0)
    seed_everything(0, verbose=False)
    initial = RecommenderModule(BACKBONES["mgcn"], dm.num_users, dm.num_items, dm.feature_dims)
    out = {}
    for device, make in (("cpu", quiet_trainer), ("gpu", gpu_trainer)):
        model, cb = copy.deepcopy(trained["mgcn"]).train(), TRU()
        cb.use_initial(initial)
        make(max_epochs=60, callbacks=[cb]).fit(UnlearningTask(model), datamodule=udm)
        out[device] = (cb.target_reached, evaluate(model.cpu(), udm)["forget_recall@20"], cb.stopping_reason)
    assert out["gpu"][0] == out["cpu"][0], out
    assert out["gpu"][1] == pytest.approx(out["cpu"][1], abs=0.05), out


def test_answer_request_on_gpu_writes_a_checkpoint_the_cpu_loads(tmp_path: Any) -> None:
    """The lifecycle end to end on the GPU: a model trained there, a request answered there (report, ledger), and the
    unlearned checkpoint loads on the CPU with weights_only."""
    dm = SyntheticDataModule(num_users=300, num_items=150, seed=1, batch_size=512, eval_batch_size=128,
                             deletions=tmp_path / "deletions")
    seed_everything(0, verbose=False)
    model = RecommenderModule(BACKBONES["mgcn"], dm.num_users, dm.num_items, dm.feature_dims,
                              optimizer=partial(torch.optim.Adam, lr=1e-2))
    trainer = gpu_trainer(max_epochs=5)
    trainer.fit(model, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "trained.ckpt")
    fresh = RecommenderModule(BACKBONES["mgcn"], dm.num_users, dm.num_items, dm.feature_dims)
    rep = answer_request(fresh, dm, ForgetRequest("user", 0.05, seed=0), tmp_path / "trained.ckpt",
                         trainer=gpu_trainer(max_epochs=40, callbacks=[TRU()]),
                         output_root=tmp_path / "runs", ledger=tmp_path / "ledger.jsonl", verbose=False)
    assert (tmp_path / "ledger.jsonl").is_file() and rep["status"]["stopping_reason"]
    out = torch.load(next((tmp_path / "runs").glob("*/model.ckpt")), map_location="cpu", weights_only=True)
    assert all(torch.isfinite(v).all() for v in out["state_dict"].values() if v.is_floating_point())
