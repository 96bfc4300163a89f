"""Training benchmark: seconds per epoch / per full evaluation, peak memory, epochs to early
stop and test Recall/NDCG@20 at the best valid epoch, for each backbone on TikTok and Baby.

    python benchmarks/train_bench.py --models lightgcn mgcn miggt --data tiktok baby --seeds 0 1 2

Each (model, data, seed) runs in its own process with ``--threads`` torch threads; the table
(medians of timings over epochs and seeds, mean ± std of metrics over seeds) goes to stdout and
to the "Training" section of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, REPO, EpochTimer, machine_header, med, mean_std, peak_rss_mib, run_isolated, write_section  # noqa: E402


def single(model: str, data: str, seed: int, max_epochs: int, patience: int, threads: int, batch: int) -> None:
    import torch

    torch.set_num_threads(threads)
    from lightning_tru.cli import train_cli

    timer = EpochTimer()
    args = ["--config", str(REPO / f"configs/train/{model}_{data}.yaml"), "--seed_everything", str(seed),
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["lightgcn", "mgcn", "miggt"])
    ap.add_argument("--data", nargs="+", default=["tiktok", "baby"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--max-epochs", type=int, default=1000)
    ap.add_argument("--patience", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=0, help="override the configs' batch size (0: keep)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "RESULTS.md"))
    ap.add_argument("--title", default="Training", help="section title in RESULTS.md (the data names are appended)")
    ap.add_argument("--single", nargs=3, metavar=("MODEL", "DATA", "SEED"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)  # what the header reports; each run sets its own in its process
    if a.single:
        single(a.single[0], a.single[1], int(a.single[2]), a.max_epochs, a.patience, a.threads, a.batch)
        return
    rows = []
    for data in a.data:
        if not (DATA / data).is_dir():
            print(f"skip {data}: {DATA / data} not found")
            continue
        for model in a.models:
            runs = []
            for seed in a.seeds:
                r = run_isolated([__file__, "--single", model, data, str(seed), "--max-epochs", str(a.max_epochs),
                                  "--patience", str(a.patience), "--threads", str(a.threads), "--batch", str(a.batch)])
                print(model, data, seed, r, flush=True)
                runs.append(r)
            rows.append(
                f"| {model} | {data} | {runs[0]['batch']} | {med([r['s_epoch'] for r in runs]):.2f} | "
                f"{med([r['s_eval'] for r in runs]):.2f} | {med([r['peak_mib'] for r in runs]):.0f} | "
                f"{', '.join(str(r['epochs']) + ('' if r['stopped_early'] else '*') for r in runs)} | "
                f"{mean_std([r['recall'] for r in runs])} | {mean_std([r['ndcg'] for r in runs])} |"
            )
    body = (
        f"`python benchmarks/train_bench.py --models {' '.join(a.models)} --data {' '.join(a.data)} "
        f"--seeds {' '.join(map(str, a.seeds))} --max-epochs {a.max_epochs} --patience {a.patience} --threads {a.threads}`\n\n{machine_header()}\n"
        f"- early stopping on valid Recall@20 (patience {a.patience}, at most {a.max_epochs} epochs; `*` = hit the cap "
        f"before early stopping); test metrics at the best valid epoch; timings are medians over epochs and seeds; "
        f"peak memory = the process's max RSS\n\n"
        "| model | data | batch | s/epoch | s/full eval | peak MiB | epochs run (per seed) | test R@20 | test N@20 |\n"
        "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    print(body)
    write_section(Path(a.out), f"{a.title} ({', '.join(a.data)})", body)


if __name__ == "__main__":
    main()
