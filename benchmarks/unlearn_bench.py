"""Unlearning benchmark: every method on the same deletion request, beside Retrain.

    python benchmarks/unlearn_bench.py --data tiktok baby --model mgcn --regime user --share 0.05

Per data set: train the model once with its training config (or reuse ``--ckpt``), then run each
``configs/unlearn/<method>.yaml`` fragment through ``unlearn.py``'s CLI on one request (same
fingerprint for all), Retrain included (``--compare_retrain`` on the first method). The table
(retain valid/test Recall/NDCG@20, forget Recall@20, exposure@20, seconds, speed-up over Retrain)
goes to stdout and to the "Unlearning" section of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, REPO, machine_header, write_section  # noqa: E402

QUIET = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def _run_method(unlearn_cli, cfg: str, method: str, common: list[str], ckpt: str, a: argparse.Namespace, i: int,
                work: Path, data: str) -> dict:
    """One method through ``lightning_tru.lifecycle.answer_request``, configured by the unlearn CLI's
    parser; each method gets its own deletion store, so every one answers the same request from ``ckpt``."""
    from lightning_tru.lifecycle import answer_request

    cli = unlearn_cli(["--config", cfg, "--config", str(REPO / f"configs/unlearn/{method}.yaml"), *common,
                       *QUIET, "--ckpt_path", ckpt, "--request.regime", a.regime,
                       "--request.share", str(a.share), "--request.seed", str(a.seed),
                       "--compare_retrain", str(i == 0).lower(), "--retrain_max_epochs", str(a.max_epochs),
                       "--output_root", str(work / data / "unlearn"), "--ledger", str(work / "ledger.jsonl"),
                       "--deletions", str(work / data / f"deletions-{i}")], run=False)
    return answer_request(**cli.job())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", default=["tiktok", "baby"])
    ap.add_argument("--model", default="mgcn")
    ap.add_argument("--methods", nargs="+", default=["tru", "finetune", "neggrad", "mmrecun", "multidelete", "scalegun"],
                    help="configs/unlearn/<name>.yaml fragments, e.g. ablations/tru_no_row")
    ap.add_argument("--regime", default="user")
    ap.add_argument("--share", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--patience", type=int, default=20, help="early stopping of the original training and Retrain")
    ap.add_argument("--max-epochs", type=int, default=1000)
    ap.add_argument("--ckpt", default=None, help="reuse a trained checkpoint (one data set only)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "RESULTS.md"))
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    from lightning_tru.cli import train_cli, unlearn_cli

    work = Path(tempfile.mkdtemp(prefix="lt_unlearn_bench_"))
    sections = []
    for data in a.data:
        if data != "synthetic" and not (DATA / data).is_dir():
            print(f"skip {data}: {DATA / data} not found")
            continue
        cfg = str(REPO / f"configs/train/{a.model}_{data}.yaml")
        root = [] if data == "synthetic" else ["--data.init_args.root", str(DATA / data)]
        common = ["--seed_everything", str(a.seed), "--early_stopping.patience", str(a.patience), *root]
        ckpt = a.ckpt
        if ckpt is None:
            cli = train_cli(["fit", "--config", cfg, *common, *QUIET, "--trainer.max_epochs", str(a.max_epochs),
                             "--trainer.default_root_dir", str(work / data), "--test_after_fit", "false"])
            ckpt = cli.trainer.checkpoint_callback.best_model_path
        rows, retrain_s, fp = {}, None, None
        failed = []
        for i, method in enumerate(a.methods):
            try:
                report = _run_method(unlearn_cli, cfg, method, common, ckpt, a, i, work, data)
            except Exception as e:  # a broken baseline must not lose the others' measurements
                if i == 0:
                    raise
                failed.append(f"{method}: {type(e).__name__}: {e}"[:300])
                print("FAILED", data, method, e, flush=True)
                continue
            key = report["method"]
            name = key if key not in rows else Path(method).name  # ablations of a method: their config name
            if fp is not None and report["request"]["fingerprint"] != fp:
                raise RuntimeError("methods saw different requests")
            fp = report["request"]["fingerprint"]
            if i == 0:
                rows["before"] = (report["metrics"]["before"], None)
                rows["Retrain"] = (report["metrics"]["Retrain"], report["seconds"]["Retrain"])
                retrain_s = report["seconds"]["Retrain"]
            rows[name] = (report["metrics"][key], report["seconds"][key])
            print(data, name, json.dumps({k: round(v, 4) for k, v in report["metrics"][key].items() if "@20" in k}),
                  report["seconds"].get(key), flush=True)
        ref = rows["Retrain"][0]
        lines = []
        for name, (m, s) in rows.items():
            speed = f"{retrain_s / s:.0f}x" if s and retrain_s else "-"
            lines.append(
                f"| {name} | {m['val/recall@20']:.4f} | {m['test/recall@20']:.4f} | {m['test/ndcg@20']:.4f} | "
                f"{m['test/ndcg@20'] / ref['test/ndcg@20']:.1%} | {m['forget_recall@20']:.4f} | "
                f"{m['forget_recall@20'] / max(ref['forget_recall@20'], 1e-12):.2f} | {m['exposure@20']:.4f} | "
                f"{'-' if s is None else f'{s:.2f}'} | {speed} |"
            )
        notes = "".join(f"\n- failed: {x}" for x in failed)
        sections.append(
            f"### {a.model} on {data}, {a.regime}-wise {a.share:.0%} (request {fp[:12]})\n\n"
            "| method | val R@20 | test R@20 | test N@20 | N@20 vs Retrain | forget R@20 | forget vs Retrain | exposure@20 | seconds | speed-up vs Retrain |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(lines) + "\n" + notes + "\n"
        )
    body = (
        f"`python benchmarks/unlearn_bench.py --data {' '.join(a.data)} --model {a.model} --methods {' '.join(a.methods)} "
        f"--regime {a.regime} "
        f"--share {a.share} --seed {a.seed} --patience {a.patience} --max-epochs {a.max_epochs} --threads {a.threads}"
        f"{' --ckpt ' + a.ckpt if a.ckpt else ''}`\n\n{machine_header()}\n"
        "- `before` = the trained model as deployed; every method answers the same request; Retrain trains from "
        "scratch on the retained data with the training config (early stopping on valid Recall@20) and its seconds "
        "are to convergence; seconds of a method = its unlearning `Trainer.fit` (profiling included)\n\n"
        + "\n".join(sections)
    )
    print(body)
    write_section(Path(a.out), f"Unlearning ({', '.join(a.data)})", body)


if __name__ == "__main__":
    main()
