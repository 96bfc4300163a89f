"""The pair-level membership attack's popularity bias: the AUC of a scorer that knows only popularity.

    LT_DATA=../shared/data python benchmarks/popularity_auc.py --data synthetic tiktok baby --bins 10 50

Popularity matching (``lightning_tru.audit.membership.matched_nonmembers``) draws each forget pair's non-member
from the same user and the same quantile bin of retained popularity, so that popularity alone should give AUC
0.5. Within a bin, users' items lean to its popular ones while non-members are drawn uniformly, so it does not
quite: this script scores every item by :math:`\\log(1 + \\mathrm{pop}_i)` alone (the same score for every user)
and reports the pair-MIA rank AUC per data set x regime (user, item; random 5%) x bins, seeds as given. The
Retrain-free reference of the user- and item-wise stopping rule is 0.5; every table compares methods and Retrain
under the same attack. The section goes to benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from statistics import mean, pstdev

import numpy as np
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, REPO, machine_header, write_section  # noqa: E402

from lightning_tru.audit.membership import matched_nonmembers, pair_membership  # noqa: E402
from lightning_tru.datamodules import MMRecDataModule, SyntheticDataModule  # noqa: E402
from lightning_tru.datamodules.forget import ForgetRequest  # noqa: E402
from lightning_tru.datamodules.unlearning import UnlearningDataModule  # noqa: E402


class PopularityScorer(nn.Module):
    """:math:`s(u, i) = \\log(1 + \\mathrm{pop}_i)` for every user (``embeddings()``: ones and the log-popularity)."""

    def __init__(self, popularity: np.ndarray, num_users: int) -> None:
        super().__init__()
        self.item = nn.Parameter(torch.log1p(torch.as_tensor(popularity, dtype=torch.float32))[:, None])
        self.num_users = num_users

    def embeddings(self) -> tuple[Tensor, Tensor]:
        return torch.ones(self.num_users, 1), self.item


def measure(dm: SyntheticDataModule | MMRecDataModule, regime: str, share: float, seed: int, bins: int) -> float:
    """The pair-MIA rank AUC of the popularity scorer on one request."""
    udm = UnlearningDataModule(dm, ForgetRequest(regime, share, seed=seed), seed=seed)
    retained = udm.retained_train_csr()
    pop = np.asarray(retained.sum(0)).ravel()
    members, nonmembers = matched_nonmembers(udm.forget.forget_pairs, udm.source.data.csr("train", "valid", "test"),
                                             pop, bins, seed)
    return float(pair_membership(PopularityScorer(pop, dm.num_users), members, nonmembers, retained, 1024)["auc_rank"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", default=["synthetic", "tiktok", "baby"])
    ap.add_argument("--regimes", nargs="+", default=["user", "item"])
    ap.add_argument("--bins", nargs="+", type=int, default=[10, 50])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--share", type=float, default=0.05)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "RESULTS.md"))
    a = ap.parse_args()
    for d in a.data:
        if d != "synthetic" and not (DATA / d).is_dir():
            ap.error(f"--data {d}: {DATA / d} not found; set LT_DATA to the folder holding it or drop it")
    torch.set_num_threads(1)
    rows = []
    for d in a.data:
        dm = SyntheticDataModule(seed=0) if d == "synthetic" else MMRecDataModule(DATA / d)
        for regime in a.regimes:
            cells = []
            for bins in a.bins:
                aucs = [measure(dm, regime, a.share, s, bins) for s in a.seeds]
                cells.append(f"{mean(aucs):.3f} ± {pstdev(aucs):.3f}" if len(aucs) > 1 else f"{aucs[0]:.3f}")
            rows.append(f"| {d} | {regime} | " + " | ".join(cells) + " |")
            print(rows[-1], flush=True)
    body = (f"{machine_header()}\n\n`python benchmarks/popularity_auc.py --data {' '.join(a.data)} --regimes "
            f"{' '.join(a.regimes)} --bins {' '.join(map(str, a.bins))} --seeds {' '.join(map(str, a.seeds))}`: the "
            f"pair-MIA rank AUC of a scorer that knows only the retained popularity, random {a.share:.0%} requests, "
            f"mean ± std over seeds {a.seeds}. 0.5 would mean popularity matching removes popularity; every grid and "
            "benchmark table uses the default 10 bins, for methods and Retrain alike.\n\n"
            "| data | regime | " + " | ".join(f"{b} bins" for b in a.bins) + " |\n"
            "|---|---|" + "---|" * len(a.bins) + "\n" + "\n".join(rows) + "\n")
    write_section(Path(a.out), "Popularity bias of the pair-level attack", body)


if __name__ == "__main__":
    main()
