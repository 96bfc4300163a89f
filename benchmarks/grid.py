"""The results grid: every method x regime x selection x backbone x data set x seed, with the audits.

    python benchmarks/grid.py                      # the default ~6 h subset (prints an estimate first)
    python benchmarks/grid.py --quick              # synthetic data, a few methods, 1 seed: minutes
    python benchmarks/grid.py --backbones mgcn --data tiktok --regimes user --methods retrain tru --seeds 0
    python benchmarks/grid.py --successive         # four requests of share/4 one after another vs one request

Every cell (backbone, data, regime, selection, share, seed, method) answers one deletion request through
``lightning_tru.lifecycle.answer_request`` beside a Retrain of the same request (trained once, cached,
with a second Retrain of seed + 1 for the distance floor) and writes one JSON line with every audit
number to the results file (``grid_results.jsonl`` next to RESULTS.md). The method ``retrain2`` is that second
Retrain as a row of its own, audited against the first like a method (same non-members): the seed floor of
every audit (a method closer to Retrain than ``retrain2`` is within the training seed's noise); it reuses the
floor's cached Retrain and needs no ``floor`` setting, so it can be added to finished cells. Finished cells are skipped on a
rerun; trained checkpoints and Retrains are cached in ``--work`` (keyed by backbone / data / seed / caps
and request), so a grid can be spread over several sessions. Rendering (``write_section``): one main
table per backbone (regimes as column groups, mean ± std over seeds), a detail table, the TRU ablation
table, the Pareto front of (utility, |MIA distance to Retrain|) per cell and PNG plots (matplotlib).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import mean, stdev
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, REPO, machine_header, write_section  # noqa: E402
from unlearn_bench import QUIET  # noqa: E402

import torch  # noqa: E402

from lightning_tru.audit.report import atomic_write_bytes  # noqa: E402
from lightning_tru.cli import train_cli, unlearn_cli  # noqa: E402
from lightning_tru.datamodules.deletions import DeletionStore  # noqa: E402
from lightning_tru.datamodules.forget import REGIMES, SELECTIONS, ForgetRequest  # noqa: E402
from lightning_tru.datamodules.unlearning import UnlearningDataModule  # noqa: E402
from lightning_tru.audit.suite import run_audits  # noqa: E402
from lightning_tru.lifecycle import answer_request, request_shadow  # noqa: E402

try:
    import fcntl
except ImportError:  # not POSIX: appends are still single writes
    fcntl = None  # type: ignore[assignment]

BACKBONES = ("mgcn", "miggt", "lightgcn")
DATASETS = ("tiktok", "baby", "synthetic")
UNLEARN = REPO / "configs" / "unlearn"
ABLATIONS = tuple(sorted(p.stem for p in (UNLEARN / "ablations").glob("*.yaml")))
METHODS = ("retrain", "retrain2", "surgery", "reset", "tru", *ABLATIONS, "finetune", "neggrad", "mmrecun", "multidelete", "scalegun")
FLOORS = ("surgery", "reset")
#: reference rows, not methods: Retrain and a second Retrain of another seed (seed + 1), the seed floor of every audit
REFERENCES = ("retrain", "retrain2")
SECOND = "Retrain (seed+1)"  # the report column of retrain2
K = 20
#: rough seconds per training epoch (evaluation included) on 2 quiet cores, for the estimate only
EPOCH_SECONDS = {("mgcn", "tiktok"): 6.5, ("miggt", "tiktok"): 4.2, ("lightgcn", "tiktok"): 2.8,
                 ("mgcn", "baby"): 13.0, ("miggt", "baby"): 11.0, ("lightgcn", "baby"): 6.0}


class GridError(ValueError):
    """A grid request that cannot run as given; the message names the value and the fix."""


@dataclass(frozen=True)
class Cell:
    """One request answered by one method (``step``: the successive mode's request number, or ``union``)."""

    backbone: str
    data: str
    regime: str
    selection: str
    share: float
    seed: int
    method: str
    setup: str
    mode: str = "single"
    step: str = ""

    @property
    def key(self) -> str:
        tail = f"/{self.mode}{self.step}" if self.mode != "single" else ""
        return (f"{self.backbone}/{self.data}/{self.regime}/{self.selection}/{self.share:g}/seed{self.seed}/"
                f"{self.method}@{self.setup}{tail}")


# ------------------------------------------------------------------------------- arguments
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)  # --quick tells the flags given from their full names
    ap.add_argument("--backbones", nargs="+", choices=BACKBONES, default=["mgcn", "miggt"])
    ap.add_argument("--data", nargs="+", choices=DATASETS, default=["tiktok", "baby"])
    ap.add_argument("--regimes", nargs="+", choices=REGIMES, default=list(REGIMES))
    ap.add_argument("--selections", nargs="+", choices=SELECTIONS, default=["random"],
                    help="user/item selections everywhere (interaction-wise requests are random only)")
    ap.add_argument("--core-edge-on", nargs="*", default=["mgcn/tiktok"], metavar="BACKBONE/DATA",
                    help="also the core and edge selections on these backbone/data pairs (default mgcn/tiktok)")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--share", type=float, default=0.05, help="request size (successive: split in four)")
    ap.add_argument("--max-epochs", type=int, default=15, help="cap of the training and of every Retrain")
    ap.add_argument("--patience", type=int, default=5, help="early stopping (valid Recall@20) of training and Retrain")
    ap.add_argument("--synthetic-size", nargs=2, type=int, default=None, metavar=("USERS", "ITEMS"),
                    help="users and items of the synthetic data (default: the training config's)")
    ap.add_argument("--embedding-dim", type=int, default=None, help="override the backbones' embedding_dim")
    ap.add_argument("--user-mia", action="store_true",
                    help="also the user-level MIA (user-wise cells: one shadow training per request, shared by its methods)")
    ap.add_argument("--no-retrain-floor", action="store_true", help="skip the second Retrain (Jaccard noise floor)")
    ap.add_argument("--successive", action="store_true",
                    help="four requests of share/4 answered one after another vs one request of their union")
    ap.add_argument("--quick", action="store_true",
                    help="small synthetic grid: mgcn, 600x300 users x items, dim 32, retrain/surgery/reset/tru/tru_no_gate/"
                         "neggrad, "
                         "seed 0, 20 epochs (explicit flags still win)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=str(REPO / "benchmarks" / "grid_work"),
                    help="cache of trained checkpoints, Retrains and runs (git-ignored)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "RESULTS.md"))
    ap.add_argument("--results", default=None, help="the JSON-lines results file (default: grid_results.jsonl beside --out)")
    ap.add_argument("--note", default="", help="a line added to the rendered sections (e.g. how the runs were made)")
    ap.add_argument("--dry-run", action="store_true", help="print the estimate of what is left, run and write nothing")
    ap.add_argument("--render-only", action="store_true", help="render the finished cells, run nothing")
    ap.add_argument("--no-render", action="store_true", help="run the cells, do not write RESULTS.md")
    a = ap.parse_args(argv)
    given = {x.split("=")[0] for x in (argv if argv is not None else sys.argv[1:]) if x.startswith("--")}
    if a.quick:
        quick = {"--backbones": ("backbones", ["mgcn"]), "--data": ("data", ["synthetic"]),
                 "--methods": ("methods", ["retrain", "surgery", "reset", "tru", "tru_no_gate", "neggrad"]),
                 "--seeds": ("seeds", [0]), "--max-epochs": ("max_epochs", 20),
                 "--synthetic-size": ("synthetic_size", [600, 300]), "--embedding-dim": ("embedding_dim", 32),
                 "--core-edge-on": ("core_edge_on", [])}
        for flag, (dest, value) in quick.items():
            if flag not in given:
                setattr(a, dest, value)
    for dest in ("backbones", "data", "regimes", "selections", "methods", "seeds", "core_edge_on"):
        setattr(a, dest, list(dict.fromkeys(getattr(a, dest))))  # a value given twice runs once
    a.results = a.results or str(Path(a.out).with_name("grid_results.jsonl"))
    return a


def check_args(a: argparse.Namespace) -> None:
    """Every value must be usable before any work starts (nothing is written on an error)."""
    if not 0.0 < a.share < 1.0:
        raise GridError(f"--share {a.share}: pass a fraction in (0, 1), e.g. 0.05")
    if a.max_epochs < 1 or a.patience < 1:
        raise GridError(f"--max-epochs {a.max_epochs} / --patience {a.patience}: both must be at least 1")
    if a.threads < 1:
        raise GridError(f"--threads {a.threads}: pass at least 1")
    bad_seeds = [s for s in a.seeds if s < 0]
    if bad_seeds:
        raise GridError(f"--seeds {bad_seeds}: seeds are integers >= 0")
    if a.embedding_dim is not None and a.embedding_dim < 1:
        raise GridError(f"--embedding-dim {a.embedding_dim}: pass at least 1 (or leave it out: the configs' size)")
    if a.synthetic_size is not None and min(a.synthetic_size) < 2:
        raise GridError(f"--synthetic-size {' '.join(map(str, a.synthetic_size))}: users and items must be at least 2")
    for pair in a.core_edge_on:
        bb, _, data = pair.partition("/")
        if bb not in BACKBONES or data not in DATASETS:
            raise GridError(f"--core-edge-on {pair!r}: write BACKBONE/DATA with a backbone in {BACKBONES} "
                            f"and a data set in {DATASETS}, e.g. mgcn/tiktok")
    for data in a.data:
        if data != "synthetic" and not (DATA / data).is_dir():
            raise GridError(f"--data {data}: {DATA / data} not found; set LT_DATA to the folder holding it or drop it")
        for bb in a.backbones:
            if not (REPO / f"configs/train/{bb}_{data}.yaml").is_file():
                raise GridError(f"no training config configs/train/{bb}_{data}.yaml; drop {bb} or {data}")
    if a.successive and not set(a.methods) - {*REFERENCES, *FLOORS}:
        raise GridError("--successive chains methods that answer requests: add one besides retrain/surgery/reset")


def setup_id(a: argparse.Namespace) -> str:
    """The caps and sizes every cell depends on (part of each cell's key): 8 hex digits."""
    return _digest({"max_epochs": a.max_epochs, "patience": a.patience, "synthetic_size": a.synthetic_size,
                    "embedding_dim": a.embedding_dim, "user_mia": a.user_mia, "floor": not a.no_retrain_floor})[:8]


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def selections_of(a: argparse.Namespace, backbone: str, data: str, regime: str) -> list[str]:
    if regime == "interaction":
        return ["random"]
    extra = ["core", "edge"] if f"{backbone}/{data}" in a.core_edge_on else []
    return [s for s in SELECTIONS if s in a.selections or s in extra]


def requests_of(a: argparse.Namespace) -> list[tuple[str, str, int, str, str]]:
    """``(backbone, data, seed, regime, selection)`` of every request of the grid."""
    return [(bb, data, seed, regime, sel) for bb in a.backbones for data in a.data for seed in a.seeds
            for regime in a.regimes for sel in selections_of(a, bb, data, regime)]


def cells_of(a: argparse.Namespace) -> list[Cell]:
    """Every cell of the (sub-)grid the flags select; successive: each chain's last record stands for it."""
    sid = setup_id(a)
    if a.successive:
        return [Cell(bb, d, r, s, a.share, seed, m, sid, "successive", "union")
                for bb, d, seed, r, s in requests_of(a) for m in a.methods if m not in (*REFERENCES, *FLOORS)]
    return [Cell(bb, d, r, s, a.share, seed, m, sid) for bb, d, seed, r, s in requests_of(a) for m in a.methods]


# ------------------------------------------------------------------------------ results file
def load_records(path: Path) -> list[dict[str, Any]]:
    """The results file's records; a line cut by a crash mid-write is reported and ignored."""
    if not path.is_file():
        return []
    out = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            print(f"warning: {path}:{n} is not a JSON line (a crashed write?); ignored", file=sys.stderr)
    return out


def append_records(path: Path, records: list[dict[str, Any]]) -> None:
    """Append ``records`` as JSON lines in one locked write, synced to disk."""
    data = "".join(json.dumps(r, sort_keys=True, default=str, allow_nan=False) + "\n" for r in records).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":  # a line cut by a crash: never glue the next record to it
            data = b"\n" + data
        written = 0
        while written < len(data):  # a short write (a full disk) raises or completes, never leaves half a line
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)


def _num(x: Any) -> Optional[float]:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _ratio(x: Any, y: Any) -> Optional[float]:
    x, y = _num(x), _num(y)
    return x / y if x is not None and y is not None and abs(y) > 1e-12 else None


def record_of(cell: Cell, report: dict[str, Any], col: str, a: argparse.Namespace) -> dict[str, Any]:
    """One results line: the cell, its caps and every audit number of column ``col`` of a report."""
    met, au, eff = report["metrics"], report.get("audits", {}), report.get("efficiency", {})
    me, gold = met[col], met.get("Retrain", {})  # no Retrain: the successive mode's first steps
    mine, ret, before = au.get(col, {}), au.get("Retrain", {}), au.get("before", {})
    mem, ret_mem = mine.get("membership", {}), ret.get("membership", {})
    dist, umia = mine.get("distance", {}), mine.get("user_mia", {})
    gap = f"ndcg@{K}_gap"
    status = report["status"]
    seconds = report["seconds"].get(col)
    r_seconds = report["seconds"].get("Retrain")
    return {
        **asdict(cell), "key": cell.key, "time": report["time"],
        "caps": {"max_epochs": a.max_epochs, "patience": a.patience, "synthetic_size": a.synthetic_size,
                 "embedding_dim": a.embedding_dim, "threads": a.threads},
        "request": report["request"], "run_dir": report.get("run_dir"),
        "ndcg": me[f"test/ndcg@{K}"], "recall": me[f"test/recall@{K}"], "retrain_ndcg": gold.get(f"test/ndcg@{K}"),
        "util_ratio": _ratio(me[f"test/ndcg@{K}"], gold.get(f"test/ndcg@{K}")),
        "forget_recall": me[f"forget_recall@{K}"], "retrain_forget_recall": gold.get(f"forget_recall@{K}"),
        "forget_ratio": _ratio(me[f"forget_recall@{K}"], gold.get(f"forget_recall@{K}")),
        "mia_auc": mem.get("auc_rank"), "retrain_mia_auc": ret_mem.get("auc_rank"),
        "mia_delta": (mem["auc_rank"] - ret_mem["auc_rank"]) if "auc_rank" in mem and "auc_rank" in ret_mem else None,
        "mia_flag": mem.get("flag_rank"), "mia_auc_score": mem.get("auc"),
        "user_mia_auc": _num(umia.get("auc")), "user_mia_delta": _num(umia.get("delta")),
        "global_exposure": mine.get("global_exposure", {}).get(f"exposure@{K}"),
        "exposure_reduction": mine.get("global_exposure", {}).get("reduction"),
        "retrain_global_exposure": ret.get("global_exposure", {}).get(f"exposure@{K}"),
        "jaccard": dist.get(f"jaccard@{K}"), "floor_jaccard": dist.get(f"floor_jaccard@{K}"),
        "jaccard_ratio": dist.get(f"ratio_jaccard@{K}"),
        "seconds": seconds, "retrain_seconds": r_seconds, "speedup": _ratio(r_seconds, seconds),
        "peak_mib": (eff.get(col, {}).get("peak_memory_bytes") or 0.0) / 2**20,
        "fairness_before": before.get("fairness", {}).get(gap), "fairness_after": mine.get("fairness", {}).get(gap),
        "fairness_retrain": ret.get("fairness", {}).get(gap),
        "steps": status.get("steps"), "answered": bool(status["target_reached"]),
        "stopping_reason": status.get("stopping_reason"),
        "timings": (report.get("details") or {}).get(col, {}).get("timings"),
    }


# ------------------------------------------------------------------------------ running
def _drop_store(store: str) -> None:
    """Remove a cell's temporary deletion store and its lock file (``.<store>.lock`` beside it)."""
    shutil.rmtree(store, ignore_errors=True)
    Path(store).with_name(f".{Path(store).name}.lock").unlink(missing_ok=True)


class Runner:
    """Runs cells, caching trained checkpoints and Retrains under ``work`` and skipping finished cells."""

    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.work = Path(a.work)
        self.results = Path(a.results)
        self.done = {r["key"] for r in load_records(self.results)}
        self.trainings = 0  # trainings and Retrains made by this process (the cache's misses)

    # -- command lines
    def _overrides(self, bb: str, data: str, seed: int) -> list[str]:
        out = ["--seed_everything", str(seed), "--early_stopping.patience", str(self.a.patience)]
        if data != "synthetic":
            out += ["--data.init_args.root", str(DATA / data)]
        elif self.a.synthetic_size:
            out += ["--data.init_args.num_users", str(self.a.synthetic_size[0]),
                    "--data.init_args.num_items", str(self.a.synthetic_size[1])]
        if self.a.embedding_dim is not None:
            out += ["--model.backbone.init_args.embedding_dim", str(self.a.embedding_dim)]
        return [*out, *QUIET]

    def _unlearn_args(self, bb: str, data: str, seed: int, ckpt: Path, request: list[str], folder: Path,
                      method: Optional[str], user_level: Optional[bool] = None) -> list[str]:
        cfg = ["--config", str(REPO / f"configs/train/{bb}_{data}.yaml")]
        if method is not None:
            sub = "ablations/" if method in ABLATIONS else ""
            cfg += ["--config", str(UNLEARN / f"{sub}{method}.yaml")]
        return [*cfg, *self._overrides(bb, data, seed), "--ckpt_path", str(ckpt), *request,
                "--retrain_max_epochs", str(self.a.max_epochs), "--output_root", str(folder / "runs"),
                "--ledger", str(folder / "ledger.jsonl"),
                "--audit_user_level", str(self.a.user_mia if user_level is None else user_level).lower()]

    # -- cached artefacts
    def model_folder(self, bb: str, data: str, seed: int) -> Path:
        key = _digest([bb, data, seed, self._overrides(bb, data, seed), self.a.max_epochs])[:10]
        return self.work / f"{bb}_{data}_seed{seed}_{key}"

    def trained_cached(self, bb: str, data: str, seed: int) -> bool:
        return (self.model_folder(bb, data, seed) / "trained.ckpt").is_file()

    def trained(self, bb: str, data: str, seed: int) -> Path:
        """The trained checkpoint (early stopping, capped), trained once and cached."""
        folder = self.model_folder(bb, data, seed)
        ckpt = folder / "trained.ckpt"
        if ckpt.is_file():
            return ckpt
        start = time.perf_counter()
        cli = train_cli(["fit", "--config", str(REPO / f"configs/train/{bb}_{data}.yaml"), *self._overrides(bb, data, seed),
                         "--trainer.max_epochs", str(self.a.max_epochs), "--trainer.default_root_dir",
                         str(folder / "train"), "--test_after_fit", "false"])
        self.trainings += 1
        tmp = folder / "trained.ckpt.tmp"
        shutil.copyfile(cli.trainer.checkpoint_callback.best_model_path, tmp)
        os.replace(tmp, ckpt)
        info = {"seconds": time.perf_counter() - start, "epochs": cli.trainer.current_epoch}
        atomic_write_bytes(folder / "train.json", json.dumps(info).encode())
        shutil.rmtree(folder / "train", ignore_errors=True)
        return ckpt

    def retrain(self, bb: str, data: str, seed: int, ckpt: Path, request: list[str], folder: Path,
                offset: int = 0) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        """Retrain of the request (seed + ``offset``), run once through ``answer_request(method="retrain")``
        with its audits and cached in ``folder``; returns ``(model, info, report)``."""
        tag = folder / f"retrain{offset or ''}.json"
        store = self._store(folder)
        try:
            # no user-level MIA here: it would train a shadow of its own (uncapped); the methods' runs audit Retrain
            # against the request's shared shadow (Runner.shadow), and the Retrain cache stays valid either way
            cli = unlearn_cli([*self._unlearn_args(bb, data, seed + offset, ckpt, request, folder, None, user_level=False),
                               "--method", "retrain", "--deletions", store], run=False)
            if tag.is_file():
                run_dir = json.loads(tag.read_text())["run_dir"]
                report = {**json.loads((Path(run_dir) / "report.json").read_text()), "run_dir": run_dir}
            else:
                report = answer_request(**cli.job(), verbose=False)
                self.trainings += 1
                atomic_write_bytes(tag, json.dumps({"run_dir": report["run_dir"]}).encode())
        finally:
            _drop_store(store)
        state = torch.load(Path(report["run_dir"]) / "model.ckpt", map_location="cpu", weights_only=True)
        cli.model.load_state_dict(state["state_dict"])
        return cli.model, report["details"]["Retrain"], report

    def second_report(self, bb: str, data: str, seed: int, ckpt: Path, request: list[str], folder: Path,
                      gold_model: Any, gold_report: dict[str, Any]) -> dict[str, Any]:
        """The second Retrain (seed + 1, cached: the floor's) audited as a method against the first, with the
        other cells' audit seed (the same popularity-matched non-members): how far an exact answer lands from
        Retrain by the training seed alone, on every audit."""
        model2, _, rep2 = self.retrain(bb, data, seed, ckpt, request, folder, 1)
        store = self._store(folder)
        try:
            job = unlearn_cli([*self._unlearn_args(bb, data, seed, ckpt, request, folder, None), "--deletions", store],
                              run=False).job()
            udm = UnlearningDataModule(job["datamodule"], job["request"], seed=job["seed"])
            if udm.forget.fingerprint != gold_report["request"]["fingerprint"]:
                raise RuntimeError(f"the request resolved differently from its cached Retrain's; remove {folder} and run again")
            audits = run_audits(model2, udm, retrain=gold_model, name=SECOND, seed=job["seed"])
        finally:
            _drop_store(store)
        return {**rep2, "method": SECOND, "metrics": {SECOND: rep2["metrics"]["Retrain"], "Retrain": gold_report["metrics"]["Retrain"]},
                "audits": audits, "seconds": {SECOND: rep2["seconds"]["Retrain"], "Retrain": gold_report["seconds"]["Retrain"]},
                "efficiency": {SECOND: rep2.get("efficiency", {}).get("Retrain", {})}}

    @staticmethod
    def _store(folder: Path) -> str:
        folder.mkdir(parents=True, exist_ok=True)
        return tempfile.mkdtemp(dir=folder, prefix="deletions-")  # a fresh deletion store: the request unanswered

    def shadow(self, bb: str, data: str, seed: int, ckpt: Path, request: list[str], folder: Path) -> Any:
        """The user-level MIA's shadow of the request, trained once (``lifecycle.request_shadow``)."""
        store = self._store(folder)
        try:
            cli = unlearn_cli([*self._unlearn_args(bb, data, seed, ckpt, request, folder, None), "--deletions", store],
                              run=False)
            self.trainings += 1
            return request_shadow(**cli.job())
        finally:
            _drop_store(store)

    def answer(self, bb: str, data: str, seed: int, ckpt: Path, request: list[str], folder: Path, method: str,
               gold: Optional[tuple[Any, dict[str, Any]]], second: Any, store: Optional[str] = None,
               shadow: Any = None) -> dict[str, Any]:
        """``method`` answers the request from ``ckpt`` beside the given Retrain(s); returns the report."""
        own = store is None
        store = store or self._store(folder)
        cli = unlearn_cli([*self._unlearn_args(bb, data, seed, ckpt, request, folder, method), "--deletions", store],
                          run=False)
        try:
            return answer_request(**cli.job(), retrained=gold, retrained_seed2=second, shadow=shadow, verbose=False)
        finally:
            if own:
                _drop_store(store)

    # -- the grid
    def run_single(self, cells: list[Cell]) -> None:
        todo = [c for c in cells if c.key not in self.done]
        by_request: dict[tuple[str, str, int, str, str], list[Cell]] = {}
        for c in todo:
            by_request.setdefault((c.backbone, c.data, c.seed, c.regime, c.selection), []).append(c)
        for (bb, data, seed, regime, sel), group in by_request.items():
            ckpt = self.trained(bb, data, seed)
            folder = self.model_folder(bb, data, seed) / f"{regime}_{sel}_{self.a.share:g}"
            request = ["--request.regime", regime, "--request.share", str(self.a.share), "--request.selection", sel,
                       "--request.seed", str(seed)]
            gold_model, info, gold_report = self.retrain(bb, data, seed, ckpt, request, folder)
            second = None if self.a.no_retrain_floor else self.retrain(bb, data, seed, ckpt, request, folder, 1)[0]
            needs_shadow = self.a.user_mia and regime == "user" and any(c.method != "retrain" for c in group)
            shadow = self.shadow(bb, data, seed, ckpt, request, folder) if needs_shadow else None
            for cell in group:
                if cell.method == "retrain":
                    rec = record_of(cell, gold_report, "Retrain", self.a)
                elif cell.method == "retrain2":
                    rec = record_of(cell, self.second_report(bb, data, seed, ckpt, request, folder, gold_model, gold_report),
                                    SECOND, self.a)
                else:
                    try:
                        report = self.answer(bb, data, seed, ckpt, request, folder, cell.method, (gold_model, info), second,
                                             shadow=shadow)
                    except (Exception, SystemExit) as e:  # a broken method (or its config: the CLI exits) must not lose the other cells
                        print(f"FAILED {cell.key}: {type(e).__name__}: {e}"[:400], flush=True)
                        continue
                    if report["request"]["fingerprint"] != gold_report["request"]["fingerprint"]:
                        raise RuntimeError(f"{cell.key}: the request resolved differently from its cached Retrain's; "
                                           f"remove {folder} and run again")
                    rec = record_of(cell, report, report["method"], self.a)
                append_records(self.results, [rec])
                self.done.add(cell.key)
                print(f"{cell.key}: utility {_fmt(rec['util_ratio'], '.1%')}, forget x{_fmt(rec['forget_ratio'], '.2f')}, "
                      f"dMIA {_fmt(rec['mia_delta'], '+.3f')}, {_fmt(rec['seconds'], '.1f')} s, "
                      f"{'answered' if rec['answered'] else 'NOT answered'}", flush=True)

    def plan(self, bb: str, data: str, seed: int, ckpt: Path, regime: str, sel: str, folder: Path) -> list[list[str]]:
        """The successive chain's four requests (share/4 each, resolved one after another on the data the
        earlier ones left) and the union as one request file; returns the five ``--request`` lists."""
        union = folder / "union.json"
        steps = [["--request.regime", regime, "--request.share", str(self.a.share / 4), "--request.selection", sel,
                  "--request.seed", str(100 * seed + k)] for k in range(1, 5)]
        if not union.is_file():
            store = self._store(folder)
            for step in steps:
                cli = unlearn_cli([*self._unlearn_args(bb, data, seed, ckpt, step, folder, None), "--deletions", store],
                                  run=False)
                dm = cli.datamodule
                fs = UnlearningDataModule(dm, ForgetRequest(**dict(cli.config.request))).forget
                dm.deletions.record(fs, resolved_on=str(dm.lineage()["train_fingerprint"]))
            entries = DeletionStore(store).entries()
            ids = {"user": ("users", "users"), "item": ("items", "items"), "interaction": ("pairs", "forget_pairs")}[regime]
            body = {ids[0]: sorted({tuple(x) if regime == "interaction" else int(x)
                                    for e in entries for x in getattr(e, ids[1]).tolist()})}
            atomic_write_bytes(union, json.dumps(body).encode())
            _drop_store(store)
        return [*steps, ["--request.regime", regime, "--request.file", str(union)]]

    def run_successive(self, cells: list[Cell]) -> None:
        sid = setup_id(self.a)
        todo = [c for c in cells if c.key not in self.done]
        for bb, data, seed, regime, sel in dict.fromkeys((c.backbone, c.data, c.seed, c.regime, c.selection) for c in todo):
            ckpt = self.trained(bb, data, seed)
            folder = self.model_folder(bb, data, seed) / f"successive_{regime}_{sel}_{self.a.share:g}"
            *steps, union = self.plan(bb, data, seed, ckpt, regime, sel, folder)
            gold_model, info, gold_report = self.retrain(bb, data, seed, ckpt, union, folder)  # Retrain on the union
            second = None if self.a.no_retrain_floor else self.retrain(bb, data, seed, ckpt, union, folder, 1)[0]
            head = Cell(bb, data, regime, sel, self.a.share, seed, "retrain", sid, "successive", "union")
            if head.key not in self.done:
                append_records(self.results, [record_of(head, gold_report, "Retrain", self.a)])
                self.done.add(head.key)
            for cell in (c for c in todo if (c.backbone, c.data, c.seed, c.regime, c.selection) == (bb, data, seed, regime, sel)):
                records, source, store = [], ckpt, self._store(folder)
                try:
                    for k, step in enumerate(steps, start=1):
                        last = k == len(steps)
                        rep = self.answer(bb, data, seed, source, step, folder, cell.method,
                                          (gold_model, info) if last else None, second if last else None, store)
                        sub = Cell(bb, data, regime, sel, self.a.share, seed, cell.method, sid, "successive", str(k))
                        records.append(record_of(sub, rep, rep["method"], self.a))
                        if not rep["status"]["target_reached"]:  # refused by every loader: the chain ends here
                            break
                        source = Path(rep["run_dir"]) / "model.ckpt"
                    rep = self.answer(bb, data, seed, ckpt, union, folder, cell.method, (gold_model, info), second)
                except (Exception, SystemExit) as e:  # as single cells: a method's CLI exit must not end the grid
                    print(f"FAILED {cell.key}: {type(e).__name__}: {e}"[:400], flush=True)
                    continue
                finally:
                    _drop_store(store)
                records.append(record_of(cell, rep, rep["method"], self.a))
                append_records(self.results, records)  # the chain's records together: a chain is one unit
                self.done.add(cell.key)
                print(cell.key, "drift:", [round(r["ndcg"], 4) for r in records], flush=True)


def estimate_seconds(a: argparse.Namespace, runner: Runner) -> float:
    """Rough wall-clock of what is left to run on 2 quiet cores: every training and Retrain at the epoch cap
    (``EPOCH_SECONDS``, measured by train_bench), methods at ~15 s (real data, a guess: not measured with
    the audits) or ~8 s (synthetic) each, a user-level MIA shadow a training each; cached Retrains counted."""
    todo = [c for c in cells_of(a) if c.key not in runner.done]
    models = {(c.backbone, c.data, c.seed) for c in todo if not runner.trained_cached(c.backbone, c.data, c.seed)}
    requests = {(c.backbone, c.data, c.seed, c.regime, c.selection) for c in todo}
    second = not a.no_retrain_floor or "retrain2" in a.methods
    retrains = (2 if second else 1) * len(requests)

    def train_s(bb: str, data: str) -> float:
        return a.max_epochs * EPOCH_SECONDS.get((bb, data), 1.5)  # synthetic: the --quick size

    steps = 6 if a.successive else 1  # four steps, the union request, the plan
    total = sum(train_s(bb, d) for bb, d, _ in models)
    total += sum((2 if second else 1) * train_s(bb, d) for bb, d, _, _, _ in requests)
    for c in todo:
        if c.method not in REFERENCES:
            total += steps * (8.0 if c.data == "synthetic" else 15.0)
            total += steps * train_s(c.backbone, c.data) if a.user_mia and a.successive and c.regime == "user" else 0.0
    if a.user_mia and not a.successive:  # one shadow per user-wise request, shared by its methods
        total += sum(train_s(bb, d) for bb, d, _, r, _ in {(c.backbone, c.data, c.seed, c.regime, c.selection)
                                                           for c in todo if c.method != "retrain"} if r == "user")
    print(f"{len(todo)} cells to run ({len(cells_of(a)) - len(todo)} finished), {len(models)} trainings and up to "
          f"{retrains} Retrains (some cached), caps {a.max_epochs} epochs / patience {a.patience}")
    return total


# ------------------------------------------------------------------------------ aggregation
def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return mean(xs), (stdev(xs) if len(xs) > 1 else 0.0)


def aggregate(records: Iterable[dict[str, Any]], by: Sequence[str], fields: Sequence[str]
              ) -> dict[tuple[Any, ...], dict[str, tuple[float, float, int]]]:
    """``group -> field -> (mean, std, n)`` over the records sharing the ``by`` values (missing values skipped)."""
    vals: dict[tuple[Any, ...], dict[str, list[float]]] = {}
    for r in records:
        g = vals.setdefault(tuple(r[b] for b in by), {f: [] for f in fields})
        for f in fields:
            v = r.get(f)
            v = float(v) if isinstance(v, bool) else _num(v)  # answered: a share of seeds
            if v is not None:
                g[f].append(v)
    return {g: {f: (*mean_std(xs), len(xs)) for f, xs in d.items() if xs} for g, d in vals.items()}


def pareto_front(points: dict[str, tuple[float, float]]) -> set[str]:
    """Names not dominated in (utility: higher is better, distance: lower is better)."""
    def dominates(p: tuple[float, float], q: tuple[float, float]) -> bool:
        return p[0] >= q[0] and p[1] <= q[1] and p != q

    return {n for n, p in points.items() if not any(dominates(q, p) for m, q in points.items() if m != n)}


def _fmt(v: Any, spec: str) -> str:
    return "-" if _num(v) is None else format(v, spec)


def _ms(stat: Optional[tuple[float, float, int]], spec: str, scale: float = 1.0) -> str:
    if stat is None:
        return "-"
    m, s, n = stat
    return f"{m * scale:{spec}} ± {s * scale:{spec}}" if n > 1 else f"{m * scale:{spec}}"


# ------------------------------------------------------------------------------ rendering
MAIN_FIELDS = ("util_ratio", "forget_ratio", "mia_delta", "mia_distance", "speedup")
DETAIL_FIELDS = ("ndcg", "recall", "forget_recall", "mia_auc", "user_mia_delta", "global_exposure", "jaccard",
                 "floor_jaccard", "seconds", "peak_mib", "fairness_before", "fairness_after", "fairness_retrain",
                 "steps", "answered")
CELL = ("backbone", "data", "selection", "regime", "method")


def _order(records: list[dict[str, Any]], key: str, axis: Sequence[str]) -> list[str]:
    present = {r[key] for r in records}
    return [x for x in axis if x in present]


def fronts(stats: dict[tuple[Any, ...], dict[str, tuple[float, float, int]]]) -> dict[tuple[Any, ...], set[str]]:
    """Pareto front of (utility vs Retrain, |pair-MIA AUC - Retrain's|) per (backbone, data, selection, regime),
    over every method but Retrain and the TRU ablations (means over seeds)."""
    points: dict[tuple[Any, ...], dict[str, tuple[float, float]]] = {}
    for (*cell, method), st in stats.items():
        if method in (*REFERENCES, *ABLATIONS) or "util_ratio" not in st or "mia_distance" not in st:
            continue
        points.setdefault(tuple(cell), {})[method] = (st["util_ratio"][0], st["mia_distance"][0])
    return {cell: pareto_front(p) for cell, p in points.items()}


def main_tables(records: list[dict[str, Any]]) -> str:
    stats = aggregate(records, CELL, MAIN_FIELDS)
    front = fronts(stats)
    out = []
    for bb in _order(records, "backbone", BACKBONES):
        mine = [r for r in records if r["backbone"] == bb and r["method"] not in ABLATIONS]
        regimes = _order(mine, "regime", REGIMES)
        head = "| data | selection | method | " + " | ".join(
            f"{r}: utility | {r}: forget × | {r}: ΔMIA | {r}: speed-up" for r in regimes) + " |"
        lines = [f"#### {bb}", "", head, "|---" * (3 + 4 * len(regimes)) + "|"]
        for data in _order(mine, "data", DATASETS):
            for sel in _order([r for r in mine if r["data"] == data], "selection", SELECTIONS):
                for m in _order([r for r in mine if r["data"] == data and r["selection"] == sel], "method", METHODS):
                    cells = []
                    for reg in regimes:
                        st = stats.get((bb, data, sel, reg, m), {})
                        mark = " ◆" if m in front.get((bb, data, sel, reg), set()) else ""
                        cells += [_ms(st.get("util_ratio"), ".1f", 100) + ("%" if st.get("util_ratio") else ""),
                                  _ms(st.get("forget_ratio"), ".2f"), _ms(st.get("mia_delta"), "+.3f") + mark,
                                  "-" if m in REFERENCES else _ms(st.get("speedup"), ".0f") + ("x" if st.get("speedup") else "")]
                    name = f"**{m}**" if m in REFERENCES else f"*{m}*" if m in FLOORS else m
                    lines.append(f"| {data} | {sel} | {name} | " + " | ".join(cells) + " |")
        cells_with_tru = sorted(c for c in front if c[0] == bb and (bb, *c[1:], "tru") in stats)
        missing = [c for c in cells_with_tru if "tru" not in front[c]]
        lines += ["", f"TRU on the Pareto front of (utility, |ΔMIA|) in {len(cells_with_tru) - len(missing)} of "
                  f"{len(cells_with_tru)} cells" + (": **not** in " + "; ".join(
                      f"{d}/{s}/{r} (front: {', '.join(sorted(front[(b, d, s, r)]))})" for b, d, s, r in missing)
                      if missing else "") + ".", ""]
        out.append("\n".join(lines))
    return "\n".join(out)


def detail_table(records: list[dict[str, Any]]) -> str:
    stats = aggregate(records, CELL, DETAIL_FIELDS)
    cols = [("NDCG@20", "ndcg", ".4f"), ("R@20", "recall", ".4f"), ("forget R@20", "forget_recall", ".4f"),
            ("pair AUC", "mia_auc", ".3f"), ("user ΔAUC", "user_mia_delta", "+.3f"),
            ("global exp.@20", "global_exposure", ".4f"), ("Jaccard", "jaccard", ".3f"), ("floor", "floor_jaccard", ".3f"),
            ("seconds", "seconds", ".1f"), ("peak MiB", "peak_mib", ".0f"), ("gap before", "fairness_before", "+.4f"),
            ("gap after", "fairness_after", "+.4f"), ("gap Retrain", "fairness_retrain", "+.4f"), ("steps", "steps", ".0f")]
    lines = ["| cell | method | " + " | ".join(c for c, _, _ in cols) + " | answered | seeds |",
             "|---" * (len(cols) + 4) + "|"]
    def order(c: tuple) -> tuple:  # a record of a method (or axis) this version no longer has sorts last
        axes = (BACKBONES, DATASETS, SELECTIONS, REGIMES, METHODS)
        return tuple(ax.index(v) if v in ax else len(ax) for ax, v in zip(axes, c[:5])) + (str(c[4]),)

    for key in sorted(stats, key=order):
        st = stats[key]
        ans = st.get("answered")
        lines.append(f"| {'/'.join(map(str, key[:4]))} | {key[4]} | "
                     + " | ".join(_fmt(st[f][0], spec) if f in st else "-" for _, f, spec in cols)
                     + f" | {'-' if ans is None else format(ans[0], '.0%')} | {max(v[2] for v in st.values())} |")
    return "\n".join(lines)


def ablation_table(records: list[dict[str, Any]]) -> str:
    names = [m for m in ("tru", *ABLATIONS) if any(r["method"] == m for r in records)]
    if len(names) < 2:
        return ""
    stats = aggregate(records, CELL, ("util_ratio", "mia_delta"))
    lines = ["| cell | " + " | ".join(f"{m}: utility / ΔMIA" for m in names) + " |", "|---" * (len(names) + 1) + "|"]
    for cell in sorted({k[:4] for k in stats}, key=lambda c: (BACKBONES.index(c[0]), DATASETS.index(c[1]),
                                                               SELECTIONS.index(c[2]), REGIMES.index(c[3]))):
        row = [f"{_ms(stats.get((*cell, m), {}).get('util_ratio'), '.1f', 100)}% / "
               f"{_ms(stats.get((*cell, m), {}).get('mia_delta'), '+.3f')}" if (*cell, m) in stats else "-" for m in names]
        lines.append(f"| {'/'.join(cell)} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def successive_table(records: list[dict[str, Any]]) -> str:
    chain = ("1", "2", "3", "4", "union")
    stats = aggregate(records, (*CELL, "step"), ("ndcg", "mia_delta", "answered"))
    lines = ["| cell | method | NDCG after 1 | after 2 | after 3 | after 4 | one request (union) | Retrain on the union | "
             "ΔMIA after 4 | ΔMIA one request | requests answered |", "|---" * 11 + "|"]
    cells = sorted({tuple(r[c] for c in CELL[:4]) for r in records}, key=lambda c: (
        BACKBONES.index(c[0]), DATASETS.index(c[1]), SELECTIONS.index(c[2]), REGIMES.index(c[3])))
    for cell in cells:
        gold = stats.get((*cell, "retrain", "union"), {}).get("ndcg")
        for m in [m for m in METHODS if (*cell, m, "union") in stats and m != "retrain"]:
            st = {s: stats.get((*cell, m, s), {}) for s in chain}
            per_seed: dict[int, int] = {}  # requests answered by each seed's chain (one that stopped has no later record)
            for r in records:
                if tuple(r[c] for c in CELL[:4]) == cell and r["method"] == m and str(r["step"]) in chain[:4]:
                    per_seed[r["seed"]] = per_seed.get(r["seed"], 0) + int(bool(r["answered"]))
            answered = mean(per_seed.values()) if per_seed else 0.0
            lines.append(f"| {'/'.join(map(str, cell))} | {m} | " + " | ".join(_ms(st[s].get("ndcg"), ".4f") for s in chain)
                         + f" | {_ms(gold, '.4f')} | {_ms(st['4'].get('mia_delta'), '+.3f')} | "
                         f"{_ms(st['union'].get('mia_delta'), '+.3f')} | {answered:.1f} of 4 |")
    return "\n".join(lines)


def render_plot(records: list[dict[str, Any]], bb: str, data: str) -> Optional[bytes]:
    """PNG: per regime (random selection), utility vs |ΔMIA| (top) and speed-up vs Retrain on a log axis
    (bottom); ``None`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: the grid plots are skipped (pip install 'lightning_tru[plot]')", file=sys.stderr)
        return None
    mine = [r for r in records if r["backbone"] == bb and r["data"] == data and r["selection"] == "random"]
    regimes = _order(mine, "regime", REGIMES)
    if not regimes:
        return None
    stats = aggregate(mine, CELL, ("util_ratio", "mia_distance", "speedup"))
    style = {"retrain": ("*", "tab:red"), "retrain2": ("*", "salmon"), "surgery": ("s", "tab:blue"), "reset": ("D", "tab:purple"),
             "tru": ("P", "tab:green")}
    others = iter(["tab:orange", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray", "gold", "navy", "teal"])
    colors = {m: style.get(m, ("o", next(others, "black"))) for m in METHODS}
    fig, axes = plt.subplots(2, len(regimes), figsize=(5.5 * len(regimes), 8), squeeze=False)
    for j, reg in enumerate(regimes):
        top, bottom = axes[0][j], axes[1][j]
        speed = []
        for m in METHODS:
            st = stats.get((bb, data, "random", reg, m))
            if not st or "util_ratio" not in st:
                continue
            marker, color = colors[m]
            x = st["mia_distance"][0] if "mia_distance" in st else 0.0
            if m in ABLATIONS:  # hollow and under the others: variants of TRU
                top.scatter([x], [100 * st["util_ratio"][0]], marker=marker, facecolors="none", edgecolors=color, s=35,
                            zorder=2)
            else:
                top.scatter([x], [100 * st["util_ratio"][0]], marker=marker, color=color,
                            s=110 if marker == "*" else 50, zorder=5 if m == "tru" else 3)
            top.annotate(m, (x, 100 * st["util_ratio"][0]), textcoords="offset points", xytext=(4, 3), fontsize=7)
            if m not in REFERENCES and "speedup" in st:
                speed.append((m, st["speedup"][0], color))
        top.set_xlabel("|pair-MIA AUC − Retrain's| (0 = Retrain)")
        top.set_ylabel("test NDCG@20, % of Retrain's")
        top.set_title(f"{bb} on {data}, {reg}-wise")
        top.grid(alpha=0.3)
        if speed:
            bottom.bar([s[0] for s in speed], [s[1] for s in speed], color=[s[2] for s in speed])
            bottom.set_yscale("log")
            bottom.tick_params(axis="x", rotation=60, labelsize=7)
        bottom.axhline(1.0, color="tab:red", linestyle="--", linewidth=1)
        bottom.set_ylabel("speed-up vs Retrain to convergence (log)")
        bottom.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def latest_records(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last record of each key (a cell run twice, e.g. by two sessions, counts once); a successive chain run again
    takes its earlier run's later requests with it (the new run may stop sooner: those records are not its)."""
    latest: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.get("mode") == "successive" and str(r.get("step")) == "1":
            chain = r["key"][:-1]
            for k in [k for k in latest if k.startswith(chain) and k[len(chain):] in ("2", "3", "4")]:
                del latest[k]
        latest[r["key"]] = r
    return list(latest.values())


def render(a: argparse.Namespace, argv: Sequence[str]) -> None:
    """Write the grid's RESULTS.md section (and PNGs) from every finished cell of this setup."""
    sid = setup_id(a)
    records = [r for r in latest_records(load_records(Path(a.results))) if r.get("setup") == sid and r.get("share") == a.share]
    for r in records:
        r["mia_distance"] = abs(r["mia_delta"]) if _num(r.get("mia_delta")) is not None else None
    single = [r for r in records if r["mode"] == "single"]
    chains = [r for r in records if r["mode"] == "successive"]
    suffix = "_quick" if a.quick else "" if sid == setup_id(parse_args([])) else f"_{sid}"
    if a.share != parse_args([]).share:  # another request size: its own section and plots, never the 5% ones
        suffix += f"_share{a.share:g}"
    title = "Results grid" + suffix.replace("_", " (", 1).replace("_", ", ") + (")" if suffix else "")
    caps = (f"training and every Retrain capped at {a.max_epochs} epochs with early stopping on valid Recall@20 "
            f"(patience {a.patience}); requests of {a.share:.0%}"
            + (f"; synthetic data {a.synthetic_size[0]} users x {a.synthetic_size[1]} items" if a.synthetic_size else "")
            + (f"; embedding_dim {a.embedding_dim}" if a.embedding_dim else "")
            + ("; user-level MIA on (one shadow per user-wise request)" if a.user_mia else "; user-level MIA off (opt-in --user-mia)")
            + ("; no second Retrain (no Jaccard floor)" if a.no_retrain_floor else "")
            + "; the unlearning methods with their configs' step budgets (configs/unlearn)")
    head = (f"`python benchmarks/grid.py {' '.join(argv)}` (results: `{Path(a.results).name}`, setup `{sid}`; "
            f"rendered from every finished cell of this setup)\n\n{machine_header()}\n- caps: {caps}\n"
            + (f"- {a.note}\n" if a.note else ""))
    out = Path(a.out)
    if single and (not a.successive or a.render_only):  # a run writes its own mode's section; --render-only both
        pngs = []
        for bb in _order(single, "backbone", BACKBONES):
            for data in _order([r for r in single if r["backbone"] == bb], "data", DATASETS):
                png = render_plot(single, bb, data)
                if png is not None:
                    path = out.with_name(f"grid_{bb}_{data}{suffix}.png")
                    atomic_write_bytes(path, png)
                    pngs.append(path.name)
        subset = sorted({f"{r['backbone']}/{r['data']}/{r['regime']}/{r['selection']}" for r in single})
        seeds = sorted({r["seed"] for r in single})
        body = (head + f"- cells: {len(single)} (backbone/data/regime/selection: {', '.join(subset)}; seeds "
                f"{', '.join(map(str, seeds))})\n"
                "- utility = test NDCG@20 as % of Retrain's (same seed); forget × = forget Recall@20 / Retrain's "
                "(two-sided: 1.00 is the target); ΔMIA = pair-level MIA AUC (rank percentiles, popularity-matched "
                "non-members) minus Retrain's (0 is the target, both signs detectable); speed-up = Retrain's seconds to "
                "convergence (or the cap; measured once, when it was cached) / the method's; mean ± std over seeds; ◆ = on the Pareto front of "
                "(utility, |ΔMIA|) among the methods and floors of that cell (Retrain and the TRU ablations left out); "
                "*floors* (Surgery, Reset) never answer a request\n\n"
                + main_tables(single) + (f"\n#### TRU ablations\n\n{abl}\n" if (abl := ablation_table(single)) else "")
                + "\n#### Every audit (means over seeds)\n\nJaccard = top-20 Jaccard to Retrain, floor = between "
                "two Retrains of seeds s and s+1; gap = NDCG@20 of the active users (top 5% by interactions) minus the "
                "inactive users' (CURE4Rec), before / after / Retrain; peak MiB = growth of the process's peak RSS "
                "(a lower bound: 0 when an earlier phase peaked higher); answered = share of seeds whose run met its "
                "stopping rule\n\n" + detail_table(single) + "\n"
                + "".join(f"\n![{p}]({p})\n" for p in pngs))
        write_section(out, title, body)
    if chains and (a.successive or a.render_only):
        body = (head + "- four requests of share/4 (resolved one after another on the data the earlier ones left, "
                "seeds 100·seed + 1..4) answered one after another, each from the previous answer's checkpoint "
                "through the deletion store, vs one request of their union from the trained checkpoint, vs Retrain on "
                "the union; NDCG after k is test NDCG@20 on the data retained after k requests (the deleted users' / items' "
                "held-out rows leave with them), so after 4 compares with the union columns; a request NOT answered ends its chain (its checkpoint is refused by every loader); ΔMIA = "
                "pair-MIA AUC of that request's pairs minus Retrain-on-the-union's; mean ± std over seeds\n\n"
                + successive_table(chains) + "\n")
        write_section(out, title.replace("Results grid", "Results grid, successive requests"), body)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        a = parse_args(argv)
        check_args(a)
    except GridError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # the CLIs run in-process on purpose
    runner = Runner(a)
    if a.dry_run and a.render_only:
        print("--dry-run writes nothing: nothing to render", flush=True)
        return 0
    if not a.render_only:
        est = estimate_seconds(a, runner)
        print(f"estimate: roughly {est / 3600:.1f} h on 2 quiet cores ({est:.0f} s; every training at its cap)", flush=True)
        if a.dry_run:
            return 0
        cells = cells_of(a)
        (runner.run_successive if a.successive else runner.run_single)(cells)
    if not a.no_render:
        render(a, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
