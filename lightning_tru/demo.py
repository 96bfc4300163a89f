"""``make demo``: train MGCN on the built-in synthetic data, delete 5% of the users with TRU,
and print before / TRU / Reset / Retrain side by side with the audits.

Both steps honour the demo's deletion store (``<root>/deletions``): a second ``make demo`` trains
on the data without the first demo's deleted users and answers a new request.
"""
from __future__ import annotations

import logging
import shutil
import time
import warnings
from pathlib import Path
from typing import Optional

from lightning_tru.cli import train_cli, unlearn_cli
from lightning_tru.lifecycle import answer_request
from lightning_tru.report import group_runs, load_run, render_markdown

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def main(root: str = "runs/demo", extra: Optional[list[str]] = None) -> dict:
    for pattern in (".*does not have many workers.*", ".*LeafSpec.*", ".*logging interval.*"):
        warnings.filterwarnings("ignore", pattern)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    quiet = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    train_cfg = str(CONFIGS / "train" / "mgcn_synthetic.yaml")
    t0 = time.perf_counter()
    print("== 1/3 training MGCN on the synthetic data (configs/train/mgcn_synthetic.yaml)", flush=True)
    store = ["--deletions", f"{root}/deletions"]
    cli = train_cli(["fit", "--config", train_cfg, *quiet, "--trainer.default_root_dir", root, *store,
                     "--trainer.logger.init_args.save_dir", root, "--test_after_fit", "false", *(extra or [])])
    ckpt = cli.trainer.checkpoint_callback.best_model_path
    print(f"   trained in {time.perf_counter() - t0:.1f} s; best checkpoint {ckpt}", flush=True)
    print("== 2/3 deleting 5% of the users with TRU, and Retrain for reference", flush=True)
    common = [*quiet, "--trainer.logger", "false", "--ckpt_path", ckpt, "--output_root", f"{root}/unlearn",
              "--ledger", f"{root}/deletion_ledger.jsonl", *(extra or [])]
    job = unlearn_cli(["--config", train_cfg, "--config", str(CONFIGS / "unlearn" / "tru.yaml"), *store, *common,
                       "--compare_retrain", "true"], run=False).job()
    report = answer_request(**job)
    print("== 3/3 the Reset floor on the same request (its own store: a floor is a reference, not an answer)",
          flush=True)
    fp = report["request"]["fingerprint"]
    floor_store = Path(root) / f"floor-deletions-{fp[:12]}"  # the demo store's earlier requests, without this one
    floor_store.mkdir(parents=True, exist_ok=True)
    for rec in Path(root, "deletions").glob("*.npz"):
        if rec.stem != fp and not (floor_store / rec.name).exists():
            shutil.copy2(rec, floor_store / rec.name)
    floor = unlearn_cli(["--config", train_cfg, "--config", str(CONFIGS / "unlearn" / "reset.yaml"), *common,
                         "--deletions", str(floor_store)], run=False).job()
    reset = answer_request(**floor, verbose=False)
    print("\n" + render_markdown(group_runs([load_run(report["run_dir"]), load_run(reset["run_dir"])])))
    s = report["seconds"]
    print(f"TRU took {s['TRU']:.2f} s, Retrain {s['Retrain']:.2f} s ({s['Retrain'] / s['TRU']:.0f}x); "
          f"whole demo {time.perf_counter() - t0:.0f} s")
    return report


if __name__ == "__main__":
    main()
