"""Data: the shared :class:`InteractionData` container, MMRec folders, synthetic data, datamodules."""
from lightning_tru.datamodules.datamodule import (
    BPRDataset,
    MMRecDataModule,
    RankingDataset,
    RecDataModule,
    SyntheticDataModule,
)
from lightning_tru.datamodules.interactions import DataFormatError, InteractionData
from lightning_tru.datamodules.mmrec import load_mmrec
from lightning_tru.datamodules.synthetic import make_synthetic

__all__ = [
    "BPRDataset",
    "DataFormatError",
    "InteractionData",
    "MMRecDataModule",
    "RankingDataset",
    "RecDataModule",
    "SyntheticDataModule",
    "load_mmrec",
    "make_synthetic",
]
