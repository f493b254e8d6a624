r"""Geodesics of the Stiefel manifold :math:`\mathrm{St}(n, p) = \{U \in \mathbb{R}^{n\times p} : U^\top U = I_p\}`
(``docs/math.md`` §10).

Tangent vectors at :math:`U` are :math:`\Delta` with :math:`U^\top\Delta` skew-symmetric. Two metrics are in use
(Edelman, Arias & Smith 1998, "The geometry of algorithms with orthogonality constraints", SIAM J. Matrix Anal.
Appl. 20(2)):

- **canonical** :math:`g_c(\Delta, \Delta) = \operatorname{tr}\big(\Delta^\top(I - \tfrac12 UU^\top)\Delta\big)`
  (the quotient metric of O(n)); with :math:`A = U^\top\Delta` and :math:`QB = (I - UU^\top)\Delta` (Q orthonormal,
  Q ⟂ U), the geodesic is (their Eq. 2.42)

  .. math::

     U(t) = [U, Q]\,\exp\!\Big(t\begin{bmatrix} A & -B^\top\\ B & 0\end{bmatrix}\Big)
     \begin{bmatrix}I_p\\ 0\end{bmatrix};

- **Euclidean** (embedded) :math:`g_e(\Delta, \Delta) = \operatorname{tr}(\Delta^\top\Delta)`, with
  :math:`S = \Delta^\top\Delta` (their Eq. 2.45 in the form of Zimmermann 2017):

  .. math::

     U(t) = [U, \Delta]\,\exp\!\Big(t\begin{bmatrix} A & -S\\ I & A\end{bmatrix}\Big)
     \begin{bmatrix}I_p\\ 0\end{bmatrix}\exp(-tA).

For p = n both reduce to the group geodesic :math:`U\exp(tA)`. The **logarithm** implemented is the canonical one,
by Zimmermann's algorithm (R. Zimmermann 2017, "A matrix-algebraic algorithm for the Riemannian logarithm on the
Stiefel manifold under the canonical metric", SIAM J. Matrix Anal. Appl. 38(2)): complete :math:`[M; N]`
(:math:`M = U_0^\top U_1`, :math:`N = Q^\top U_1`) to a rotation :math:`V`, then repeatedly replace the lower-right
block of :math:`\log V` by zero through :math:`V \leftarrow V\,\mathrm{diag}(I, \exp(-C))` until
:math:`\lVert C\rVert_F \le` ``tol``; then :math:`\Delta = U_0 A + Q B`. It converges linearly when
:math:`U_0, U_1` are close (Zimmermann proves local convergence; in practice up to distances near the injectivity
radius); a :class:`RuntimeWarning` says when it did not converge. No logarithm for the Euclidean metric is
implemented.

Here Q spans a k = min(p, n − p)-dimensional complement, so the small matrices are (p + k) × (p + k).
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from .._checks import as_float_tensor, check_bool, check_int, check_positive
from .geodesics import _batch_shape, _check_skew, _check_times, _expm64, _skew_log64
from .group import _det_sign, _special_polar, check_orthogonal

__all__ = ["stiefel_exp", "stiefel_log", "stiefel_geodesic", "STIEFEL_METRICS"]

#: The metrics :func:`stiefel_exp` knows.
STIEFEL_METRICS = ("canonical", "euclidean")


def _complement(U: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
    """An orthonormal ``n x k`` basis (k = min(p, n - p)) orthogonal to ``U`` whose span holds ``(I - UU^T) Z``."""
    n, p = U.shape[-2], U.shape[-1]
    if n >= 2 * p:
        q, _ = torch.linalg.qr(torch.cat([U, Z], dim=-1))
    else:
        q, _ = torch.linalg.qr(U, mode="complete")
    return q[..., p:]


def _check_tangent(U: torch.Tensor, Delta: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    A = U.mT @ Delta
    _check_skew(A, "U^T Delta", dtype)
    return 0.5 * (A - A.mT)


def stiefel_exp(U: Any, Delta: Any, *, metric: str = "canonical") -> torch.Tensor:
    r"""The Riemannian exponential :math:`\exp_U(\Delta)` on :math:`\mathrm{St}(n, p)` for the ``"canonical"`` or
    ``"euclidean"`` metric (formulas in the module documentation; Edelman, Arias & Smith 1998).

    Args:
        U: ``(..., n, p)`` with orthonormal columns (n ≥ p), batched.
        Delta: a tangent vector at ``U`` (same shape): :math:`U^\top\Delta` skew-symmetric (else
            :class:`ValueError`).
        metric: one of :data:`STIEFEL_METRICS`.

    Returns the point at time 1 (orthonormal to rounding), computed in float64 with :func:`torch.matrix_exp` on a
    (p + k)- or 2p-sized matrix and returned in the promoted dtype. :func:`stiefel_geodesic` evaluates the whole
    curve.

    Example:
        >>> U = torch.eye(3, 1, dtype=torch.float64)
        >>> D = torch.tensor([[0.0], [math.pi / 2], [0.0]], dtype=torch.float64)
        >>> stiefel_exp(U, D).round(decimals=12).flatten().tolist()
        [0.0, 1.0, 0.0]
    """
    if metric not in STIEFEL_METRICS:
        raise ValueError(f"metric must be one of {STIEFEL_METRICS}, got {metric!r}")
    U = check_orthogonal(U, "U", square=False)
    Delta = as_float_tensor(Delta, "Delta")
    if Delta.shape[-2:] != U.shape[-2:]:
        raise ValueError(f"Delta must have the shape of U's matrices {tuple(U.shape[-2:])}, got {tuple(Delta.shape)}")
    _batch_shape(U, Delta, ("U", "Delta"))
    dtype = torch.promote_types(U.dtype, Delta.dtype)
    u, d = U.double(), Delta.double().to(U.device)
    u, d = torch.broadcast_tensors(u, d)
    A = _check_tangent(u, d, dtype)
    return _exp64(u, d, A, 1.0, metric).to(dtype)


def _exp64(u: torch.Tensor, d: torch.Tensor, A: torch.Tensor, t: torch.Tensor | float, metric: str) -> torch.Tensor:
    p = u.shape[-1]
    if metric == "canonical":
        Q = _complement(u, d)
        B = Q.mT @ d
        k = Q.shape[-1]
        top = torch.cat([A, -B.mT], dim=-1)
        bottom = torch.cat([B, torch.zeros(B.shape[:-1] + (k,), dtype=B.dtype, device=B.device)], dim=-1)
        E = _expm64(_times(t, torch.cat([top, bottom], dim=-2)))[..., :p]
        return u @ E[..., :p, :] + Q @ E[..., p:, :]
    S = d.mT @ d
    eye = torch.eye(p, dtype=u.dtype, device=u.device).expand_as(A)
    M = torch.cat([torch.cat([A, -S], dim=-1), torch.cat([eye, A], dim=-1)], dim=-2)
    E = _expm64(_times(t, M))[..., :p]
    return (u @ E[..., :p, :] + d @ E[..., p:, :]) @ _expm64(_times(-t, A))


def _times(t: torch.Tensor | float, X: torch.Tensor) -> torch.Tensor:
    """``t * X`` for a number, or ``(T, ...)`` stacked for a 1-d tensor of times."""
    if isinstance(t, float) or t.ndim == 0:
        return t * X
    return t.reshape((-1,) + (1,) * X.ndim) * X


def stiefel_log(U0: Any, U1: Any, *, tol: float | None = None, max_iter: int = 200,
                return_info: bool = False):
    r"""The Riemannian logarithm :math:`\log_{U_0}(U_1)` on :math:`\mathrm{St}(n, p)` under the canonical metric, by
    Zimmermann's algorithm (2017; module documentation).

    Args:
        U0, U1: ``(n, p)`` with orthonormal columns (n ≥ p); not batched (the iteration runs per pair).
        tol: stop when the lower-right block of :math:`\log V` has :math:`\lVert C\rVert_F \le` ``tol`` (default
            :math:`100\sqrt p\,\varepsilon` of the inputs' dtype).
        max_iter: iteration cap; a :class:`RuntimeWarning` says when it was reached.
        return_info: also return ``{"iterations", "converged", "residual"}``.

    Returns:
        The tangent vector :math:`\Delta` at ``U0`` (``n x p``) with
        :func:`stiefel_exp`\ ``(U0, Δ) = U1`` to within ``tol``-level error, in the promoted dtype (and the info
        dictionary with ``return_info=True``).

    Raises:
        ValueError: for p = n when ``U0`` and ``U1`` have determinants of opposite sign (different components of
            O(n)); when an iterate reaches the cut locus (the points are too far apart).

    Example:
        >>> U0 = torch.eye(3, 1, dtype=torch.float64)
        >>> U1 = torch.tensor([[0.0], [1.0], [0.0]], dtype=torch.float64)
        >>> stiefel_log(U0, U1).round(decimals=10).flatten().tolist() == [0.0, round(math.pi / 2, 10), 0.0]
        True
    """
    U0 = check_orthogonal(U0, "U0", square=False)
    U1 = check_orthogonal(U1, "U1", square=False)
    if U0.ndim != 2 or U1.ndim != 2:
        raise ValueError(f"U0 and U1 must be 2-d (n, p) matrices, got shapes {tuple(U0.shape)}, {tuple(U1.shape)}")
    if U0.shape != U1.shape:
        raise ValueError(f"U0 and U1 must have the same shape, got {tuple(U0.shape)} and {tuple(U1.shape)}")
    max_iter = check_int(max_iter, "max_iter", minimum=0)
    return_info = check_bool(return_info, "return_info")
    dtype = torch.promote_types(U0.dtype, U1.dtype)
    n, p = U0.shape
    tol = 100.0 * math.sqrt(p) * torch.finfo(dtype).eps if tol is None else check_positive(tol, "tol")
    u0, u1 = U0.double(), U1.double().to(U0.device)
    if n == p:
        if float(_det_sign(u0)) != float(_det_sign(u1)):
            raise ValueError("U0 and U1 are square with determinants of opposite sign: they lie in different "
                             "components of O(n) and no geodesic joins them")
        X = _skew_log64(u0.mT @ u1, dtype, "U0^T U1")
        info = {"iterations": 0, "converged": True, "residual": 0.0}
        out = (u0 @ X).to(dtype)
        return (out, info) if return_info else out
    M = u0.mT @ u1
    Q = _complement(u0, u1)
    N = Q.mT @ u1
    first = torch.cat([M, N], dim=-2)                      # (p + k) x p, orthonormal columns
    full, _ = torch.linalg.qr(first, mode="complete")
    W = full[:, p:]                                        # orthonormal completion
    V = torch.cat([first, W], dim=-1)
    # Procrustes preprocessing (Zimmermann 2017, Sect. 3): rotate the completion so that its lower block is closest
    # to I, keeping det V = +1 (the logarithm needs a rotation).
    Phi = _special_polar(W[p:, :].mT, _det_sign(V))
    V = torch.cat([first, W @ Phi], dim=-1)
    iterations, residual = 0, math.inf
    try:
        for iterations in range(max_iter + 1):
            L = _skew_log64(V, dtype, "the completed matrix V")
            C = L[p:, p:]
            residual = float(torch.linalg.matrix_norm(C))
            if residual <= tol or iterations == max_iter:
                break
            V = torch.cat([V[:, :p], V[:, p:] @ _expm64(-C)], dim=-1)
    except ValueError as err:
        raise ValueError("U0 and U1 are too far apart for the Stiefel logarithm (an iterate reached the cut locus, "
                         "an angle of pi)") from err
    converged = residual <= tol
    if not converged:
        warnings.warn(f"stiefel_log did not converge in {max_iter} iterations (||C||_F = {residual:.3g} > tol = "
                      f"{tol:.3g}); U0 and U1 may be too far apart", RuntimeWarning, stacklevel=2)
    out = (u0 @ L[:p, :p] + Q @ L[p:, :p]).to(dtype)
    info = {"iterations": iterations, "converged": converged, "residual": residual}
    return (out, info) if return_info else out


def stiefel_geodesic(U0: Any, U1: Any, t: Any, *, tol: float | None = None, max_iter: int = 200) -> torch.Tensor:
    r"""Points at time ``t`` on the canonical-metric geodesic from ``U0`` (t = 0) to ``U1`` (t = 1):
    :math:`\exp_{U_0}(t\log_{U_0}U_1)` (:func:`stiefel_log`, :func:`stiefel_exp`).

    ``t`` is a finite number (result ``n x p``) or a 1-d tensor of finite times (result ``(T, n, p)``). ``tol`` and
    ``max_iter`` go to :func:`stiefel_log`.

    Example:
        >>> U0 = torch.eye(3, 1, dtype=torch.float64)
        >>> U1 = torch.tensor([[0.0], [1.0], [0.0]], dtype=torch.float64)
        >>> g = stiefel_geodesic(U0, U1, 0.5).flatten()
        >>> bool(torch.allclose(g, torch.tensor([2 ** -0.5, 2 ** -0.5, 0.0], dtype=torch.float64)))
        True
    """
    U0 = check_orthogonal(U0, "U0", square=False)
    tt = _check_times(t, U0.device)
    Delta = stiefel_log(U0, U1, tol=tol, max_iter=max_iter)
    u0 = U0.double()
    d = Delta.double()
    A = 0.5 * (u0.mT @ d - (u0.mT @ d).mT)
    out = _exp64(u0, d, A, tt, "canonical")
    return out.to(Delta.dtype)
