r"""Relaxed Procrustes: the least-squares map kept near the orthogonal group, in closed form for whitened data.

Row convention: X (n×p), Y (n×q), W (p×q), :math:`M = X^\top Y = U\Sigma V^\top`, :math:`k = \min(p, q)`,
:math:`s_i` the singular values of W, :math:`G(W)` the small Gram (its eigenvalues are :math:`s_i^2`).

**Whitened data** (:math:`X^\top X = cI`). Then :math:`\lVert XW - Y\rVert_F^2 = c\lVert W - M/c\rVert_F^2 +`
const, and every constraint or penalty below depends on W only through its singular values, so by von
Neumann's trace inequality the optimum is :math:`W = U\,\mathrm{diag}(s)\,V^\top` with :math:`s` solving a
scalar problem per singular value (``docs/math.md`` §5, derived for this library and checked against
``scipy.optimize``):

- penalty :math:`\min \lVert XW - Y\rVert^2 + \mu\lVert G(W) - I\rVert_F^2`: :math:`s_i` is the positive root of
  :math:`2\mu s^3 + (c - 2\mu)s - \sigma_i = 0` (:math:`\mu \to 0`: least squares :math:`M/c`;
  :math:`\mu\to\infty`: :math:`UV^\top`);
- band :math:`\sigma_i(W) \in [a, b]`: :math:`s = \mathrm{clip}(\sigma/c, a, b)`; a spectral tolerance
  :math:`\lVert G - I\rVert_2 \le \varepsilon` is the band :math:`a = \sqrt{\max(0, 1-\varepsilon)}`,
  :math:`b = \sqrt{1+\varepsilon}` (:func:`band_from_epsilon`), which allows :math:`\lVert G - I\rVert_F` up to
  :math:`\sqrt k\,\varepsilon`;
- Frobenius ball :math:`\lVert G(W) - I\rVert_F \le r` (the quantity :class:`~relaxedortho.LambdaOrthoLinear`
  holds near its ``lam``): the Euclidean projection of :math:`\sigma/c` on
  :math:`\{s : \sum (s_i^2 - 1)^2 \le r^2\}`, i.e. the penalty cubic with c = 1 and one shared multiplier found
  by bisection so that the constraint is active.

**Non-whitened data**: no closed form. The iterative solver (:mod:`~relaxedortho.closed_form.relaxed_solver`)
minimises the least-squares objective from the moments :math:`X^\top X`, :math:`X^\top Y` with the same
singular-value maps as projection (band, ball) or proximal map (penalty): projected gradient in the eigenbasis of
:math:`X^\top X`, accelerated by L-BFGS (PANOC), from the closed form above with
:math:`c = \operatorname{tr}(X^\top X)/p`, until a relative KKT residual is at most ``tol``. It reaches a
stationary point (the global optimum when only the upper band bound binds, the set then being convex). Exact
shortcuts: when :math:`X^\top X` is invertible and the least-squares map satisfies the constraint, it is the
optimum; when every singular value is pinned to one value a (radius 0, band [a, a], μ = ∞) and p ≤ q,
:math:`WW^\top = a^2 I` makes :math:`\operatorname{tr}(W^\top X^\top XW)` constant and the optimum is a times the
polar factor :math:`UV^\top` of :math:`X^\top Y`.

Options shared by the relaxed kinds: ``center=True`` fits on centred data and adds the bias
:math:`\mu_y - \mu_x W`; ``solver`` is ``"auto"`` (the closed form when :math:`X^\top X` is a multiple of the
identity up to ``whitened_tol``, else the iterative solver), ``"closed_form"`` (the whitened formula with
:math:`c = \operatorname{tr}(X^\top X)/p`, a heuristic on other data) or ``"projected_gradient"`` (the
iterative solver); ``max_iter`` and ``tol`` (the relative KKT residual at which it stops; at ``max_iter`` it
warns with :class:`~relaxedortho.exceptions.ConvergenceWarning` and returns the best point it reached). The
solution's ``info`` says which path ran (``solver``: ``"closed_form"``, ``"least_squares"``, ``"polar"`` or
``"projected_gradient"``) and holds ``iterations``, ``residual`` and ``converged``.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch

from .._checks import check_choice, check_device, check_nonnegative
from .distributed import solve_once
from .relaxed_solver import DEFAULT_MAX_ITER, DEFAULT_TOL, minimize_spectral
from .singular_value_maps import ball_values, band_values, map_singular_values, penalty_values
from .solution import ClosedFormSolution
from .streaming import PairedMoments, accumulate_moments

SOLVERS = ("auto", "closed_form", "projected_gradient")

#: Relative tolerance :math:`\lVert X^\top X - cI\rVert_F \le` tol :math:`\cdot \lVert X^\top X\rVert_F` under
#: which ``solver="auto"`` treats X as whitened and uses the closed form.
WHITENED_TOL = 1e-8


def band_from_epsilon(epsilon: float) -> tuple[float, float]:
    r"""The singular-value band of a spectral tolerance ε: :math:`\lVert G - I\rVert_2 \le \varepsilon \iff
    \sigma_i \in [\sqrt{\max(0, 1-\varepsilon)}, \sqrt{1+\varepsilon}]`.

    Such a map may have :math:`\lVert G - I\rVert_F` up to :math:`\sqrt{k}\,\varepsilon` (k = min(p, q)), the
    value to give :class:`~relaxedortho.LambdaOrthoLinear`'s ``lam`` for the same guarantee.

    Example:
        >>> band_from_epsilon(0.21)
        (0.8888194417315589, 1.1)
    """
    eps = check_nonnegative(epsilon, "epsilon", allow_inf=True)
    return math.sqrt(max(0.0, 1.0 - eps)), math.sqrt(1.0 + eps)


def penalty_singular_values(sigma: torch.Tensor, c: float, mu: float) -> torch.Tensor:
    r"""Minimiser over :math:`s \ge 0` of :math:`c s^2 - 2\sigma s + \mu (s^2 - 1)^2`, elementwise: the unique
    positive root of :math:`2\mu s^3 + (c - 2\mu)s - \sigma = 0` (``sigma`` ≥ 0, ``c`` ≥ 0, ``mu`` ≥ 0; μ = 0
    gives σ/c, μ = ∞ gives 1).

    The cubic is convex on :math:`s > 0` and negative at 0, so Newton's method from a point right of the root
    decreases monotonically to it (float64; the short vector is solved on the CPU;
    :func:`~relaxedortho.closed_form.singular_value_maps.cubic_roots`).
    """
    c = check_nonnegative(c, "c")
    mu = check_nonnegative(mu, "mu", allow_inf=True)
    z = _singular_values_arg(sigma, "sigma")
    if mu == math.inf:
        return torch.ones_like(sigma)
    if mu == 0 and c == 0:
        raise ValueError("penalty_singular_values needs c > 0 or mu > 0 (c = mu = 0 has no minimiser)")
    if mu == 0:
        return sigma / c
    return torch.from_numpy(penalty_values(z, c, mu)).to(sigma.device, sigma.dtype)


def _singular_values_arg(z: Any, name: str) -> np.ndarray:
    """``z`` as a float64 NumPy vector of finite values >= 0, or a one-line error naming ``name``."""
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of singular values, got {type(z).__name__}")
    zz = z.detach().to("cpu", torch.float64).reshape(-1).numpy()
    if not np.isfinite(zz).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    if (zz < 0).any():
        raise ValueError(f"{name} must be >= 0 (singular values), got a minimum of {zz.min()!r}")
    return zz


def frobenius_deviation_of(s: torch.Tensor) -> float:
    r""":math:`\lVert G - I\rVert_F = \sqrt{\sum_i (s_i^2 - 1)^2}` for singular values ``s``."""
    return float(torch.sqrt(((s.double() ** 2 - 1) ** 2).sum()))


def frobenius_singular_values(z: torch.Tensor, radius: float) -> torch.Tensor:
    r"""Euclidean projection of ``z`` (≥ 0) on :math:`\{s \ge 0 : \sum_i (s_i^2-1)^2 \le r^2\}`.

    Inside the ball it returns ``z``; otherwise the KKT conditions give :math:`s_i` = the positive root of
    :math:`2\nu s^3 + (1 - 2\nu)s - z_i = 0` (:func:`penalty_singular_values` with c = 1) for one multiplier
    :math:`\nu > 0`; the deviation decreases monotonically in ν, and ν is found by a safeguarded Newton
    iteration on its logarithm so that :math:`\sum (s_i^2 - 1)^2 = r^2` to rounding
    (:func:`~relaxedortho.closed_form.singular_value_maps.ball_values`).
    """
    radius = check_nonnegative(radius, "radius", allow_inf=True)
    zz = _singular_values_arg(z, "z")
    return torch.from_numpy(ball_values(zz, radius)[0]).to(z.device, z.dtype)


def _svd_map(M: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(M, full_matrices=False)
    return (u * fn(s)) @ vh


def relaxed_objective(A: torch.Tensor, M: torch.Tensor, W: torch.Tensor, yy: torch.Tensor, mu: float = 0.0):
    r""":math:`\lVert XW - Y\rVert_F^2 + \mu\lVert G(W) - I\rVert_F^2` from the moments (``mu`` = 0: plain least
    squares; ``yy`` = :math:`\lVert Y\rVert_F^2`)."""
    f = (W * (A @ W)).sum() - 2 * (W * M).sum() + yy
    if mu:
        s = torch.linalg.svdvals(W)
        f = f + mu * ((s ** 2 - 1) ** 2).sum()
    return f


def projected_gradient(A: torch.Tensor, M: torch.Tensor, sv_map: Callable[[torch.Tensor, float], torch.Tensor],
                       W0: torch.Tensor, *, yy: torch.Tensor | None = None, mu: float = 0.0,
                       max_iter: int = DEFAULT_MAX_ITER, tol: float = DEFAULT_TOL) -> tuple[torch.Tensor, dict]:
    r"""Minimise :math:`\operatorname{tr}(W^\top AW) - 2\operatorname{tr}(W^\top M)` (+ ``yy``) over a unitarily
    invariant set, or plus the spectral penalty :math:`\mu\sum_i(\sigma_i^2 - 1)^2`, from ``W0``.

    ``sv_map(s, t)`` is the projection of the singular values on the set (or the proximal map of t·penalty):
    the forward–backward step is :math:`V \mapsto U\,\mathrm{diag}(\text{sv\_map}(s, t))\,\bar V^\top` with
    :math:`V - t\nabla f(V) = U\,\mathrm{diag}(s)\,\bar V^\top`, :math:`\nabla f = 2(AV - M)`, accelerated by
    PANOC in the eigenbasis of A (:mod:`relaxedortho.closed_form.relaxed_solver`). Stops when the relative
    fixed-point (KKT) residual is at most ``tol``; at ``max_iter`` it warns
    (:class:`~relaxedortho.exceptions.ConvergenceWarning`) and returns the best point. Returns ``(W, info)``
    (``info``: ``iterations``, ``residual``, ``converged``, ``objective`` (including ``yy``), ``envelope``, ``step``).
    """
    for name, v in (("A", A), ("M", M), ("W0", W0)):
        if not isinstance(v, torch.Tensor) or v.ndim != 2:
            raise ValueError(f"{name} must be a 2-D torch.Tensor, got "
                             f"{tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}")
    p, q = M.shape
    if A.shape != (p, p):
        raise ValueError(f"A must be p×p = {p}×{p} for M of shape {p}×{q}, got {tuple(A.shape)}")
    if W0.shape != (p, q):
        raise ValueError(f"W0 must have the shape of M, {p}×{q}, got {tuple(W0.shape)}")
    max_iter = _check_max_iter(max_iter)
    tol = check_nonnegative(tol, "tol")
    mu = check_nonnegative(mu, "mu", allow_inf=True)
    yy = 0.0 if yy is None else float(yy)

    def prox(sig: np.ndarray, t: float):
        s = sv_map(torch.from_numpy(sig), t).to(torch.float64).numpy()
        return s, (mu * float(((s * s - 1.0) ** 2).sum()) if mu else 0.0)

    W, info = minimize_spectral(A, M, prox, W0, max_iter=max_iter, tol=tol)
    info["objective"] = [v + yy for v in info["objective"]]
    info["envelope"] = [v + yy for v in info["envelope"]]
    return W, info


class _Relaxed:
    """One relaxed problem: its whitened closed-form map, its proximal map, and the shortcuts that solve it exactly."""

    def __init__(self, name: str, closed: Callable[[np.ndarray, float], np.ndarray],
                 prox: Callable[[np.ndarray, float], tuple[np.ndarray, float]],
                 single_value: float | None = None, feasible: Callable[[np.ndarray], bool] | None = None):
        self.name, self.closed, self.prox = name, closed, prox
        self.single_value = single_value  # the set is {W: every singular value = a}
        self.feasible = feasible  # singular values where h = 0 (the least-squares map, if there, is optimal)


def _penalty_kind(mu: float) -> _Relaxed:
    def prox(sig, t):
        if mu == math.inf:
            return np.ones_like(sig), 0.0
        s = penalty_values(sig, 1.0, 2.0 * t * mu)
        return s, mu * float(((s * s - 1.0) ** 2).sum())
    return _Relaxed(f"relaxed_penalty (mu={mu:g})", lambda sig, c: penalty_values(sig, c, mu), prox,
                    single_value=1.0 if mu == math.inf else None,
                    feasible=(lambda s: True) if mu == 0 else None)


def _band_kind(lower: float, upper: float) -> _Relaxed:
    def closed(sig, c):
        return band_values(sig / c if c > 0 else np.zeros_like(sig), lower, upper)
    return _Relaxed(f"relaxed_band ([{lower:g}, {upper:g}])", closed,
                    lambda sig, t: (band_values(sig, lower, upper), 0.0),
                    single_value=lower if lower == upper else None,
                    feasible=lambda s: bool(np.all((s >= lower) & (s <= upper))))


def _ball_kind(radius: float) -> _Relaxed:
    last = {"nu": None}  # the multiplier of the previous projection: the next one starts there

    def closed(sig, c):
        return ball_values(sig / c if c > 0 else np.zeros_like(sig), radius)[0]

    def prox(sig, t):
        s, nu = ball_values(sig, radius, last["nu"])
        if 0 < nu < math.inf:
            last["nu"] = nu
        return s, 0.0
    return _Relaxed(f"relaxed_frobenius (radius={radius:g})", closed, prox,
                    single_value=1.0 if radius == 0 else None,
                    feasible=lambda s: float(((s * s - 1.0) ** 2).sum()) <= radius * radius)


def _moments(m: PairedMoments, center: bool):
    A = m.gram_x(center=center).to(torch.float64)
    M = m.cross(center=center).to(torch.float64)
    if not (bool(torch.isfinite(A).all()) and bool(torch.isfinite(M).all())):
        raise ValueError("the moments XᵀX, XᵀY are not finite (their float accumulation overflowed); rescale X "
                         "and Y, or accumulate in float64 (precision='float64')")
    return A, M


def _check_max_iter(max_iter: Any) -> int:
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    return int(max_iter)


def _finish(m: PairedMoments, W: torch.Tensor, center: bool, info: dict) -> ClosedFormSolution:
    bias = m.mean_y() - m.mean_x() @ W if center else None
    return ClosedFormSolution(W, bias, info=info)


def _solve(m: PairedMoments, kind: _Relaxed, center: bool, solver: str, whitened_tol: float, max_iter: int,
           tol: float) -> ClosedFormSolution:
    if not isinstance(m, PairedMoments):
        raise TypeError(f"solve_{kind.name.split(' ')[0]} needs the PairedMoments of accumulate_moments as m, got "
                        f"{type(m).__name__} (for raw X, Y: accumulate_moments(X, Y) first)")
    check_choice(solver, "solver", SOLVERS)
    whitened_tol = check_nonnegative(whitened_tol, "whitened_tol")
    tol = check_nonnegative(tol, "tol")
    max_iter = _check_max_iter(max_iter)
    A, M = _moments(m, center)
    p, q = M.shape
    c = float(torch.trace(A)) / p
    dev = float(torch.linalg.matrix_norm(A - c * torch.eye(p, dtype=A.dtype, device=A.device)))
    whitened = dev <= whitened_tol * float(torch.linalg.matrix_norm(A))
    info = {"whitened": whitened, "c": c, "solver": "closed_form", "iterations": 0, "residual": 0.0,
            "converged": True}
    W = _svd_map(M, lambda s: torch.from_numpy(kind.closed(s.cpu().numpy(), c)).to(s))
    if solver == "closed_form" or (solver == "auto" and whitened):
        return _finish(m, W, center, info)
    if kind.single_value is not None and p <= q:
        # W W^T = a^2 I makes tr(W^T A W) = a^2 tr(A) constant: the optimum is a times the polar factor of M
        W = kind.single_value * _svd_map(M, torch.ones_like)
        info.update(solver="polar")
        return _finish(m, W, center, info)
    W, it_info = minimize_spectral(A, M, kind.prox, W, max_iter=int(max_iter), tol=tol, shortcut=kind.feasible,
                                   what=kind.name)
    info.update(it_info, solver=it_info.pop("solver", "projected_gradient"))
    return _finish(m, W, center, info)


def solve_relaxed_penalty(m: PairedMoments, *, mu: float, center: bool = False, solver: str = "auto",
                          whitened_tol: float = WHITENED_TOL, max_iter: int = DEFAULT_MAX_ITER,
                          tol: float = DEFAULT_TOL) -> ClosedFormSolution:
    r"""Penalized relaxed Procrustes
    :math:`\min_W \lVert XW - Y\rVert_F^2 + \mu\lVert G(W) - I\rVert_F^2` (``mu`` ≥ 0, ``math.inf`` allowed:
    the orthonormal W nearest the data). Whitened X: :math:`W = U\,\mathrm{diag}(s)V^\top`, :math:`s_i` the
    positive root of :math:`2\mu s^3 + (c - 2\mu)s - \sigma_i = 0`, :math:`c = \operatorname{tr}(X^\top X)/p`;
    otherwise the iterative solver with the cubic as proximal map. See the module documentation.
    Options ``center``, ``solver``, ``whitened_tol``, ``max_iter``, ``tol``: see the module documentation."""
    mu = check_nonnegative(mu, "mu", allow_inf=True)
    return _solve(m, _penalty_kind(mu), center, solver, whitened_tol, max_iter, tol)


def _band(lower: float, upper: float) -> tuple[float, float]:
    lower = check_nonnegative(lower, "lower")
    upper = check_nonnegative(upper, "upper", allow_inf=True)
    if lower > upper:
        raise ValueError(f"the band needs lower <= upper, got lower={lower!r} > upper={upper!r}")
    return lower, upper


def solve_relaxed_band(m: PairedMoments, *, lower: float = 0.0, upper: float = math.inf, center: bool = False,
                       solver: str = "auto", whitened_tol: float = WHITENED_TOL, max_iter: int = DEFAULT_MAX_ITER,
                       tol: float = DEFAULT_TOL) -> ClosedFormSolution:
    r"""Band-constrained relaxed Procrustes :math:`\min_W \lVert XW - Y\rVert_F^2` s.t.
    every singular value of W lies in [``lower``, ``upper``] (0 ≤ lower ≤ upper ≤ ∞;
    :func:`band_from_epsilon` converts a spectral ε). Whitened X: :math:`W = U\,\mathrm{clip}(\Sigma/c, a, b)\,
    V^\top`, the least-squares map with its singular values clipped; [1, 1] gives UVᵀ and [0, ∞) least squares.
    Otherwise the iterative solver with the clip as projection (clipping alone would only be a
    heuristic).
    Options ``center``, ``solver``, ``whitened_tol``, ``max_iter``, ``tol``: see the module documentation."""
    lower, upper = _band(lower, upper)
    return _solve(m, _band_kind(lower, upper), center, solver, whitened_tol, max_iter, tol)


def solve_relaxed_frobenius(m: PairedMoments, *, radius: float, center: bool = False, solver: str = "auto",
                            whitened_tol: float = WHITENED_TOL, max_iter: int = DEFAULT_MAX_ITER,
                            tol: float = DEFAULT_TOL) -> ClosedFormSolution:
    r"""Frobenius-ball relaxed Procrustes :math:`\min_W \lVert XW - Y\rVert_F^2` s.t.
    :math:`\lVert G(W) - I\rVert_F \le` ``radius`` (the deviation :class:`~relaxedortho.LambdaOrthoLinear`
    measures; 0 gives orthonormal W, ∞ least squares). Whitened X: the projection of :math:`\Sigma/c` on the ball
    (:func:`frobenius_singular_values`); otherwise the iterative solver with that projection.
    Options ``center``, ``solver``, ``whitened_tol``, ``max_iter``, ``tol``: see the module documentation."""
    radius = check_nonnegative(radius, "radius", allow_inf=True)
    return _solve(m, _ball_kind(radius), center, solver, whitened_tol, max_iter, tol)


def lambda_init(X: Any, Y: Any = None, lam: float = 1.0, *, center: bool = True, solver: str = "auto",
                chunk_size: int | None = None, device: torch.device | str | None = None,
                max_iter: int = DEFAULT_MAX_ITER, tol: float = DEFAULT_TOL, group: Any = None,
                distributed: bool = False, **module_kwargs):
    r"""A :class:`~relaxedortho.LambdaOrthoLinear` with tolerance ``lam`` started at the Frobenius-ball
    relaxed Procrustes solution of the same radius: :math:`\lVert G(W) - I\rVert_F \le \lambda` — the map the
    λ-orthogonality penalty aims at, before any training.

    ``X, Y`` as for :func:`~relaxedortho.closed_form.fit_closed_form` (arrays, tensors, a chunk stream or
    moments). ``center`` (default True) fits the bias too; ``device`` is where the moments are accumulated and
    the map is put (default: where the data are); ``solver``, ``max_iter``, ``tol`` go to
    :func:`solve_relaxed_frobenius`; other keyword arguments go to the :class:`~relaxedortho.LambdaOrthoLinear`
    constructor (``alpha``, ``gate``, ``penalty_weight``, ``dtype``, ...).
    ``group=`` / ``distributed=True``: fit on the shards of every process of a :mod:`torch.distributed`
    process group, as in :func:`~relaxedortho.closed_form.fit_closed_form` (the same map on every process).

    Example:
        >>> import torch
        >>> X = torch.linalg.qr(torch.randn(50, 4, dtype=torch.float64))[0] * 7
        >>> m = lambda_init(X, 2 * X, lam=0.5)
        >>> (m.lam, round(m.orthogonality_error(), 6))
        (0.5, 0.5)
    """
    from ..maps import LambdaOrthoLinear

    lam = check_nonnegative(lam, "lam", allow_inf=True)
    if "bias" in module_kwargs:
        raise TypeError("lambda_init sets the bias from center= (True: fitted bias, False: no bias); drop bias=")
    dev = None if device is None else check_device(device)
    m = accumulate_moments(X, Y, second_moments=("x",), chunk_size=chunk_size, device=dev, group=group,
                           distributed=distributed)
    if center and m.n < 2:
        raise ValueError("center=True needs at least 2 rows (X has fewer)")
    sol = solve_once(lambda: solve_relaxed_frobenius(m, radius=lam, center=center, solver=solver, max_iter=max_iter,
                                                     tol=tol), device=m.device, group=group, distributed=distributed)
    dtype = module_kwargs.pop("dtype", None)
    if dtype is None:
        dtype = torch.float32 if m.dtype in (torch.float16, torch.bfloat16) else m.dtype
    target = dict(dtype=dtype, device=sol.W.device if dev is None else dev)
    return LambdaOrthoLinear.from_matrix(sol.W.mT.to(**target).contiguous(),
                                         None if sol.bias is None else sol.bias.to(**target), lam=lam,
                                         **module_kwargs)
