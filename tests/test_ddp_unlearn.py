"""Every unlearning method and Retrain under DDP (2 gloo CPU processes launched by torchrun) vs one process.

The test trains a small MGCN, saves its weights, and runs this file as a script under
``torchrun --nproc_per_node 2``: each rank unlearns one request with every method (strategy
``ddp``), retrains with ``retrain(..., strategy="ddp", devices=2)``, and saves what it ended with.
The reference runs in one process and averages, each step, the losses of the batches the two ranks
draw (``make_batch(epoch, 0)`` and ``make_batch(epoch, 1)``): DDP's gradient is the mean of the
ranks' gradients, so both take the same steps, up to floating-point summation order.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the script run by torchrun imports the package from the checkout

from lightning_tru.audit.forgetting import recall_exposure_at_k  # noqa: E402
from lightning_tru.callbacks import TRU, FineTune, MMRecUn, MultiDelete, NegGrad, ScaleGUN, UnlearningCallback  # noqa: E402
from lightning_tru.datamodules import ForgetRequest, SyntheticDataModule, UnlearningDataModule  # noqa: E402
from lightning_tru.models import RecommenderModule  # noqa: E402
from lightning_tru.models.retrain import retrain  # noqa: E402
from lightning_tru.models.unlearning import UnlearningTask  # noqa: E402
from lightning_tru.nn import MGCN  # noqa: E402

STEPS = 6
K = 20


def _dm() -> SyntheticDataModule:
    return SyntheticDataModule(num_users=300, num_items=150, seed=1, batch_size=512, eval_batch_size=300)


def _model(dm: SyntheticDataModule) -> RecommenderModule:
    return RecommenderModule(partial(MGCN, embedding_dim=16), dm.num_users, dm.num_items, dm.feature_dims,
                             optimizer=partial(torch.optim.Adam, lr=2e-2))


class SlotAveragedTask(UnlearningTask):
    """One process doing what ``slots`` DDP ranks do: the mean of the slots' losses per step."""

    def __init__(self, model: torch.nn.Module, slots: int) -> None:
        super().__init__(model)
        self.slots = slots

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        dm = self.trainer.datamodule
        self.model.train(self.method.train_mode)
        total = []
        for slot in range(self.slots):
            losses = self.method.training_losses(self.model, dm.make_batch(self.current_epoch, slot), dm)
            total.append(torch.stack(list(losses.values())).sum())
        return torch.stack(total).mean()


def _methods() -> dict[str, UnlearningCallback]:
    kw = {"lr": 0.05, "eval_every": 2}
    return {"TRU": TRU(**kw, target_recall=0.0), "FineTune": FineTune(**kw), "NegGrad": NegGrad(**kw, target_recall=0.56), "MMRecUn": MMRecUn(**kw),
            "MultiDelete": MultiDelete(**kw), "ScaleGUN": ScaleGUN(**kw)}


def _udm(dm: SyntheticDataModule) -> UnlearningDataModule:
    return UnlearningDataModule(dm, ForgetRequest("user", 0.1, seed=0), retain_batch_size=512, seed=0)


def _trainer(devices: int, **kw: Any) -> Trainer:
    return Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", logger=False,
                   enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                   num_sanity_val_steps=0, limit_val_batches=0, **kw)


def run_all(weights: Path, devices: int) -> dict[str, Any]:
    """Unlearn with every method and retrain; ``{name: {"weights", "state", "fingerprint", "recall"}}``.

    ``devices=1`` runs the two-slot reference (:class:`SlotAveragedTask`), ``devices=2`` real DDP.
    """
    dm = _dm()
    seed_everything(0)
    initial = _model(dm)
    trained = copy.deepcopy(initial)
    trained.load_state_dict(torch.load(weights, weights_only=True))
    udm = _udm(dm)
    out: dict[str, Any] = {}
    for name, cb in _methods().items():
        seed_everything(0)
        model = copy.deepcopy(trained)
        model.train()
        task = UnlearningTask(model) if devices > 1 else SlotAveragedTask(model, slots=2)
        _trainer(devices, max_epochs=STEPS, callbacks=[cb]).fit(task, datamodule=udm)
        model.attach(udm)
        model.eval()
        recall = recall_exposure_at_k(model, udm.retained_train_csr(), udm.forget_csr(), K)[f"forget_recall@{K}"]
        out[name] = {"weights": model.state_dict(), "state": cb.state_dict(), "fingerprint": udm.forget.fingerprint,
                     "stopping_reason": cb.stopping_reason, "recall": recall}
    gold, info = retrain(initial, udm.retained, max_epochs=3, patience=2, seed=0, accelerator="cpu",
                         strategy="ddp" if devices > 1 else "auto", devices=devices)
    out["Retrain"] = {"weights": gold.state_dict(), "state": {k: info[k] for k in ("best_epoch", "best_score", "epochs")}}
    return out


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or a is None or isinstance(a, str):
        return a == b
    if isinstance(a, (int, float)):
        return isinstance(b, (int, float)) and b == pytest.approx(a, rel=1e-5, abs=1e-6)
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.allclose(a.double(), b.double(), rtol=1e-5, atol=1e-6)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return a == b


def _flat(weights: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([w.flatten().double() for w in weights.values()])


@pytest.mark.slow
def test_every_method_under_ddp_agrees_across_ranks_and_with_one_process(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    dm = _dm()
    seed_everything(0)
    model = _model(dm)
    _trainer(1, max_epochs=12).fit(model, datamodule=dm)
    torch.save(model.state_dict(), tmp_path / "trained.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           __file__, str(tmp_path / "trained.pt"), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    start = _flat(model.state_dict())
    one = run_all(tmp_path / "trained.pt", devices=1)
    assert set(ranks[0]) == set(one) == {*_methods(), "Retrain"}
    summary = {}
    for name, ref in one.items():
        r0, r1 = ranks[0][name], ranks[1][name]
        # every rank: the same request, the same masks/scales/history/steps (one stop decision), the same weights
        assert _equal(r0, r1), name
        if name == "Retrain":  # every rank holds the best epoch's weights: one process measures what DDP monitored
            gold = _model(dm)
            gold.load_state_dict(r0["weights"])
            udm = _udm(dm)
            val = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False).validate(
                gold, datamodule=udm.retained, verbose=False)[0]["val/recall@20"]
            assert val == r0["state"]["best_score"] and r0["state"]["epochs"] <= 3
            continue
        assert r0["fingerprint"] == ref["fingerprint"]
        # profile, target, history and steps of the two-slot reference, up to summation order
        assert _close(r0["state"], ref["state"]), (name, r0["state"], ref["state"])
        delta_ddp, delta_one = _flat(r0["weights"]) - start, _flat(ref["weights"]) - start
        cos = float(torch.nn.functional.cosine_similarity(delta_ddp, delta_one, dim=0))
        summary[name] = {"steps": (r0["state"]["steps"], ref["state"]["steps"]), "recall": (r0["recall"], ref["recall"]), "cos": cos,
                         "max_abs": float((delta_ddp - delta_one).abs().max())}
    print(json.dumps(summary, indent=1))
    for name, s in summary.items():
        assert s["steps"][0] == s["steps"][1], (name, s)
        assert s["recall"][0] == pytest.approx(s["recall"][1], abs=1e-6), (name, s)
        assert s["max_abs"] < 1e-4 and s["cos"] > 0.99999, (name, s)
    assert summary["NegGrad"]["steps"] == (4, 4)  # target reached at the second check: every rank stopped there
    assert summary["ScaleGUN"]["steps"] == (0, 0)  # one-shot Newton step, identical on every rank
    assert summary["TRU"]["steps"] == (STEPS, STEPS)  # the update itself ran under DDP


def _worker(weights: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    out = run_all(Path(weights), devices=2)
    rank = int(os.environ["RANK"])
    torch.save(out, Path(out_dir) / f"rank{rank}.pt")


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
