"""lightning_tru: multimodal recommenders and verifiable unlearning on PyTorch Lightning.

The public API, importable from the top (``from lightning_tru import TRU, UnlearningTask, ...``):
data (:class:`RecDataModule` and its MMRec / synthetic variants, :class:`ForgetRequest`,
:class:`UnlearningDataModule`), the trained model (:class:`RecommenderModule`), the unlearning run
(:class:`UnlearningTask` with one :class:`UnlearningCallback`, e.g. :class:`TRU`).
"""
from lightning_tru.callbacks import TRU, UnlearningCallback
from lightning_tru.datamodules import (
    ForgetRequest,
    InteractionData,
    MMRecDataModule,
    RecDataModule,
    SyntheticDataModule,
    UnlearningDataModule,
)
from lightning_tru.models import RecommenderModule, UnlearningTask

__version__ = "0.1.0"

__all__ = [
    "ForgetRequest",
    "InteractionData",
    "MMRecDataModule",
    "RecDataModule",
    "RecommenderModule",
    "SyntheticDataModule",
    "TRU",
    "UnlearningCallback",
    "UnlearningDataModule",
    "UnlearningTask",
]
