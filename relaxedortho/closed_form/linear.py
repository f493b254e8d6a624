r"""The free end in closed form: affine least squares, ridge, and CCA / partial-whitening alignment.

Row convention: X (n×p), Y (n×q); centred scatters :math:`C_{xx} = (X-\mu_x)^\top(X-\mu_x)`,
:math:`C_{xy} = (X-\mu_x)^\top(Y-\mu_y)`, :math:`C_{yy}` (sums, not divided by n).

Numerics: every matrix is divided by its largest absolute entry (or diagonal) before a Cholesky factorisation
or an eigendecomposition and the scale is put back afterwards, so moments of any finite size (1e-300 … 1e300)
give the solution of scale 1, scaled as the kind prescribes (:func:`~.procrustes.max_abs`).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .._checks import check_nonnegative
from .procrustes import max_abs, raise_if_not_finite, scaled_polar
from .solution import ClosedFormSolution
from .streaming import PairedMoments, check_moments

#: netrep's default floor on the eigenvalues of XᵀX (``netrep.utils.whiten(eigval_tol=1e-7)``).
NETREP_EIGVAL_TOL = 1e-7


def _eig_tol(evals: torch.Tensor) -> float:
    return float(evals.abs().max()) * evals.shape[0] * torch.finfo(torch.float64).eps


def _eigh(C: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh`` of a finite symmetric matrix scaled to max-abs 1; a clear error if it fails."""
    try:
        return torch.linalg.eigh(C)
    except torch.linalg.LinAlgError as exc:  # pragma: no cover - LAPACK converges on finite scaled input
        raise ArithmeticError(f"the eigendecomposition of {what} did not converge ({exc}); this is a numerical "
                              "failure of the solver, not a problem of the data") from None


def _scaled_psd(C: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``(C / s, s)`` with ``s`` the largest diagonal entry of the PSD matrix ``C`` (its largest entry), or
    ``(C, 0.0)`` when ``C`` is zero."""
    s = float(torch.diagonal(C).max()) if C.numel() else 0.0
    return (C / s, s) if s > 0 else (C, 0.0)


def psd_solve(C: torch.Tensor, B: torch.Tensor, ridge: float = 0.0) -> torch.Tensor:
    r"""Minimum-norm solution of :math:`(C + \rho I)W = B` for symmetric positive semi-definite ``C`` and
    ``ridge`` :math:`\rho \ge 0`: Cholesky when the matrix is positive definite, else the eigen pseudo-inverse
    (eigenvalues below :math:`p\,\varepsilon\,\lambda_{\max}` treated as zero).

    ``C`` (with :math:`\rho`) and ``B`` are scaled to a largest entry of 1 first and the solution is scaled
    back, so entries of any finite size work; an :class:`OverflowError` says when the solution itself is beyond
    the float64 range. Runs on any device."""
    raise_if_not_finite(C, "the scatter matrix")
    raise_if_not_finite(B, "the cross product")
    Cs, sc = _scaled_psd(C)
    sb = max_abs(B)
    if sb == 0 or (sc == 0 and ridge == 0):
        return torch.zeros_like(B)
    if sc == 0 or ridge / sc > 1 / torch.finfo(C.dtype).eps ** 2:  # the ridge dwarfs C: W = B / ridge
        return _rescale(B / sb, sb, ridge, "the least-squares map")
    if ridge:
        Cs = Cs + (ridge / sc) * torch.eye(C.shape[0], dtype=C.dtype, device=C.device)
    Bs = B / sb
    L, info = torch.linalg.cholesky_ex(Cs)
    if int(info) == 0:
        Ws = torch.cholesky_solve(Bs, L)
    else:
        evals, Q = _eigh(Cs, "the scatter matrix")
        inv = torch.where(evals > _eig_tol(evals), 1.0 / evals, torch.zeros_like(evals))
        Ws = Q @ (inv[:, None] * (Q.mT @ Bs))
    return _rescale(Ws, sb, sc, "the least-squares map")


def _rescale(W: torch.Tensor, num: float, den: float, what: str) -> torch.Tensor:
    """``W * num / den`` without an intermediate overflow or underflow; an :class:`OverflowError` naming
    ``what`` if the result itself is beyond the float64 range."""
    ratio = num / den
    tiny = torch.finfo(W.dtype).tiny
    if math.isfinite(ratio) and ratio >= tiny:
        out = W * ratio
    else:
        big = max_abs(W)
        # choose the order of the two operations that keeps the intermediate in range
        out = (W * num) / den if (big * num < 1 / tiny) else (W / den) * num
    if not bool(torch.isfinite(out).all()):
        raise OverflowError(f"{what} has entries beyond the float64 range (|Y|/|X| about {ratio:.3g}); "
                            "rescale X or Y before fitting")
    return out


def psd_power(C: torch.Tensor, power: float) -> torch.Tensor:
    r""":math:`C^{\text{power}}` of a symmetric PSD matrix by eigendecomposition; for negative powers the
    eigenvalues below :math:`p\,\varepsilon\,\lambda_{\max}` are treated as zero (pseudo-inverse). ``C`` is
    scaled to a largest entry of 1 first."""
    raise_if_not_finite(C, "the matrix")
    Cs, s = _scaled_psd(C)
    if s == 0:
        return torch.zeros_like(C)
    evals, Q = _eigh(Cs, "the matrix")
    keep = evals > _eig_tol(evals)
    e = torch.where(keep, evals.clamp_min(0).pow(power) if power > 0 else evals.clamp_min(1e-300).pow(power),
                    torch.zeros_like(evals))
    return (Q * (e * s ** power)) @ Q.mT


def solve_affine(m: PairedMoments, *, ridge: float = 0.0) -> ClosedFormSolution:
    r"""Affine least squares / ridge regression: centre, then

    .. math:: W = (C_{xx} + \rho I)^{-1} C_{xy}, \qquad b = \mu_y - \mu_x W,

    with ``ridge`` :math:`\rho \ge 0` on the summed (not averaged) scatter, like :class:`sklearn.linear_model.Ridge`
    (Hoerl & Kennard 1970). :math:`\rho = 0` with a singular :math:`C_{xx}` (n ≤ p, collinear features) gives
    the minimum-norm least-squares solution. Normal equations in float64 (Cholesky, :func:`psd_solve`) from the
    streamed moments, scaled so that :math:`C_{xx}` has largest entry 1: X scaled by a and Y by c give
    :math:`W c/a` for every finite a, c (with :math:`\rho` scaled by :math:`a^2`).
    """
    check_moments(m)
    ridge = check_nonnegative(ridge, "ridge")
    W = psd_solve(m.gram_x(center=True), m.cross(center=True), ridge)
    return ClosedFormSolution(W, m.mean_y() - m.mean_x() @ W)


class PartialWhitening(NamedTuple):
    r"""netrep's partial whitening of a centred scatter :math:`C = V\operatorname{diag}(\lambda)V^\top`.

    ``Z`` is :math:`V\operatorname{diag}(d)V^\top` with :math:`d = \alpha + (1-\alpha)\lambda^{-1/2}` (not rescaled),
    ``Z_pinv`` its pseudo-inverse and ``variance_scale`` netrep's factor
    :math:`k = \sqrt{\sum\lambda / \sum d^2\lambda}` (``preserve_variance=True``: :math:`kZ` keeps
    :math:`\operatorname{tr}(Z^\top CZ) = \operatorname{tr}C`).
    """

    Z: torch.Tensor
    Z_pinv: torch.Tensor
    variance_scale: float


def partial_whitening(C: torch.Tensor, alpha: float, eigval_tol: float | None = None) -> PartialWhitening:
    r"""The partial whitening matrix of netrep (Williams et al. 2021; ``docs/math.md`` §5) for the centred
    scatter ``C`` (:math:`X^\top X` of centred X, a sum over rows as in netrep).

    With :math:`C = V\operatorname{diag}(\lambda)V^\top`: :math:`Z = V\operatorname{diag}(\alpha + (1-\alpha)
    \lambda^{-1/2})V^\top`. ``eigval_tol=None`` treats eigenvalues at rounding level
    (:math:`\le p\,\varepsilon\,\lambda_{\max}`) as exact zeros (their :math:`\lambda^{-1/2}` term is dropped, the
    pseudo-inverse convention: a scale-free choice); a number clips the eigenvalues at it as netrep does
    (``eigval_tol=1e-7`` reproduces ``netrep.utils.whiten`` exactly, including on rank-deficient data).
    """
    raise_if_not_finite(C, "the scatter matrix")
    p = C.shape[0]
    Cs, s = _scaled_psd(C)
    if s == 0:
        evals = torch.zeros(p, dtype=C.dtype, device=C.device)
        V = torch.eye(p, dtype=C.dtype, device=C.device)
    else:
        evals, V = _eigh(Cs, "the scatter matrix")
        evals = evals.clamp_min(0)                       # eigenvalues of C / s
    if eigval_tol is None:
        keep = evals > _eig_tol(evals) if s > 0 else torch.zeros_like(evals, dtype=torch.bool)
        ell = torch.where(keep, evals, torch.zeros_like(evals))          # lambda / s
        inv_sqrt = torch.where(keep, evals.clamp_min(1e-300).rsqrt(), torch.zeros_like(evals)) / math.sqrt(s or 1.0)
    else:
        # netrep's clip lambda = max(lambda, tol), held as lambda / s2 with s2 = max(s, tol) (no overflow)
        s2 = max(s, eigval_tol)
        ell = (evals * (s / s2)).clamp_min(eigval_tol / s2)
        inv_sqrt = ell.rsqrt() / math.sqrt(s2)
    d = alpha + (1 - alpha) * inv_sqrt
    d_pinv = torch.where(d > 0, 1.0 / d.clamp_min(1e-300), torch.zeros_like(d))
    var = float((d * d * ell).sum())
    k = math.sqrt(float(ell.sum()) / var) if var > 0 else 1.0
    return PartialWhitening((V * d) @ V.mT, (V * d_pinv) @ V.mT, k)


def solve_cca(m: PairedMoments, *, shrinkage: float = 0.0, eigval_tol: float | None = None) -> ClosedFormSolution:
    r"""CCA and netrep's partial-whitening family between CCA and Procrustes (Williams, Kunz, Kornblith &
    Linderman 2021, "Generalized shape metrics on neural representations", NeurIPS; the ``alpha`` of
    ``netrep.metrics.LinearMetric``; ``docs/math.md`` §5).

    With the centred scatters :math:`C_{xx} = V_x\operatorname{diag}(\lambda^x)V_x^\top` (sums over rows, as in
    netrep) and ``shrinkage`` :math:`\alpha \in [0, 1]`, the partial whitening matrices

    .. math::

        Z_x = V_x \operatorname{diag}\big(\alpha + (1-\alpha)(\lambda^x)^{-1/2}\big) V_x^\top, \qquad
        Z_y \text{ likewise},

    interpolate the whitening *matrix* between :math:`C_{xx}^{-1/2}` (α = 0) and the identity (α = 1). netrep
    aligns :math:`XZ_x` and :math:`YZ_y` with Procrustes; as a map X → Y:

    .. math::

        Q = \operatorname{polar}\big(Z_x C_{xy} Z_y\big),\qquad W = Z_x\, Q\, Z_y^{+},\qquad b = \mu_y - \mu_x W.

    α = 0 is CCA, :math:`W = C_{xx}^{-1/2} Q\, C_{yy}^{1/2}` (singular scatters use pseudo-inverses), α = 1 is
    centred orthogonal Procrustes (``kind="centered"``). netrep rescales each Z by a scalar that preserves the
    total variance; a scalar changes neither Q nor netrep's angular distance, and the map above omits it so that
    α = 0 reproduces Y exactly when Y is an invertible linear image of X. The scaled matrices :math:`k_xZ_x`,
    :math:`k_yZ_y` (:func:`partial_whitening`) are returned in ``info["whitening_x"]``, ``info["whitening_y"]``:
    ``(X - μ_x) @ info["whitening_x"] @ U`` is netrep's ``transform_X`` with ``U`` from the SVD of
    :math:`k_xk_y Z_xC_{xy}Z_y`.

    The interpolation mixes a unitless α with :math:`\lambda^{-1/2}`, so for 0 < α < 1 the map depends on the
    scale of the data and on n, exactly as in netrep; α = 0 and α = 1 are scale equivariant. ``eigval_tol``:
    see :func:`partial_whitening` (``None``, the default, agrees with netrep whenever every eigenvalue of both
    scatters exceeds netrep's floor 1e-7; ``1e-7`` reproduces netrep everywhere).

    Earlier versions interpolated the covariance, :math:`\alpha I + (1-\alpha)\Sigma` (canonical ridge), and
    attributed it to netrep; the two families agree only at the two ends (``docs/math.md`` §5).
    """
    check_moments(m)
    a = check_nonnegative(shrinkage, "shrinkage")
    if a > 1:
        raise ValueError(f"shrinkage must lie in [0, 1] (0 = CCA, 1 = Procrustes), got {shrinkage!r}")
    if eigval_tol is not None:
        eigval_tol = check_nonnegative(eigval_tol, "eigval_tol")
        if eigval_tol == 0:
            raise ValueError("eigval_tol must be > 0 (None treats rounding-level eigenvalues as zero)")
    Cxy = m.cross(center=True)
    raise_if_not_finite(Cxy, "the cross product")
    if a == 1:
        eye_p = torch.eye(m.in_features, dtype=Cxy.dtype, device=Cxy.device)
        eye_q = torch.eye(m.out_features, dtype=Cxy.dtype, device=Cxy.device)
        W = scaled_polar(Cxy)
        return ClosedFormSolution(W, m.mean_y() - m.mean_x() @ W,
                                  info={"shrinkage": a, "whitening_x": eye_p, "whitening_y": eye_q})
    wx = partial_whitening(m.gram_x(center=True), a, eigval_tol)
    wy = partial_whitening(m.gram_y(center=True), a, eigval_tol)
    # polar() is invariant to positive scalars: scale each factor to max-abs 1 so no product over/underflows
    T = (wx.Z / (max_abs(wx.Z) or 1.0)) @ (Cxy / (max_abs(Cxy) or 1.0)) @ (wy.Z / (max_abs(wy.Z) or 1.0))
    Q = scaled_polar(T)
    W = wx.Z @ Q @ wy.Z_pinv
    raise_if_not_finite(W, "the CCA map")
    info = {"shrinkage": a, "whitening_x": wx.variance_scale * wx.Z, "whitening_y": wy.variance_scale * wy.Z}
    return ClosedFormSolution(W, m.mean_y() - m.mean_x() @ W, info=info)
