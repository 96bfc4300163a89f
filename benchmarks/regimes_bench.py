"""TRU against Retrain and the floors in every regime, on planted synthetic data, and on third-party models.

    python benchmarks/regimes_bench.py --seeds 0 1 2

Part 1, per backbone (LightGCN, MGCN, MIG-GT with ``--backbones miggt``) x regime (user / item / interaction, 5%, random) x seed:
train on the planted data, Retrain on the retained data (same initial model), then Surgery, Reset, TRU
and TRU with one of its parts switched off (the three interventions; row isolation, reset, row share;
kept reset rows, the top-K floor, the simulated negative sampling of deleted items, the refit of the
forgetting users' rows). Part 2: default TRU on two recommenders written
only against ``score`` (``tests/thirdparty.py``: NeuMF-style, two-tower), user- and
interaction-wise. Reported: test NDCG@20 (or held-out Recall@20) as a share of Retrain's, forget
Recall@20 as a multiple of Retrain's (two-sided: 1.00 is the target), the pair-level membership AUC
(rank percentiles, popularity-matched, ``lightning_tru.audit.membership``) minus Retrain's, steps,
seconds, and whether the run reports the request answered. Mean ± std over seeds; the section goes to
benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from functools import partial
from pathlib import Path
from statistics import mean, pstdev

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine_header, write_section  # noqa: E402

sys.path.insert(0, str(REPO / "tests"))


def _ms(xs: list[float], fmt: str) -> str:
    return f"{mean(xs):{fmt}} ± {pstdev(xs):{fmt}}" if len(xs) > 1 else f"{xs[0]:{fmt}}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--backbones", nargs="*", default=["lightgcn", "mgcn"])
    ap.add_argument("--regimes", nargs="+", default=["user", "item", "interaction"])
    ap.add_argument("--methods", nargs="+", default=None,
                    help="methods of part 1 to run (names as in the table, e.g. Surgery Reset TRU); default: all")
    ap.add_argument("--thirdparty", nargs="*", default=["NeuMF", "TwoTower"], help="part 2 models (none: skip part 2)")
    ap.add_argument("--epochs", type=int, default=40, help="cap of training and Retrain (early stopping)")
    ap.add_argument("--patience", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "RESULTS.md"))
    a = ap.parse_args()

    import numpy as np
    import torch
    from lightning.pytorch import Trainer, seed_everything

    from lightning_tru.audit import recall_exposure_at_k
    from lightning_tru.audit.membership import matched_nonmembers, pair_membership
    from lightning_tru.audit.report import evaluate
    from lightning_tru.callbacks import TRU, Reset, Surgery
    from lightning_tru.datamodules import SyntheticDataModule
    from lightning_tru.datamodules.forget import ForgetRequest
    from lightning_tru.datamodules.unlearning import UnlearningDataModule
    from lightning_tru.models import RecommenderModule
    from lightning_tru.models.retrain import retrain
    from lightning_tru.models.unlearning import UnlearningTask
    from lightning_tru.nn import MGCN, MIGGT, LightGCN
    from thirdparty import NeuMF, TwoTower

    torch.set_num_threads(a.threads)
    backbones = {"lightgcn": partial(LightGCN, embedding_dim=16), "mgcn": partial(MGCN, embedding_dim=16),
                 "miggt": partial(MIGGT, embedding_dim=16, num_layers={"id": 2, "text": 1, "image": 1},
                                  mlp_hidden_dims=[32])}

    def trainer(**kw: object) -> Trainer:
        return Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                       accelerator="cpu", num_sanity_val_steps=0, **kw)  # type: ignore[arg-type]

    def methods() -> list[tuple[str, object]]:
        return [(n, m) for n, m in all_methods() if a.methods is None or n in a.methods]

    def all_methods() -> list[tuple[str, object]]:
        return [("Surgery", Surgery()), ("Reset", Reset()), ("TRU", TRU()), ("TRU no gate", TRU(ranking_gate=False)),
                ("TRU no scaling", TRU(modality_scaling=False)), ("TRU no layer iso.", TRU(layer_isolation=False)),
                ("TRU no row iso.", TRU(row_isolation=False)), ("TRU no reset", TRU(reset_deleted=False)),
                ("TRU no row share", TRU(row_share_steps=False)), ("TRU no keep", TRU(keep_reset=False)),
                ("TRU no floor", TRU(min_recall_ratio=None)), ("TRU no negatives", TRU(negative_epochs=0)),
                ("TRU no refit", TRU(refit_steps=0))]

    rows: dict[tuple[str, str, str], dict[str, list[float]]] = {}

    def add(key: tuple[str, str, str], **vals: float) -> None:
        for k, v in vals.items():
            rows.setdefault(key, {}).setdefault(k, []).append(float(v))

    for seed in a.seeds:
        for bb in a.backbones:
            seed_everything(seed, verbose=False)
            dm = SyntheticDataModule(num_users=400, num_items=200, seed=3 + seed, batch_size=1024, eval_batch_size=256)
            initial = RecommenderModule(backbones[bb], dm.num_users, dm.num_items, dm.feature_dims,
                                        optimizer=partial(torch.optim.Adam, lr=1e-2))
            trained, _ = retrain(initial, dm, max_epochs=a.epochs, patience=a.patience, seed=seed, accelerator="cpu")
            for regime in a.regimes:
                udm = UnlearningDataModule(dm, ForgetRequest(regime, 0.05, seed=seed), seed=seed)
                pop = np.asarray(udm.retained_train_csr().sum(0)).ravel()
                pairs = matched_nonmembers(udm.forget.forget_pairs, dm.data.csr("train", "valid", "test"), pop, seed=seed)

                def measure(m: object) -> tuple[float, float, float]:
                    ev = evaluate(m, udm)
                    return ev["test/ndcg@20"], ev["forget_recall@20"], pair_membership(m, *pairs, udm.retained_train_csr())["auc_rank"]

                start = time.perf_counter()
                gold, _ = retrain(initial, udm.retained, max_epochs=a.epochs, patience=a.patience, seed=seed, accelerator="cpu")
                g_sec = time.perf_counter() - start
                g = measure(gold)
                add((bb, regime, "Retrain"), util=g[0], forget=g[1], dauc=0.0, auc=g[2], steps=0, sec=g_sec, answered=1)
                for name, cb in methods():
                    if hasattr(cb, "use_initial"):
                        cb.use_initial(initial)
                    model = copy.deepcopy(trained)
                    model.train()
                    start = time.perf_counter()
                    try:
                        trainer(max_epochs=200, limit_val_batches=0, callbacks=[cb]).fit(UnlearningTask(model), datamodule=udm)
                    except (TypeError, ValueError) as err:  # a floor this model cannot offer (e.g. Reset, no item table)
                        print(f"  {bb} {regime} {seed} {name}: not applicable: {err}", flush=True)
                        continue
                    sec = time.perf_counter() - start
                    n, f, auc = measure(model)
                    add((bb, regime, name), util=n, forget=f, dauc=auc - g[2], auc=auc,
                        steps=cb.steps, sec=sec, answered=float(cb.target_reached))  # type: ignore[attr-defined]
                    print(f"  {bb} {regime} {seed} {name}: util {n / g[0]:.3f}x forget {f:.4f} (Retrain {g[1]:.4f}) "
                          f"AUC {auc - g[2]:+.3f}, {cb.steps} steps: {cb.stopping_reason}", flush=True)  # type: ignore[attr-defined]
                print(bb, regime, seed, "done", flush=True)
        for cls in [c for c in (NeuMF, TwoTower) if c.__name__ in a.thirdparty]:
            seed_everything(seed, verbose=False)
            dm = SyntheticDataModule(num_users=400, num_items=200, seed=3 + seed, batch_size=1024, eval_batch_size=256)
            seed_everything(seed, verbose=False)
            init = cls(dm.num_users, dm.num_items)
            model0 = copy.deepcopy(init)
            trainer(max_epochs=a.epochs).fit(model0, train_dataloaders=dm.train_dataloader())
            for regime in ("user", "interaction"):
                udm = UnlearningDataModule(dm, ForgetRequest(regime, 0.05, seed=seed), seed=seed)

                def heldout(m: object) -> tuple[float, float]:
                    m.eval()  # type: ignore[attr-defined]
                    d = udm.retained.data
                    return (recall_exposure_at_k(m, d.csr("train", "valid"), d.csr("test"), 20)["forget_recall@20"],
                            recall_exposure_at_k(m, udm.retained_train_csr(), udm.forget_csr(), 20)["forget_recall@20"])

                seed_everything(seed, verbose=False)
                gold = copy.deepcopy(init)
                trainer(max_epochs=a.epochs).fit(gold, train_dataloaders=udm.retained.train_dataloader())
                g = heldout(gold)
                add((cls.__name__, regime, "Retrain"), util=g[0], forget=g[1], dauc=0.0, auc=0.0, steps=0, sec=0.0, answered=1)
                for name, m, cb in (("Surgery", copy.deepcopy(model0), None), ("TRU", copy.deepcopy(model0), TRU())):
                    steps, answered = 0, 0.0
                    if cb is not None:
                        cb.use_initial(init)
                        m.train()
                        trainer(max_epochs=200, limit_val_batches=0, callbacks=[cb]).fit(UnlearningTask(m), datamodule=udm)
                        steps, answered = cb.steps, float(cb.target_reached)
                    t, f = heldout(m)
                    print(f"  {cls.__name__} {regime} {seed} {name}: held-out {t / g[0]:.3f}x forget {f / max(g[1], 1e-9):.3f}x, "
                          f"{steps} steps: {getattr(cb, 'stopping_reason', '-')}", flush=True)
                    add((cls.__name__, regime, name), util=t, forget=f, dauc=0.0, auc=0.0,
                        steps=steps, sec=0.0, answered=answered)
            print(cls.__name__, seed, "done", flush=True)

    lines = ["| model | regime | method | utility | vs Retrain | forget R@20 | vs Retrain | pair-MIA AUC − Retrain's | "
             "steps | seconds | answered |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (model, regime, name), v in rows.items():
        third = model in ("NeuMF", "TwoTower")
        gold = rows[(model, regime, "Retrain")]
        ratio = [f"{mean(v[k]) / mean(gold[k]):.2f}" if mean(gold[k]) > 1e-6 else "-" for k in ("util", "forget")]
        mia = "-" if third else (f"({_ms(v['auc'], '.3f')})" if name == "Retrain" else _ms(v["dauc"], "+.3f"))
        lines.append(
            f"| {model} | {regime} | {name} | {_ms(v['util'], '.4f')} | {ratio[0]} | {_ms(v['forget'], '.4f')} | "
            f"{ratio[1]} | {mia} | {_ms(v['steps'], '.1f')} | {'-' if third else _ms(v['sec'], '.2f')} | "
            f"{mean(v['answered']):.0%} |"
        )
    body = (
        f"`python benchmarks/regimes_bench.py --seeds {' '.join(map(str, a.seeds))} --backbones {' '.join(a.backbones)} "
        f"--regimes {' '.join(a.regimes)} --epochs {a.epochs} --patience {a.patience} --threads {a.threads}`\n\n"
        f"{machine_header()}\n"
        "- planted synthetic data (400 users x 200 items, seed 3 + run seed), 5% random requests; training and Retrain "
        f"capped at {a.epochs} epochs with early stopping (patience {a.patience}) from the same initial model; utility = "
        "test NDCG@20 (third-party models: held-out test Recall@20); `vs Retrain` = ratio of the means over seeds "
        "(two-sided for forget recall: 1.00 is the target; `-` when Retrain's is 0); Retrain's row shows its own "
        "pair-MIA AUC in parentheses; third-party rows (NeuMF, TwoTower) have no MIA column; `answered` = share of seeds whose run "
        "reports the request answered (stopping rule met; the utility guard or an overshoot says NOT answered); "
        "floors are never answers\n\n" + "\n".join(lines) + "\n"
    )
    print(body)
    write_section(Path(a.out), "TRU vs Retrain and the floors by regime (planted data)", body)


if __name__ == "__main__":
    main()
