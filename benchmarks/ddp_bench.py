"""Data-parallel benchmark: 1 vs N processes for training and unlearning, and memory per rank vs table size.

    python benchmarks/ddp_bench.py                      # CPU: 1 vs 2 processes, 3 repeats, memory scan
    python benchmarks/ddp_bench.py --accelerator gpu --procs 1 2 4 8
    python benchmarks/ddp_bench.py --quick              # smallest sizes: shows the script works

Every run is a fresh ``torchrun --standalone --nproc_per_node N`` job (strategy ``ddp``; one
process runs without a strategy). Speed: MGCN on the synthetic generator, seconds per training
epoch (medians over epochs, then over repeats) and valid Recall@20 after the last epoch, then TRU
on one user-wise request from the same trained weights: seconds per unlearning step and forget
Recall@20 at the end. The per-rank batch is ``batch / N`` so every run takes the same optimisation
steps (DDP averages the ranks' gradients). On a 2-core CPU this measures correctness and
overhead, not speed-up.

Memory: LightGCN (ID embeddings only: the table is the model) trained for a few batches under
``ddp`` with growing numbers of users and items; peak memory per rank (``max_memory_allocated``
on GPU, peak RSS on CPU, which includes the process's own ~0.5 GiB). A least-squares line
``peak = a + b * parameters`` over the scan gives the table size that fills 24 GiB per rank.
Tables go to stdout and to the "Data parallelism" section of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, EpochTimer, machine_header, med, peak_rss_mib, write_section  # noqa: E402

BUDGET_GIB = 24.0


# ------------------------------------------------------------------------------ workers
def _setup_torch(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(REPO))


def _trainer(procs: int, accelerator: str, **kw: Any) -> Any:
    from lightning.pytorch import Trainer

    return Trainer(accelerator=accelerator, devices=procs, strategy="ddp" if procs > 1 else "auto", logger=False,
                   enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                   num_sanity_val_steps=0, **kw)


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _report(a: argparse.Namespace, row: dict[str, Any]) -> None:
    """This rank's result as ``<results>/rank<r>.json`` (the ranks' stdout lines may interleave)."""
    Path(a.results, f"rank{_rank()}.json").write_text(json.dumps({"rank": _rank(), **row}))


def _peak_mib(accelerator: str) -> float:
    import torch

    if accelerator == "gpu" and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return peak_rss_mib()


def _data(users: int, items: int, batch: int) -> Any:
    from lightning_tru.datamodules import SyntheticDataModule

    return SyntheticDataModule(num_users=users, num_items=items, seed=0, batch_size=batch, eval_batch_size=1024)


def _mgcn(dm: Any) -> Any:
    import torch

    from lightning_tru.models import RecommenderModule
    from lightning_tru.nn import MGCN

    return RecommenderModule(partial(MGCN, embedding_dim=64), dm.num_users, dm.num_items, dm.feature_dims,
                             optimizer=partial(torch.optim.Adam, lr=1e-2))


def worker_train(a: argparse.Namespace) -> None:
    """Train MGCN ``epochs`` epochs; validation once, after the last one; optionally save the weights."""
    import torch
    from lightning.pytorch import seed_everything

    dm = _data(a.users, a.items, a.batch // a.nprocs)
    seed_everything(0)
    model = _mgcn(dm)
    timer = EpochTimer()
    trainer = _trainer(a.nprocs, a.accelerator, max_epochs=a.epochs, check_val_every_n_epoch=a.epochs,
                       callbacks=[timer])
    trainer.fit(model, datamodule=dm)
    if a.save and trainer.is_global_zero:
        torch.save(model.state_dict(), a.save)
    _report(a, {"s_epoch": med(timer.train[1:] or timer.train),
                "recall": float(trainer.callback_metrics["val/recall@20"]), "peak_mib": _peak_mib(a.accelerator)})


def worker_unlearn(a: argparse.Namespace) -> None:
    """TRU for ``steps`` steps (no early stop) from the saved weights on a user-wise 5% request."""
    import torch
    from lightning.pytorch import seed_everything

    from lightning_tru.audit.forgetting import recall_exposure_at_k
    from lightning_tru.callbacks import TRU
    from lightning_tru.datamodules import ForgetRequest, UnlearningDataModule
    from lightning_tru.models.unlearning import UnlearningTask

    dm = _data(a.users, a.items, a.batch)
    seed_everything(0)
    model = _mgcn(dm)
    model.load_state_dict(torch.load(a.load, weights_only=True))
    per_rank = max(1, 2048 // a.nprocs)
    udm = UnlearningDataModule(dm, ForgetRequest("user", 0.05, seed=0), forget_batch_size=per_rank,
                               retain_batch_size=per_rank, seed=0)
    timer = EpochTimer()
    cb = TRU(lr=0.05, eval_every=a.steps, target_recall=0.0)
    _trainer(a.nprocs, a.accelerator, max_epochs=a.steps, limit_val_batches=0, callbacks=[cb, timer]).fit(
        UnlearningTask(model), datamodule=udm)
    model.attach(udm)
    model.eval()
    recall = recall_exposure_at_k(model, udm.retained_train_csr(), udm.forget_csr(), 20)["forget_recall@20"]
    _report(a, {"s_step": med(timer.train[1:] or timer.train), "forget_recall": recall,
                "peak_mib": _peak_mib(a.accelerator)})


def worker_memory(a: argparse.Namespace) -> None:
    """LightGCN (dim 64, 2 layers, Adam) for ``batches`` training batches; peak memory of this rank."""
    import torch
    from lightning.pytorch import seed_everything

    from lightning_tru.models import RecommenderModule
    from lightning_tru.nn import LightGCN

    dm = _data(a.users, a.items, a.batch // a.nprocs)
    seed_everything(0)
    model = RecommenderModule(partial(LightGCN, embedding_dim=64, num_layers=2), dm.num_users, dm.num_items,
                              dm.feature_dims)
    params = sum(p.numel() for p in model.parameters())
    if a.accelerator == "gpu" and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    _trainer(a.nprocs, a.accelerator, max_epochs=1, limit_train_batches=a.batches, limit_val_batches=0).fit(
        model, datamodule=dm)
    _report(a, {"params": params, "interactions": int(len(dm.train_pairs())), "peak_mib": _peak_mib(a.accelerator)})


# ------------------------------------------------------------------------------ driver
def launch(procs: int, args: list[str], threads: int, timeout: int = 3600) -> list[dict[str, Any]]:
    """Run this script's worker under torchrun (or plainly for one process); the ranks' JSON lines."""
    py = [sys.executable]
    if procs > 1:
        py += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory(prefix="ddp-bench-rank-") as results:
        out = subprocess.run([*py, __file__, *args, "--nprocs", str(procs), "--threads", str(threads),
                              "--results", results], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        rows = [json.loads(f.read_text()) for f in Path(results).glob("rank*.json")]
    if out.returncode != 0 or len(rows) != procs:
        raise RuntimeError(f"worker {args[:2]} on {procs} processes failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return sorted(rows, key=lambda r: r["rank"])


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares ``y = a + b x``."""
    import numpy as np

    b, a = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(a), float(b)


def speed_table(a: argparse.Namespace) -> list[str]:
    """1 vs N processes: training epochs and TRU steps, same global batch."""
    size = ["--users", str(a.users), "--items", str(a.items), "--batch", str(a.batch), "--accelerator", a.accelerator]
    lines = [f"- {a.accelerator}, {a.threads} torch thread(s) per process; MGCN dim 64 on synthetic {a.users} users x "
             f"{a.items} items, global batch {a.batch} (per rank batch / N), {a.epochs} epochs; TRU {a.steps} steps "
             f"(user-wise 5%, 2048 forget + 2048 retain pairs per step over all ranks); medians over {a.repeats} "
             "repeat(s); valid Recall@20 after training, forget Recall@20 after unlearning",
             "", "| processes | s / train epoch | valid Recall@20 | s / TRU step | forget Recall@20 | "
             "peak MiB / rank (train, unlearn) |", "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="ddp-bench-") as tmp:
        weights = str(Path(tmp, "trained.pt"))
        launch(1, ["--worker", "train", *size, "--epochs", str(a.epochs), "--save", weights], a.threads)
        for procs in a.procs:
            train, unlearn = [], []
            for _ in range(a.repeats):
                train.append(launch(procs, ["--worker", "train", *size, "--epochs", str(a.epochs)], a.threads))
                unlearn.append(launch(procs, ["--worker", "unlearn", *size, "--steps", str(a.steps), "--load", weights],
                                      a.threads))
                print(procs, train[-1], unlearn[-1], flush=True)
            lines.append(
                f"| {procs} | {med([r[0]['s_epoch'] for r in train]):.3f} | {med([r[0]['recall'] for r in train]):.4f} "
                f"| {med([r[0]['s_step'] for r in unlearn]):.3f} | {med([r[0]['forget_recall'] for r in unlearn]):.4f} "
                f"| {max(x['peak_mib'] for r in train for x in r):.0f}, {max(x['peak_mib'] for r in unlearn for x in r):.0f} |")
    return lines


def memory_table(a: argparse.Namespace) -> list[str]:
    """Peak memory per rank for growing embedding tables, and the table size that fills the budget."""
    lines = [f"Memory per rank, LightGCN dim 64 (2 layers, Adam), {a.mem_procs} process(es) under ddp, "
             f"{a.batches} batches of {a.batch // a.mem_procs} per rank; peak = "
             f"{'max_memory_allocated' if a.accelerator == 'gpu' else 'peak RSS (includes the process itself)'}; "
             "state = parameters + gradients + Adam moments + DDP gradient buckets (20 bytes per parameter):",
             "", "| users x items | embedding parameters | train interactions | state MiB | peak MiB / rank |",
             "|---|---|---|---|---|"]
    xs, ys = [], []
    for spec in a.sizes:
        users, items = (int(x) for x in spec.split("x"))
        rows = launch(a.mem_procs, ["--worker", "memory", "--users", str(users), "--items", str(items), "--batch",
                                    str(a.batch), "--accelerator", a.accelerator, "--batches", str(a.batches)], a.threads)
        peak = max(r["peak_mib"] for r in rows)
        params = rows[0]["params"]
        xs.append(params)
        ys.append(peak)
        print(spec, rows, flush=True)
        lines.append(f"| {users} x {items} | {params:,} | {rows[0]['interactions']:,} | {20 * params / 2**20:.0f} "
                     f"| {peak:.0f} |")
    if len(xs) >= 2:
        a0, b0 = fit_line(xs, ys)
        limit = (BUDGET_GIB * 1024 - a0) / b0 if b0 > 0 else float("inf")
        lines += ["", f"Fit: peak MiB = {a0:.0f} + {b0 * 2**20:.1f} bytes x parameters (rows x 64; the interactions "
                  f"grow with the rows here, 20 per user). Extrapolated to {BUDGET_GIB:.0f} GiB per rank: about "
                  f"{limit:,.0f} parameters = {limit / 64:,.0f} embedding rows (users + items) at dim 64."]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--procs", nargs="*", type=int, default=[1, 2], help="process counts of the speed table (none: skip)")
    ap.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=2048, help="global BPR batch (per rank: batch / procs)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--sizes", nargs="*", default=["10000x5000", "20000x10000", "40000x20000"],
                    help="USERSxITEMS of the memory scan (none: skip it)")
    ap.add_argument("--mem-procs", type=int, default=2, help="processes of the memory scan")
    ap.add_argument("--batches", type=int, default=5, help="training batches per memory run")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true",
                    help="smallest sizes, one repeat, stdout only (RESULTS.md untouched): check the script works")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "RESULTS.md"))
    ap.add_argument("--worker", choices=["train", "unlearn", "memory"], help=argparse.SUPPRESS)
    ap.add_argument("--nprocs", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--save", help=argparse.SUPPRESS)
    ap.add_argument("--load", help=argparse.SUPPRESS)
    ap.add_argument("--results", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        _setup_torch(a.threads)
        {"train": worker_train, "unlearn": worker_unlearn, "memory": worker_memory}[a.worker](a)
        return
    if a.quick:
        a.repeats, a.users, a.items, a.epochs, a.steps, a.batches = 1, 300, 150, 3, 4, 2
        a.sizes = ["1000x500", "2000x1000"]
    import torch

    torch.set_num_threads(a.threads)  # what the header reports
    lines = [machine_header(), f"- command: `python benchmarks/ddp_bench.py {' '.join(sys.argv[1:])}`"]
    if a.procs:
        lines += speed_table(a)
    if a.sizes:
        lines += ["", *memory_table(a)]
    body = "\n".join(lines) + "\n"
    print(body)
    if not a.quick:
        write_section(Path(a.out), f"Data parallelism ({a.accelerator})", body)


if __name__ == "__main__":
    main()
