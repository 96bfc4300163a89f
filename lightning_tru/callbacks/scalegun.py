r"""ScaleGUN (Yi & Wei, ICLR 2025), adapted: a one-shot damped Newton (influence) step on the retained objective."""
from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any, Callable, Literal, NamedTuple, Optional, Union

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from lightning_tru.callbacks.base import UnlearningCallback, check_retain_weight
from lightning_tru.datamodules.unlearning import UnlearnBatch, UnlearningDataModule
from lightning_tru.models.protocol import attach_graph, branch_groups, entity_groups, group_scores
from lightning_tru.nn.losses import bpr_loss
from lightning_tru.nn.newton import CURVATURES, CGResult, Curvature, flat_grad, solve_damped


class _Objective(NamedTuple):
    """Fixed BPR triples of the influence objectives (drawn once, seeded)."""

    retain: tuple[Tensor, Tensor, Tensor]
    forget: tuple[Tensor, Tensor, Tensor]
    num_retain: int  # N_R, pairs of the full retain set
    forget_ratio: float  # N_F / N_R of the full sets


class ScaleGUN(UnlearningCallback):
    r"""ScaleGUN, adapted to recommenders (Yi & Wei, ICLR 2025, https://arxiv.org/abs/2408.09212,
    code: github.com/luyi256/ScaleGUN).

    ScaleGUN removes edges from a propagation + linear model with one Newton step on the
    retained objective, driven by the gradient change the deletion causes (the embeddings'
    change through propagation included), and masks the approximation error with noise for an
    :math:`(\epsilon, \delta)` certificate. Here, with :math:`A` the original and :math:`A'` the
    retained (surgically cut) graph, :math:`D = R \cup F` the original train pairs, one fixed
    sampled negative :math:`j` per pair and :math:`\ell^{A}_{uij} = -\log\sigma(s^{A}_{ui} - s^{A}_{uj})`:

    .. math::
        \mathcal L_{old}(\theta) = \textstyle\sum_{D} \ell^{A}_{uij}, \qquad
        \mathcal L_{new}(\theta) = \textstyle\sum_{R} \ell^{A'}_{uij} \\
        (H + \lambda I)\,\Delta = \nabla \mathcal L_{old}(\theta^*) - \nabla \mathcal L_{new}(\theta^*),
        \qquad H \approx \nabla^2 \mathcal L_{new}(\theta^*), \qquad
        \theta \leftarrow \theta^* + \Delta + \sigma \xi,\ \xi \sim \mathcal N(0, I)

    over the selected parameters :math:`\theta` (the others stay fixed), computed as means over
    :math:`R` (the system divided by :math:`|R|`). At a minimiser of :math:`\mathcal L_{old}` this is the
    Newton step to the minimiser of :math:`\mathcal L_{new}` (the influence-function removal of
    Koh & Liang 2017 / Guo et al. 2020 that ScaleGUN builds on); the gradient *difference*
    keeps an early-stopped model's leftover training signal out of the edit. :math:`\lambda` is the
    L2 weight of the summed objective, as in ScaleGUN: along the retained objective's null
    directions (the embedding of a user all of whose interactions are forgotten) the step is
    :math:`\nabla\mathcal L_{old}/\lambda`, i.e. :math:`\lambda` sets how far such nodes move,
    independently of the data size.

    :math:`\Delta` is solved by :func:`conjugate_gradient` with curvature-vector products through
    the propagation (no matrix is formed). ``curvature="hessian"`` uses the exact Hessian (double
    backward); ``"gauss_newton"`` (default) its Gauss-Newton part
    :math:`J^\top \mathrm{diag}(\sigma(x)\sigma(-x)) J` of the margins :math:`x = s_{ui} - s_{uj}`, which is
    positive semi-definite. BPR over bilinear scores is not convex: on ``mgcn_synthetic`` the
    exact system met negative curvature within a few CG iterations at every damping that
    leaves the step useful, while the Gauss-Newton system is always well posed; it is the
    convex-loss Hessian ScaleGUN's linear head has, taken at the current embeddings.

    The edit is applied once in :meth:`profile`, under ``torch.no_grad()``; with
    ``finetune_steps = 0`` (default) the run stops right after it (no optimiser step; ``steps``
    stays 0), otherwise ``finetune_steps`` steps of :math:`\lambda_r\,\mathrm{BPR}(R)` follow (the
    base's recall target can stop them earlier). Every rank computes the same step on the full
    objective (deterministic, no communication). ``newton`` (in the report's details) holds the
    CG iterations and residual, :math:`\lVert\Delta\rVert`, and the gradient residual
    :math:`\lVert\nabla\mathcal L_{new}\rVert / |R|` before and after the step.

    What of the guarantee holds. Exact: graph surgery (no forgotten edge propagates) and the
    step itself (up to the CG tolerance) for the local quadratic model of :math:`\mathcal L_{new}`.
    Not: ScaleGUN's certificate needs a linear head on fixed propagated features with a strongly
    convex, smooth L2-regularised loss and noise :math:`b^\top w` injected *at training time*. A graph
    recommender's scores are bilinear in the embeddings and non-linear in the fusion layers,
    the model was trained without that noise and early-stopped (not at a minimiser), so the
    worst-case gradient-residual bound does not apply, and the optional Gaussian output noise
    (``noise_std``) gives no formal :math:`(\epsilon, \delta)`: it is the mechanism without its
    calibration. Report the measured gradient residual instead.

    Args:
        lr, k, target_recall, eval_every, train_mode: see
            :class:`~lightning_tru.callbacks.UnlearningCallback`
            (used by the optional fine-tuning steps only).
        retain_weight: :math:`\lambda_r`, weight of the fine-tuning steps' retain BPR.
        damping: :math:`\lambda > 0`, L2 weight of the summed retained objective.
        curvature: ``"gauss_newton"`` or ``"hessian"``.
        cg_iters: most CG iterations.
        cg_tol: relative residual at which CG stops.
        branches: branch names (the model's ``branch_parameters``) whose parameters are updated;
            the default ``"auto"`` is the ``"id"`` branch (the ID embedding tables, the closest analogue of
            ScaleGUN's linear head on propagated features) where the model has one, else its user / item
            embedding tables (``entity_parameters``, or ``nn.Embedding`` tables sized like the users / items),
            else every trainable parameter: any drop-in model works without naming branches.
        parameters: ``fnmatch`` patterns of parameter names updated in addition; with
            ``branches=None`` and ``parameters=None`` every trainable parameter is.
        sample_size: pairs of each set (retain, forget) in the objectives; ``None`` = all. With
            a sample the old objective weights the two parts by their full-set shares.
        noise_std: :math:`\sigma` of the Gaussian noise added to the updated parameters.
        noise_seed: seed of that noise.
        finetune_steps: retain-BPR steps after the Newton step.
    """

    def __init__(
        self,
        lr: float = 1e-3,
        k: int = 20,
        target_recall: Optional[float] = None,
        eval_every: int = 5,
        retain_weight: float = 1.0,
        damping: float = 0.3,
        curvature: Curvature = "gauss_newton",
        cg_iters: int = 50,
        cg_tol: float = 1e-4,
        branches: Union[Literal["auto"], Sequence[str], None] = "auto",
        parameters: Optional[Sequence[str]] = None,
        sample_size: Optional[int] = None,
        noise_std: float = 0.0,
        noise_seed: int = 0,
        finetune_steps: int = 0,
        train_mode: bool = True,
    ) -> None:
        super().__init__(
            lr=lr, k=k, target_recall=target_recall, eval_every=eval_every, train_mode=train_mode,
        )
        self.retain_weight = check_retain_weight(retain_weight)
        if damping <= 0 or cg_iters < 1 or not 0 < cg_tol < 1:
            raise ValueError(f"damping={damping} must be > 0, cg_iters={cg_iters} >= 1 and cg_tol={cg_tol} in (0, 1)")
        if (sample_size is not None and sample_size < 1) or noise_std < 0 or finetune_steps < 0:
            raise ValueError(
                f"sample_size={sample_size} must be >= 1 or None, noise_std={noise_std} >= 0, "
                f"finetune_steps={finetune_steps} >= 0"
            )
        if curvature not in CURVATURES:
            raise ValueError(f"curvature={curvature!r}; choose one of {CURVATURES}")
        self.damping, self.cg_iters, self.cg_tol, self.curvature = damping, cg_iters, cg_tol, curvature
        if isinstance(branches, str) and branches != "auto":
            raise ValueError(f"branches={branches!r}: pass 'auto', a list of branch names such as ['id'], or None")
        self.branches: Union[str, tuple[str, ...], None] = (
            branches if branches is None or branches == "auto" else tuple(branches))
        self.parameters = tuple(parameters) if parameters is not None else None
        self.sample_size, self.noise_std, self.noise_seed = sample_size, noise_std, noise_seed
        self.finetune_steps = finetune_steps
        self.newton: dict[str, Any] = {}
        self.selected: list[str] = []

    # ----------------------------------------------------------------------- selection
    def select_parameters(self, model: nn.Module, num_users: int = 0, num_items: int = 0) -> list[str]:
        """Names of the parameters the Newton step updates (validated against the model; ``num_users`` /
        ``num_items`` find the entity tables of a model without an ``"id"`` branch, ``branches="auto"``)."""
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        branches = self.branches
        chosen: set[str] = set()
        if branches == "auto":
            branches = ("id",) if "id" in branch_groups(model) else None
            if branches is None:  # no "id" branch: the entity tables, else every trainable parameter
                chosen.update(n for ns in entity_groups(model, num_users, num_items).values() for n in ns)
                if not chosen and self.parameters is None:
                    return trainable
        elif branches is None and self.parameters is None:
            return trainable
        if branches is not None:
            groups = branch_groups(model)
            missing = [b for b in branches if b not in groups]
            if missing:
                raise ValueError(
                    f"ScaleGUN branches {missing} are not branches of the model; choose from {sorted(groups)}"
                )
            chosen.update(n for b in branches for n in groups[b])
        for pattern in self.parameters or ():
            hits = fnmatch.filter(trainable, pattern)
            if not hits:
                raise ValueError(
                    f"ScaleGUN parameter pattern {pattern!r} matches no trainable parameter, e.g. {trainable[:4]}"
                )
            chosen.update(hits)
        return [n for n in trainable if n in chosen]

    # ----------------------------------------------------------------------- objectives
    def _draw(self, dm: UnlearningDataModule, device: torch.device) -> _Objective:
        g = torch.Generator().manual_seed(int(dm.seed) * 7_919 + 17)

        def part(pairs: np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
            idx = np.arange(len(pairs))
            if self.sample_size is not None and self.sample_size < len(pairs):
                idx = np.sort(torch.randperm(len(pairs), generator=g)[: self.sample_size].numpy())
            u = torch.from_numpy(pairs[idx, 0]).long()
            i = torch.from_numpy(pairs[idx, 1]).long()
            j = dm.forget_negatives(u, generator=g)  # avoids every original train item
            return u.to(device), i.to(device), j.to(device)

        nr, nf = len(dm.forget.retain_pairs), len(dm.forget.forget_pairs)
        return _Objective(part(dm.forget.retain_pairs), part(dm.forget.forget_pairs), nr, nf / nr)

    @staticmethod
    def scores(model: nn.Module, triples: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """``(B,)`` scores :math:`s_{ui}` and :math:`s_{uj}` of fixed triples on the installed graph."""
        u, i, j = triples
        pos, neg = group_scores(model, [(u, i), (u, j)])
        return pos, neg

    @classmethod
    def margins(cls, model: nn.Module, triples: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        """``(B,)`` BPR margins :math:`s_{ui} - s_{uj}` of fixed triples on the installed graph."""
        pos, neg = cls.scores(model, triples)
        return pos - neg

    def old_objective(self, model: nn.Module, obj: _Objective) -> Tensor:
        """:math:`\\mathcal L_{old} / |R|` on the graph currently installed (call with the original one)."""
        return bpr_loss(*self.scores(model, obj.retain)) + obj.forget_ratio * bpr_loss(*self.scores(model, obj.forget))

    def new_objective(self, model: nn.Module, obj: _Objective) -> Tensor:
        """:math:`\\mathcal L_{new} / |R|` on the graph currently installed (call with the retained one)."""
        return bpr_loss(*self.scores(model, obj.retain))

    # --------------------------------------------------------------------------- solve
    def solve(self, margins_fn: Callable[[], Tensor], params: list[Tensor], b: Tensor, damping: float) -> CGResult:
        r"""Solve :math:`(C + \lambda I)\,x = b` over ``params`` with this callback's curvature and CG
        settings (:func:`~lightning_tru.nn.newton.solve_damped`)."""
        return solve_damped(margins_fn, params, b, damping, self.curvature, self.cg_iters, self.cg_tol)

    @override
    def profile(self, trainer: Trainer, model: nn.Module, dm: UnlearningDataModule) -> None:
        self.selected = self.select_parameters(model, dm.num_users, dm.num_items)
        named = dict(model.named_parameters())
        params = [named[n] for n in self.selected]
        device = params[0].device
        obj = self._draw(dm, device)
        recall_before = self.verify(model, dm)[f"forget_recall@{self.k}"]
        with torch.enable_grad():
            attach_graph(model, dm.source)  # the original graph, for the old objective
            try:
                g_old = flat_grad(self.old_objective(model, obj), params)
            finally:
                attach_graph(model, dm)  # back to the retained graph
            g_new = flat_grad(self.new_objective(model, obj), params)
        res = self.solve(lambda: self.margins(model, obj.retain), params, g_old - g_new, self.damping / obj.num_retain)
        if res.negative_curvature:
            rank_zero_warn(
                f"ScaleGUN: H + {self.damping} I is not positive definite along a CG direction after "
                f"{res.iterations} iterations; the partial solution is used: raise `damping`"
            )
        with torch.no_grad():
            delta = res.x
            if self.noise_std > 0:
                gen = torch.Generator().manual_seed(self.noise_seed)
                noise = torch.randn(delta.shape, generator=gen, dtype=delta.dtype).to(device) * self.noise_std
            else:
                noise = torch.zeros_like(delta)
            step = delta + noise
            for p, d in zip(params, step.split([p.numel() for p in params])):
                p.add_(d.view_as(p))
        with torch.enable_grad():
            g_after = flat_grad(self.new_objective(model, obj), params)
        self.newton = {
            "parameters": int(sum(p.numel() for p in params)),
            "cg_iterations": res.iterations,
            "cg_residual": res.residual,
            "negative_curvature": res.negative_curvature,
            "step_norm": float(delta.norm()),
            "noise_std": self.noise_std,
            "grad_residual_before": float(g_new.norm()),
            "grad_residual_after": float(g_after.norm()),
            "forget_recall_before_step": recall_before,
        }
        rank_zero_info(
            f"ScaleGUN: Newton step over {self.newton['parameters']} parameters, {res.iterations} CG iterations "
            f"(residual {res.residual:.2e}), |delta| {self.newton['step_norm']:.3e}"
        )

    # ------------------------------------------------------------------------- stopping
    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        if trainer.should_stop and self.stopping_reason is not None:  # the base rule already ended the run
            return
        if self.steps >= self.finetune_steps:  # the one-shot edit is done: skip the training loop
            trainer.should_stop = True
            res = self.verify(pl_module.model, trainer.datamodule)  # type: ignore[attr-defined, arg-type]
            self.history.append({"step": 0.0, "newton": 1.0, **res})
            if self.stop_rule == "membership":
                self._met = self._inside(res)
                verdict = (f"pair-MIA AUC {res['mia_auc']:.4f} vs the expected Retrain AUC {self.reference:.4f} +- "
                           f"{res['mia_band']:.3f}: " + ("inside the band" if self._met else "outside the band"))
            else:
                self._met = res[f"forget_recall@{self.k}"] <= float(self.target_recall)  # type: ignore[arg-type]
                verdict = f"forget recall@{self.k} {res[f'forget_recall@{self.k}']:.4f} vs target {self.target_recall:.4f}"
            if self._guard is not None and self.utility0 is not None and res["guard_recall"] < self.utility_bound(self.utility0):
                self.utility_guard_tripped = True
                verdict += (f"; utility guard: retained valid recall@{self.k} {self.utility0:.4f} -> "
                            f"{res['guard_recall']:.4f} ({self._bound_text()})")
            self.stopping_reason = f"one-shot Newton step applied ({self.steps} fine-tuning steps); {verdict}"

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if not trainer.should_stop and self.steps >= self.finetune_steps:
            self.stopping_reason = f"Newton step and {self.steps} fine-tuning steps done"
            trainer.should_stop = True

    @override
    def training_losses(self, model: nn.Module, batch: UnlearnBatch, dm: UnlearningDataModule) -> dict[str, Tensor]:
        ru, ri, rj = batch.retain_users, batch.retain_items, batch.retain_neg
        return {"retain_bpr": self.retain_weight * bpr_loss(*self.scores(model, (ru, ri, rj)))}

    # ---------------------------------------------------------------------------- state
    @override
    def extra_state(self) -> dict[str, Any]:
        return {"newton": dict(self.newton), "selected": list(self.selected)}

    @override
    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.newton = dict(state.get("newton", {}))
        self.selected = list(state.get("selected", []))
