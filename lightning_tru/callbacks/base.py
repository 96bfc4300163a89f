r"""The base of every unlearning method: life cycle, batching, state, logging, DDP."""
from __future__ import annotations

import abc
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal, Optional

import numpy as np
import scipy.sparse as sp

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.seed import isolate_rng
from torch import Tensor, nn
from typing_extensions import override

from lightning_tru.audit.forgetting import recall_exposure_at_k, random_recall
from lightning_tru.audit.membership import matched_nonmembers, pair_membership
from lightning_tru.datamodules.unlearning import UnlearnBatch, UnlearningDataModule
from lightning_tru.metrics.functional import check_k
from lightning_tru.models.protocol import FrozenScorer, eval_mode
from lightning_tru.models.unlearning import UnlearningTask

log = logging.getLogger("lightning_tru")


def check_retain_weight(retain_weight: float) -> float:
    r""":math:`\lambda_r`, the weight of a method's retain BPR term, validated (``>= 0``)."""
    if retain_weight < 0:
        raise ValueError(f"retain_weight={retain_weight} must be >= 0 (0 drops the retain term)")
    return float(retain_weight)


class UnlearningCallback(Callback, abc.ABC):
    r"""Template for unlearning methods run as ``Trainer.fit(UnlearningTask(model), UnlearningDataModule(...))``.

    Life cycle: ``setup`` validates the run (datamodule, strategy, resumed fingerprint);
    ``on_fit_start`` *profiles* once (:meth:`profile`) and measures forget Recall@K;
    ``setup`` binds the callback to the task; each step the task asks for :meth:`training_losses` (the *update*) and, after backward,
    :meth:`edit_gradients` runs; every ``eval_every`` steps the callback *verifies* and stops all
    ranks together once the forget pairs look like non-members. One step = one epoch of the
    unlearning datamodule.

    **Stopping** (``stop_rule``). ``"membership"`` (default, two-sided, calibrated to Retrain
    without running it): the pair-level membership AUC :math:`A` (within-user rank percentiles of
    the forget pairs vs popularity-matched non-members of the same users, see
    :mod:`lightning_tru.audit.membership`) is compared with :math:`A^*`, what Retrain is expected to
    give (:meth:`reference_auc`): stop once :math:`A \le A^* + \delta`; a verification that lands
    below :math:`A^* - \delta` is an *overshoot* (the deleted pairs pushed below non-members, as
    visible to an attacker as residual memory): the last step is scaled back by bisection along it
    until the AUC is inside the band (``bisect_steps`` verifications); if no point is, the closest is
    kept and the run reports an overshoot. Already inside the band at step 0: no step is taken. ``"recall"``: the one-sided rule of earlier versions, forget
    Recall@K :math:`\le` ``target_recall``.

    **Top-K floor** (membership rule, two-sided on the top-K too): :meth:`reference_recall_floor` may give a
    least forget Recall@K :math:`r_{min}` (a Retrain-free lower bound on what Retrain leaves, e.g. ``0.8`` x the
    forget recall of the exactly reset model, which over-estimates Retrain's). A verification with recall below
    :math:`r_{min}` stops the run like an AUC overshoot, and the bisection then looks for a point of the last step
    that satisfies both: the AUC inside the band *and* recall :math:`\ge r_{min}`.

    **Where the time goes** (``timings``, seconds of this process, in the run's report details): ``prepare``
    (:meth:`prepare`), ``reference`` (:math:`A^*` and the floor), ``verify`` (every verification, bisection
    included), ``profile`` (:meth:`profile`), ``update`` (the rest of the fit: the steps themselves) and ``total``.
    A resumed run counts from its resume.

    Subclasses override :meth:`training_losses` and optionally :meth:`profile`,
    :meth:`edit_gradients`, :meth:`extra_state` / :meth:`load_extra_state`.

    Args:
        lr: Adam learning rate of the update.
        k: cut-off of the forget recall.
        target_recall: with ``stop_rule="recall"``: stop once forget Recall@K is at most this;
            ``None`` = :meth:`reference_recall`. Giving it selects ``"recall"`` unless ``stop_rule`` says otherwise.
        stop_rule: ``"membership"`` or ``"recall"`` (see above); ``None``: ``"recall"`` when
            ``target_recall`` is given, else ``"membership"``.
        tolerance: :math:`\delta`, least half-width of the band around :math:`A^*`; the band is
            :math:`\max(\delta, 2\,\mathrm{SE})` with SE the AUC's null standard error (few pairs, wide band).
        aim: the run stops once the AUC is at most :math:`A^* + a \cdot` band (1: the band's upper edge, where a run
            coming from above enters it; 0: :math:`A^*` itself, a step past the band scaled back by :meth:`_bisect`;
            ``None``: 0 for user-wise requests, whose reference sits at or above Retrain's AUC, 1 for the others,
            whose reference may sit below it, see docs/method.md). Answered means inside the band either way; a run
            inside the band that stops before its aim (utility guard, stall, step budget) ends answered at its last
            verified point inside the band.
        audit_pairs: most forget pairs (and as many non-members) the verification scores.
        bisect_steps: verifications spent to scale back a step that overshot the band (see :meth:`_bisect`).
        max_utility_loss: utility guard: at every verification, valid Recall@K of up to ``guard_users``
            retained users (seeded sample) may fall at most this share below what Retrain is expected to keep of
            its value before the first step (:meth:`utility_keep`: :math:`1 - s`, with :math:`s` the share of
            those users' train interactions the request removes); otherwise the run goes back to the previous
            verified parameters, stops, warns and reports the request as not reached (``None``: no guard). A method
            that cannot forget without wrecking the model says so instead of doing it.
        guard_users: most retained users the utility guard ranks (seeded sample).
        heldout_users: most users :meth:`heldout_recall` ranks (seeded sample of the users with test pairs): one
            evaluation per request whose cost does not grow with the data set beyond this.
        eval_every: steps between verifications.
        train_mode: run the update's forward passes (profiling included) in training mode (dropout,
            edge dropout, sampled attention, batch-norm statistics), as the model was trained; ``False``
            edits the deployed, deterministic function instead (why ``True`` is the default:
            ``benchmarks/RESULTS.md``, "Behind the defaults").
    """

    def __init__(
        self,
        lr: float = 1e-3,
        k: int = 20,
        target_recall: Optional[float] = None,
        eval_every: int = 5,
        train_mode: bool = True,
        stop_rule: Optional[Literal["membership", "recall"]] = None,
        tolerance: float = 0.02,
        aim: Optional[float] = 1.0,
        audit_pairs: int = 20000,
        bisect_steps: int = 6,
        max_utility_loss: Optional[float] = None,
        guard_users: int = 2000,
        heldout_users: int = 10000,
    ) -> None:
        check_k(k)
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0) or isinstance(eval_every, bool) \
                or not isinstance(eval_every, int) or eval_every < 1:
            raise ValueError(f"lr={lr} must be a finite number > 0, eval_every={eval_every} an integer >= 1")
        if not isinstance(train_mode, bool):
            raise ValueError(f"train_mode={train_mode!r} must be True or False")
        if target_recall is not None and not 0.0 <= target_recall <= 1.0:
            raise ValueError(
                f"target_recall={target_recall} must be in [0, 1] (a forget Recall@K), or None to calibrate it "
                "to what Retrain would leave (reference_recall)"
            )
        if stop_rule not in (None, "membership", "recall"):
            raise ValueError(f"stop_rule={stop_rule!r} must be 'membership', 'recall' or None")
        if not 0 <= tolerance < 0.5 or audit_pairs < 1 or aim is not None and not 0 <= aim <= 1:
            raise ValueError(f"tolerance={tolerance} must be in [0, 0.5), aim={aim} in [0, 1], audit_pairs={audit_pairs} >= 1")
        self.stop_rule = stop_rule or ("recall" if target_recall is not None else "membership")
        self.tolerance, self.aim, self.audit_pairs, self.bisect_steps = tolerance, aim, audit_pairs, bisect_steps
        if max_utility_loss is not None and not 0 < max_utility_loss < 1 or guard_users < 1 or heldout_users < 1:
            raise ValueError(
                f"max_utility_loss={max_utility_loss} must be in (0, 1) or None, guard_users={guard_users} >= 1, "
                f"heldout_users={heldout_users} >= 1"
            )
        self.max_utility_loss, self.guard_users, self.heldout_users = max_utility_loss, guard_users, heldout_users
        self.utility_guard_tripped = False
        self._regime: Optional[str] = None  # the request's regime (on_fit_start), for ``aim=None``
        self._met = False  # the stopping rule was met (set where the run stops for that reason)
        self.utility0: Optional[float] = None  # guard recall before the first step
        self.keep = 1.0  # share of utility0 Retrain is expected to keep at least (utility_keep)
        self._guard: Optional[sp.csr_matrix] = None  # valid rows of the sampled retained users
        self.reference: Optional[float] = None  # A*, the expected Retrain AUC (membership rule)
        self.recall_floor: Optional[float] = None  # r_min: least forget recall (membership rule; None: no floor)
        self.overshoot = False
        self.lr, self.k, self.eval_every = lr, k, eval_every
        self.target_recall = target_recall
        self.train_mode = train_mode
        self.steps = 0
        self.history: list[dict[str, float]] = []
        self.stopping_reason: Optional[str] = None
        self._fingerprint: Optional[str] = None
        self._profiled = False
        self._audit: Optional[tuple[np.ndarray, np.ndarray]] = None  # (forget pairs, matched non-members)
        self._previous: Optional[dict[str, Tensor]] = None  # parameters at the previous verification
        self._restored = False  # load_state_dict ran for the coming fit (a resume)
        self._rng: Optional[dict[str, Any]] = None  # the RNG states a resumed run continues from
        self._modes: dict[str, bool] = {}  # the user's model's train/eval mode per module, restored at the end
        self.timings: dict[str, float] = {}  # seconds per phase of the fit (see "Where the time goes")
        self._fit_clock: Optional[float] = None

    @contextmanager
    def _clock(self, phase: str) -> Iterator[None]:
        """Add the wall-clock seconds of the block to ``timings[phase]``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - start

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(method=type(self).__name__)

    #: widest band (two standard errors of the pair-MIA AUC) the membership rule verifies against: beyond it (a
    #: request of a few dozen pairs) the run cannot be told from Retrain, nor from the deployed model
    max_band: float = 0.15

    # --------------------------------------------------------------------------- hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not isinstance(pl_module, UnlearningTask):
            raise TypeError(f"{type(self).__name__} runs inside an UnlearningTask, got {type(pl_module).__name__}")
        dm = trainer.datamodule
        if not isinstance(dm, UnlearningDataModule):
            raise TypeError("an unlearning run needs an UnlearningDataModule (source data + forget request)")
        from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

        if isinstance(trainer.strategy, (FSDPStrategy, DeepSpeedStrategy)):
            raise ValueError(
                f"{type(self).__name__} supports single-device and DDP strategies, not {type(trainer.strategy).__name__}: "
                "its gradient edits (masks, scales) and profiles need every parameter whole on every rank. "
                "Use strategy='ddp' (the model is replicated; see README 'Cluster runs' for the size limit)"
            )
        found = [c for c in trainer.callbacks if isinstance(c, UnlearningCallback)]  # type: ignore[attr-defined]
        if len(found) != 1:
            raise RuntimeError(
                f"an unlearning run needs exactly one UnlearningCallback in trainer.callbacks, found {len(found)}: "
                f"{[type(c).__name__ for c in found]}"
            )
        pl_module.bind(self)
        self._modes = {n: m.training for n, m in pl_module.model.named_modules()}  # type: ignore[attr-defined]

    def _restore_modes(self, pl_module: LightningModule) -> None:
        """Put every module of the user's model back in the train/eval mode it had before the run."""
        for n, m in pl_module.model.named_modules():  # type: ignore[attr-defined]
            if n in self._modes:
                m.training = self._modes[n]

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if isinstance(pl_module, UnlearningTask):
            self._restore_modes(pl_module)
            if pl_module._method is self:
                pl_module.bind(None)

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._stop_clock()
        if isinstance(pl_module, UnlearningTask):
            self._restore_modes(pl_module)  # also when the run stopped before its first epoch (no on_train_end)
            if pl_module._method is self:
                pl_module.bind(None)

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # runs after a checkpoint's callback state is restored
        dm: UnlearningDataModule = trainer.datamodule  # type: ignore[assignment]
        model = pl_module.model  # type: ignore[attr-defined]
        self.timings, self._fit_clock = {}, time.perf_counter()
        if self._fingerprint is not None and self._fingerprint != dm.forget.fingerprint:
            raise ValueError(
                f"this callback state belongs to request {self._fingerprint[:12]}, the data holds "
                f"{dm.forget.fingerprint[:12]}: resume with the same deletion request"
            )
        self._fingerprint = dm.forget.fingerprint
        self._regime = dm.forget.regime
        if trainer.max_epochs == 0 or trainer.max_steps == 0:  # no budget: no edit either (never a silent answer)
            self.stopping_reason = "no step budget (max_epochs or max_steps is 0): nothing was done"
            return
        if self.stop_rule == "membership":
            self._audit = self.membership_pairs(dm.forget.forget_pairs, dm)
        if self.max_utility_loss is not None:
            self._guard = self._guard_rows(dm)
            self.keep = self.utility_keep(dm, self._guard)
        if self._profiled and not self._restored:  # state of an earlier fit, not a checkpoint's: never reused
            raise RuntimeError(
                f"this {type(self).__name__} already ran ({self.steps} steps, request {str(self._fingerprint)[:12]}); "
                "a callback answers one request: build a new one, or pass ckpt_path to resume that run"
            )
        self._restored = False
        if self._profiled:
            self.restore_profile(model)
            if self._previous is None:  # a checkpoint without it: the restored weights are the last point there is
                self._previous = self._snapshot(model)
            if self._rng is not None:  # dropout and every other draw continue as in an uninterrupted run
                torch.set_rng_state(self._rng["cpu"])
                if self._rng.get("cuda") is not None and torch.cuda.is_available():
                    torch.cuda.set_rng_state_all(self._rng["cuda"])
                self._rng = None
            return
        with self._clock("prepare"):
            self.prepare(trainer, model, dm)
        with self._clock("reference"):
            if self.stop_rule == "recall" and self.target_recall is None:
                self.target_recall = self.reference_recall(model, dm)
            if self.stop_rule == "membership" and self.reference is None:
                self.reference = self.reference_auc(model, dm)
        with self._clock("verify"):
            res = self.verify(model, dm)  # before profiling: a request already answered costs no profile
        if self.stop_rule == "membership":
            with self._clock("reference"):
                self.recall_floor = self.reference_recall_floor(model, dm, res[f"forget_recall@{self.k}"])
        self.history.append({"step": 0.0, **res})
        if self.stop_rule == "membership" and res["mia_band"] > self.max_band:  # the attack cannot tell anything
            trainer.should_stop = True
            self.stopping_reason = (
                f"too few forget pairs to verify ({len(self._audit[0]) if self._audit else 0} with a matched non-member): "
                f"the pair-MIA AUC's band is +- {res['mia_band']:.3f} (> {self.max_band}), so no point of the run could "
                "be told from Retrain or from the deployed model; the request is NOT answered: answer it with Retrain "
                "(--method retrain) or together with other requests"
            )
            rank_zero_warn(f"{type(self).__name__}: {self.stopping_reason}")
            return
        if self.max_utility_loss is not None:
            self.utility0 = res["guard_recall"]
        target = f"target {self.target_recall:.4f}" if self.stop_rule == "recall" else (
            f"pair-MIA AUC {res['mia_auc']:.4f}, expected Retrain AUC {self.reference:.4f} +- {res['mia_band']:.3f}"
            + (f", forget recall floor {self.recall_floor:.4f}" if self.recall_floor is not None else ""))
        rank_zero_info(
            f"{type(self).__name__}: {len(dm.forget.forget_pairs)} forget pairs, forget recall@{self.k} "
            f"{res[f'forget_recall@{self.k}']:.4f}, {target}"
        )
        self._profiled = True
        if trainer.strategy.reduce_boolean_decision(self._reached(res), all=False):
            trainer.should_stop = True
            if self.stop_rule == "membership" and not self._inside(res):  # the preparation alone went past the band
                self.overshoot = True
                floor = "" if self.recall_floor is None else (
                    f", forget recall@{self.k} {res[f'forget_recall@{self.k}']:.4f} vs floor {self.recall_floor:.4f}")
                self.stopping_reason = (
                    f"overshoot before the first step: pair-MIA AUC {res['mia_auc']:.4f} vs {self.reference:.4f} +- "
                    f"{res['mia_band']:.3f}{floor} after the preparation alone (over-forgetting); the request is NOT "
                    "answered"
                )
                rank_zero_warn(f"{type(self).__name__}: {self.stopping_reason}")
                return
            self.stopping_reason = "already indistinguishable from Retrain before the first step (0 steps)"
            self._met = True
            return
        with isolate_rng(), self._clock("profile"):
            model.train(self.train_mode)
            self.profile(trainer, model, dm)
        self._previous = self._snapshot(model)

    @override
    def on_after_backward(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.edit_gradients(pl_module.model)  # type: ignore[attr-defined]

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.steps += 1
        if self.steps % self.eval_every:
            return
        dm: UnlearningDataModule = trainer.datamodule  # type: ignore[assignment]
        with self._clock("verify"):
            res = self.verify(pl_module.model, dm)  # type: ignore[attr-defined]
        self.history.append({"step": float(self.steps), **res})
        pl_module.log_dict({f"unlearn/{k}": v for k, v in res.items()}, batch_size=1)
        if self._guard is not None and res["guard_recall"] < self.utility_bound(self.utility0):  # type: ignore[arg-type]
            if self._previous is not None:
                self._restore(pl_module.model, self._previous)  # type: ignore[attr-defined]
                if self.smaller_steps(trainer):  # the method goes on from there with smaller steps
                    self.history[-1]["undone"] = 1.0
                    return
                if self._answered_short_of_aim(trainer, "a further step tripped the utility guard"):
                    self.history[-1]["undone"] = 1.0
                    return
            self.utility_guard_tripped = trainer.should_stop = True
            self.stopping_reason = (
                f"utility guard after {self.steps} steps: retained valid recall@{self.k} fell from {self.utility0:.4f} to "
                f"{res['guard_recall']:.4f} ({self._bound_text()}); went back to step "
                f"{int(self.history[-2]['step'])}, the request is NOT answered by this method on this model"
            )
            rank_zero_warn(f"{type(self).__name__}: {self.stopping_reason}")
            return
        if not trainer.strategy.reduce_boolean_decision(self._reached(res), all=False):
            self._previous = self._snapshot(pl_module.model)  # type: ignore[attr-defined]
            self.after_verification(trainer, res)
            return
        trainer.should_stop = True
        if self.stop_rule == "recall":
            self.stopping_reason = f"forget recall@{self.k} reached the target after {self.steps} steps"
            self._met = True
            return
        band = res["mia_band"]
        if self._inside(res):
            self.stopping_reason = f"pair-MIA AUC within {band:.3f} of the expected Retrain AUC after {self.steps} steps"
            self._met = True
            return
        model = pl_module.model  # type: ignore[attr-defined]
        with self._clock("verify"):
            found = self._bisect(model, trainer.datamodule) if self._previous is not None else None
        if found is not None:
            t, res = found
            self.history.append({"step": float(self.steps), "interpolated": t, **res})
            self.stopping_reason = (
                f"pair-MIA AUC within {res['mia_band']:.3f} of the expected Retrain AUC after {self.steps} steps, "
                f"the last step scaled by {t:.3f} (the full step overshot)"
            )
            self._met = True
            return
        if self._previous is not None and self.smaller_steps(trainer):
            # no point of the step is inside the band and above the recall floor: a smaller step may be (the top-K
            # empties faster under a large step; measured: MIG-GT, TikTok, user-wise, the 16x step went below the
            # floor where 8x steps reached the band above it)
            self._restore(model, self._previous)
            self.history[-1]["undone"] = 1.0
            trainer.should_stop = False
            return
        last = self.history[-1]
        if self._previous is not None and self._below_floor(last):
            # the top-K ran out before the AUC reached the band, whatever the step size: the method may take more of the
            # memory out by other means (see floor_reached)
            least = self._snapshot(model)
            self._restore(model, self._previous)
            last["undone"] = 1.0
            if self.floor_reached(trainer, model, trainer.datamodule):
                return
            self._restore(model, least)
            del last["undone"]
        self.overshoot = True
        floor = "" if self.recall_floor is None else (
            f", forget recall@{self.k} {last[f'forget_recall@{self.k}']:.4f} vs floor {self.recall_floor:.4f}")
        self.stopping_reason = (
            f"overshoot after {self.steps} steps: pair-MIA AUC {last['mia_auc']:.4f} vs "
            f"{self.reference:.4f} +- {band:.3f}{floor}, and no point of the last step inside the band (over-forgetting)"
        )

    def _last_verified(self) -> Optional[dict[str, float]]:
        """The last verified point the model stands at after a step was taken back (neither undone nor interpolated)."""
        points = [h for h in self.history[:-1] if "undone" not in h and "interpolated" not in h]
        return points[-1] if points else None

    def _answered_short_of_aim(self, trainer: Trainer, why: str, res: Optional[dict[str, float]] = None) -> bool:
        """The run stops before its ``aim`` at a verified point inside the band (``res``, or the last verified point
        the model went back to): answered. Returns whether it did."""
        at = res if res is not None else self._last_verified()
        if self.stop_rule != "membership" or at is None or not self._inside(at):
            return False
        trainer.should_stop = True
        self._met = True
        self.stopping_reason = (
            f"pair-MIA AUC {at['mia_auc']:.4f} within {at['mia_band']:.3f} of the expected Retrain AUC "
            f"{self.reference:.4f} at step {int(at['step'])}, short of the aim ({why})"
        )
        return True

    def _level(self, res: dict[str, float]) -> float:
        r"""The AUC at which the run stops: :math:`A^* + a \cdot` band (``aim``)."""
        aim = self.aim if self.aim is not None else (0.0 if self._regime == "user" else 1.0)
        return float(self.reference) + aim * res["mia_band"]  # type: ignore[arg-type]

    def _bisect(self, model: nn.Module, dm: UnlearningDataModule) -> Optional[tuple[float, dict[str, float]]]:
        r"""The last step overshot: find :math:`t \in (0, 1)` with :math:`\theta_{prev} + t(\theta - \theta_{prev})`
        inside the band (and at or above the recall floor) by bisection (``bisect_steps`` verifications; AUC and
        forget recall fall along the step). Leaves the model at the point found, or at the verified point of least
        :meth:`_miss` when none is inside."""
        assert self._previous is not None
        current = self._snapshot(model)
        ref = float(self.reference)  # type: ignore[arg-type]
        lo, hi = 0.0, 1.0
        best = (self._miss(self.history[-1]), 1.0)
        prev_res = self.history[-2] if len(self.history) > 1 else None
        if prev_res is not None and self._miss(prev_res) < best[0]:
            best = (self._miss(prev_res), 0.0)
        for _ in range(self.bisect_steps):
            t = (lo + hi) / 2
            self._restore(model, {n: self._previous[n] + t * (current[n] - self._previous[n]) for n in current})
            res = self.verify(model, dm)
            if self._inside(res):
                return t, res
            if self._miss(res) < best[0]:
                best = (self._miss(res), t)
            too_far = res["mia_auc"] < ref or self._below_floor(res)
            lo, hi = (lo, t) if too_far else (t, hi)
        _, t = best
        self._restore(model, {n: self._previous[n] + t * (current[n] - self._previous[n]) for n in current})
        return None

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        last = self.history[-1] if self.history else None
        if self.stopping_reason is None and not (last is not None and int(last["step"]) == self.steps and
                                                 "undone" not in last and self._answered_short_of_aim(trainer, "step budget spent", last)):
            self.stopping_reason = f"step budget spent ({self.steps} steps) without reaching the target"
        self._previous = None
        self._restore_modes(pl_module)
        self._stop_clock()
        rank_zero_info(f"{type(self).__name__}: {self.stopping_reason}")

    def _stop_clock(self) -> None:
        """Close ``timings``: ``total`` since fit start, ``update`` what no phase took (once per fit; from
        ``on_train_end``, or from ``teardown`` when the run stopped before its first step and Lightning skipped the
        training loop)."""
        if self._fit_clock is not None:
            total = time.perf_counter() - self._fit_clock
            self.timings["update"] = max(total - sum(self.timings.values()), 0.0)
            self.timings["total"], self._fit_clock = total, None

    @property
    def target_reached(self) -> bool:
        """Whether the run ended inside the stopping band (an overshoot or a spent budget is not)."""
        return self._met and not self.overshoot and not self.utility_guard_tripped

    def _reached(self, res: dict[str, float]) -> bool:
        """The run stops here: the target is reached or passed (inside the band, or beyond it on either criterion)."""
        if self.stop_rule == "recall":
            return res[f"forget_recall@{self.k}"] <= float(self.target_recall)  # type: ignore[arg-type]
        return res["mia_auc"] <= self._level(res) or self._below_floor(res)

    def _below_floor(self, res: dict[str, float]) -> bool:
        return self.recall_floor is not None and res[f"forget_recall@{self.k}"] < self.recall_floor

    def _inside(self, res: dict[str, float]) -> bool:
        """Indistinguishable from Retrain: pair-MIA AUC within the band around :math:`A^*`, forget recall at or above the floor."""
        return abs(res["mia_auc"] - float(self.reference)) <= res["mia_band"] and not self._below_floor(res)  # type: ignore[arg-type]

    def _miss(self, res: dict[str, float]) -> tuple[float, float]:
        """How far a verified point is from the band: (recall short of the floor, AUC distance to :math:`A^*`), compared
        in that order (a top-K over-forgetting is never traded for a closer AUC)."""
        short = 0.0 if self.recall_floor is None else max(0.0, self.recall_floor - res[f"forget_recall@{self.k}"])
        return short, abs(res["mia_auc"] - float(self.reference))  # type: ignore[arg-type]

    @staticmethod
    def _snapshot(model: nn.Module) -> dict[str, Tensor]:
        """The trainable parameters and the floating-point buffers (BatchNorm's running statistics move in train
        mode: going back to a point restores them too)."""
        out = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        out.update({n: b.detach().clone() for n, b in model.named_buffers() if torch.is_floating_point(b)})
        return out

    @staticmethod
    def _restore(model: nn.Module, state: dict[str, Tensor]) -> None:
        with torch.no_grad():
            for n, p in [*model.named_parameters(), *model.named_buffers()]:
                if n in state:
                    p.copy_(state[n])

    # ------------------------------------------------------------------- method surface
    @abc.abstractmethod
    def training_losses(self, model: nn.Module, batch: UnlearnBatch, dm: UnlearningDataModule) -> dict[str, Tensor]:
        """The update objective of one step, by term (summed by the task)."""

    def prepare(self, trainer: Trainer, model: nn.Module, dm: UnlearningDataModule) -> None:
        """One-off, deterministic weight edit before anything is measured (e.g. resetting deleted rows)."""

    def profile(self, trainer: Trainer, model: nn.Module, dm: UnlearningDataModule) -> None:
        """One-off analysis before the first step (runs under ``isolate_rng``)."""

    def restore_profile(self, model: nn.Module) -> None:
        """Rebuild derived views of a profile restored from a checkpoint (no re-profiling)."""

    def edit_gradients(self, model: nn.Module) -> None:
        """Edit ``p.grad`` after each backward (masks, scales)."""

    def configure_optimizer(self, model: nn.Module, dm: UnlearningDataModule) -> torch.optim.Optimizer:
        return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=self.lr)

    # -------------------------------------------------------------------- verification
    def smaller_steps(self, trainer: Trainer) -> bool:
        """The utility guard tripped, or a step overshot with no point inside the band above the recall floor, and the
        model is back at the last verified point: ``True`` when the method continues from there with smaller steps (e.g.
        an lr it had grown), ``False`` (default) to stop."""
        return False

    def floor_reached(self, trainer: Trainer, model: nn.Module, dm: UnlearningDataModule) -> bool:
        """A step's path went below the recall floor before the AUC reached the band (no smaller step is left), and
        ``model`` is back at the last verified point (the overshooting verification is marked ``undone``): ``True``
        when the method changed the model there by other means and either goes on from the new point (which it
        verified and made :attr:`_previous`) or stopped answered; ``False`` (default) to report the overshoot."""
        return False

    def after_verification(self, trainer: Trainer, res: dict[str, float]) -> None:
        """Called after a verification that did not stop the run (``res`` is in :attr:`history`); default: nothing.
        A method may adapt its step here (identical on every rank: ``res`` is)."""

    def verify(self, model: nn.Module, dm: UnlearningDataModule) -> dict[str, float]:
        """Forget Recall@K, exposure@K and (membership rule) the pair-MIA AUC ``mia_auc`` of the
        current model (identical on every rank)."""
        retained = dm.retained_train_csr()
        with eval_mode(model):
            scorer = FrozenScorer.of(model)  # one propagation shared by the three measures
            res = recall_exposure_at_k(scorer, retained, dm.forget_csr(), self.k)
            if self._audit is not None:
                mia = pair_membership(scorer, *self._audit, retained)
                res["mia_auc"], res["mia_band"] = mia["auc_rank"], max(self.tolerance, 2.0 * mia["se"])
            if self._guard is not None:
                res["guard_recall"] = recall_exposure_at_k(scorer, retained, self._guard, self.k)[f"forget_recall@{self.k}"]
        return res

    def utility_keep(self, dm: UnlearningDataModule, guard: sp.csr_matrix) -> float:
        r""":math:`1 - s`: the least share of the guard users' valid recall Retrain is expected to keep, with :math:`s`
        the share of their train interactions the request removes (0 user-wise: a deleted user is no guard user).

        A learning curve grows at most linearly with the data (recall :math:`\propto n^\alpha`, :math:`\alpha \le 1`),
        so training without :math:`s` of a user's interactions costs at most :math:`s` of that user's recall. Measured
        (MGCN, TikTok and Baby, 3 seeds, 5%): Retrain keeps 0.92-0.98 of the deployed model's valid recall
        interaction-wise (:math:`s` = 0.05), 0.97-1.04 user-wise; TRU with a guard at ``max_utility_loss`` of the
        deployed model itself stopped 4 of the 6 interaction-wise runs before Retrain's AUC, each at 99.9-102.2% of
        Retrain's test NDCG@20.
        """
        users = np.flatnonzero(np.diff(guard.indptr) > 0)
        lost = np.bincount(dm.forget.forget_pairs[:, 0], minlength=dm.num_users)[users].sum()
        kept = np.bincount(dm.forget.retain_pairs[:, 0], minlength=dm.num_users)[users].sum()
        return 1.0 - float(lost) / max(float(lost + kept), 1.0)

    def utility_bound(self, utility0: float) -> float:
        """The least guard recall a verification may show: ``(1 - max_utility_loss) * keep * utility0``."""
        return (1.0 - float(self.max_utility_loss or 0.0)) * self.keep * utility0

    def _bound_text(self) -> str:
        return (f"more than {self.max_utility_loss:.0%} below {self.keep:.1%} of it, what Retrain is expected to keep: "
                f"the request removes {1 - self.keep:.1%} of the guard users' train interactions")

    def _guard_rows(self, dm: UnlearningDataModule) -> sp.csr_matrix:
        """Valid rows of up to ``guard_users`` retained users (seeded: identical on every rank and on resume)."""
        valid = dm.retained.data.csr("valid").tocsr()
        users = np.flatnonzero(np.diff(valid.indptr) > 0)
        rng = np.random.default_rng(dm.seed)
        if len(users) > self.guard_users:
            users = np.sort(rng.choice(users, self.guard_users, replace=False))
        keep = np.zeros(valid.shape[0], dtype=np.float32)
        keep[users] = 1.0
        return (sp.diags(keep) @ valid).tocsr()

    def membership_pairs(self, members: np.ndarray, dm: UnlearningDataModule) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``audit_pairs`` of ``members`` and one popularity-matched non-member each (seeded by
        the datamodule's seed: identical on every rank and on resume)."""
        rng = np.random.default_rng(dm.seed)
        if len(members) > self.audit_pairs:
            members = members[np.sort(rng.choice(len(members), self.audit_pairs, replace=False))]
        known = dm.source.data.csr("train", "valid", "test")  # forgotten pairs included: never non-members
        popularity = np.asarray(dm.retained_train_csr().sum(0)).ravel()  # what Retrain sees
        return matched_nonmembers(members, known, popularity, seed=dm.seed)

    def reference_auc(self, model: nn.Module, dm: UnlearningDataModule) -> float:
        r""":math:`A^*`: the pair-MIA AUC Retrain is expected to give, without running it.

        User- and item-wise: 0.5. Retrain has no interaction of the deleted side left, so a
        deleted user's row is the initialiser's (it never gets a gradient) and a forgotten item is
        one of the never-trained items of its (retained) popularity bin: the forget pairs rank like
        popularity-matched non-members. Interaction-wise: a forgotten pair of a remaining user is
        a true preference the model never saw, like a held-out one: :math:`A^*` is the AUC of the
        forgetting users' held-out (valid and test) pairs against their own matched non-members,
        measured on the model after graph surgery, before the first step.
        """
        if dm.forget.regime != "interaction":
            return 0.5
        data = dm.retained.data
        users = np.unique(dm.forget.forget_pairs[:, 0])
        held = data.csr("valid", "test")[users].tocoo()
        pairs = np.stack([users[held.row], held.col], 1).astype(np.int64)
        if len(pairs) == 0:
            return 0.5
        members, nonmembers = self.membership_pairs(pairs, dm)
        was_training = model.training
        model.eval()
        try:
            return float(pair_membership(model, members, nonmembers, dm.retained_train_csr())["auc_rank"])
        finally:
            model.train(was_training)

    def reference_recall_floor(self, model: nn.Module, dm: UnlearningDataModule, recall: float) -> Optional[float]:
        """:math:`r_{min}`, the least forget Recall@K a run may end at (membership rule), from the model before the first
        step (``recall``: its forget Recall@K, after :meth:`prepare`); ``None`` (default): no floor."""
        return None

    def reference_recall(self, model: nn.Module, dm: UnlearningDataModule) -> float:
        """The default target: what Retrain is expected to leave of the forget pairs.

        User- and item-wise: the expected recall of a uniformly random ranking (Retrain has no
        interaction left for the forgotten side; chance level is the conservative bound: the
        forgotten items end up no more exposed than by chance); interaction-wise: Recall@K of
        held-out test pairs (a forgotten pair looks like any unobserved one), measured on the
        model before the first step.
        """
        if dm.forget.regime in ("user", "item"):
            return random_recall(dm.retained_train_csr(), dm.forget_csr(), self.k)
        return self.heldout_recall(model, dm)

    def heldout_recall(self, model: nn.Module, dm: UnlearningDataModule) -> float:
        """Recall@K of held-out test pairs (train and valid masked): what non-members score, over up to
        ``heldout_users`` users with test pairs (seeded sample: identical on every rank and on resume).

        All users, not only the forgetting ones: measured on MGCN / TikTok (3 seeds, 5% interaction-wise), the
        forgetting users' held-out recall is 0.51-0.58x Retrain's forget recall, all users' 0.74-0.82x."""
        data = dm.source.data
        test = data.csr("test").tocsr()
        users = np.flatnonzero(np.diff(test.indptr) > 0)
        if len(users) > self.heldout_users:
            users = np.random.default_rng(dm.seed).choice(users, self.heldout_users, replace=False)
            keep = np.zeros(test.shape[0], dtype=np.float32)
            keep[users] = 1.0
            test = (sp.diags(keep) @ test).tocsr()
        with eval_mode(model):
            res = recall_exposure_at_k(model, data.csr("train", "valid"), test, self.k)
        return res[f"forget_recall@{self.k}"]

    # --------------------------------------------------------------------------- state
    state_attributes: tuple[str, ...] = ()
    """Plain attributes checkpointed as they are by the default :meth:`extra_state`."""

    def extra_state(self) -> dict[str, Any]:
        """Method-specific state to checkpoint (plain values): by default the :attr:`state_attributes`."""
        return {a: getattr(self, a) for a in self.state_attributes}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""
        for a in self.state_attributes:
            setattr(self, a, state.get(a))

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self._fingerprint,
            "steps": self.steps,
            "profiled": self._profiled,
            "target_recall": self.target_recall,
            "reference": self.reference,
            "recall_floor": self.recall_floor,
            "utility0": self.utility0,
            "history": list(self.history),
            "met": self._met,
            "extra": self.extra_state(),
            # a resumed run ends where an uninterrupted one does: the last verified point (bisection and the guard's
            # rollback go back to it) and the RNG states the next step draws from (dropout)
            "previous": self._previous,
            "rng": {"cpu": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._fingerprint = state_dict.get("fingerprint")
        self.steps = int(state_dict.get("steps", 0))
        self._profiled = bool(state_dict.get("profiled", False))
        self.target_recall = state_dict.get("target_recall", self.target_recall)
        self.reference = state_dict.get("reference", self.reference)
        self.recall_floor = state_dict.get("recall_floor", self.recall_floor)
        self._met = bool(state_dict.get("met", False))
        if state_dict.get("utility0") is not None:
            self.utility0 = float(state_dict["utility0"])
        self.history = list(state_dict.get("history", []))
        self._previous = state_dict.get("previous")
        self._rng = state_dict.get("rng")
        self._restored = True
        self.load_extra_state(state_dict.get("extra", {}))

