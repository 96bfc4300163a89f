"""Unlearning methods as Lightning callbacks."""
from lightning_tru.callbacks.base import UnlearningCallback
from lightning_tru.callbacks.tru import TRU

__all__ = ["TRU", "UnlearningCallback"]
