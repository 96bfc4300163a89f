"""Unlearning methods as Lightning callbacks."""
from lightning_tru.callbacks.base import UnlearningCallback
from lightning_tru.callbacks.finetune import FineTune
from lightning_tru.callbacks.mmrecun import MMRecUn
from lightning_tru.callbacks.multidelete import MultiDelete
from lightning_tru.callbacks.neggrad import NegGrad
from lightning_tru.callbacks.reset import Reset
from lightning_tru.callbacks.scalegun import ScaleGUN
from lightning_tru.callbacks.surgery import Surgery
from lightning_tru.callbacks.tru import TRU

__all__ = ["FineTune", "MMRecUn", "MultiDelete", "NegGrad", "Reset", "ScaleGUN", "Surgery", "TRU", "UnlearningCallback"]
