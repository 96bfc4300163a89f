r"""Render unlearning runs as a Markdown report and a retain/forget trade-off plot.

``python -m lightning_tru.report RUN_DIR [RUN_DIR ...] [--output report.md] [--plot tradeoff.png]``

Each ``RUN_DIR`` (or a ``report.json`` path) holds the ``report.json`` that ``unlearn.py`` writes.
The schema read here (other keys are ignored)::

    {"method": "TRU",
     "request": {"fingerprint": "...", "regime": "user", "share": 0.05, "forget_pairs": 223, ...},
     "metrics": {"before": {...}, "TRU": {...}, "Retrain": {...}},   # column -> metric -> float
     "seconds": {"TRU": 0.6, "Retrain": 20.1},                      # optional
     "details": {"TRU": {"steps": 2, "stopping_reason": "..."}},    # optional
     "audits":  {"before": {...}, "TRU": {...}, "Retrain": {...}}}  # optional, run_audits' schema
                                                                    # (lightning_tru.audit.suite)

Runs are grouped by request fingerprint; within a group ``before`` and ``Retrain`` come from the
first run that has them and every other column is a method (``Surgery`` and ``Reset`` are the
floors). The table marks, for each method, the axes on which it beats *both* floors: retain
utility (test NDCG@K, higher), forget recall and pair-MIA AUC (closer to Retrain's, two-sided).
The plot (matplotlib, the optional ``plot`` extra) puts forget Recall@K (x; Retrain's value is
the target, dashed) against test NDCG@K (y), one panel per request.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any, Optional

from lightning_tru.audit.report import atomic_write_bytes

FLOORS = ("Surgery", "Reset")
REFERENCES = ("before", "Retrain")


class ReportError(ValueError):
    """A run directory or report.json that cannot be read; the message names the file and the fix."""


def load_run(path: str | Path) -> dict[str, Any]:
    """The ``report.json`` of a run directory (or the file itself), checked against the schema."""
    p = Path(path)
    f = p / "report.json" if p.is_dir() else p
    if not f.is_file():
        raise ReportError(f"{f} does not exist; pass run directories written by unlearn.py")
    try:
        rep = json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ReportError(f"{f}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e
    if not isinstance(rep, dict) or not isinstance(rep.get("metrics"), dict) or not rep["metrics"]:
        raise ReportError(f"{f}: no 'metrics' object (column -> metric -> value); is it an unlearn.py report?")
    fp = rep.get("request", {}).get("fingerprint") if isinstance(rep.get("request"), dict) else None
    if not isinstance(fp, str):
        raise ReportError(f"{f}: no request.fingerprint; is it an unlearn.py report?")
    rep["_path"] = str(f.parent)
    return rep


def group_runs(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """fingerprint -> ``{"request", "runs", "columns": name -> {"metrics", "audits", "seconds", "details", "run"}}``."""
    groups: dict[str, dict[str, Any]] = {}
    for rep in runs:
        fp = rep["request"]["fingerprint"]
        g = groups.setdefault(fp, {"request": rep["request"], "runs": [], "columns": {}})
        g["runs"].append(rep["_path"])
        for col, metrics in rep["metrics"].items():
            name = col
            if name in g["columns"]:
                if name in REFERENCES:  # one before / Retrain per request: the first, its audits from any run
                    ref = g["columns"][name]
                    if not ref["audits"] and (rep.get("audits") or {}).get(col):
                        ref["audits"] = rep["audits"][col]
                    if ref["seconds"] is None:
                        ref["seconds"] = (rep.get("seconds") or {}).get(col)
                    continue
                name = f"{col} ({Path(rep['_path']).name})"
            g["columns"][name] = {
                "metrics": metrics,
                "audits": (rep.get("audits") or {}).get(col, {}),
                "seconds": (rep.get("seconds") or {}).get(col),
                "details": (rep.get("details") or {}).get(col, {}),
                "efficiency": (rep.get("efficiency") or {}).get(col, {}),
                "run": rep["_path"],
            }
    for g in groups.values():  # order: before, methods, floors, Retrain
        cols = g["columns"]
        order = (["before"] if "before" in cols else []) + sorted(
            (c for c in cols if c not in REFERENCES and c.split(" ")[0] not in FLOORS)) + sorted(
            c for c in cols if c.split(" ")[0] in FLOORS) + (["Retrain"] if "Retrain" in cols else [])
        g["columns"] = {c: cols[c] for c in order}
    return groups


def _get(col: dict[str, Any], key: str) -> Optional[float]:
    """A value by dotted key: ``metrics`` keys directly, ``audits`` as ``audit.field``."""
    if key in col["metrics"]:
        return col["metrics"][key]
    head, _, tail = key.partition(".")
    v = col["audits"].get(head, {}).get(tail) if tail else None
    return v if isinstance(v, (int, float)) else None


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def beats_floors(cols: dict[str, dict[str, Any]], name: str, k: int = 20) -> Optional[list[str]]:
    """Axes on which column ``name`` beats every floor present (``None`` without floors)."""
    floors = [c for c in cols if c.split(" ")[0] in FLOORS]
    if not floors or name in floors or name in REFERENCES:
        return None
    ret = cols.get("Retrain")
    axes: list[tuple[str, str, str]] = [(f"test/ndcg@{k}", f"test NDCG@{k}", "max")]
    if ret is not None:
        axes += [(f"forget_recall@{k}", f"forget recall@{k}", "retrain"), ("membership.auc_rank", "pair AUC", "retrain")]
    won = []
    for key, label, mode in axes:
        mine = _get(cols[name], key)
        if mine is None:
            continue
        ref = _get(ret, key) if ret is not None and mode == "retrain" else None
        if mode == "retrain" and ref is None:
            continue

        def score(v: Optional[float]) -> float:
            if v is None:
                return float("-inf")
            return v if mode == "max" else -abs(v - ref)  # type: ignore[operator]

        if all(score(mine) > score(_get(cols[f], key)) for f in floors):
            won.append(label)
    return won


def render_markdown(groups: dict[str, dict[str, Any]], k: int = 20) -> str:
    """The Markdown report: one section and table per request."""
    lines = ["# Unlearning report", ""]
    columns = [
        (f"test R@{k}", f"test/recall@{k}"), (f"test N@{k}", f"test/ndcg@{k}"), (f"N@{k} vs Retrain", None),
        (f"forget R@{k}", f"forget_recall@{k}"), (f"exposure@{k}", f"exposure@{k}"),
        ("pair AUC", "membership.auc"), ("rank AUC", "membership.auc_rank"), ("MIA verdict", None),
        ("user AUC", "user_mia.auc"), (f"global exp.@{k}", f"global_exposure.exposure@{k}"),
        ("exp. reduction", "global_exposure.reduction"), (f"Jaccard@{k}", f"distance.jaccard@{k}"),
        ("Jaccard ratio", f"distance.ratio_jaccard@{k}"), ("NDCG gap", f"fairness.ndcg@{k}_gap"),
        ("seconds", None), ("speed-up vs Retrain", None), ("peak MiB", None), ("steps", None), ("beats floors on", None),
    ]
    for fp, g in groups.items():
        req = g["request"]
        desc = ", ".join(f"{key} {req[key]}" for key in ("regime", "share", "selection", "forget_pairs", "users", "items")
                         if key in req)
        lines += [f"## Request `{fp[:12]}` ({desc})", "", "Runs: " + ", ".join(f"`{r}`" for r in g["runs"]), ""]
        cols = g["columns"]
        lines.append("| column | " + " | ".join(c for c, _ in columns) + " |")
        lines.append("|---" * (len(columns) + 1) + "|")
        for name, col in cols.items():
            kind = "reference" if name in REFERENCES else "floor" if name.split(" ")[0] in FLOORS else "method"
            cells = []
            for label, key in columns:
                if key is not None:
                    cells.append(_fmt(_get(col, key)))
                elif label == "MIA verdict":
                    mem = col["audits"].get("membership", {})  # the within-user rank AUC's verdict (raw scores
                    cells.append(_fmt(mem.get("flag_rank", mem.get("flag"))))  # are not comparable across users)
                elif label.startswith("N@"):
                    mine, ref = _get(col, f"test/ndcg@{k}"), _get(cols["Retrain"], f"test/ndcg@{k}") if "Retrain" in cols else None
                    cells.append("-" if mine is None or not ref else f"{mine / ref:.1%}")
                elif label == "seconds":
                    cells.append(_fmt(col["seconds"], 2))
                elif label == "peak MiB":
                    peak = col.get("efficiency", {}).get("peak_memory_bytes")
                    cells.append("-" if peak is None else f"{peak / 2**20:.0f}")
                elif label == "speed-up vs Retrain":
                    rs = cols["Retrain"]["seconds"] if "Retrain" in cols else None
                    fast = rs / col["seconds"] if rs and col["seconds"] and name != "Retrain" else None
                    cells.append("-" if fast is None else f"{fast:.1f}x")
                elif label == "steps":
                    cells.append(_fmt(col["details"].get("steps")))
                else:
                    won = beats_floors(cols, name, k)
                    cells.append("-" if won is None else (", ".join(won) or "**none**"))
            label = f"**{name}**" if kind == "reference" else f"*{name}*" if kind == "floor" else name
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        reasons = [(n, c["details"].get("stopping_reason")) for n, c in cols.items() if c["details"].get("stopping_reason")]
        if reasons:
            lines += ["", "Stopping: " + "; ".join(f"{n}: {r}" for n, r in reasons)]
        lines.append("")
    lines += [
        "Forgetting is judged two-sided against **Retrain**: a forget recall or pair-MIA AUC below Retrain's "
        "is over-forgetting, as detectable as residual memory. *Surgery* (graph surgery only) and *Reset* "
        "(surgery + deleted rows re-drawn from the initialiser) are the zero-cost floors; "
        "\"beats floors on\" lists the axes on which a method beats both (**none**: it adds nothing over them).",
        "",
    ]
    return "\n".join(lines)


def render_plot(groups: dict[str, dict[str, Any]], k: int = 20) -> Optional[bytes]:
    """PNG bytes of the trade-off plot, or ``None`` (with a message on stderr) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: the trade-off plot is skipped (pip install 'lightning_tru[plot]')",
              file=sys.stderr)
        return None
    n = len(groups)
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4.5), squeeze=False)
    style = {"before": ("x", "tab:gray"), "Retrain": ("*", "tab:red"), "Surgery": ("s", "tab:blue"),
             "Reset": ("D", "tab:purple")}
    for ax, (fp, g) in zip(axes[0], groups.items()):
        for name, col in g["columns"].items():
            x, y = _get(col, f"forget_recall@{k}"), _get(col, f"test/ndcg@{k}")
            if x is None or y is None:
                continue
            marker, color = style.get(name.split(" ")[0], ("o", "tab:green"))
            ax.scatter([x], [y], marker=marker, color=color, s=90 if marker == "*" else 45, zorder=3)
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
            if name == "Retrain":
                ax.axvline(x, color=color, linestyle="--", linewidth=1, zorder=1)
        ax.set_xlabel(f"forget Recall@{k} (Retrain's is the target)")
        ax.set_ylabel(f"test NDCG@{k} (retain utility)")
        ax.set_title(f"request {fp[:12]}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


def main(argv: Optional[list[str]] = None) -> int:
    """Command line: read the runs, write the Markdown (and the PNG when matplotlib is there)."""
    ap = argparse.ArgumentParser(prog="python -m lightning_tru.report", description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="run directories (or report.json files) written by unlearn.py")
    ap.add_argument("--output", default="report.md", help="Markdown file to write (default report.md)")
    ap.add_argument("--plot", default=None, help="PNG to write (default: the output's name with .png)")
    ap.add_argument("--no-plot", action="store_true", help="skip the plot")
    ap.add_argument("--k", type=int, default=20, help="cut-off of the metrics shown (default 20)")
    args = ap.parse_args(argv)
    try:
        groups = group_runs([load_run(r) for r in args.runs])  # read everything before writing anything
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.output)
    png = None if args.no_plot else render_plot(groups, args.k)
    atomic_write_bytes(out, render_markdown(groups, args.k).encode())
    print(f"wrote {out}")
    if png is not None:
        plot = Path(args.plot) if args.plot else out.with_suffix(".png")
        atomic_write_bytes(plot, png)
        print(f"wrote {plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
