"""Scale benchmark on the synthetic generator and real interaction sets: how training, evaluation and
one deletion request grow with the data set, and what Retrain would cost at each size.

    python benchmarks/scale_bench.py --interactions 1e5 3e5 1e6 --model lightgcn --threads 2 --local both
    python benchmarks/scale_bench.py --interactions 1e5 3e5 1e6 3e6 --threads 1 --local full --sample-fanout 5
    LT_DATA=../shared/data python benchmarks/scale_bench.py --interactions 1e5 3e5 --real beauty clothing sports \
        --threads 1 --local full --retrain-epochs-at 1e5

For each size (``users = interactions / mean_interactions``, ``items = users / 4``), in its own
process: generation time; training s/epoch (``--train-batches`` BPR batches timed, scaled to the
epoch's batch count) and peak RSS during training; one full-ranking validation pass (time, peak
RSS); one TRU request deleting ``--request-users`` users (all their interactions; default TRU with
a fixed budget of ``--steps`` steps) with its wall-clock, median step time, verification time and peak
RSS, its scores over the pairs' computation graph (``--local local``), the whole graph (``full``) or
both, compared (``both``: also the largest weight difference between the two, and the share of a full
propagation the step's computation graph holds); ``--sample-fanout F`` adds a run with TRU's bounded-cost
approximate steps (``TRU(sample_fanout=F)``, mode ``sampled``). Each request's time is split into graph
surgery, the start (reset and row fits, first verification, profile), the steps and the verifications;
``--quality`` adds the request's pair-MIA AUC, forget recall and test NDCG@20 per mode. Peak RSS is reset before each
phase (``/proc/self/clear_refs``), so each column is that phase's own peak.

``--real NAME ...`` adds one row per real data set (an MMRec ``.inter`` under LT_DATA, see
:func:`real_source`), measured in its own process exactly like a synthetic size; a folder without
feature files gets seeded Gaussian item features in memory (:func:`load_real`). The log-log
exponents (time ~ interactions^b) are fitted over the synthetic sizes only.
``--retrain-epochs-at ROW ...`` trains Retrain to early stopping on those rows (valid Recall@20,
``--retrain-patience``, at most ``--retrain-max-epochs``) and gives every row
Retrain s (est.) = training s/epoch x epochs to converge and the speed-up Retrain s / TRU s per mode
(:func:`epochs_source`, :func:`retrain_estimate`). The table goes to stdout and to a section of
``--out`` (default benchmarks/RESULTS.md).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, REPO, machine_header, med, run_isolated, write_section  # noqa: E402

#: item features generated for a real data set without feature files (seeded N(0, 1); the synthetic generator's dims)
REAL_FEATURES: dict[str, int] = {"image": 64, "text": 32}


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


def real_source(name: str, root: Path = DATA) -> Path:
    """The ``.inter`` file of a real data set: ``name`` itself when it is a ``.inter`` file, else
    ``<root>/interactions_only/<name>.inter``, else ``<root>/<name>/<name>.inter``.

    Raises:
        SystemExit: none of these exists; the message lists the data sets found under ``root``.
    """
    for path in (Path(name), root / "interactions_only" / f"{name}.inter", root / name / f"{name}.inter"):
        if path.suffix == ".inter" and path.is_file():
            return path
    found = sorted({p.stem for p in root.glob("*/*.inter")}) if root.is_dir() else []
    raise SystemExit(f"--real {name}: no {name}.inter under {root}/interactions_only or {root}/{name}, and not an "
                     f".inter file; data sets found under {root} (LT_DATA): {', '.join(found) or 'none'}")


def load_real(path: Path, feature_dims: Mapping[str, int], seed: int) -> tuple[Any, bool]:
    """Load an MMRec ``.inter`` file with its folder's ``<m>_feat.npy`` features or, when the folder has none, seeded standard-Gaussian item features
    ``N(0, 1)^{items x d_m}`` per ``feature_dims`` entry, made in memory (nothing is written).
    Returns the data and whether its features were generated."""
    from dataclasses import replace

    from lightning_tru.datamodules import load_mmrec

    data = load_mmrec(path.parent, name=path.stem)
    if data.features:
        return data, False
    rng = np.random.default_rng(seed)
    features = {m: rng.standard_normal((data.num_items, int(d)), dtype=np.float32) for m, d in feature_dims.items()}
    return replace(data, features=features), True


def single(n: int | None, a: argparse.Namespace, real: str | None = None) -> dict[str, Any]:
    """Every measurement of one row, in this process: ``n`` synthetic interactions, or the real
    ``.inter`` file ``real``."""
    import torch
    from functools import partial

    torch.set_num_threads(a.threads)
    from lightning.pytorch import Trainer, seed_everything

    from lightning_tru.datamodules import RecDataModule, make_synthetic
    from lightning_tru.models import RecommenderModule
    from lightning_tru.nn import MGCN, LightGCN

    seed_everything(a.seed, verbose=False)
    reset_peak()
    t = time.perf_counter()
    if real is None:
        if n is None:
            raise ValueError("single: give a synthetic size n or a real .inter file")
        users = max(200, int(round(n / a.mean_interactions)))
        items = max(100, int(a.items) if a.items else users // 4)
        data = make_synthetic(num_users=users, num_items=items, mean_interactions=a.mean_interactions, seed=a.seed)
        out: dict[str, Any] = {"data": "synthetic"}
    else:
        data, generated = load_real(Path(real), REAL_FEATURES, a.seed)
        users, items = data.num_users, data.num_items
        out = {"data": Path(real).stem, "generated_features": generated, "feature_dims": data.feature_dims}
    out["gen_s"] = time.perf_counter() - t
    out.update(users=users, items=items)
    out["interactions"] = int(len(data.pairs))
    out["train_pairs"] = int((data.split == 0).sum())
    dm = RecDataModule(data, batch_size=a.batch, eval_batch_size=a.eval_batch)
    backbone = partial(LightGCN, embedding_dim=64, num_layers=3) if a.model == "lightgcn" else partial(MGCN, embedding_dim=64)
    model = RecommenderModule(backbone, users, items, dm.feature_dims)
    quiet = dict(QUIET)
    timer = batch_timer()
    reset_peak()
    Trainer(max_epochs=a.train_epochs, limit_train_batches=a.train_batches, limit_val_batches=0, callbacks=[timer], **quiet).fit(
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
    for mode in [] if a.skip_tru else modes_of(a):
        out[mode] = tru_request(model, dm, a, mode)
    if a.local == "both":  # exact restriction: the two runs end at the same weights
        out["max_weight_diff"] = max(float((p - q).abs().max()) for p, q in
                                     zip(out["local"]["params"], out["full"]["params"]))
    for mode in [] if a.skip_tru else modes_of(a):
        out[mode].pop("params")
    if a.converge:  # Retrain to early stopping from a fresh model of the same seed (last: no peak above is touched)
        from lightning_tru.models.retrain import retrain

        seed_everything(a.seed, verbose=False)
        fresh = RecommenderModule(backbone, users, items, dm.feature_dims)
        _, info = retrain(fresh, dm, max_epochs=a.retrain_max_epochs, patience=a.retrain_patience, seed=a.seed,
                          accelerator="cpu")
        out["retrain"] = {"epochs_to_best": info["best_epoch"] + 1, "epochs_run": info["epochs"],
                          "seconds": info["seconds"], "best_recall": info["best_score"]}
    return out


def epochs_source(rows: Sequence[tuple[bool, float, int | None]]) -> list[int | None]:
    """For each row ``(synthetic, interactions, epochs to converge measured there or None)``, the index
    of the row whose measurement it uses: its own, else the measured row of the same kind (synthetic
    or real) nearest in log-interactions, else the nearest measured row; ``None`` when none was measured."""
    measured = [k for k, r in enumerate(rows) if r[2] is not None]
    out: list[int | None] = []
    for k, (syn, n, epochs) in enumerate(rows):
        if epochs is not None or not measured:
            out.append(k if epochs is not None else None)
            continue
        pool = [j for j in measured if rows[j][0] == syn] or measured
        out.append(min(pool, key=lambda j: (abs(np.log(rows[j][1]) - np.log(n)), j)))
    return out


def retrain_estimate(s_epoch: float, epochs: int, tru_s: Mapping[str, float]) -> tuple[float, dict[str, float]]:
    """Retrain s (est.) = s/epoch x epochs to converge, and speed-up = Retrain s / TRU s for each TRU mode."""
    retrain_s = float(s_epoch) * int(epochs)
    return retrain_s, {m: retrain_s / t if t > 0 else float("nan") for m, t in tru_s.items()}


def modes_of(a: argparse.Namespace) -> list[str]:
    """The TRU runs of one size: ``local`` / ``full`` (exact, ``--local``), then ``sampled`` with ``--sample-fanout``."""
    return (["local", "full"] if a.local == "both" else [a.local]) + (["sampled"] if a.sample_fanout else [])


def tru_request(model: Any, dm: Any, a: argparse.Namespace, mode: str) -> dict[str, Any]:
    """One TRU request on a copy of ``model``: the scores of a step over the pairs' computation graph
    (``mode="local"``, ``Backbone.local_max_share`` 1, always restricted), the whole graph (``"full"``, 0) or a sampled
    computation graph (``"sampled"``, ``TRU(sample_fanout=a.sample_fanout)``)."""
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
    surgery: list[float] = []
    attach = model.attach

    def timed_attach(datamodule: Any) -> None:  # graph surgery: the retained graph installed
        t0 = time.perf_counter()
        attach(datamodule)
        surgery.append(time.perf_counter() - t0)

    model.attach = timed_attach  # type: ignore[method-assign]

    out: dict[str, Any] = {}
    reset_peak()
    t = time.perf_counter()
    users = backbone.num_users
    udm = UnlearningDataModule(dm, ForgetRequest("user", min(0.5, a.request_users / users), seed=a.seed))
    out["setup_s"] = time.perf_counter() - t
    class FixedBudget(TRU):  # a fixed budget: run the steps whatever the model (no stopping rule met, no utility guard)
        def _reached(self, res: dict[str, float]) -> bool:
            return False

    fanout = a.sample_fanout if mode == "sampled" else None
    if a.tru_stop == "budget":
        tru: Any = FixedBudget(stop_rule="recall", target_recall=0.0, max_utility_loss=None, sample_fanout=fanout)
    else:  # TRU's own stopping rule and utility guard (membership, two-sided)
        tru = TRU(sample_fanout=fanout)
    verify, spent = tru.verify, []
    fit_start, started = tru.on_fit_start, []

    def timed_fit_start(*args: Any) -> None:
        t0 = time.perf_counter()
        fit_start(*args)
        started.append(time.perf_counter() - t0)

    tru.on_fit_start = timed_fit_start  # type: ignore[method-assign]

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
    out["steps_total_s"] = float(sum(timer.times))
    out["verify_s"] = med(spent) if spent else float("nan")
    out["verifications"] = len(spent)
    out["surgery_s"] = float(sum(surgery))
    out["start_s"] = float(sum(started))  # reset, row fits, first verification, profile
    out["verify_total_s"] = float(sum(spent[1:]))  # the first is inside the start
    out["stopping_reason"] = tru.stopping_reason
    out["users"] = int(len(udm.forget.users))
    out["peak_mib"] = peak_mib()
    out["forget_recall"] = float(tru.history[-1]["forget_recall@20"])  # the last verification's
    if hasattr(backbone, "adj"):  # the share of a full propagation's products one step's scores cost
        fu, fi, fj, ru, ri, rj = udm.make_batch(0, 0)
        seeds = torch.cat([fu, ru, users + torch.cat([fi, fj, ri, rj])])
        layers = getattr(backbone, "num_layers", getattr(backbone, "num_ui_layers", 1))
        fr = backbone.adj.frontiers(seeds, layers)
        out["frontier_share"] = fr.nnz / max(1, layers * backbone.adj.nnz) if fr is not None else float("nan")
        forget_only = backbone.adj.frontiers(torch.cat([fu, users + torch.cat([fi, fj])]), layers)
        out["frontier_share_forget"] = forget_only.nnz / max(1, layers * backbone.adj.nnz) if forget_only else float("nan")
    if a.quality:  # the request's result: pair-MIA AUC of the forget pairs, forget recall, test NDCG@20 (retained data)
        from lightning_tru.audit.forgetting import recall_exposure_at_k
        from lightning_tru.audit.membership import matched_nonmembers, pair_membership

        model.attach(udm.retained)
        model.eval()
        pop = np.asarray(udm.retained_train_csr().sum(0)).ravel()
        pairs = matched_nonmembers(udm.forget.forget_pairs, dm.data.csr("train", "valid", "test"), pop, seed=a.seed)
        out["mia_auc"] = float(pair_membership(model, *pairs, udm.retained_train_csr())["auc_rank"])
        out["forget_recall"] = recall_exposure_at_k(model, udm.retained_train_csr(), udm.forget_csr(), 20)["forget_recall@20"]
        res = Trainer(**quiet).test(model, datamodule=udm.retained, verbose=False)[0]
        out["test_ndcg"] = float(res["test/ndcg@20"])
    out["params"] = [p.detach().clone() for p in model.parameters()]
    return out


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Field by field median of the runs of one size (nested dicts too); a non-numeric field is the first run's."""
    out: dict[str, Any] = {}
    for key, first in runs[0].items():
        values = [r.get(key) for r in runs]
        if isinstance(first, dict):
            out[key] = median_run([v for v in values if isinstance(v, dict)])
        elif isinstance(first, (int, float)) and not isinstance(first, bool):
            med = float(np.median([float(v) for v in values if isinstance(v, (int, float))]))
            out[key] = int(round(med)) if isinstance(first, int) else med
        else:
            out[key] = first
    return out


def slope(x: list[float], y: list[float]) -> float:
    """Least-squares exponent b of y ~ x^b."""
    return float(np.polyfit(np.log(x), np.log(y), 1)[0]) if len(x) > 1 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--interactions", nargs="*", type=float, default=[1e5, 3e5, 1e6])
    ap.add_argument("--model", choices=["lightgcn", "mgcn"], default="lightgcn")
    ap.add_argument("--mean-interactions", type=float, default=20.0)
    ap.add_argument("--items", type=float, default=None, help="items (default users / 4)")
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--eval-batch", type=int, default=1024)
    ap.add_argument("--train-batches", type=int, default=20, help="BPR batches timed per size")
    ap.add_argument("--train-epochs", type=int, default=1, help="epochs of --train-batches batches before the request")
    ap.add_argument("--request-users", type=int, default=100)
    ap.add_argument("--steps", type=int, default=8, help="TRU's step budget (it may stop earlier)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--local", choices=["local", "full", "both"], default="local",
                    help="TRU's scores over the pairs' computation graph, the whole graph, or both (compared)")
    ap.add_argument("--sample-fanout", type=int, default=None,
                    help="also run TRU(sample_fanout=F): bounded-cost approximate steps over sampled computation graphs")
    ap.add_argument("--tru-stop", choices=["budget", "default"], default="budget",
                    help="budget: spend --steps steps (no stopping rule, no guard); default: TRU's own rule and guard")
    ap.add_argument("--quality", action="store_true", help="the request's pair-MIA AUC, forget recall, test NDCG@20")
    ap.add_argument("--skip-eval", action="store_true", help="skip the full-ranking validation pass")
    ap.add_argument("--skip-tru", action="store_true", help="no TRU request (training and evaluation only)")
    ap.add_argument("--title", default=None, help="section title in RESULTS.md")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "RESULTS.md"))
    ap.add_argument("--plot", default=None, help="file name of the log-log plot next to --out "
                    "(default scale_<model>[_sampled].png)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="runs per size (rounds over all sizes, interleaved); the table shows each number's median")
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs at a time (each its own process and --threads): for a machine with idle cores")
    ap.add_argument("--real", nargs="+", default=[], metavar="NAME",
                    help="real data sets as extra rows: <LT_DATA>/interactions_only/NAME.inter, <LT_DATA>/NAME/NAME.inter "
                         "or a path to a .inter file (features: the folder's own, else seeded N(0, 1) ones)")
    ap.add_argument("--retrain-epochs-at", nargs="+", default=[], metavar="ROW",
                    help="rows (a synthetic size of --interactions or a --real name) where Retrain is trained to early "
                         "stopping to measure its epochs to converge; every row gets Retrain s (est.) = s/epoch x epochs")
    ap.add_argument("--retrain-patience", type=int, default=5, help="early-stopping patience on valid Recall@20")
    ap.add_argument("--retrain-max-epochs", type=int, default=100, help="cap of the convergence runs")
    ap.add_argument("--single", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--single-real", help=argparse.SUPPRESS)
    ap.add_argument("--converge", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    if a.single or a.single_real:
        print(json.dumps(single(int(a.single) if a.single else None, a, real=a.single_real)))
        return
    if a.repeats < 1:
        raise SystemExit(f"--repeats {a.repeats}: give at least 1 run per size")
    if a.retrain_patience < 1 or a.retrain_max_epochs < 1:
        raise SystemExit(f"--retrain-patience {a.retrain_patience} and --retrain-max-epochs {a.retrain_max_epochs} "
                         "must be >= 1")
    # the rows: (label, synthetic?, extra arguments of its process); every check before anything runs
    specs = [(f"{n:g}", True, ["--single", str(n)]) for n in a.interactions]
    specs += [(name, False, ["--single-real", str(real_source(name))]) for name in a.real]
    labels = [lab for lab, _, _ in specs]
    converge: set[int] = set()
    for want in a.retrain_epochs_at:
        hit = [k for k, (lab, syn, _) in enumerate(specs) if lab == want or (syn and _same_size(want, lab))]
        if not hit:
            raise SystemExit(f"--retrain-epochs-at {want}: not a row of this run; rows: {', '.join(labels)} "
                             "(give a size of --interactions or a name of --real)")
        converge.update(hit)
    rows: list[str] = []
    passthrough = ["--model", a.model, "--mean-interactions", str(a.mean_interactions), "--batch", str(a.batch),
                   "--eval-batch", str(a.eval_batch), "--train-batches", str(a.train_batches),
                   "--train-epochs", str(a.train_epochs), "--request-users", str(a.request_users), "--steps", str(a.steps),
                   "--threads", str(a.threads), "--seed", str(a.seed), "--local", a.local, "--tru-stop", a.tru_stop,
                   "--retrain-patience", str(a.retrain_patience), "--retrain-max-epochs", str(a.retrain_max_epochs)]
    passthrough += (["--skip-eval"] if a.skip_eval else []) + (["--skip-tru"] if a.skip_tru else [])
    passthrough += (["--quality"] if a.quality else []) + (["--items", str(a.items)] if a.items else [])
    passthrough += ["--sample-fanout", str(a.sample_fanout)] if a.sample_fanout else []
    modes = [] if a.skip_tru else modes_of(a)
    nan = float("nan")
    if a.jobs < 1:
        raise SystemExit(f"--jobs {a.jobs}: give at least 1")

    def one(job: tuple[int, int]) -> dict[str, Any]:
        rnd, k = job
        conv = ["--converge"] if k in converge and rnd == 0 else []  # convergence: once, in the first round
        r = run_isolated([__file__, *specs[k][2], *passthrough, *conv], timeout=7200, env={"PYTHONPATH": str(REPO)})
        print(r, flush=True)
        return r

    # round after round over all rows (a change of load spreads over every row); --jobs runs at a time
    with ThreadPoolExecutor(max_workers=a.jobs) as pool:
        flat = list(pool.map(one, [(rnd, k) for rnd in range(a.repeats) for k in range(len(specs))]))
    rounds = [flat[i * len(specs) : (i + 1) * len(specs)] for i in range(a.repeats)]
    runs = [median_run([rnd[k] for rnd in rounds]) for k in range(len(specs))]
    shown = [f"synthetic {r['interactions']:,}" if syn else lab for (lab, syn, _), r in zip(specs, runs)]
    source = epochs_source([(syn, float(r["interactions"]), r["retrain"]["epochs_to_best"] if "retrain" in r else None)
                            for (_, syn, _), r in zip(specs, runs)])
    for k, ((label, syn, _), r, src) in enumerate(zip(specs, runs, source)):
        m0 = r[modes[0]] if modes else {}
        cols = []
        for m in modes:
            x = r[m]
            cols.append(f"{x['tru_s']:.1f} | {x['steps']} | {x['step_s']:.3f} | {x['setup_s']:.2f} | {x['surgery_s']:.2f} | {x['start_s']:.2f} | "
                        f"{x['steps_total_s']:.2f} | {x['verify_total_s']:.2f} ({x['verifications']}) | {x['peak_mib']:.0f}")
            if a.quality:
                cols.append(f"{x['mia_auc']:.3f} | {x['forget_recall']:.4f} | {x['test_ndcg']:.4f}")
        if converge:
            epochs = runs[src]["retrain"]["epochs_to_best"]
            capped = "*" if runs[src]["retrain"]["epochs_run"] >= a.retrain_max_epochs else ""
            est, speed = retrain_estimate(r["train_s_epoch"], epochs, {m: r[m]["tru_s"] for m in modes})
            r["retrain_est_s"] = est
            cols.append(f"{epochs}{capped} ({'here' if src == k else shown[src]}) | {_num(est)}"
                        + "".join(f" | {_num(speed[m])}x" for m in modes))
        rows.append(
            f"| {'synthetic' if syn else label} | {r['interactions']:,} | {r['users']:,} | {r['items']:,} | {r['gen_s']:.1f} | "
            f"{r['train_s_epoch']:.1f} | {r['train_peak_mib']:.0f} | {r['eval_s']:.1f} | {r['eval_peak_mib']:.0f} | "
            + (f"{m0['users']} | {m0.get('frontier_share_forget', nan):.2f} / {m0.get('frontier_share', nan):.2f} | "
               if modes else "")
            + "".join(c + " | " for c in cols)
            + (f"{r['max_weight_diff']:.1e} |" if a.local == "both" and modes else "")
        )
    synthetic = [k for k, (_, syn, _) in enumerate(specs) if syn]  # the exponents: synthetic sizes only
    n = [float(runs[k]["interactions"]) for k in synthetic]
    fits = {name: slope(n, [float(runs[k][key]) for k in synthetic]) for name, key in
            (("generation", "gen_s"), ("training s/epoch", "train_s_epoch"), ("full evaluation", "eval_s"))}
    for m in modes:
        fits[f"TRU request ({m})"] = slope(n, [runs[k][m]["tru_s"] for k in synthetic])
        fits[f"TRU step ({m})"] = slope(n, [runs[k][m]["step_s"] for k in synthetic])
        fits[f"TRU verification ({m})"] = slope(n, [runs[k][m]["verify_s"] for k in synthetic])
    if converge:
        fits["Retrain (est.)"] = slope(n, [runs[k]["retrain_est_s"] for k in synthetic])
    spread = ""
    if a.repeats > 1:
        per_round = {f"TRU request ({m})": [slope(n, [rnd[k][m]["tru_s"] for k in synthetic]) for rnd in rounds]
                     for m in modes}
        per_round.update({"full evaluation": [slope(n, [rnd[k]["eval_s"] for k in synthetic]) for rnd in rounds]}
                         if not a.skip_eval else {})
        spread = ("Per round (each run's own fit, in run order): "
                  + "; ".join(f"{k} " + " / ".join(f"{b:.2f}" for b in v) for k, v in per_round.items()) + "\n")
    cmd = " ".join(["python benchmarks/scale_bench.py", *sys.argv[1:]])
    head = ""
    for m in modes:
        head += (f"TRU s ({m}) | steps | s/step | resolve s | surgery s | start s | steps s | verifications s (n) | TRU peak MiB | ")
        if a.quality:
            head += f"pair-MIA AUC ({m}) | forget R@20 | test N@20 | "
    if converge:
        head += "epochs to converge (measured at) | Retrain s (est.) | " + "".join(f"speed-up ({m}) | " for m in modes)
    ncols = (9 + (2 if modes else 0) + len(modes) * (9 + 3 * a.quality) + (a.local == "both" and bool(modes))
             + (2 + len(modes) if converge else 0))
    items_rule = f"{int(a.items):,} items" if a.items else "items = users / 4"
    stop = (f"a fixed budget of {a.steps} steps (no stopping rule met, no utility guard)" if a.tru_stop == "budget"
            else f"TRU's own stopping rule (membership, two-sided) and utility guard, at most {a.steps} steps")
    real_rows = [runs[k] for k, (_, syn, _) in enumerate(specs) if not syn]
    real_line = ""
    if real_rows:
        feats = "; ".join(f"{r['data']}: " + (f"generated N(0, 1) features {r['feature_dims']} (seed {a.seed}, in memory)"
                                              if r["generated_features"] else f"its own features {r['feature_dims']}")
                          for r in real_rows)
        real_line = ("- real rows (`--real`): the MMRec `.inter` files under LT_DATA loaded by `load_mmrec` with their "
                     "own x_label split, measured exactly like a synthetic size (own process, same phases; 'generate s' "
                     f"is the load and feature generation); features: {feats}"
                     + (" (unused by LightGCN)" if a.model == "lightgcn" else "")
                     + "; they are points beside the synthetic sizes, not in the exponent fits\n")
    retrain_line = ""
    if converge:
        measured = "; ".join(
            f"{shown[k]}: best valid Recall@20 {runs[k]['retrain']['best_recall']:.4f} after "
            f"{runs[k]['retrain']['epochs_to_best']} epochs, {runs[k]['retrain']['epochs_run']} run"
            + (" (hit the cap)" if runs[k]["retrain"]["epochs_run"] >= a.retrain_max_epochs else "")
            + f", {_num(runs[k]['retrain']['seconds'])} s wall-clock measured (with the per-epoch validation and the "
            f"patience epochs) vs {_num(runs[k]['train_s_epoch'] * runs[k]['retrain']['epochs_to_best'])} s estimated"
            for k in sorted(converge))
        retrain_line = (
            "- Retrain: measured = a fresh model of the same seed trained by `lightning_tru.models.retrain` on the row's "
            f"full data (full epochs, batch {a.batch}) with early stopping on valid Recall@20 (patience "
            f"{a.retrain_patience}, at most {a.retrain_max_epochs} epochs: `*` = the cap was hit, so the count is a lower "
            f"bound), once (first round) at: {measured}. Extrapolated: Retrain s (est.) = the row's training s/epoch x "
            "epochs to the best valid epoch, the epochs measured on the row itself or else on the measured row of the same "
            "kind (synthetic / real) nearest in interactions (column 'measured at'); it leaves out the validation passes and the patience epochs "
            "a real Retrain also spends, so it is a lower bound on Retrain; speed-up = Retrain s (est.) / TRU s of that "
            "mode\n")
    body = (
        f"`{cmd}`\n\n{machine_header()}\n"
        + (f"- every number is the median of {a.repeats} runs per size (rounds over all sizes, interleaved), the "
           "exponents are fitted to the medians\n" if a.repeats > 1 else "")
        + (f"- {a.jobs} runs at a time, each its own process with {a.threads} thread(s)\n" if a.jobs > 1 else "")
        + f"- {a.model}, synthetic data (users = interactions / {a.mean_interactions:g}, {items_rule}, seed {a.seed}); "
        f"training s/epoch = median s/batch over {a.train_batches} timed BPR batches (batch {a.batch}) x batches per epoch"
        + (f" ({a.train_epochs} epochs of {a.train_batches} batches before the request)" if a.train_epochs > 1 else "")
        + f"; full evaluation = one validation pass over every user with valid rows (batches of {a.eval_batch} users, "
        "top-K streamed per batch: no users x items matrix)"
        + (f"; TRU = default TRU with {stop}, a user-wise request of ~{a.request_users} users; TRU s = wall-clock from "
           "resolving the request to the end of fit = request resolution (resolve: `UnlearningDataModule`) + surgery (the retained graph installed) + start "
           "(reset and row fits, first verification, profile) + steps + verifications (+ Lightning); s/step = median "
           "step (loss, backward, gradient edits, optimiser step) without the verifications; local = a step's scores "
           "over the pairs' exact L-hop computation graph (`Backbone.local_propagation`), full = over the whole graph, "
           f"sampled = `TRU(sample_fanout={a.sample_fanout})` (scores over sampled computation graphs, at most "
           f"{a.sample_fanout} neighbours per node and layer; retain pairs from the forget items' neighbourhood; the "
           "gate's thresholds from the last verification); frontier share = entries of the exact computation graph / "
           "L nnz(A) for the forget pairs alone / forget + retain batch; peak MiB = the phase's own peak RSS"
           if modes else "")
        + ("; quality: pair-MIA AUC (within-user rank) of the forget pairs vs popularity-matched non-members, forget "
           "Recall@20 and test NDCG@20 on the retained data after the request" if a.quality else "")
        + "\n" + real_line + retrain_line
        + "\n| data | interactions | users | items | generate s | train s/epoch | train peak MiB | full eval s | eval peak MiB | "
        + ("request users | frontier share | " if modes else "") + head
        + (" max abs weight diff local vs full |" if a.local == "both" and modes else "") + "\n"
        + "|---" * ncols + "|\n" + "\n".join(rows) + "\n\n"
        f"Exponents b of time ~ interactions^b (least squares over the {len(synthetic)} synthetic sizes only): "
        + ", ".join(f"{k} {v:.2f}" for k, v in fits.items()) + "\n" + spread
    )
    print(body)
    title = a.title or f"Scale ({a.model}, synthetic{', local vs full TRU' if a.local == 'both' else ''})"
    write_section(Path(a.out), title, body)
    if len(runs) > 1 and modes and not a.quality:
        plot(runs, [syn for _, syn, _ in specs], modes,
             Path(a.out).with_name(a.plot or f"scale_{a.model}{'_sampled' if a.sample_fanout else ''}.png"), a)


def _num(x: float) -> str:
    """A time or ratio for the table: thousands separators from 100 on, one decimal below."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def _same_size(want: str, label: str) -> bool:
    """Whether ``--retrain-epochs-at`` value ``want`` names the synthetic size ``label`` (``1e5`` = ``100000``)."""
    try:
        return float(want) == float(label)
    except ValueError:
        return False


def plot(runs: list[dict[str, Any]], synthetic: list[bool], modes: list[str], path: Path, a: argparse.Namespace) -> None:
    """Log-log plot of a TRU request's and a step's wall-clock against interactions, one line per mode over the
    synthetic sizes, the real data sets as separate named markers, Retrain (est.) beside the requests when measured."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the optional extra `plot`
        return
    syn = [r for r, s in zip(runs, synthetic) if s]
    real = [r for r, s in zip(runs, synthetic) if not s]
    n = [float(r["interactions"]) for r in syn]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, what in ((axes[0], "tru_s", "s per request"), (axes[1], "step_s", "s per step")):
        for m in modes:
            y = [r[m][key] for r in syn]
            line = ax.loglog(n, y, "o-", label=f"{m} (b = {slope(n, y):.2f})")[0] if syn else None
            for r in real:
                ax.loglog(float(r["interactions"]), r[m][key], "s", mfc="none",
                          color=line.get_color() if line else None, label=f"{m}, real" if r is real[0] else None)
                if m == modes[0]:
                    ax.annotate(r["data"], (float(r["interactions"]), r[m][key]), fontsize=7, xytext=(3, 3),
                                textcoords="offset points")
        if syn:
            y0 = syn[0][modes[0]][key]
            ax.loglog(n, [y0 * x / n[0] for x in n], ":", color="grey", label="linear")
        if key == "tru_s" and "retrain_est_s" in runs[0]:
            y = [r["retrain_est_s"] for r in syn]
            if syn:
                ax.loglog(n, y, "^--", color="black", label=f"Retrain est. (b = {slope(n, y):.2f})")
            for r in real:
                ax.loglog(float(r["interactions"]), r["retrain_est_s"], "^", mfc="none", color="black",
                          label="Retrain est., real" if r is real[0] else None)
        ax.set_xlabel("interactions")
        ax.set_ylabel(what)
        ax.legend(fontsize=7)
    fig.suptitle(f"TRU on {a.model}, {a.request_users}-user request, {a.threads} thread(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
