r"""Damped Newton numerics: conjugate gradients and curvature-vector products of a BPR objective (ScaleGUN)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Callable, Literal, NamedTuple, Optional

import torch
from torch import Tensor

from lightning_tru.nn.losses import bpr_loss

Curvature = Literal["gauss_newton", "hessian"]
CURVATURES: tuple[str, ...] = ("gauss_newton", "hessian")


class CGResult(NamedTuple):
    """Output of :func:`conjugate_gradient`: the solution, iterations run, relative residual
    :math:`\\lVert b - (H + \\lambda I)x\\rVert / \\lVert b\\rVert` and whether non-positive curvature stopped it."""

    x: Tensor
    iterations: int
    residual: float
    negative_curvature: bool


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor], b: Tensor, damping: float = 0.0, max_iter: int = 100, tol: float = 1e-6
) -> CGResult:
    r"""Solve :math:`(H + \lambda I)\,x = b` by conjugate gradients, with :math:`H` given as ``matvec``.

    Stops when :math:`\lVert r\rVert \le \mathrm{tol}\,\lVert b\rVert`, after ``max_iter`` iterations,
    or at a direction :math:`p` with :math:`p^\top (H + \lambda I) p \le 0` (the damped matrix is not
    positive definite there: the iterate so far is returned and ``negative_curvature`` is set;
    raise the damping).

    Shapes: ``b``: ``(n,)``; ``matvec``: ``(n,) -> (n,)``.
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = float(r @ r)
    b_norm = math.sqrt(rs) or 1.0
    it, negative = 0, False
    while it < max_iter and math.sqrt(rs) > tol * b_norm:
        ap = matvec(p) + damping * p
        curv = float(p @ ap)
        if curv <= 0.0:
            negative = True
            break
        step = rs / curv
        x.add_(p, alpha=step)
        r.sub_(ap, alpha=step)
        rs_new = float(r @ r)
        p = r + (rs_new / rs) * p
        rs = rs_new
        it += 1
    return CGResult(x, it, math.sqrt(rs) / b_norm, negative)


def flat_grad(loss: Tensor, params: list[Tensor]) -> Tensor:
    """``(n,)`` gradient of ``loss`` over ``params``, flattened (zeros where a parameter is unused)."""
    gs = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(gs, params)])


def solve_damped(
    margins_fn: Callable[[], Tensor],
    params: list[Tensor],
    b: Tensor,
    damping: float,
    curvature: Curvature = "gauss_newton",
    max_iter: int = 50,
    tol: float = 1e-4,
) -> CGResult:
    r"""Solve :math:`(C + \lambda I)\,x = b` (:math:`\lambda` = ``damping``) over ``params`` (flattened) by CG.

    :math:`C` is the curvature of :math:`\mathcal L = \frac1M\sum_m -\log\sigma(x_m)`, :math:`x` = ``margins_fn()``:
    its Hessian (``curvature="hessian"``; products by double backward) or its Gauss-Newton
    matrix :math:`\frac1M J^\top \mathrm{diag}(\sigma(x)\sigma(-x))\,J`, :math:`J = \partial x / \partial\theta`
    (``"gauss_newton"``; :math:`Jv` by the double-vjp trick, then a vjp).
    """
    sizes = [p.numel() for p in params]

    def flat(gs: Sequence[Optional[Tensor]]) -> Tensor:
        return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(gs, params)])

    def split(v: Tensor) -> list[Tensor]:
        return [c.view_as(p) for c, p in zip(v.split(sizes), params)]

    with torch.enable_grad():
        x = margins_fn()
        if curvature == "hessian":
            grads = torch.autograd.grad(bpr_loss(x, torch.zeros_like(x)), params, create_graph=True)  # margins x

            def matvec(v: Tensor) -> Tensor:
                hv = torch.autograd.grad(grads, params, grad_outputs=split(v), retain_graph=True, allow_unused=True)
                return flat(hv)

        else:
            weight = (torch.sigmoid(x) * torch.sigmoid(-x)).detach() / len(x)  # (M,) loss curvature in x
            dummy = torch.zeros_like(x, requires_grad=True)
            jt = torch.autograd.grad(x, params, grad_outputs=dummy, create_graph=True)  # J^T dummy, linear in dummy

            def matvec(v: Tensor) -> Tensor:
                jv = torch.autograd.grad(jt, dummy, grad_outputs=split(v), retain_graph=True)[0]  # (M,) J v
                return flat(torch.autograd.grad(x, params, weight * jv, retain_graph=True, allow_unused=True))

        return conjugate_gradient(matvec, b, damping, max_iter, tol)
