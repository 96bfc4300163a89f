"""LightningModules and loss functions."""
from lightning_tru.nn.losses import bpr_loss, info_nce, l2_penalty, reverse_bpr_loss
from lightning_tru.models.recommender import RecommenderModule

__all__ = ["RecommenderModule", "bpr_loss", "info_nce", "l2_penalty", "reverse_bpr_loss"]
