"""Audits that measure forgetting."""
from lightning_tru.audit.forgetting import forget_metrics, random_recall

__all__ = ["forget_metrics", "random_recall"]
