"""LightningModules and loss functions."""
from lightning_tru.nn.losses import bpr_loss, info_nce, l2_penalty, reverse_bpr_loss
from lightning_tru.models.recommender import RecommenderModule
from lightning_tru.models.retrain import retrain
from lightning_tru.models.unlearning import UnlearningTask

__all__ = ["RecommenderModule", "UnlearningTask", "retrain", "bpr_loss", "info_nce", "l2_penalty", "reverse_bpr_loss"]
