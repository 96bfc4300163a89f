"""Audits of an unlearning run: forgetting, membership inference, backdoor, distance to Retrain,
exposure, fairness, efficiency. :func:`run_audits` runs the standard set on one run."""
from lightning_tru.audit.backdoor import attack_success, fake_user_request, poison
from lightning_tru.audit.distance import RankCorrelation, TopKJaccard, distance_to_retrain, ranking_distance
from lightning_tru.audit.efficiency import Efficiency, efficiency_ratio
from lightning_tru.audit.exposure import GlobalExposure, exposure_reduction, global_exposure
from lightning_tru.audit.fairness import active_users, ndcg_gap
from lightning_tru.audit.forgetting import recall_exposure_at_k, random_recall
from lightning_tru.audit.membership import (
    mann_whitney_auc, matched_nonmembers, membership_verdict, pair_membership, pair_percentiles,
)
from lightning_tru.audit.suite import Shadow, run_audits, train_shadow
from lightning_tru.audit.user_mia import user_mia

__all__ = [
    "Efficiency",
    "Shadow",
    "GlobalExposure",
    "RankCorrelation",
    "TopKJaccard",
    "active_users",
    "attack_success",
    "distance_to_retrain",
    "efficiency_ratio",
    "exposure_reduction",
    "fake_user_request",
    "recall_exposure_at_k",
    "global_exposure",
    "mann_whitney_auc",
    "matched_nonmembers",
    "membership_verdict",
    "ndcg_gap",
    "pair_membership",
    "pair_percentiles",
    "poison",
    "random_recall",
    "ranking_distance",
    "run_audits",
    "train_shadow",
    "user_mia",
]
