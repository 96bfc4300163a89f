r"""One entry point for every audit of an unlearning run: :func:`run_audits`.

Returned schema (JSON-ready; one entry per model state, the "column" of ``report.json``)::

    {"before": {...}, "<name>": {...}, "Retrain": {...}}      # columns present when the model is given
    column = {
      "membership":      {"auc", "auc_rank", "member_percentile", "nonmember_percentile", "pairs", "se",
                          "reference", "delta", "flag", "band", "delta_rank", "flag_rank"},
      "global_exposure": {"exposure@K", "reduction"?},        # reduction vs "before" when given
      "distance":        {"jaccard@K", "spearman", "floor_jaccard@K"?, "floor_spearman"?,
                          "ratio_jaccard@K"?, "ratio_spearman"?},  # vs Retrain; absent without it
      "fairness":        {"ndcg@K_active", "ndcg@K_inactive", "ndcg@K_gap"},
      "user_mia":        {"auc", "positive_member_rate", "negative_member_rate", "reference", "delta",
                          "flag", "shadow_auc"},             # opt-in (user_level=True); flag "reference"
                                                             # on Retrain, "no_retrain" without it
    }

``flag`` is ``"ok"``, ``"residual_memory"`` or ``"over_forgetting"`` against Retrain's value
(0.5 for the pair AUC when no Retrain is given), ``"reference"`` on the Retrain column itself; the pair-level band is
:math:`\max(\text{tolerance}, 2\sqrt2\,\mathrm{SE})`, SE the Mann-Whitney null standard error of
one AUC (small forget sets get a wider band instead of false flags). Efficiency is measured by the caller around the
unlearning itself (:class:`~lightning_tru.audit.efficiency.Efficiency`).

Wiring in ``unlearn.py`` (the deployed model must be copied before the unlearning fit)::

    before = copy.deepcopy(model)                     # after load_trained_weights, before fit
    ...                                               # unlearn (or Retrain) as today
    report["audits"] = run_audits(model, udm, retrain=retrained, retrain_seed2=retrained2,
                                  before=before, name=name, k=20,
                                  user_level=audit_user_level, initial=initial)
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from lightning_tru.audit.distance import distance_to_retrain
from lightning_tru.audit.exposure import exposure_reduction, global_exposure
from lightning_tru.audit.fairness import ndcg_gap
from lightning_tru.audit.membership import matched_nonmembers, membership_verdict, pair_membership
from lightning_tru.audit.requests import users_forget_set
from lightning_tru.audit.user_mia import user_mia
from lightning_tru.datamodules.unlearning import UnlearningDataModule
from lightning_tru.models.protocol import FrozenScorer, attach_graph

__all__ = ["Shadow", "run_audits", "train_shadow"]


@dataclass
class Shadow:
    """The shadow recommender of the user-level MIA for one request and seed: trained once by
    :func:`train_shadow`, passed to :func:`run_audits` for every method answering that request."""

    model: Any
    data: Any  # the shadow's datamodule: the retained data without ``nonmembers``
    members: np.ndarray  # labelled shadow members
    nonmembers: np.ndarray  # held-out retained users (the shadow never saw them)
    reference: np.ndarray  # retained members compared with the deleted users
    fingerprint: str  # the request's fingerprint
    seed: int


def train_shadow(
    udm: UnlearningDataModule,
    initial: Any,
    seed: int = 0,
    max_epochs: int = 200,
    patience: int = 10,
    max_group: int = 1000,
    weights: Optional[dict[str, Any]] = None,
) -> Shadow:
    """Split the retained users in thirds (each at most ``max_group``): held-out non-members, the
    shadow's labelled members and the reference members; train the shadow from ``initial`` on the
    retained data without the held-out third (early stopping on valid Recall@20). ``weights``: the
    state dict of a shadow trained earlier for the same request and seed, loaded instead of training."""
    from lightning_tru.models.retrain import retrain as train_from_scratch

    retained = udm.retained_train_csr()
    rng = np.random.default_rng(seed + 1)
    pool = rng.permutation(np.flatnonzero(np.diff(retained.indptr) > 0))
    n = min(len(pool) // 3, max_group)
    if n < 2:
        raise ValueError(f"the user-level MIA needs at least 6 retained users with train rows (found {len(pool)})")
    held, members, reference = np.sort(pool[:n]), np.sort(pool[n : 2 * n]), np.sort(pool[2 * n : 3 * n])
    source = udm.source
    shadow_dm = source.without(users_forget_set(source.data, np.r_[udm.forget.users, held]))
    if weights is None:
        model, _ = train_from_scratch(initial, shadow_dm, max_epochs, patience, seed=seed)
    else:
        model = copy.deepcopy(initial)
        model.load_state_dict(weights)
    attach_graph(model, shadow_dm)
    return Shadow(model, shadow_dm, members, held, reference, udm.forget.fingerprint, seed)


def run_audits(
    model: Any,
    udm: UnlearningDataModule,
    retrain: Optional[Any] = None,
    retrain_seed2: Optional[Any] = None,
    before: Optional[Any] = None,
    name: str = "model",
    k: int = 20,
    num_bins: int = 10,
    tolerance: float = 0.05,
    active_share: float = 0.05,
    max_users: Optional[int] = None,
    seed: int = 0,
    user_level: bool = False,
    initial: Optional[Any] = None,
    shadow_max_epochs: int = 200,
    shadow_patience: int = 10,
    user_vectors: str = "model",
    user_group: int = 1000,
    batch_users: int = 1024,
    shadow: Optional[Shadow] = None,
) -> dict[str, dict[str, Any]]:
    """Run the audits on the unlearned ``model`` and, when given, ``before`` (the deployed model)
    and ``retrain`` (and a Retrain of another seed, ``retrain_seed2``, for the distance floor).

    Graphs: ``model``, ``retrain`` and ``retrain_seed2`` get the retained graph, ``before`` the
    original one (``attach`` / ``set_graph`` on the objects passed in; nothing else changes).

    Args:
        model: the unlearned recommender (the protocol of :mod:`lightning_tru.models.protocol`).
        udm: the run's datamodule (source data + request).
        retrain, retrain_seed2, before: optional reference models.
        name: the column name of ``model`` (e.g. the method, ``"TRU"``).
        k: cut-off of exposure, distance and fairness.
        num_bins: popularity bins of the pair-level MIA; ``seed`` seeds its non-member draw, the
            user sampling and the user-level attack.
        tolerance: the smallest band of the verdicts around the reference.
        active_share: CURE4Rec's active users (top 5% by train interactions).
        max_users: audit at most this many retained users (seeded sample) in exposure / distance.
        user_level: also run the user-level MIA (trains a shadow model from ``initial``; user-wise
            requests only).
        initial: the untrained model (Retrain's starting point), needed by ``user_level``.
        shadow_max_epochs, shadow_patience: the shadow's training (early stopping on valid Recall@20).
        user_vectors: item vectors of the user-level features, ``"model"`` or ``"data"`` (see
            :func:`~lightning_tru.audit.user_mia.user_mia`).
        user_group: at most this many users in each of the shadow's non-members, the shadow's
            labelled members and the reference members (retained users split in thirds).
        batch_users: users per scoring batch.
        shadow: a shadow trained earlier for this request and ``seed`` (:func:`train_shadow`), used
            instead of training one; implies ``user_level``.
    """
    if name in ("before", "Retrain"):
        raise ValueError(f"name={name!r} is reserved for a reference column; use the method's name")
    if shadow is not None and (shadow.fingerprint != udm.forget.fingerprint or shadow.seed != seed):
        raise ValueError(
            f"the shadow was trained for request {shadow.fingerprint[:12]} with seed {shadow.seed}, not for "
            f"{udm.forget.fingerprint[:12]} with seed {seed}: train one for this request (train_shadow)"
        )
    user_level = user_level or shadow is not None
    if user_level and initial is None and shadow is None:
        raise ValueError("user_level=True trains a shadow model: pass initial= (the untrained model)")
    rng = np.random.default_rng(seed)
    retained = udm.retained_train_csr()
    models: dict[str, tuple[Any, Any]] = {}  # column -> (model, exclude)
    if before is not None:
        attach_graph(before, udm.deployed)
        models["before"] = (before, udm.source.data.csr("train"))  # served as deployed (the user-level MIA's view)
    for m in (model, retrain, retrain_seed2):
        if m is not None:
            attach_graph(m, udm)
    models[name] = (model, retained)
    if retrain is not None:
        models["Retrain"] = (retrain, retained)

    users = np.flatnonzero(np.diff(retained.indptr) > 0)
    if max_users is not None and len(users) > max_users:
        users = np.sort(rng.choice(users, size=max_users, replace=False))
    known = udm.source.data.csr("train", "valid", "test")
    popularity = np.asarray(retained.sum(0)).ravel()
    members, nonmembers = matched_nonmembers(udm.forget.forget_pairs, known, popularity, num_bins, seed)

    out: dict[str, dict[str, Any]] = {}
    frozen = {col: FrozenScorer.of(m) for col, (m, _) in models.items()}  # one propagation per model, every audit
    retrain = frozen.get("Retrain", retrain)
    retrain_seed2 = None if retrain_seed2 is None else FrozenScorer.of(retrain_seed2)
    for col, (_, excl) in models.items():
        m = frozen[col]
        res: dict[str, Any] = {"membership": pair_membership(m, members, nonmembers, retained, batch_users)}
        # global exposure under one exclusion for every column (the retained train items, served after the
        # deletion): the reduction compares models, not masks (a forgotten train item was hidden from its own user
        # before only because it was a train item)
        res["global_exposure"] = {f"exposure@{k}": global_exposure(m, users, udm.forget.items, retained, k, batch_users)}
        dm = udm.deployed if col == "before" else udm.retained
        d = dm.data
        res["fairness"] = ndcg_gap(m, d.csr("train"), d.csr("train", "valid"), d.csr("test"), k, active_share, batch_users)
        if retrain is not None and col != "Retrain":
            res["distance"] = distance_to_retrain(m, retrain, users, excl, k, retrain_seed2, batch_users)
        elif col == "Retrain" and retrain_seed2 is not None:
            res["distance"] = distance_to_retrain(m, retrain, users, excl, k, retrain_seed2, batch_users)
        out[col] = res

    ref = out.get("Retrain", {}).get("membership")
    for col, res in out.items():
        mem = res["membership"]
        band = max(tolerance, 2.0 * math.sqrt(2.0) * mem["se"])  # two SEs of a difference of two AUCs
        if col == "Retrain":  # the reference itself (item-wise Retrain sits far below 0.5: no verdict against 0.5)
            mem.update({"reference": mem["auc"], "delta": 0.0, "flag": "reference", "band": band, "delta_rank": 0.0,
                        "flag_rank": "reference"})
        else:
            mem.update(membership_verdict(mem["auc"], ref["auc"] if ref else None, band))
            rank = membership_verdict(mem["auc_rank"], ref["auc_rank"] if ref else None, band)
            mem.update({"band": band, "delta_rank": rank["delta"], "flag_rank": rank["flag"]})
        if "before" in out:
            ge = res["global_exposure"]
            ge["reduction"] = exposure_reduction(out["before"]["global_exposure"][f"exposure@{k}"], ge[f"exposure@{k}"])

    if user_level:
        _user_level(out, models, udm, initial, seed, shadow_max_epochs, shadow_patience, tolerance, user_vectors,
                    user_group, shadow)
    return out


def _user_level(
    out: dict[str, dict[str, Any]],
    models: dict[str, tuple[Any, Any]],
    udm: UnlearningDataModule,
    initial: Any,
    seed: int,
    max_epochs: int,
    patience: int,
    tolerance: float,
    vectors: str,
    max_group: int,
    shadow: Optional[Shadow] = None,
) -> None:
    r"""User-level MIA of the deleted users :math:`F` against retained members :math:`R`.

    The shadow (:func:`train_shadow`, or the one given) trains on the retained data without a
    held-out set :math:`H` of retained users (its non-members); the attack learns labelled shadow
    members vs :math:`H`. The target was trained on every user, so the reference class is a sample
    :math:`R` of retained members (disjoint from the shadow's labelled users): ``auc`` =
    AUC of the member probability of :math:`F` (history: their forgotten items) vs :math:`R`.
    Before unlearning it is about 0.5; Retrain, which never saw :math:`F`, gives the value of
    true forgetting, and the verdict compares with it.
    """
    retained = udm.retained_train_csr()
    deleted = udm.forget.users[np.diff(retained.indptr)[udm.forget.users] == 0]
    if len(deleted) < 2:
        for res in out.values():
            res["user_mia"] = {"skipped": "user-level MIA needs deleted users (a user-wise request)"}
        return
    if shadow is None:
        shadow = train_shadow(udm, initial, seed, max_epochs, patience, max_group)
    res = user_mia(shadow.model, shadow.members, shadow.nonmembers, shadow.data.data.csr("train"),
                   udm.source.data.csr("train"), dict(models), deleted, shadow.reference, seed=seed,
                   positive_history=udm.forget_csr(), vectors=vectors)  # type: ignore[arg-type]
    ref = res.get("Retrain")
    for col in models:
        r = dict(res[col])
        if col == "Retrain" or ref is None:  # no absolute reference at user level: Retrain is the reference
            r.update({"reference": None, "delta": None, "flag": "reference" if col == "Retrain" else "no_retrain"})
        else:
            r.update(membership_verdict(r["auc"], ref["auc"], tolerance))
        r["shadow_auc"] = res["shadow"]["auc"]
        out[col]["user_mia"] = r
