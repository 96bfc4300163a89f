"""Scale benchmark on the synthetic generator: how training, evaluation and one deletion request
grow with the data set.

    python benchmarks/scale_bench.py --interactions 1e5 3e5 1e6 --model lightgcn --threads 2

For each size (``users = interactions / mean_interactions``, ``items = users / 4``), in its own
process: generation time; training s/epoch (``--train-batches`` BPR batches timed, scaled to the
epoch's batch count) and peak RSS during training; one full-ranking validation pass (time, peak
RSS); one TRU request deleting ``--request-users`` users (all their interactions; default TRU,
at most ``--steps`` steps) with its wall-clock, steps and peak RSS. Peak RSS is reset before each
phase (``/proc/self/clear_refs``), so each column is that phase's own peak. The table and the
fitted log-log exponents (time ~ interactions^b) go to stdout and to the "Scale" section of
benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine_header, med, run_isolated, write_section  # noqa: E402


def reset_peak() -> None:
    """Reset this process's peak resident set size (Linux ``clear_refs`` 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_mib() -> float:
    """This process's peak resident set size since the last :func:`reset_peak` (``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("VmHWM missing from /proc/self/status")


def single(n: int, a: argparse.Namespace) -> dict[str, Any]:
    import torch
    from functools import partial

    torch.set_num_threads(a.threads)
    from lightning.pytorch import Callback, Trainer, seed_everything

    from lightning_tru.callbacks import TRU
    from lightning_tru.datamodules import ForgetRequest, RecDataModule, UnlearningDataModule, make_synthetic
    from lightning_tru.models import RecommenderModule, UnlearningTask
    from lightning_tru.nn import MGCN, LightGCN

    seed_everything(a.seed, verbose=False)
    users = max(200, int(round(n / a.mean_interactions)))
    items = max(100, users // 4)
    out: dict[str, Any] = {"users": users, "items": items}
    reset_peak()
    t = time.perf_counter()
    data = make_synthetic(num_users=users, num_items=items, mean_interactions=a.mean_interactions, seed=a.seed)
    out["gen_s"] = time.perf_counter() - t
    out["interactions"] = int(len(data.pairs))
    out["train_pairs"] = int((data.split == 0).sum())
    dm = RecDataModule(data, batch_size=a.batch, eval_batch_size=a.eval_batch)
    backbone = partial(LightGCN, embedding_dim=64, num_layers=3) if a.model == "lightgcn" else partial(MGCN, embedding_dim=64)
    model = RecommenderModule(backbone, users, items, dm.feature_dims)
    quiet = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                 accelerator="cpu", devices=1, num_sanity_val_steps=0)

    class BatchTimer(Callback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_batch_start(self, *args: Any) -> None:
            self._t = time.perf_counter()

        def on_train_batch_end(self, *args: Any) -> None:
            self.times.append(time.perf_counter() - self._t)

    timer = BatchTimer()
    reset_peak()
    Trainer(max_epochs=1, limit_train_batches=a.train_batches, limit_val_batches=0, callbacks=[timer], **quiet).fit(
        model, datamodule=dm)
    batches = -(-out["train_pairs"] // a.batch)
    out["train_s_epoch"] = med(timer.times[1:] or timer.times) * batches  # the first batch warms up
    out["train_peak_mib"] = peak_mib()
    reset_peak()
    t = time.perf_counter()
    Trainer(**quiet).validate(model, datamodule=dm, verbose=False)
    out["eval_s"] = time.perf_counter() - t
    out["eval_peak_mib"] = peak_mib()
    reset_peak()
    share = min(0.5, a.request_users / users)
    t = time.perf_counter()
    udm = UnlearningDataModule(dm, ForgetRequest("user", share, seed=a.seed))
    tru = TRU(stop_rule="recall", target_recall=0.0)  # a fixed budget: run the steps whatever the model
    trainer = Trainer(max_epochs=a.steps, limit_val_batches=0, callbacks=[tru], **quiet)
    trainer.fit(UnlearningTask(model), datamodule=udm)
    out["tru_s"] = time.perf_counter() - t
    out["tru_steps"] = int(tru.steps)
    out["tru_users"] = int(len(udm.forget.users))
    out["tru_peak_mib"] = peak_mib()
    return out


def slope(x: list[float], y: list[float]) -> float:
    """Least-squares exponent b of y ~ x^b."""
    return float(np.polyfit(np.log(x), np.log(y), 1)[0]) if len(x) > 1 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--interactions", nargs="+", type=float, default=[1e5, 3e5, 1e6])
    ap.add_argument("--model", choices=["lightgcn", "mgcn"], default="lightgcn")
    ap.add_argument("--mean-interactions", type=float, default=20.0)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--eval-batch", type=int, default=1024)
    ap.add_argument("--train-batches", type=int, default=20, help="BPR batches timed per size")
    ap.add_argument("--request-users", type=int, default=100)
    ap.add_argument("--steps", type=int, default=8, help="TRU's step budget (it may stop earlier)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "RESULTS.md"))
    ap.add_argument("--single", type=float, help=argparse.SUPPRESS)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    if a.single:
        print(json.dumps(single(int(a.single), a)))
        return
    rows, runs = [], []
    passthrough = ["--model", a.model, "--mean-interactions", str(a.mean_interactions), "--batch", str(a.batch),
                   "--eval-batch", str(a.eval_batch), "--train-batches", str(a.train_batches),
                   "--request-users", str(a.request_users), "--steps", str(a.steps), "--threads", str(a.threads),
                   "--seed", str(a.seed)]
    for n in a.interactions:
        r = run_isolated([__file__, "--single", str(n), *passthrough], timeout=7200, env={"PYTHONPATH": str(REPO)})
        print(r, flush=True)
        runs.append(r)
        rows.append(
            f"| {r['interactions']:,} | {r['users']:,} | {r['items']:,} | {r['gen_s']:.1f} | {r['train_s_epoch']:.1f} | "
            f"{r['train_peak_mib']:.0f} | {r['eval_s']:.1f} | {r['eval_peak_mib']:.0f} | {r['tru_users']} | "
            f"{r['tru_s']:.1f} | {r['tru_steps']} | {r['tru_s'] / max(1, r['tru_steps']):.2f} | {r['tru_peak_mib']:.0f} |"
        )
    n = [float(r["interactions"]) for r in runs]
    fits = {name: slope(n, [float(r[k]) for r in runs]) for name, k in
            (("generation", "gen_s"), ("training s/epoch", "train_s_epoch"), ("full evaluation", "eval_s"),
             ("TRU request", "tru_s"))}
    fits["TRU per step"] = slope(n, [r["tru_s"] / max(1, r["tru_steps"]) for r in runs])
    cmd = " ".join(["python benchmarks/scale_bench.py", *sys.argv[1:]])
    body = (
        f"`{cmd}`\n\n{machine_header()}\n"
        f"- {a.model}, synthetic data (users = interactions / {a.mean_interactions:g}, items = users / 4, seed {a.seed}); "
        f"training s/epoch = median s/batch over {a.train_batches} timed BPR batches (batch {a.batch}) x batches per epoch; "
        f"full evaluation = one validation pass over every user with valid rows (batches of {a.eval_batch} users); "
        f"TRU = default TRU but stopping only at forget Recall@20 = 0 (so the step budget is spent), a user-wise request of ~{a.request_users} users, at most {a.steps} steps, "
        f"wall-clock from resolving the request to the end of fit; peak MiB = the phase's own peak RSS\n\n"
        "| interactions | users | items | generate s | train s/epoch | train peak MiB | full eval s | eval peak MiB | "
        "request users | TRU s | TRU steps | TRU s/step | TRU peak MiB |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        "Exponents b of time ~ interactions^b (least squares over the sizes): "
        + ", ".join(f"{k} {v:.2f}" for k, v in fits.items()) + "\n"
    )
    print(body)
    write_section(Path(a.out), f"Scale ({a.model}, synthetic)", body)


if __name__ == "__main__":
    main()
