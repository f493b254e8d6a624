r"""The free end in closed form: affine least squares, ridge, and CCA / partial-whitening alignment.

Row convention: X (n×p), Y (n×q); centred scatters :math:`C_{xx} = (X-\mu_x)^\top(X-\mu_x)`,
:math:`C_{xy} = (X-\mu_x)^\top(Y-\mu_y)`, :math:`C_{yy}` (sums, not divided by n).
"""
from __future__ import annotations

import torch

from .._checks import check_nonnegative
from .procrustes import polar_factor
from .solution import ClosedFormSolution
from .streaming import PairedMoments


def _eig_tol(evals: torch.Tensor) -> float:
    return float(evals.abs().max()) * evals.shape[0] * torch.finfo(torch.float64).eps


def psd_solve(C: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    r"""Minimum-norm solution of :math:`CW = B` for symmetric positive semi-definite ``C``: Cholesky when
    ``C`` is positive definite, else the eigen pseudo-inverse (eigenvalues below
    :math:`p\,\varepsilon\,\lambda_{\max}` treated as zero). Runs on any device."""
    L, info = torch.linalg.cholesky_ex(C)
    if int(info) == 0:
        return torch.cholesky_solve(B, L)
    evals, Q = torch.linalg.eigh(C)
    inv = torch.where(evals > _eig_tol(evals), 1.0 / evals, torch.zeros_like(evals))
    return Q @ (inv[:, None] * (Q.mT @ B))


def psd_power(C: torch.Tensor, power: float) -> torch.Tensor:
    r""":math:`C^{\text{power}}` of a symmetric PSD matrix by eigendecomposition; for negative powers the
    eigenvalues below :math:`p\,\varepsilon\,\lambda_{\max}` are treated as zero (pseudo-inverse)."""
    evals, Q = torch.linalg.eigh(C)
    keep = evals > _eig_tol(evals)
    e = torch.where(keep, evals.clamp_min(0).pow(power) if power > 0 else evals.clamp_min(1e-300).pow(power),
                    torch.zeros_like(evals))
    return (Q * e) @ Q.mT


def solve_affine(m: PairedMoments, *, ridge: float = 0.0) -> ClosedFormSolution:
    r"""Affine least squares / ridge regression: centre, then

    .. math:: W = (C_{xx} + \rho I)^{-1} C_{xy}, \qquad b = \mu_y - \mu_x W,

    with ``ridge`` :math:`\rho \ge 0` on the summed (not averaged) scatter, like :class:`sklearn.linear_model.Ridge`
    (Hoerl & Kennard 1970). :math:`\rho = 0` with a singular :math:`C_{xx}` (n ≤ p, collinear features) gives
    the minimum-norm least-squares solution. Normal equations in float64 (Cholesky) from the streamed moments.
    """
    ridge = check_nonnegative(ridge, "ridge")
    C = m.gram_x(center=True)
    if ridge:
        C = C + ridge * torch.eye(C.shape[0], dtype=C.dtype, device=C.device)
    W = psd_solve(C, m.cross(center=True))
    return ClosedFormSolution(W, m.mean_y() - m.mean_x() @ W)


def solve_cca(m: PairedMoments, *, shrinkage: float = 0.0) -> ClosedFormSolution:
    r"""CCA / partial-whitening alignment (Williams et al. 2021, "Generalized shape metrics", netrep).

    With covariances :math:`\Sigma_x = C_{xx}/n`, :math:`\Sigma_y = C_{yy}/n` and ``shrinkage`` :math:`s \in [0, 1]`,
    :math:`P_x = sI + (1-s)\Sigma_x`, :math:`P_y = sI + (1-s)\Sigma_y`; whiten, solve Procrustes between the
    whitened sets and recolour:

    .. math::

        Q = \operatorname{polar}\big(P_x^{-1/2} C_{xy} P_y^{-1/2}\big),\qquad
        W = P_x^{-1/2}\, Q\, P_y^{1/2},\qquad b = \mu_y - \mu_x W.

    :math:`s = 0` is CCA (full whitening; singular covariances use pseudo-inverses), :math:`s = 1` is centred
    orthogonal Procrustes (``kind="centered"``).
    """
    s = check_nonnegative(shrinkage, "shrinkage")
    if s > 1:
        raise ValueError(f"shrinkage must lie in [0, 1] (0 = CCA, 1 = Procrustes), got {shrinkage!r}")
    Cxy = m.cross(center=True)
    if s == 1:
        W = polar_factor(Cxy)
    else:
        eye_p = torch.eye(m.in_features, dtype=torch.float64, device=m.device)
        eye_q = torch.eye(m.out_features, dtype=torch.float64, device=m.device)
        Px = s * eye_p + (1 - s) * m.gram_x(center=True) / m.n
        Py = s * eye_q + (1 - s) * m.gram_y(center=True) / m.n
        Px_ih, Py_ih, Py_h = psd_power(Px, -0.5), psd_power(Py, -0.5), psd_power(Py, 0.5)
        Q = polar_factor(Px_ih @ Cxy @ Py_ih)
        W = Px_ih @ Q @ Py_h
    return ClosedFormSolution(W, m.mean_y() - m.mean_x() @ W, info={"shrinkage": s})
