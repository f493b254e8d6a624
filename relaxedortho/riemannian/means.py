r"""Means of orthogonal matrices: the Riemannian (Karcher) mean and the chordal mean (``docs/math.md`` §11).

**Karcher mean.** The minimiser of :math:`f(R) = \tfrac12\sum_i w_i\, d^2(R, R_i)` (weights :math:`w_i \ge 0`
normalised to sum 1; :math:`d` the geodesic distance of :mod:`~relaxedortho.riemannian.geodesics`), found by
Riemannian gradient descent with step 1 (Manton 2004; Afsari, Tron & Vidal 2013):

.. math:: R_{k+1} = R_k \exp\Big(\sum_i w_i \log(R_k^\top R_i)\Big),

the gradient being :math:`-R_k\sum_i w_i\log(R_k^\top R_i)`. Guarantees, for the bi-invariant metric
:math:`\tfrac12\operatorname{tr}(X^\top Y)` (sectional curvature in :math:`[0, \Delta]` with :math:`\Delta = \tfrac14`
for SO(3) and :math:`\tfrac12` for SO(n), n ≥ 4 — measured here by maximising :math:`\tfrac14\lVert[X, Y]\rVert^2`
over orthonormal pairs —; injectivity radius π):

- *uniqueness* (Afsari 2011, "Riemannian :math:`L^p` center of mass", Proc. AMS 139): when all points lie in an
  open geodesic ball of radius :math:`\rho < r_{cx} = \tfrac12\min(\mathrm{inj}, \pi/\sqrt\Delta) = \pi/2`, the mean
  exists, is unique and lies in that ball;
- *descent*: nonnegative curvature bounds the Hessian of :math:`\tfrac12 d^2(\cdot, R_i)` by the identity, so step 1
  is the 1/L step and every iteration decreases :math:`f` (until the gradient vanishes);
- *convergence to the mean* from a start inside the ball of radius :math:`\rho < \pi/2`: proved by Afsari, Tron &
  Vidal (2013, SIAM J. Control Optim. 51(3)) for manifolds of constant nonnegative curvature (SO(2), SO(3)); for
  SO(n), n ≥ 4, their general theorem needs a smaller ball, and step 1 is what is used in practice.

:func:`karcher_mean` reports the iterations, whether the gradient norm fell below ``tol``, and the radius
:math:`\hat\rho = \max_i d(\bar R, R_i)` of the ball around the result that holds all points, and warns when
:math:`\hat\rho \ge \pi/2` (a sufficient check: the points may still lie in some other ball of radius < π/2) or when
the iteration did not converge. The mean only exists within one component of O(n): all points must have the same
determinant.

**Chordal mean.** The minimiser of :math:`\sum_i w_i\lVert R - R_i\rVert_F^2` over orthogonal :math:`R` is the
polar factor of the weighted arithmetic mean, :math:`\operatorname{polar}(\sum_i w_i R_i)` (Moakher 2002, "Means and
averaging in the group of rotations", SIAM J. Matrix Anal. Appl. 24(1); Hartley, Trumpf, Dai & Li 2013, "Rotation
averaging", IJCV 103): one SVD, the fast closed form, a good start for the Karcher iteration, and equal to the
Karcher mean for symmetric configurations. Restricted to one component it is the nearest matrix of that determinant
(:func:`~relaxedortho.riemannian.group.special_polar`). It also applies to Stiefel matrices (``n x p``).

Both means are bi-invariant: :math:`\operatorname{mean}(QR_iP) = Q\operatorname{mean}(R_i)P` for orthogonal
:math:`Q, P`.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._checks import as_float_tensor, check_bool, check_choice, check_int, check_positive
from ..linalg import polar
from .geodesics import _expm64, _skew_log64
from .group import _det_sign, _special_polar, check_orthogonal

__all__ = ["karcher_mean", "chordal_mean", "KarcherMean", "CONVEXITY_RADIUS"]

#: :math:`r_{cx} = \pi/2`: points in an open geodesic ball of this radius have a unique Karcher mean (module docs).
CONVEXITY_RADIUS = math.pi / 2


def _stack(points: Any, name: str, square: bool) -> torch.Tensor:
    if isinstance(points, (list, tuple)):
        if not points:
            raise ValueError(f"{name} is empty: give at least one matrix")
        mats = [as_float_tensor(p, f"{name}[{i}]", allow_half=False) for i, p in enumerate(points)]
        for i, m in enumerate(mats[1:], 1):
            if m.shape != mats[0].shape:
                raise ValueError(f"{name}[{i}] has shape {tuple(m.shape)} but {name}[0] has {tuple(mats[0].shape)}")
            if m.dtype != mats[0].dtype:
                raise TypeError(f"{name}[{i}] is {m.dtype} but {name}[0] is {mats[0].dtype}: give all points in one "
                                "dtype (the mean is returned in it)")
            if m.device != mats[0].device:
                raise ValueError(f"{name}[{i}] is on {m.device} but {name}[0] is on {mats[0].device}")
        points = torch.stack(mats)
    elif isinstance(points, (torch.Tensor, np.ndarray)) and points.ndim != 3:
        raise ValueError(f"{name} must be a sequence of matrices or a (N, n, {'n' if square else 'p'}) tensor, got "
                         f"shape {tuple(points.shape)}")
    P = check_orthogonal(points, name, square=square, min_ndim=3)
    if P.ndim != 3:
        raise ValueError(f"{name} must be a sequence of matrices or a (N, n, n) tensor, got shape {tuple(P.shape)}")
    return P


def _weights(weights: Any, N: int, device: torch.device) -> torch.Tensor:
    if weights is None:
        return torch.full((N,), 1.0 / N, dtype=torch.float64, device=device)
    w = as_float_tensor(weights, "weights", ndim=1).to(dtype=torch.float64, device=device)
    if w.shape[0] != N:
        raise ValueError(f"weights must have one entry per point ({N}), got {w.shape[0]}")
    if bool((w < 0).any()):
        raise ValueError("weights must be >= 0")
    top = float(w.max())
    if top <= 0:
        raise ValueError("weights must not all be zero")
    total = float(w.sum())
    if not math.isfinite(total):       # finite weights whose sum overflows (near 1e308): scale to at most 1 first
        w = w / top
        total = float(w.sum())
    return w / total


def chordal_mean(points: Any, weights: Any = None, *, group: str | None = None) -> torch.Tensor:
    r"""The chordal (Frobenius) mean :math:`\arg\min_R \sum_i w_i\lVert R - R_i\rVert_F^2` of orthogonal or Stiefel
    matrices: the polar factor of :math:`\sum_i w_i R_i` (Moakher 2002; module documentation).

    Args:
        points: a sequence of ``n x p`` matrices with orthonormal columns, of one shape and dtype, or a
            ``(N, n, p)`` tensor.
        weights: ``N`` nonnegative weights (normalised to sum 1; default equal).
        group: for square matrices, the set the result is restricted to: ``None`` (default) keeps the inputs'
            component when they all have the same determinant (the nearest matrix of that determinant) and uses all
            of O(n) otherwise; ``"O"`` always takes the plain polar factor; ``"SO"`` forces a rotation.

    Returns:
        The mean (``n x p``) in the points' dtype, computed in float64. When :math:`\sum_i w_iR_i` is singular (e.g.
        two opposite rotations) the minimiser is not unique and one of them is returned.

    Example:
        >>> R = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
        >>> chordal_mean([torch.eye(2, dtype=torch.float64), R]).round(decimals=12).tolist() == [
        ...     [round(2 ** -0.5, 12), -round(2 ** -0.5, 12)], [round(2 ** -0.5, 12), round(2 ** -0.5, 12)]]
        True
    """
    if group is not None:
        check_choice(group, "group", ("O", "SO"))
    P = _stack(points, "points", square=False)
    w = _weights(weights, P.shape[0], P.device)
    M = (w[:, None, None] * P.double()).sum(0)
    square = P.shape[-1] == P.shape[-2]
    if group is not None and not square:
        raise ValueError(f"group={group!r} needs square matrices, got points of shape {tuple(P.shape[1:])}")
    if not square or group == "O":
        return polar(M).to(P.dtype)
    if group == "SO":
        return _special_polar(M, 1.0).to(P.dtype)
    signs = _det_sign(P)
    if bool((signs == signs[0]).all()):
        return _special_polar(M, signs[0]).to(P.dtype)
    return polar(M).to(P.dtype)


@dataclass
class KarcherMean:
    """The result of :func:`karcher_mean`.

    Attributes:
        mean: the Karcher mean (``n x n``, in the points' dtype).
        iterations: gradient steps taken.
        converged: the Riemannian gradient norm fell to ``tol`` or below.
        gradient_norm: :math:`\\lVert\\sum_i w_i\\log(\\bar R^\\top R_i)\\rVert_F/\\sqrt2` at the result.
        radius: :math:`\\max_i d(\\bar R, R_i)`, the radius of the ball around the result holding every point.
        within_convexity_radius: ``radius < π/2``, which guarantees the mean is unique (Afsari 2011).
        cost: :math:`\\tfrac12\\sum_i w_i d^2(\\bar R, R_i)` after each step (the first entry at the start).
    """

    mean: torch.Tensor
    iterations: int
    converged: bool
    gradient_norm: float
    radius: float
    within_convexity_radius: bool
    cost: list


def karcher_mean(points: Any, weights: Any = None, *, init: Any = None, tol: float | None = None,
                 max_iter: int = 100, warn: bool = True) -> KarcherMean:
    r"""The Riemannian (Karcher) mean of orthogonal matrices of one component of O(n), by Riemannian gradient
    descent with step 1 (formula, guarantees and sources in the module documentation).

    Args:
        points: a sequence of ``n x n`` orthogonal matrices of one dtype, or a ``(N, n, n)`` tensor, all with the
            same determinant (else :class:`ValueError`: the mean does not exist across components).
        weights: ``N`` nonnegative weights (normalised; default equal).
        init: the starting matrix (same component); default the chordal mean of that component
            (:func:`chordal_mean`).
        tol: stop when the gradient norm :math:`\lVert\sum_i w_i\log(R^\top R_i)\rVert_F/\sqrt2 \le` ``tol``;
            default :math:`100\sqrt n\,\varepsilon` of the points' dtype.
        max_iter: iteration cap.
        warn: issue a :class:`RuntimeWarning` when the iteration did not converge or the points are not within
            π/2 of the result (uniqueness not guaranteed).

    Returns:
        A :class:`KarcherMean` (the mean, iterations, convergence flag, gradient norm, radius and cost history).

    Raises:
        ValueError: a point is not orthogonal, points of different determinant, or some :math:`R^\top R_i` reaches
            the cut locus (an angle of π, where the logarithm and the gradient are undefined).

    Example:
        >>> c, s = math.cos(0.3), math.sin(0.3)
        >>> R = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
        >>> res = karcher_mean([R, R.T])        # rotations by +0.3 and -0.3
        >>> bool(torch.allclose(res.mean, torch.eye(2, dtype=torch.float64))), res.converged
        (True, True)
    """
    P = _stack(points, "points", square=True)
    N, n = P.shape[0], P.shape[-1]
    w = _weights(weights, N, P.device)
    max_iter = check_int(max_iter, "max_iter", minimum=0)
    tol = 100.0 * math.sqrt(n) * torch.finfo(P.dtype).eps if tol is None else check_positive(tol, "tol")
    warn = check_bool(warn, "warn")
    signs = _det_sign(P)
    if not bool((signs == signs[0]).all()):
        raise ValueError("points lie in different components of O(n) (determinants of both signs): the Karcher mean "
                         "exists only within one component; use chordal_mean(points, group='O') for a mean in O(n)")
    p64 = P.double()
    if init is None:
        R = _special_polar((w[:, None, None] * p64).sum(0), signs[0])
    else:
        R = check_orthogonal(init, "init").double().to(P.device)
        if R.shape != (n, n):
            raise ValueError(f"init must be {n} x {n}, got {tuple(R.shape)}")
        if float(_det_sign(R)) != float(signs[0]):
            raise ValueError("init lies in the other component of O(n) than the points (determinant of opposite sign)")

    def step_direction(R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logs = _skew_log64(R.mT @ p64, P.dtype, "R^T R_i")                 # (N, n, n)
        d2 = torch.linalg.matrix_norm(logs) ** 2 / 2.0                    # squared distances
        return (w[:, None, None] * logs).sum(0), d2

    X, d2 = step_direction(R)
    cost = [float(0.5 * (w * d2).sum())]
    grad = float(torch.linalg.matrix_norm(X)) / math.sqrt(2.0)
    it = 0
    while grad > tol and it < max_iter:
        R = R @ _expm64(0.5 * (X - X.mT))
        it += 1
        X, d2 = step_direction(R)
        cost.append(float(0.5 * (w * d2).sum()))
        grad = float(torch.linalg.matrix_norm(X)) / math.sqrt(2.0)
    radius = float(d2.max().sqrt())
    result = KarcherMean(mean=R.to(P.dtype), iterations=it, converged=grad <= tol, gradient_norm=grad, radius=radius,
                         within_convexity_radius=radius < CONVEXITY_RADIUS, cost=cost)
    if warn and not result.converged:
        warnings.warn(f"karcher_mean did not converge in {max_iter} iterations (gradient norm {grad:.3g} > tol "
                      f"{tol:.3g})", RuntimeWarning, stacklevel=2)
    if warn and not result.within_convexity_radius:
        warnings.warn(f"the points are up to {radius:.3g} rad from the result, not within the convexity radius pi/2 "
                      "of it: uniqueness of the Karcher mean is not verified and the iteration may have found a "
                      "local minimum",
                      RuntimeWarning, stacklevel=2)
    return result
