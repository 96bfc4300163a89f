"""Bring your own recommender: train a plain LightningModule, then unlearn with TRU.

The model below is *not* one of the project's backbones: it is the kind of matrix
factorisation anybody writes in ten lines. The unlearning callbacks only need it to offer
``score(users, items) -> (B,)`` (see :mod:`lightning_tru.models.protocol`); everything else has
a fallback. Run it with::

    python examples/custom_recommender.py

It trains on a seeded synthetic data set, asks to forget 5% of the users, runs TRU through
``UnlearningTask`` and prints the forget Recall@20 before and after, plus held-out test recall
(utility) before and after.
"""
from __future__ import annotations

import copy
import time

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from torch import Tensor, nn

from lightning_tru.audit import recall_exposure_at_k
from lightning_tru import TRU, ForgetRequest, SyntheticDataModule, UnlearningDataModule, UnlearningTask


class MatrixFactorization(LightningModule):
    r"""Dot-product matrix factorisation trained with BPR: :math:`s_{ui} = p_u^\top q_i`.

    Args:
        num_users: number of user ids.
        num_items: number of item ids.
        dim: embedding size.
        lr: Adam learning rate.
        weight_decay: L2 weight on the embeddings of each batch.
    """

    def __init__(
        self, num_users: int, num_items: int, dim: int = 32, lr: float = 2e-2, weight_decay: float = 1e-4
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.user = nn.Embedding(num_users, dim)  # (U, d)
        self.item = nn.Embedding(num_items, dim)  # (I, d)
        nn.init.normal_(self.user.weight, std=0.1)
        nn.init.normal_(self.item.weight, std=0.1)

    # ---- the one method the unlearning protocol requires -------------------------------
    def score(self, users: Tensor, items: Tensor) -> Tensor:
        """Differentiable scores of ``(B,)`` (user, item) pairs -> ``(B,)``."""
        return (self.user(users) * self.item(items)).sum(-1)

    # ---- optional refinements (uncomment to use; each has a fallback in TRU) -----------
    # Fast full ranking: with it, `all_scores` is one matrix product instead of `score` over
    # every (user, item) pair in chunks. Only valid when score == dot product of the two.
    #
    # def embeddings(self) -> tuple[Tensor, Tensor]:
    #     return self.user.weight, self.item.weight                # (U, d), (I, d)
    #
    # Modality scaling groups parameters by branch; the fallback is one branch per top-level
    # child module (here "user" and "item"). A multimodal model would return e.g.
    # {"id": [...], "image": [...], "text": [...]} with names from named_parameters().
    #
    # def branch_parameters(self) -> dict[str, list[str]]:
    #     return {"id": ["user.weight", "item.weight"]}
    #
    # Layer isolation picks the layers to update; the fallback is one layer per module that
    # owns parameters (here "user" and "item").
    #
    # def layer_parameters(self) -> dict[str, list[str]]:
    #     return {"user": ["user.weight"], "item": ["item.weight"]}
    #
    # Row isolation updates only the rows of the users/items a request names; the fallback
    # finds nn.Embedding tables with exactly num_users / num_items rows (here both).
    #
    # def entity_parameters(self) -> dict[str, list[str]]:
    #     return {"user": ["user.weight"], "item": ["item.weight"]}
    #
    # Graph surgery for graph models: UnlearningTask.setup calls set_graph(edge_index) with
    # the retained (2, E) train edges before the first update (or attach(datamodule)), so the
    # model never propagates over a forgotten edge. With lightning_tru.nn.graph's helpers:
    #
    # def set_graph(self, edge_index: Tensor) -> None:
    #     r = interaction_matrix(edge_index, self.user.num_embeddings, self.item.num_embeddings)
    #     self.adj = SparseGraph(normalized_bipartite(r), symmetric=True).to(self.device)

    # ---- the user's own training ------------------------------------------------------
    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        users, pos, neg = batch  # (B,) each, from RecDataModule.train_dataloader
        s = self.score(torch.cat([users, users]), torch.cat([pos, neg]))  # (2B,)
        s_pos, s_neg = s.chunk(2)
        reg = self.user(users).pow(2).sum(-1) + self.item(pos).pow(2).sum(-1) + self.item(neg).pow(2).sum(-1)
        loss = -nn.functional.logsigmoid(s_pos - s_neg).mean() + self.hparams.weight_decay * reg.mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def _trainer(**kw: object) -> Trainer:
    return Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, **kw,  # type: ignore[arg-type]
    )


def main(
    num_users: int = 1000,
    num_items: int = 500,
    mean_interactions: float = 20.0,
    dim: int = 32,
    train_epochs: int = 10,
    share: float = 0.05,
    unlearn_lr: float = 3e-2,
    unlearn_steps: int = 100,
    k: int = 20,
    seed: int = 0,
) -> dict[str, object]:
    """Train, unlearn, and return the measured numbers.

    Returns:
        ``forget_recall_before`` / ``forget_recall_after`` (Recall@K of the forget pairs),
        ``test_recall_before`` / ``test_recall_after`` (held-out utility), ``reference_auc``, ``steps``,
        ``stopping_reason``, ``branch_scales``, ``selected_layers``, ``forget_pairs`` and
        ``seconds``.
    """
    start = time.perf_counter()
    seed_everything(seed, verbose=False)
    dm = SyntheticDataModule(num_users=num_users, num_items=num_items, mean_interactions=mean_interactions, seed=seed)
    model = MatrixFactorization(dm.num_users, dm.num_items, dim=dim)
    initial = copy.deepcopy(model)  # the untrained model: Retrain's starting point
    _trainer(max_epochs=train_epochs).fit(model, train_dataloaders=dm.train_dataloader())  # (users, pos, neg)

    udm = UnlearningDataModule(dm, ForgetRequest("user", share, seed=seed))
    data = dm.data

    def measure() -> tuple[float, float]:
        # forget pairs ranked with the retained train items masked; held-out test pairs with train + valid masked
        forget = recall_exposure_at_k(model, udm.retained_train_csr(), udm.forget_csr(), k)[f"forget_recall@{k}"]
        test = recall_exposure_at_k(model, data.csr("train", "valid"), data.csr("test"), k)[f"forget_recall@{k}"]
        return forget, test

    forget_before, test_before = measure()
    # TRU first resets the deleted users' rows to the untrained model's (exactly what Retrain leaves),
    # then takes reverse steps, one per epoch, until the forget pairs look like non-members to a
    # pair-level membership attack as much as Retrain's would (two-sided: never below)
    tru = TRU(lr=unlearn_lr, k=k)
    tru.use_initial(initial)
    _trainer(max_epochs=unlearn_steps, callbacks=[tru]).fit(UnlearningTask(model), datamodule=udm)
    forget_after, test_after = measure()

    result: dict[str, object] = {
        "forget_recall_before": forget_before,
        "forget_recall_after": forget_after,
        "test_recall_before": test_before,
        "test_recall_after": test_after,
        "reference_auc": tru.reference,
        "steps": tru.steps,
        "stopping_reason": tru.stopping_reason,
        "branch_scales": dict(tru.branch_scales),
        "selected_layers": list(tru.selected_layers),
        "forget_pairs": int(len(udm.forget.forget_pairs)),
        "seconds": time.perf_counter() - start,
    }
    print(
        f"forget Recall@{k}: {forget_before:.4f} -> {forget_after:.4f} (expected Retrain pair-MIA AUC "
        f"{tru.reference:.4f}, "
        f"{tru.steps} TRU steps: {tru.stopping_reason})\n"
        f"test Recall@{k}:   {test_before:.4f} -> {test_after:.4f}\n"
        f"{result['forget_pairs']} forget pairs, {result['seconds']:.1f} s"
    )
    return result


if __name__ == "__main__":
    main()
