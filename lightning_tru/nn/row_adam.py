r"""Row-sparse Adam: a table with a sparse gradient is updated on that gradient's rows only."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Optional

import torch
from torch import Tensor


class RowAdam(torch.optim.Optimizer):
    r"""Adam (Kingma & Ba, https://arxiv.org/abs/1412.6980) whose cost follows the rows a step touches.

    For a parameter with a dense gradient it is :class:`torch.optim.Adam` (no weight decay, no AMSGrad). For one
    with a sparse COO gradient (an entity table gathered with ``sparse=True``) on rows :math:`R`, only those rows'
    moments and values change, through ``index_select`` / ``index_copy_``:

    .. math::
        m_R \leftarrow \beta_1 m_R + (1-\beta_1) g_R, \quad v_R \leftarrow \beta_2 v_R + (1-\beta_2) g_R^2, \quad
        \theta_R \leftarrow \theta_R - \frac{\eta}{1-\beta_1^t}\, \frac{m_R}{\sqrt{v_R / (1-\beta_2^t)} + \epsilon}

    with :math:`t` the parameter's step count. Equal to dense Adam on the gradient's zero-filled dense form whenever
    the rows outside :math:`R` have zero moments (they never had a gradient, e.g. the same rows every step); a
    row with momentum left but no gradient in this step keeps still here, where dense Adam would drift it (the
    "lazy" Adam of :class:`torch.optim.SparseAdam`, whose moments are not bias-corrected per parameter like these).
    The moments are dense tables, allocated at the first step.

    Args:
        params: parameters or parameter groups.
        lr: :math:`\eta`.
        betas: :math:`(\beta_1, \beta_2)`.
        eps: :math:`\epsilon`.
    """

    def __init__(
        self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        if lr <= 0 or eps < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"lr={lr} must be > 0, eps={eps} >= 0 and betas={betas} in [0, 1)")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps})

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = float(state["step"])
                step_size = lr / (1 - b1**t)
                bc2_sqrt = math.sqrt(1 - b2**t)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                g = p.grad
                if g.is_sparse:
                    g = g.coalesce()
                    rows, vals = g.indices()[0], g.values()  # (R,), (R, ...)
                    if len(rows) == 0:
                        continue
                    m_r = m.index_select(0, rows).lerp_(vals, 1 - b1)
                    v_r = v.index_select(0, rows).mul_(b2).addcmul_(vals, vals, value=1 - b2)
                    m.index_copy_(0, rows, m_r)
                    v.index_copy_(0, rows, v_r)
                    denom = (v_r.sqrt() / bc2_sqrt).add_(eps)
                    p.index_copy_(0, rows, p.index_select(0, rows).addcdiv_(m_r, denom, value=-step_size))
                else:
                    m.lerp_(g, 1 - b1)
                    v.mul_(b2).addcmul_(g, g, value=1 - b2)
                    p.addcdiv_(m, (v.sqrt() / bc2_sqrt).add_(eps), value=-step_size)
        return loss

