"""Unlearning benchmark: every method and both floors on the same deletion request, beside Retrain, with the audits.

    python benchmarks/unlearn_bench.py --data tiktok baby --model mgcn --regime user --share 0.05

Per data set: train the model once with its training config (or reuse ``--ckpt``); Retrain the
request once (and once more with the next seed: the noise floor of the distance to Retrain, unless
``--no-retrain-floor``); then answer the request with each ``configs/unlearn/<method>.yaml`` fragment
(Surgery and Reset, the zero-cost floors, included) through ``lightning_tru.lifecycle.answer_request``,
every method compared with the same two Retrains. Each run writes its ``report.json`` (audits
included); the table is rendered by ``lightning_tru.report`` and goes to stdout and to a section of
benchmarks/RESULTS.md, the retain/forget plot (when matplotlib is installed) to benchmarks/.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, REPO, machine_header, write_section  # noqa: E402

QUIET = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
METHODS = ["surgery", "reset", "tru", "ablations/tru_no_row", "ablations/tru_no_layer", "ablations/tru_no_scaling",
           "ablations/tru_no_gate", "finetune", "neggrad", "mmrecun", "multidelete", "scalegun"]


def _args(cfg: str, extra: list[str], common: list[str], ckpt: str, a: argparse.Namespace, work: Path, tag: str) -> list[str]:
    """The unlearn CLI's arguments of one run; each run gets its own deletion store, so every method
    answers the same request from ``ckpt``."""
    return ["--config", cfg, *extra, *common, *QUIET, "--ckpt_path", ckpt, "--request.regime", a.regime,
            "--request.share", str(a.share), "--request.seed", str(a.seed), "--request.selection", a.selection,
            "--retrain_max_epochs", str(a.max_epochs), "--output_root", str(work / "runs"),
            "--ledger", str(work / "ledger.jsonl"),
            "--deletions", tempfile.mkdtemp(dir=work, prefix=f"deletions-{tag}-")]  # a fresh store per run


def _retrain(unlearn_cli, answer_request, args: list[str], seed: int):
    """Retrain through ``answer_request(method="retrain")``; returns ``(model, info, run_dir)``."""
    import torch

    cli = unlearn_cli([*args, "--method", "retrain", "--seed_everything", str(seed), "--audit", "false"], run=False)
    report = answer_request(**cli.job(), verbose=False)
    ckpt = torch.load(Path(report["run_dir"]) / "model.ckpt", map_location="cpu", weights_only=True)
    cli.model.load_state_dict(ckpt["state_dict"])
    return cli.model, report["details"]["Retrain"], report["run_dir"]


def _section(a: argparse.Namespace, data: str, runs: list[str], failed: list[str]) -> str:
    """The RESULTS.md section of one data set, rendered from its runs' report.json by lightning_tru.report."""
    from lightning_tru.report import group_runs, load_run, render_markdown, render_plot


    groups = group_runs([load_run(r) for r in runs])
    table = render_markdown(groups).split("\n", 2)[2]  # without the report's own title
    table = table.replace("\n## Request", "\n#### Request").replace("## Request", "#### Request", 1)  # RESULTS levels
    plot = render_plot(groups)
    png = REPO / "benchmarks" / f"unlearn_{a.model}_{data}_{a.regime}.png"
    if plot is not None:
        png.write_bytes(plot)
    notes = "".join(f"\n- failed: {x}" for x in failed)
    return (f"### {a.model} on {data}, {a.regime}-wise {a.share:.0%} ({a.selection})\n\n{table}{notes}\n"
            + (f"\n![trade-off]({png.name})\n" if plot is not None else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", default=["tiktok", "baby"])
    ap.add_argument("--model", default="mgcn")
    ap.add_argument("--methods", nargs="+", default=METHODS, help="configs/unlearn/<name>.yaml fragments")
    ap.add_argument("--regime", default="user")
    ap.add_argument("--selection", default="random")
    ap.add_argument("--share", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--patience", type=int, default=20, help="early stopping of the original training and Retrain")
    ap.add_argument("--max-epochs", type=int, default=1000, help="cap of the original training and of Retrain")
    ap.add_argument("--ckpt", default=None, help="reuse a trained checkpoint (one data set only)")
    ap.add_argument("--no-retrain-floor", action="store_true", help="skip the second Retrain (distance noise floor)")
    ap.add_argument("--user-mia", action="store_true",
                    help="the user-level MIA too (user-wise requests): one shadow model per request, trained with "
                         "Retrain's budget and shared by every method")
    ap.add_argument("--render", default=None,
                    help="only render: the work folder of an earlier run (printed at its start; <folder>/<data>/runs)")
    ap.add_argument("--reuse", default=None,
                    help="the work folder of an earlier run: reuse its Retrain, run --methods again, render every run there")
    ap.add_argument("--note", default="", help="a line added to the section's notes (e.g. how the runs were made)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "RESULTS.md"))
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    from lightning_tru.cli import train_cli, unlearn_cli
    from lightning_tru.lifecycle import answer_request, request_shadow
    from lightning_tru.report import load_run

    root = Path(a.render or a.reuse or tempfile.mkdtemp(prefix="lt_unlearn_bench_"))
    print(f"work folder: {root}", flush=True)
    sections = []
    for data in a.data:
        if data != "synthetic" and not (DATA / data).is_dir():
            print(f"skip {data}: {DATA / data} not found")
            continue
        work = root / data
        work.mkdir(parents=True, exist_ok=True)  # with --ckpt nothing else creates it
        if a.render:  # the report.json files of the earlier run, rendered again
            runs = sorted(str(p) for p in (work / "runs").iterdir() if (p / "report.json").is_file())
            sections.append(_section(a, data, runs, []))
            continue
        cfg = str(REPO / f"configs/train/{a.model}_{data}.yaml")
        data_root = [] if data == "synthetic" else ["--data.init_args.root", str(DATA / data)]
        common = ["--seed_everything", str(a.seed), "--early_stopping.patience", str(a.patience), *data_root]
        ckpt = a.ckpt
        if ckpt is None:
            cli = train_cli(["fit", "--config", cfg, *common, *QUIET, "--trainer.max_epochs", str(a.max_epochs),
                             "--trainer.default_root_dir", str(work), "--test_after_fit", "false"])
            ckpt = cli.trainer.checkpoint_callback.best_model_path
        done = sorted((work / "runs").glob("retrain-*")) if a.reuse else []
        if done:  # --reuse: the Retrain of an earlier run of this request (its seed), not trained again
            cli = unlearn_cli([*_args(cfg, [], common, ckpt, a, work, "reuse"), "--method", "retrain"], run=False)
            state = torch.load(done[0] / "model.ckpt", map_location="cpu", weights_only=True)
            cli.model.load_state_dict(state["state_dict"])
            gold, info, gold_dir = cli.model, load_run(done[0])["details"]["Retrain"], str(done[0])
        else:
            gold, info, gold_dir = _retrain(unlearn_cli, answer_request, _args(cfg, [], common, ckpt, a, work, "retrain"),
                                            a.seed)
        second = None
        if not a.no_retrain_floor:
            second, _, _ = _retrain(unlearn_cli, answer_request, _args(cfg, [], common, ckpt, a, work, "retrain2"),
                                    a.seed + 1)
        shadow = None
        if a.user_mia:  # one shadow per request, kept in the work folder for --reuse
            saved = work / f"shadow-seed{a.seed}.pt"
            weights = torch.load(saved, map_location="cpu", weights_only=True) if saved.is_file() else None
            shadow = request_shadow(**unlearn_cli(_args(cfg, [], common, ckpt, a, work, "shadow"), run=False).job(),
                                    weights=weights)
            if weights is None:
                torch.save(shadow.model.state_dict(), saved)
        runs, failed = [gold_dir], []
        for method in a.methods:
            extra = ["--config", str(REPO / f"configs/unlearn/{method}.yaml")]
            try:
                cli = unlearn_cli(_args(cfg, extra, common, ckpt, a, work, method.replace("/", "-")), run=False)
                report = answer_request(**cli.job(), retrained=(gold, info), retrained_seed2=second, shadow=shadow,
                                       verbose=False)
            except (Exception, SystemExit) as e:  # a broken method (or its config: the CLI exits) must not lose the others
                failed.append(f"{method}: {type(e).__name__}: {e}"[:300])
                print("FAILED", data, method, e, flush=True)
                continue
            run = Path(report["run_dir"])
            if Path(method).name.startswith("tru_no"):  # an ablation: its own column name
                rep = load_run(run)
                for part in ("metrics", "audits", "seconds", "details", "efficiency"):
                    if "TRU" in rep.get(part, {}):
                        rep[part][Path(method).name] = rep[part].pop("TRU")
                (run / "report.json").write_text(__import__("json").dumps({k: v for k, v in rep.items() if k != "_path"},
                                                                           indent=2, default=str))
            runs.append(str(run))
            col = report["metrics"][report["method"]]
            print(data, method, {k: round(v, 4) for k, v in col.items() if "@20" in k}, report["seconds"].get(report["method"]),
                  report["status"]["stopping_reason"], flush=True)
        if a.reuse:  # every run of the folder, the earlier methods' included
            runs = sorted(str(p) for p in (work / "runs").iterdir() if (p / "report.json").is_file())
        sections.append(_section(a, data, runs, failed))
        print(sections[-1], flush=True)
    body = (
        f"`python benchmarks/unlearn_bench.py --data {' '.join(a.data)} --model {a.model} --methods {' '.join(a.methods)} "
        f"--regime {a.regime} --selection {a.selection} --share {a.share} --seed {a.seed} --patience {a.patience} "
        f"--max-epochs {a.max_epochs} --threads {a.threads}"
        f"{' --ckpt ' + a.ckpt if a.ckpt else ''}{' --no-retrain-floor' if a.no_retrain_floor else ''}"
        f"{' --user-mia' if a.user_mia else ''}`"
        f"{' (tables rendered again from the runs with --render)' if a.render else ''}"
        f"{' (Retrain and the earlier methods reused from ' + a.reuse + ', --methods run again)' if a.reuse else ''}\n\n"
        f"{machine_header()}\n"
        "- `before` = the trained model as deployed; every method answers the same request; Retrain trains from "
        "scratch on the retained data with the training config (early stopping on valid Recall@20, capped at "
        "--max-epochs) and its seconds are to convergence (or the cap); a second Retrain with seed+1 gives the "
        "Jaccard noise floor (`Jaccard ratio` = Jaccard to Retrain / Jaccard between the two Retrains); "
        "seconds of a method = its unlearning `Trainer.fit` (profiling and verification included); peak MiB = growth "
        "of the process's peak RSS during the run (0 when an earlier phase already peaked higher)\n"
        + (f"- {a.note}\n" if a.note else "") + "\n"
        + "\n".join(sections)
    )
    write_section(Path(a.out), f"Unlearning ({a.model}, {a.regime}-wise, {', '.join(a.data)})", body)


if __name__ == "__main__":
    main()
