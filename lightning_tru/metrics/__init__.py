"""Evaluation metrics for recommenders."""

from lightning_tru.metrics.functional import (
    hit_rate_at_k,
    ndcg_at_k,
    precision_at_k,
    ranking_hits,
    recall_at_k,
)
from lightning_tru.metrics.exposure import ExposureAtK
from lightning_tru.metrics.ranking import (
    HitRateAtK,
    NDCGAtK,
    PrecisionAtK,
    RecallAtK,
    ranking_metrics,
)

__all__ = [
    "ExposureAtK",
    "HitRateAtK",
    "NDCGAtK",
    "PrecisionAtK",
    "RecallAtK",
    "hit_rate_at_k",
    "ndcg_at_k",
    "precision_at_k",
    "ranking_hits",
    "recall_at_k",
    "ranking_metrics",
]
