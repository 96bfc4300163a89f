"""The LightningModule that trains and evaluates any :class:`~lightning_tru.nn.Backbone`."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor
from typing_extensions import override

from lightning_tru.datamodules.deletions import LINEAGE_KEY, check_answered, check_lineage
from lightning_tru.metrics import ranking_metrics
from lightning_tru.metrics.functional import count_relevant
from lightning_tru.nn.base import Backbone, BackboneFactory

CHECKPOINT_KEY = "lightning_tru"


class RecommenderModule(LightningModule):
    r"""BPR training and full-ranking evaluation of a backbone.

    .. math::
        \mathcal L = -\frac1B\sum_{(u,i,j)} \log\sigma(s_{ui} - s_{uj}) + \sum_k \mathcal L^{aux}_k

    where :math:`\mathcal L^{aux}` are the backbone's own terms (L2, contrastive, ...).
    Graph and features come from the datamodule in :meth:`setup` (``attach``); logged metrics:
    ``train/loss``, ``val/recall@K`` ... and ``test/...`` for every K in ``eval_ks``.

    Args:
        backbone: a backbone class with bound hyper-parameters (``class_path`` + ``init_args``
            in YAML); called with ``(num_users, num_items, feature_dims)``.
        num_users, num_items, feature_dims: sizes, linked from the datamodule by the CLI.
        optimizer: optimizer factory (default Adam, lr 1e-3).
        scheduler: optional LR scheduler factory, stepped per epoch.
        eval_ks: cut-offs of the ranking metrics.
    """

    def __init__(
        self,
        backbone: BackboneFactory,
        num_users: int,
        num_items: int,
        feature_dims: Optional[dict[str, int]] = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: Optional[LRSchedulerCallable] = None,
        eval_ks: Sequence[int] = (10, 20, 50),
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"])
        self.backbone: Backbone = backbone(num_users, num_items, dict(feature_dims or {}))
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.eval_ks = tuple(sorted(set(int(k) for k in eval_ks)))
        self.val_metrics = ranking_metrics(self.eval_ks, prefix="val/")
        self.test_metrics = ranking_metrics(self.eval_ks, prefix="test/")
        self._eval_embeddings: Optional[tuple[Tensor, Tensor]] = None
        self._attached_features: Optional[dict[str, Tensor]] = None  # what attach() last gave the backbone
        #: the data the weights were fitted to (``RecDataModule.lineage()``), saved in checkpoints
        self.lineage: Optional[dict[str, Any]] = None

    # ----------------------------------------------------------------------------- data
    def attach(self, datamodule: Any) -> None:
        """Give the backbone its graph and features from a :class:`RecDataModule`.

        The user-item graph is replaced on every call (graph surgery). Features and item graphs are
        set only when the datamodule hands over other feature tensors than the attached ones (the
        datamodules derived from one data set share theirs), and the kNN item graphs come from the
        datamodule, built once per data set: surgery, evaluation and Retrain never rebuild them.
        """
        b = self.backbone
        if (datamodule.num_users, datamodule.num_items) != (b.num_users, b.num_items):
            raise ValueError(
                f"the model is sized for {b.num_users} users x {b.num_items} items but the data has "
                f"{datamodule.num_users} x {datamodule.num_items}; use the data the model was trained on"
            )
        b.set_graph(datamodule.train_edge_index())
        features = datamodule.feature_tensors()
        attached = self._attached_features
        if attached is None or attached.keys() != features.keys() or any(attached[m] is not f for m, f in features.items()):
            graphs = datamodule.item_graphs(b.knn_k) if b.knn_k is not None else datamodule.item_graphs()
            b.set_features(features, graphs)
            self._attached_features = dict(features)

    @override
    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is not None:
            self.attach(dm)

    # ------------------------------------------------------------------------- training
    def training_losses(self, users: Tensor, pos: Tensor, neg: Tensor) -> dict[str, Tensor]:
        """BPR plus the backbone's auxiliary terms, by name (:meth:`~lightning_tru.nn.Backbone.training_losses`)."""
        return self.backbone.training_losses(users, pos, neg)

    @override
    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        users, pos, neg = batch
        losses = self.training_losses(users, pos, neg)
        loss = torch.stack(list(losses.values())).sum()
        self.log("train/loss", loss, prog_bar=True, batch_size=len(users))
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, batch_size=len(users))
        return loss

    # ----------------------------------------------------------------------- evaluation
    def _rank(self, batch: tuple[Tensor, Tensor, Tensor], metrics: Any) -> None:
        users, exclude, target = batch
        if self._eval_embeddings is None:
            raise RuntimeError("evaluation embeddings are missing: run through trainer.validate/test")
        u, i = self._eval_embeddings
        scores = (u[users] @ i.T).masked_fill_(exclude, float("-inf"))  # (B, I), masked in place: one (B, I) buffer
        topk = torch.topk(scores, min(max(self.eval_ks), scores.shape[1]), dim=1).indices
        metrics.update(topk, target, num_relevant=count_relevant(target))

    def _start_eval(self) -> None:
        with torch.no_grad():
            self._eval_embeddings = self.backbone.embeddings()

    def _end_eval(self, metrics: Any) -> None:
        self.log_dict(metrics.compute(), prog_bar=False)
        metrics.reset()
        self._eval_embeddings = None

    @override
    def on_validation_epoch_start(self) -> None:
        self._start_eval()

    @override
    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        self._rank(batch, self.val_metrics)

    @override
    def on_validation_epoch_end(self) -> None:
        self._end_eval(self.val_metrics)

    @override
    def on_test_epoch_start(self) -> None:
        self._start_eval()

    @override
    def test_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        self._rank(batch, self.test_metrics)

    @override
    def on_test_epoch_end(self) -> None:
        self._end_eval(self.test_metrics)

    @override
    def on_predict_epoch_start(self) -> None:
        self._start_eval()

    @override
    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> tuple[Tensor, Tensor]:
        """Serving: ``(users (B,), scores (B, I))`` with the excluded (train) items at ``-inf``."""
        users, exclude = batch
        if self._eval_embeddings is None:
            raise RuntimeError("serving embeddings are missing: run through trainer.predict")
        u, i = self._eval_embeddings
        return users, (u[users] @ i.T).masked_fill(exclude, float("-inf"))

    @override
    def on_predict_epoch_end(self) -> None:
        self._eval_embeddings = None

    # ------------------------------------------------------------------------ optimiser
    @override
    def configure_optimizers(self) -> Any:
        opt = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler_factory(opt), "interval": "epoch"}}

    # ----------------------------------------------------------------------- checkpoints
    def model_signature(self) -> dict[str, Any]:
        """What a checkpoint must match to be loaded into this module."""
        b = self.backbone
        return {
            "backbone": f"{type(b).__module__}.{type(b).__qualname__}",
            "num_users": b.num_users,
            "num_items": b.num_items,
            "feature_dims": dict(b.feature_dims),
        }

    @override
    def on_fit_start(self) -> None:
        dm = self.trainer.datamodule
        if dm is not None and hasattr(dm, "lineage"):
            self.lineage = dm.lineage()

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = self.model_signature()
        if self.lineage is not None:
            checkpoint[LINEAGE_KEY] = self.lineage

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint fitted to other data than the trainer's datamodule (deletion state included)
        or written by an unlearning run that did not answer its request."""
        check_answered(checkpoint, "the checkpoint")
        recorded = checkpoint.get(LINEAGE_KEY)
        dm = self.trainer.datamodule if self._trainer is not None else None
        if recorded is not None and dm is not None and hasattr(dm, "lineage"):
            check_lineage(recorded, dm.lineage(), "the checkpoint")
        self.lineage = recorded

    # ------------------------------------------------- the unlearning protocol (models/protocol.py)
    def score(self, users: Tensor, items: Tensor) -> Tensor:
        """``(B,)`` scores of (user, item) pairs, over the pairs' computation graph where the backbone
        restricts it (:meth:`~lightning_tru.nn.Backbone.local_propagation`: same values and gradients; inside
        ``backbone.sampling(fanout)`` an unbiased estimate over a sampled one, :meth:`~lightning_tru.nn.Backbone.pair_propagation`)."""
        return self.backbone.score(users, items, self.backbone.pair_propagation(users, items))

    def embeddings(self) -> tuple[Tensor, Tensor]:
        return self.backbone.embeddings()

    def branch_scores(self, users: Tensor, items: Tensor) -> dict[str, Tensor]:
        return self.backbone.branch_scores(users, items, self.backbone.pair_propagation(users, items))

    def branch_parameters(self) -> dict[str, list[str]]:
        return {b: [f"backbone.{n}" for n in ns] for b, ns in self.backbone.branch_parameters().items()}

    def layer_parameters(self) -> dict[str, list[str]]:
        return {b: [f"backbone.{n}" for n in ns] for b, ns in self.backbone.layer_parameters().items()}

    def entity_parameters(self) -> dict[str, list[str]]:
        return {e: [f"backbone.{n}" for n in ns] for e, ns in self.backbone.entity_parameters().items()}
