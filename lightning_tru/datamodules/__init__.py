"""Data: the shared :class:`InteractionData` container, MMRec folders, synthetic data, datamodules."""
from lightning_tru.datamodules.datamodule import MMRecDataModule, RecDataModule, SyntheticDataModule
from lightning_tru.datamodules.datasets import BPRDataset, BPRShardSampler, EvalShardSampler, RankingDataset
from lightning_tru.datamodules.forget import ForgetRequest, ForgetRequestError, ForgetSet
from lightning_tru.datamodules.interactions import DataFormatError, InteractionData
from lightning_tru.datamodules.mmrec import load_mmrec
from lightning_tru.datamodules.synthetic import make_synthetic, planted_factors
from lightning_tru.datamodules.unlearning import UnlearnBatch, UnlearningDataModule

__all__ = [
    "BPRDataset",
    "BPRShardSampler",
    "EvalShardSampler",
    "DataFormatError",
    "ForgetRequest",
    "ForgetRequestError",
    "ForgetSet",
    "InteractionData",
    "MMRecDataModule",
    "RankingDataset",
    "RecDataModule",
    "SyntheticDataModule",
    "UnlearnBatch",
    "UnlearningDataModule",
    "load_mmrec",
    "make_synthetic",
    "planted_factors",
]
