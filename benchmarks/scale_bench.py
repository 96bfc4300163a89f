"""Scale benchmark on the synthetic generator: how training, evaluation and one deletion request
grow with the data set.

    python benchmarks/scale_bench.py --interactions 1e5 3e5 1e6 --model lightgcn --threads 2 --local both

For each size (``users = interactions / mean_interactions``, ``items = users / 4``), in its own
process: generation time; training s/epoch (``--train-batches`` BPR batches timed, scaled to the
epoch's batch count) and peak RSS during training; one full-ranking validation pass (time, peak
RSS); one TRU request deleting ``--request-users`` users (all their interactions; default TRU with
a fixed budget of ``--steps`` steps) with its wall-clock, median step time, verification time and peak
RSS, its scores over the pairs' computation graph (``--local local``), the whole graph (``full``) or
both, compared (``both``: also the largest weight difference between the two, and the share of a full
propagation the step's computation graph holds). Peak RSS is reset before each
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


QUIET = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
             accelerator="cpu", devices=1, num_sanity_val_steps=0)


def batch_timer() -> Any:
    """A callback recording each training batch's wall-clock in ``.times`` (from its batch start to its batch end)."""
    from lightning.pytorch import Callback

    class BatchTimer(Callback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_batch_start(self, *args: Any) -> None:
            self._t = time.perf_counter()

        def on_train_batch_end(self, *args: Any) -> None:
            self.times.append(time.perf_counter() - self._t)

    return BatchTimer()


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
    from lightning.pytorch import Trainer, seed_everything

    from lightning_tru.datamodules import RecDataModule, make_synthetic
    from lightning_tru.models import RecommenderModule
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
    quiet = dict(QUIET)
    timer = batch_timer()
    reset_peak()
    Trainer(max_epochs=1, limit_train_batches=a.train_batches, limit_val_batches=0, callbacks=[timer], **quiet).fit(
        model, datamodule=dm)
    batches = -(-out["train_pairs"] // a.batch)
    out["train_s_epoch"] = med(timer.times[1:] or timer.times) * batches  # the first batch warms up
    out["train_peak_mib"] = peak_mib()
    out["eval_s"] = out["eval_peak_mib"] = float("nan")
    if not a.skip_eval:
        reset_peak()
        t = time.perf_counter()
        Trainer(**quiet).validate(model, datamodule=dm, verbose=False)
        out["eval_s"] = time.perf_counter() - t
        out["eval_peak_mib"] = peak_mib()
    for mode in (["local", "full"] if a.local == "both" else [a.local]):
        out[mode] = tru_request(model, dm, a, mode)
    if a.local == "both":  # exact restriction: the two runs end at the same weights
        out["max_weight_diff"] = max(float((p - q).abs().max()) for p, q in
                                     zip(out["local"].pop("params"), out["full"].pop("params")))
    else:
        out[a.local].pop("params")
    return out


def tru_request(model: Any, dm: Any, a: argparse.Namespace, mode: str) -> dict[str, Any]:
    """One TRU request on a copy of ``model``: the scores of a step over the pairs' computation graph
    (``mode="local"``, ``Backbone.local_max_share`` 1, always restricted) or the whole graph (``"full"``, 0)."""
    import copy

    import torch
    from lightning.pytorch import Trainer

    from lightning_tru.callbacks import TRU
    from lightning_tru.datamodules import ForgetRequest, UnlearningDataModule
    from lightning_tru.models import UnlearningTask

    model = copy.deepcopy(model)
    backbone = model.backbone
    backbone.local_max_share = 1.0 if mode == "local" else 0.0
    quiet = dict(QUIET)

    out: dict[str, Any] = {}
    reset_peak()
    t = time.perf_counter()
    users = backbone.num_users
    udm = UnlearningDataModule(dm, ForgetRequest("user", min(0.5, a.request_users / users), seed=a.seed))
    out["setup_s"] = time.perf_counter() - t
    class FixedBudget(TRU):  # a fixed budget: run the steps whatever the model (no stopping rule met, no utility guard)
        def _reached(self, res: dict[str, float]) -> bool:
            return False

    tru = FixedBudget(stop_rule="recall", target_recall=0.0, max_utility_loss=None)
    verify, spent = tru.verify, []

    def timed_verify(*args: Any) -> Any:
        t0 = time.perf_counter()
        res = verify(*args)
        spent.append(time.perf_counter() - t0)
        return res

    tru.verify = timed_verify  # type: ignore[method-assign]
    timer = batch_timer()  # after TRU in the callback list: a step = loss, backward, edits, optimiser step
    Trainer(max_epochs=a.steps, limit_val_batches=0, callbacks=[tru, timer], **quiet).fit(UnlearningTask(model), datamodule=udm)
    out["tru_s"] = time.perf_counter() - t
    out["steps"] = int(tru.steps)
    out["step_s"] = med(timer.times[1:] or timer.times) if timer.times else float("nan")
    out["verify_s"] = med(spent) if spent else float("nan")
    out["verifications"] = len(spent)
    out["users"] = int(len(udm.forget.users))
    out["peak_mib"] = peak_mib()
    out["forget_recall"] = float(tru.history[-1]["forget_recall@20"])
    if hasattr(backbone, "adj"):  # the share of a full propagation's products one step's scores cost
        fu, fi, fj, ru, ri, rj = udm.make_batch(0, 0)
        seeds = torch.cat([fu, ru, users + torch.cat([fi, fj, ri, rj])])
        layers = getattr(backbone, "num_layers", getattr(backbone, "num_ui_layers", 1))
        fr = backbone.adj.frontiers(seeds, layers)
        out["frontier_share"] = fr.nnz / max(1, layers * backbone.adj.nnz) if fr is not None else float("nan")
        forget_only = backbone.adj.frontiers(torch.cat([fu, users + torch.cat([fi, fj])]), layers)
        out["frontier_share_forget"] = forget_only.nnz / max(1, layers * backbone.adj.nnz) if forget_only else float("nan")
    out["params"] = [p.detach().clone() for p in model.parameters()]
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
    ap.add_argument("--local", choices=["local", "full", "both"], default="local",
                    help="TRU's scores over the pairs' computation graph, the whole graph, or both (compared)")
    ap.add_argument("--skip-eval", action="store_true", help="skip the full-ranking validation pass")
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
                   "--seed", str(a.seed), "--local", a.local] + (["--skip-eval"] if a.skip_eval else [])
    modes = ["local", "full"] if a.local == "both" else [a.local]
    for n in a.interactions:
        r = run_isolated([__file__, "--single", str(n), *passthrough], timeout=7200, env={"PYTHONPATH": str(REPO)})
        print(r, flush=True)
        runs.append(r)
        m0 = r[modes[0]]
        tru_cols = " | ".join(f"{r[m]['tru_s']:.1f} | {r[m]['step_s']:.3f} | {r[m]['verify_s']:.2f} | {r[m]['peak_mib']:.0f}"
                              for m in modes)
        rows.append(
            f"| {r['interactions']:,} | {r['users']:,} | {r['items']:,} | {r['gen_s']:.1f} | {r['train_s_epoch']:.1f} | "
            f"{r['train_peak_mib']:.0f} | {r['eval_s']:.1f} | {r['eval_peak_mib']:.0f} | {m0['users']} | {m0['steps']} | "
            f"{m0.get('frontier_share_forget', float('nan')):.2f} / {m0.get('frontier_share', float('nan')):.2f} | {tru_cols} |"
            + (f" {r['max_weight_diff']:.1e} |" if a.local == "both" else "")
        )
    n = [float(r["interactions"]) for r in runs]
    fits = {name: slope(n, [float(r[k]) for r in runs]) for name, k in
            (("generation", "gen_s"), ("training s/epoch", "train_s_epoch"), ("full evaluation", "eval_s"))}
    for m in modes:
        fits[f"TRU request ({m})"] = slope(n, [r[m]["tru_s"] for r in runs])
        fits[f"TRU step ({m})"] = slope(n, [r[m]["step_s"] for r in runs])
        fits[f"TRU verification ({m})"] = slope(n, [r[m]["verify_s"] for r in runs])
    cmd = " ".join(["python benchmarks/scale_bench.py", *sys.argv[1:]])
    head = " | ".join(f"TRU s ({m}) | s/step ({m}) | s/verification ({m}) | TRU peak MiB ({m})" for m in modes)
    body = (
        f"`{cmd}`\n\n{machine_header()}\n"
        f"- {a.model}, synthetic data (users = interactions / {a.mean_interactions:g}, items = users / 4, seed {a.seed}); "
        f"training s/epoch = median s/batch over {a.train_batches} timed BPR batches (batch {a.batch}) x batches per epoch; "
        f"full evaluation = one validation pass over every user with valid rows (batches of {a.eval_batch} users); "
        f"TRU = default TRU on that model with a fixed budget of {a.steps} steps (no stopping rule met, no utility guard), "
        f"a user-wise request of ~{a.request_users} users; TRU s = wall-clock from resolving the request to the end of fit; "
        "s/step = median of the timed steps (loss, backward, gradient edits, optimiser step; the ranking gate's thresholds "
        "score every item: a full no-grad propagation per step) without the verifications (every 2 steps, full ranking of "
        "the forget users, timed apart); local = a step's scores over the pairs' L-hop computation graph "
        "(`Backbone.local_propagation`), full = over the whole graph; frontier share = entries of that computation graph / "
        "L nnz(A) for the forget pairs alone / forget + retain batch; peak MiB = the phase's own peak RSS\n\n"
        "| interactions | users | items | generate s | train s/epoch | train peak MiB | full eval s | eval peak MiB | "
        f"request users | TRU steps | frontier share | {head} |" + (" max abs weight diff local vs full |" if a.local == "both" else "") + "\n"
        + "|---" * (12 + 4 * len(modes) + (a.local == "both")) + "|\n" + "\n".join(rows) + "\n\n"
        "Exponents b of time ~ interactions^b (least squares over the sizes): "
        + ", ".join(f"{k} {v:.2f}" for k, v in fits.items()) + "\n"
    )
    print(body)
    write_section(Path(a.out), f"Scale ({a.model}, synthetic{', local vs full TRU' if a.local == 'both' else ''})", body)


if __name__ == "__main__":
    main()
