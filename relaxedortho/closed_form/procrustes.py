r"""The Procrustes family: orthogonal, rotation, compressing least squares, centred, similarity, anchored,
generalized.

Row convention (``docs/math.md`` §5): data X (n×p), Y (n×q), a map W (p×q) predicts XW; with
:math:`M = X^\top Y = U\Sigma V^\top` (thin SVD). Every solver takes :class:`~.streaming.PairedMoments`
and returns a :class:`~.solution.ClosedFormSolution` in float64.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from .._checks import as_float_tensor, check_bool, check_int, check_nonnegative
from ..linalg import polar
from .solution import ClosedFormSolution
from .stiefel_lsq import stiefel_lsq
from .streaming import PairedMoments, check_moments


def max_abs(t: torch.Tensor) -> float:
    """The largest absolute entry of ``t`` as a Python float (0.0 for an empty tensor)."""
    return float(t.abs().amax()) if t.numel() else 0.0


def raise_if_not_finite(t: torch.Tensor, what: str) -> torch.Tensor:
    """An :class:`OverflowError` naming ``what`` when ``t`` has a NaN or Inf entry.

    The solvers only see moments of finite data (``accumulate_moments`` rejects NaN/Inf), so a non-finite
    matrix here is an overflow of a finite computation, never bad data; the message says so. Returns ``t``."""
    if not bool(torch.isfinite(t).all()):
        raise OverflowError(f"{what} has NaN or Inf entries although the data are finite: a sum of products "
                            "overflowed the float range; divide X and Y by a common factor (orthogonal kinds do "
                            "not change)")
    return t


def _matrix(M: Any) -> torch.Tensor:
    """A user's matrix for :func:`polar_factor` / :func:`rotation_factor`: floating, 2-D, finite."""
    M = as_float_tensor(M, "M")
    if M.ndim != 2:
        raise ValueError(f"M must be a 2-D matrix, got shape {tuple(M.shape)}")
    return M


def scaled_polar(M: torch.Tensor) -> torch.Tensor:
    """:func:`polar_factor` of a finite matrix computed by the library (no input checks): ``M`` divided by its
    largest absolute entry before the SVD."""
    s = max_abs(M)
    return polar(M / s if s > 0 else M)


def scaled_rotation(M: torch.Tensor) -> torch.Tensor:
    """:func:`rotation_factor` of a finite square matrix computed by the library (no input checks)."""
    s = max_abs(M)
    u, _, vh = torch.linalg.svd(M / s if s > 0 else M)
    d = torch.linalg.det(u @ vh)
    u = u.clone()
    u[:, -1] = u[:, -1] * torch.sign(d).where(d != 0, torch.ones_like(d))
    return u @ vh


def polar_factor(M: torch.Tensor) -> torch.Tensor:
    r"""The orthogonal polar factor :math:`UV^\top` of :math:`M = U\Sigma V^\top` (thin SVD), p×q.

    The maximiser of :math:`\operatorname{tr}(W^\top M)` over matrices with orthonormal columns (p ≥ q) or
    rows (p < q) (Schönemann 1966). When ``M`` is rank-deficient (e.g. n < d) the maximiser is not unique;
    the SVD's orthonormal completion is returned, still a valid orthonormal matrix. The factor is invariant
    to a positive scale of ``M``, so ``M`` is divided by its largest absolute entry before the SVD: entries of
    any finite size (1e-300 … 1e300) give the same factor.

    Raises:
        TypeError: ``M`` is not a floating tensor or array.
        ValueError: ``M`` is not 2-D or has NaN/Inf entries.
    """
    return scaled_polar(_matrix(M))


def rotation_factor(M: torch.Tensor) -> torch.Tensor:
    r"""The maximiser of :math:`\operatorname{tr}(W^\top M)` over :math:`SO(p)` (square ``M``):
    :math:`U\,\mathrm{diag}(1,\dots,1,\det(UV^\top))\,V^\top` (Kabsch 1976; Umeyama 1991). Scale invariant like
    :func:`polar_factor` (``M`` is divided by its largest absolute entry first).

    Raises:
        TypeError: ``M`` is not a floating tensor or array.
        ValueError: ``M`` is not a square 2-D matrix or has NaN/Inf entries.
    """
    M = _matrix(M)
    if M.shape[0] != M.shape[1]:
        raise ValueError(f"M must be square for a rotation (det is defined for square maps), got shape "
                         f"{tuple(M.shape)}")
    return scaled_rotation(M)


def solve_orthogonal(m: PairedMoments) -> ClosedFormSolution:
    r"""Orthogonal Procrustes (Schönemann 1966): :math:`\arg\min_{W}\lVert XW - Y\rVert_F` over orthonormal W is
    :math:`W = UV^\top` with :math:`X^\top Y = U\Sigma V^\top`.

    For p ≤ q (square or expanding, :math:`WW^\top = I_p`) this is the least-squares optimum; for p > q it
    maximises :math:`\operatorname{tr}(W^\top X^\top Y)` only (see :func:`solve_orthogonal_lsq`). It equals
    SciPy's ``orthogonal_procrustes`` on data zero-padded to a common width (restricted to the first p rows
    and q columns).
    """
    check_moments(m)
    W = scaled_polar(raise_if_not_finite(m.cross(), "the cross product X^T Y"))
    return ClosedFormSolution(W, orthogonal=True)


def solve_rotation(m: PairedMoments) -> ClosedFormSolution:
    r"""Rotation-only Procrustes (Kabsch 1976, Umeyama 1991): the best W in :math:`SO(p)`,
    :math:`W = U\,\mathrm{diag}(1,\dots,1,\det(UV^\top))\,V^\top`. Needs p = q."""
    check_moments(m)
    if m.in_features != m.out_features:
        raise ValueError(f"kind='rotation' needs X and Y of equal width (det is defined for square maps), got "
                         f"{m.in_features} and {m.out_features}")
    W = scaled_rotation(raise_if_not_finite(m.cross(), "the cross product X^T Y"))
    return ClosedFormSolution(W, orthogonal=True, group="SO")


def orthogonal_lsq_objective(A: torch.Tensor, M: torch.Tensor, W: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
    r""":math:`\lVert XW - Y\rVert_F^2 = \operatorname{tr}(W^\top A W) - 2\operatorname{tr}(W^\top M) + \lVert Y\rVert_F^2`
    from the moments :math:`A = X^\top X`, :math:`M = X^\top Y`."""
    return (W * (A @ W)).sum() - 2 * (W * M).sum() + yy


def solve_orthogonal_lsq(m: PairedMoments, *, max_iter: int = 500, tol: float = 1e-12,
                         restarts: int = 4) -> ClosedFormSolution:
    r"""Least-squares optimum over maps with orthonormal columns (unbalanced / compressing Procrustes, p > q).

    Minimises :math:`f(W) = \lVert XW - Y\rVert_F^2` subject to :math:`W^\top W = I_q` from the moments
    :math:`A = X^\top X`, :math:`M = X^\top Y` by Riemannian trust-region Newton on the Stiefel manifold
    (:func:`~relaxedortho.closed_form.stiefel_lsq.stiefel_lsq`; Absil, Baker & Gallivan 2007), which converges
    quadratically whatever the conditioning of X; Kiers' (1990) majorization, used before, converges linearly
    at rate :math:`1 - \lambda_{\min}(A)/\lambda_{\max}(A)` (measured for p = 64, q = 16 and feature scales
    1 … 0.01: still 0.03 from the optimal W after its old default of 500 iterations, within 3e-11 only after
    10 000; ``benchmarks/bench_orthogonal_lsq.py``). It starts at the better of
    :math:`W_0 = UV^\top` (:func:`solve_orthogonal`) and the polar factor of the least-squares map and never
    increases f, so the result is never worse than UVᵀ. A point satisfying the sufficient condition
    :math:`\lambda_{\max}(W^\top(AW - M)) \le \lambda_{\min}(A)` is the global optimum
    (``info["certified_global"]``); otherwise ``restarts`` seeded random starts are tried too and the best
    kept. For p ≤ q, :math:`\lVert XW\rVert_F` is constant on the feasible set and UVᵀ is exact; it is exact too
    when :math:`X^\top X \propto I`.

    ``tol`` bounds the relative Riemannian gradient, ``max_iter`` (≥ 1) the trust-region iterations per start;
    up to two Newton steps follow while each halves the gradient, which takes W to rounding level (the gradient
    criterion alone bounds W's error only by the gradient over the smallest Hessian eigenvalue). A
    :class:`~relaxedortho.exceptions.ConvergenceWarning` says when the returned run did not converge. ``info`` holds
    ``iterations``, ``polish_steps``, ``hessian_products``, ``converged``, ``stalled``, ``gradient_norm``,
    ``certified_global``, ``starts`` and the objective history (up to the constant :math:`\lVert Y\rVert_F^2`).
    """
    check_moments(m)
    max_iter = check_int(max_iter, "max_iter")
    restarts = check_int(restarts, "restarts", minimum=0)
    tol = check_nonnegative(tol, "tol")
    M = m.cross()
    raise_if_not_finite(M, "the cross product X^T Y")
    if m.in_features <= m.out_features:
        return ClosedFormSolution(scaled_polar(M), orthogonal=True,
                                  info={"iterations": 0, "polish_steps": 0, "hessian_products": 0,
                                        "converged": True, "stalled": False, "gradient_norm": 0.0,
                                        "certified_global": True, "starts": 0, "objective": []})
    A = m.gram_x()
    raise_if_not_finite(A, "the Gram matrix X^T X")
    W, info = stiefel_lsq(A, M, max_iter=max_iter, tol=tol, restarts=restarts)
    return ClosedFormSolution(W, orthogonal=True, info=info)


def solve_centered(m: PairedMoments) -> ClosedFormSolution:
    r"""Orthogonal Procrustes up to a mean shift (Gupta et al. 2026, "Canonicalizing multimodal contrastive
    representation learning"): :math:`W = \operatorname{polar}\big((X-\mu_x)^\top(Y-\mu_y)\big)`,
    :math:`b = \mu_y - \mu_x W`."""
    check_moments(m)
    W = scaled_polar(raise_if_not_finite(m.cross(center=True), "the centred cross product"))
    return ClosedFormSolution(W, m.mean_y() - m.mean_x() @ W, orthogonal=True)


def solve_similarity(m: PairedMoments, *, rotation: bool = False) -> ClosedFormSolution:
    r"""Similarity transform (Umeyama 1991, IEEE TPAMI 13(4)): :math:`y \approx c\,xW + t`.

    Centre both sets; with :math:`\Sigma_{xy} = (X-\mu_x)^\top(Y-\mu_y)/n = UDV^\top`, :math:`W = UV^\top`
    (or with the reflection fix :math:`U\,\mathrm{diag}(1,…,\det)\,V^\top` when ``rotation=True``, as in
    Umeyama's paper), the scale :math:`c = \operatorname{tr}(W^\top\Sigma_{xy})/\sigma_x^2` with
    :math:`\sigma_x^2 = \lVert X-\mu_x\rVert_F^2/n` (both normalised by 1/n; the scale is not symmetric in x, y),
    and :math:`t = \mu_y - c\,\mu_x W`. For compressing maps (p > q) the denominator is
    :math:`\lVert (X-\mu_x)W\rVert_F^2/n`, the optimal scale for the chosen W. Returned as an affine map with
    weight :math:`cW^\top`.
    """
    check_moments(m)
    if not isinstance(rotation, bool):
        raise TypeError(f"rotation must be a bool, got {type(rotation).__name__}")
    C = m.cross(center=True)
    raise_if_not_finite(C, "the centred cross product")
    if rotation:
        if m.in_features != m.out_features:
            raise ValueError("rotation=True needs X and Y of equal width")
        W = scaled_rotation(C)
    else:
        W = scaled_polar(C)
    # c = tr(W^T C) / denom, each factor scaled to max-abs 1 (no overflow for data of any finite size)
    G = m.gram_x(center=True)
    raise_if_not_finite(G, "the centred Gram matrix")
    sg, sc = max_abs(G), max_abs(C)
    Gs = G / sg if sg > 0 else G
    denom = (W * (Gs @ W)).sum() if m.in_features > m.out_features else torch.trace(Gs)
    if sg == 0 or float(denom) <= 0:
        raise ValueError("X has zero variance: the similarity scale is undefined")
    c_rel = float((W * (C / sc)).sum() / denom) if sc > 0 else 0.0
    c = c_rel * (sc / sg)
    if not math.isfinite(c):
        raise OverflowError(f"the similarity scale (|Y|/|X| about {sc / sg:.3g}) is beyond the float64 range; "
                            "rescale X or Y before fitting")
    return ClosedFormSolution(c * W, m.mean_y() - c * (m.mean_x() @ W), info={"scale": c})


def solve_anchored(m: PairedMoments, *, prior: Any, gamma: float) -> ClosedFormSolution:
    r"""Anchored (few-shot) Procrustes: :math:`\arg\min_{W}\lVert XW - Y\rVert_F^2 + \gamma\lVert W - W_0\rVert_F^2`
    over orthonormal W is :math:`\operatorname{polar}(X^\top Y + \gamma W_0)` (for p ≤ q, where
    :math:`\lVert XW\rVert_F` and :math:`\lVert W\rVert_F` are constant on the feasible set).

    ``prior`` is the anchor given like a module weight, **out×in** (q×p), i.e. :math:`W_0^\top`, or a map
    module whose ``.weight`` is used. ``gamma`` ≥ 0 weighs it: 0 is plain Procrustes, ∞ returns polar(W₀).
    """
    check_moments(m)
    W0 = prior_rows(prior, m)
    gamma = check_nonnegative(gamma, "gamma", allow_inf=True)
    M = m.cross()
    raise_if_not_finite(M, "the cross product X^T Y")
    # polar(M + gamma W0) is invariant to a positive scale: divide both terms by the larger one first
    sm, sw = max_abs(M), gamma * max_abs(W0)
    if gamma == float("inf") or not math.isfinite(sw) or (sw > 0 and sm / sw < torch.finfo(M.dtype).eps ** 2):
        return ClosedFormSolution(scaled_polar(W0), orthogonal=True)
    c = max(sm, sw)
    if c == 0:
        return ClosedFormSolution(scaled_polar(M), orthogonal=True)
    return ClosedFormSolution(scaled_polar(M / c + (gamma / c) * W0), orthogonal=True)


def prior_rows(prior: Any, m: PairedMoments) -> torch.Tensor:
    """The anchor ``prior`` (out×in matrix or map module) as a float64 p×q matrix on the moments' device."""
    if prior is None:
        raise ValueError("kind='anchored' needs prior= (the anchor map: an out x in matrix or a map module)")
    w = prior.weight.detach() if hasattr(prior, "weight") and not isinstance(prior, torch.Tensor) else prior
    w = as_float_tensor(w, "prior", ndim=2)
    if tuple(w.shape) != (m.out_features, m.in_features):
        raise ValueError(f"prior must have shape (out_features, in_features) = ({m.out_features}, "
                         f"{m.in_features}), got {tuple(w.shape)}")
    return w.to(dtype=torch.float64, device=m.device).mT


def generalized_procrustes(views: Sequence[Any], *, center: bool = True, max_iter: int = 100,
                           tol: float = 1e-10) -> tuple[list, torch.Tensor, dict]:
    r"""Generalized Procrustes analysis over K paired views (Gower 1975, *Psychometrika* 40).

    Minimises :math:`\sum_k \lVert X_k R_k - Z\rVert_F^2` over orthogonal :math:`R_k` (d×d) and the consensus
    :math:`Z` by alternating :math:`R_k = \operatorname{polar}(X_k^\top Z)` and
    :math:`Z = \frac1K\sum_k X_k R_k`. Each step cannot increase the objective (monotone), which converges to a
    local optimum; it starts from :math:`Z = X_1`.

    Args:
        views: K ≥ 2 arrays (n×d each, same n and d; NumPy or torch).
        center: subtract each view's mean first and give each map the bias :math:`-\mu_k R_k` (default True).
        max_iter, tol: stop after ``max_iter`` sweeps or when the relative decrease is below ``tol``.

    Returns:
        ``(maps, consensus, info)``: one :class:`~relaxedortho.OrthogonalLinear` per view (view → consensus,
        in the views' dtype), the consensus (n×d, float64) and ``info`` with the objective history.
    """
    if isinstance(views, (torch.Tensor, str)) or not isinstance(views, Sequence):
        raise TypeError(f"views must be a list of arrays (one per view), got {type(views).__name__}")
    if len(views) < 2:
        raise ValueError(f"views must hold at least 2 arrays, got {len(views)}")
    center = check_bool(center, "center")
    max_iter = check_int(max_iter, "max_iter")
    tol = check_nonnegative(tol, "tol")
    Xs = [as_float_tensor(v, f"views[{i}]", ndim=2) for i, v in enumerate(views)]
    for i, x in enumerate(Xs[1:], 1):
        if x.shape != Xs[0].shape:
            raise ValueError(f"views[{i}] has shape {tuple(x.shape)} but views[0] has {tuple(Xs[0].shape)}; "
                             "all views must have the same shape")
    if center and Xs[0].shape[0] < 2:
        raise ValueError("views need at least 2 rows to be centred")
    dtype = Xs[0].dtype
    # the rotations do not depend on a common scale of the views: divide by the largest absolute entry so no
    # mean, product or objective overflows; the consensus, the biases and the objective are scaled back
    scale = max(max_abs(x) for x in Xs) or 1.0
    X64 = [x.to(torch.float64) / scale for x in Xs]
    means = [x.mean(0) if center else torch.zeros(x.shape[1], dtype=torch.float64, device=x.device) for x in X64]
    X64 = [x - mu for x, mu in zip(X64, means)]
    Z = X64[0].clone()
    Rs = [torch.eye(Z.shape[1], dtype=torch.float64, device=Z.device) for _ in X64]
    history = []
    for _ in range(max_iter):
        Rs = [scaled_polar(x.mT @ Z) for x in X64]
        aligned = [x @ r for x, r in zip(X64, Rs)]
        Z = torch.stack(aligned).mean(0)
        obj = float(sum(((a - Z) ** 2).sum() for a in aligned))
        history.append(obj)
        if len(history) > 1 and history[-2] - obj <= tol * max(1.0, abs(obj)):
            break
    sols = [ClosedFormSolution(r, -((mu * scale) @ r) if center else None, orthogonal=True)
            for r, mu in zip(Rs, means)]
    history = [h * scale * scale for h in history]
    return [s.to_module(dtype) for s in sols], Z * scale, {"objective": history, "iterations": len(history)}
