"""Training benchmark: seconds per training epoch (without validation) and per full evaluation,
peak memory, epochs to early stop and test Recall/NDCG@20 at the best valid epoch, for each
backbone on TikTok and Baby.

    python benchmarks/train_bench.py --models lightgcn mgcn miggt --data tiktok baby --seeds 0 1 2

Each (model, data, seed) runs in its own process with ``--threads`` torch threads; the table
(medians of timings over epochs and seeds, mean ± std of metrics over seeds) goes to stdout and
to the "Training" section of benchmarks/RESULTS.md.

Side by side, in alternating order per seed (same sitting, same threads, same batch size):

* ``--baseline-repo DIR``: the same runs from another checkout of this project (e.g. before a change);
* ``--mmrec DIR``: the reference MMRec (github.com/enoche/MMRec) from its ``src`` folder, model
  ``MGCN`` only, run in its own process through ``utils.quick_start``; it must run on the CPU
  (its MGCN calls ``.cuda()``; replace those calls by ``.to(self.device)`` in a local copy), and
  ``--mmrec-pythonpath`` adds folders its imports need. Its epoch time is the training time it logs.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, REPO, EpochTimer, machine_header, med, mean_std, peak_rss_mib, run_isolated, write_section  # noqa: E402


def single(model: str, data: str, seed: int, max_epochs: int, patience: int, threads: int, batch: int) -> None:
    import torch

    torch.set_num_threads(threads)
    from lightning_tru.cli import train_cli

    timer = EpochTimer()
    root = Path(os.environ.get("LT_REPO", REPO))
    args = ["--config", str(root / f"configs/train/{model}_{data}.yaml"), "--seed_everything", str(seed),
            "--trainer.max_epochs", str(max_epochs), "--early_stopping.patience", str(patience),
            "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.default_root_dir", f"/tmp/lt_bench/{model}_{data}_{seed}",
            "--data.init_args.root", str(DATA / data)]
    if batch:
        args += ["--data.init_args.batch_size", str(batch)]
    cli = train_cli(args, run=False)
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    best = cli.trainer.checkpoint_callback
    stopped_early = cli.trainer.early_stopping_callback.stopped_epoch > 0  # read before test() restores callback state
    res = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best.best_model_path, verbose=False)[0]
    print(json.dumps({
        "s_epoch": med(timer.train), "s_eval": med(timer.valid), "epochs": cli.trainer.current_epoch,
        "best_epoch": int(torch.load(best.best_model_path, weights_only=True)["epoch"]),
        "stopped_early": stopped_early,
        "recall": res["test/recall@20"], "ndcg": res["test/ndcg@20"], "peak_mib": peak_rss_mib(),
        "batch": cli.datamodule.batch_size,
    }))


_MMREC_RUN = """
import json, resource, sys
import torch
torch.set_num_threads({threads})
from utils.quick_start import quick_start
quick_start(model="MGCN", dataset={data!r}, config_dict={{"gpu_id": 0, "use_gpu": False, "seed": [{seed}],
            "epochs": {epochs}, "stopping_step": {patience}, "cl_loss": [0.01], "train_batch_size": {batch},
            "data_path": {data_path!r}}}, save_model=False)
print(json.dumps({{"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}}))
"""


def run_mmrec(src: Path, pythonpath: Optional[str], data: str, seed: int, epochs: int, patience: int, threads: int,
              batch: int, data_path: str) -> dict[str, Any]:
    """One MMRec MGCN run; training s/epoch from its log, test Recall/NDCG@20 at its best valid epoch."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    code = _MMREC_RUN.format(threads=threads, data=data, seed=seed, epochs=epochs, patience=patience, batch=batch,
                             data_path=str(data_path).rstrip("/") + "/")
    out = subprocess.run([sys.executable, "-c", code], cwd=src, env=env, capture_output=True, text=True, timeout=7200)
    text = out.stdout + out.stderr
    if out.returncode != 0:
        raise RuntimeError(f"MMRec run failed ({out.returncode}):\n{text[-3000:]}")
    train = [float(t) for t in re.findall(r"epoch \d+ training \[time: ([0-9.]+)s", text)]
    valid = [float(t) for t in re.findall(r"epoch \d+ evaluating \[time: ([0-9.]+)s", text)]
    test = text[text.rindex("test result:"):]
    metric = lambda name: float(re.search(name + r": ([0-9.]+)", test).group(1))  # type: ignore[union-attr]  # noqa: E731
    peak = json.loads([x for x in out.stdout.splitlines() if x.startswith("{")][-1])["peak_mib"]
    return {"s_epoch": med(train), "s_eval": med(valid), "epochs": len(train), "stopped_early": len(train) < epochs,
            "recall": metric("recall@20"), "ndcg": metric("ndcg@20"), "peak_mib": peak, "batch": batch}


def row(name: str, data: str, runs: list[dict[str, Any]]) -> str:
    return (
        f"| {name} | {data} | {runs[0]['batch']} | {med([r['s_epoch'] for r in runs]):.2f} | "
        f"{med([r['s_eval'] for r in runs]):.2f} | {med([r['peak_mib'] for r in runs]):.0f} | "
        f"{', '.join(str(r['epochs']) + ('' if r['stopped_early'] else '*') for r in runs)} | "
        f"{mean_std([r['recall'] for r in runs])} | {mean_std([r['ndcg'] for r in runs])} |"
    )


def profile(model: str, data: str, epochs: int, threads: int, batch: int, top: int) -> str:
    """Self CPU time of the top ``top`` operators over ``epochs`` training epochs (torch.profiler, in-process)."""
    import torch
    from torch.profiler import profile as torch_profile

    torch.set_num_threads(threads)
    from lightning_tru.cli import train_cli

    args = ["--config", str(REPO / f"configs/train/{model}_{data}.yaml"), "--data.init_args.root", str(DATA / data),
            "--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.default_root_dir", f"/tmp/lt_bench/profile_{model}_{data}"]
    if batch:
        args += ["--data.init_args.batch_size", str(batch)]
    cli = train_cli(args, run=False)
    module, dm = cli.model, cli.datamodule
    module.attach(dm)
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)

    def epoch() -> None:
        for users, pos, neg in dm.train_dataloader():
            loss = torch.stack(list(module.training_losses(users, pos, neg).values())).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()

    epoch()  # warm-up
    with torch_profile() as prof:
        for _ in range(epochs):
            epoch()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=45)
    return f"{model} on {data}, {epochs} epoch(s), {threads} thread(s):\n\n```\n{table.strip()}\n```\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["lightgcn", "mgcn", "miggt"])
    ap.add_argument("--data", nargs="+", default=["tiktok", "baby"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--max-epochs", type=int, default=1000)
    ap.add_argument("--patience", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=0, help="override the configs' batch size (0: keep)")
    ap.add_argument("--baseline-repo", default=None, help="another checkout of this project, run side by side")
    ap.add_argument("--mmrec", default=None, help="MMRec's src folder (CPU-ready), run side by side for mgcn")
    ap.add_argument("--mmrec-pythonpath", default=None, help="PYTHONPATH of the MMRec runs")
    ap.add_argument("--mmrec-data", default=str(DATA), help="MMRec's data_path (a folder of <data>/ in its layout)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "RESULTS.md"))
    ap.add_argument("--title", default="Training", help="section title in RESULTS.md (the data names are appended)")
    ap.add_argument("--profile", type=int, default=0, metavar="EPOCHS",
                    help="instead of the table: profile this many training epochs per model and data set")
    ap.add_argument("--single", nargs=3, metavar=("MODEL", "DATA", "SEED"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)  # what the header reports; each run sets its own in its process
    if a.single:
        single(a.single[0], a.single[1], int(a.single[2]), a.max_epochs, a.patience, a.threads, a.batch)
        return
    if a.profile:
        parts = [profile(m, d, a.profile, a.threads, a.batch, 15) for d in a.data for m in a.models]
        body = f"`{' '.join(['python benchmarks/train_bench.py', *sys.argv[1:]])}`\n\n{machine_header()}\n\n" + "\n".join(parts)
        print(body)
        write_section(Path(a.out), f"{a.title} ({', '.join(a.data)})", body)
        return
    rows, ratios = [], []
    for data in a.data:
        if not (DATA / data).is_dir():
            print(f"skip {data}: {DATA / data} not found")
            continue
        for model in a.models:
            runs: dict[str, list[dict[str, Any]]] = {"ours": [], "baseline": [], "MMRec": []}
            for k, seed in enumerate(a.seeds):
                args = [__file__, "--single", model, data, str(seed), "--max-epochs", str(a.max_epochs),
                        "--patience", str(a.patience), "--threads", str(a.threads), "--batch", str(a.batch)]
                jobs = {"ours": lambda: run_isolated(args, env={"PYTHONPATH": str(REPO)})}
                if a.baseline_repo:
                    jobs["baseline"] = lambda: run_isolated(args, env={"PYTHONPATH": a.baseline_repo, "LT_REPO": a.baseline_repo})
                if a.mmrec and model == "mgcn":
                    jobs["MMRec"] = lambda: run_mmrec(Path(a.mmrec), a.mmrec_pythonpath, data, seed, a.max_epochs,
                                                      a.patience, a.threads, a.batch or 2048, a.mmrec_data)
                order = list(jobs) if k % 2 == 0 else list(reversed(jobs))  # alternate who runs first
                for name in order:
                    r = jobs[name]()
                    print(model, data, seed, name, r, flush=True)
                    runs[name].append(r)
            rows.append(row(model, data, runs["ours"]))
            for name in ("baseline", "MMRec"):
                if runs[name]:
                    rows.append(row(f"{model} ({name})", data, runs[name]))
                    per_seed = [o["s_epoch"] / r["s_epoch"] for o, r in zip(runs["ours"], runs[name])]
                    ratios.append(f"- {model} on {data}: ours / {name} train s/epoch = {med(per_seed):.2f} "
                                  f"(median of per-seed ratios {', '.join(f'{x:.2f}' for x in per_seed)})")
    cmd = " ".join(["python benchmarks/train_bench.py", *sys.argv[1:]])
    body = (
        f"`{cmd}`\n\n{machine_header()}\n"
        f"- early stopping on valid Recall@20 (patience {a.patience}, at most {a.max_epochs} epochs; `*` = hit the cap "
        f"before early stopping); test metrics at the best valid epoch; timings are medians over epochs and seeds; "
        f"s/epoch is the training pass alone (the validation pass Lightning runs inside the epoch is subtracted); "
        f"peak memory = the process's max RSS; side-by-side runs alternate their order per seed\n\n"
        "| model | data | batch | s/epoch (train only) | s/full eval | peak MiB | epochs run (per seed) | test R@20 | test N@20 |\n"
        "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n" + ("\n" + "\n".join(ratios) + "\n" if ratios else "")
    )
    print(body)
    write_section(Path(a.out), f"{a.title} ({', '.join(a.data)})", body)


if __name__ == "__main__":
    main()
