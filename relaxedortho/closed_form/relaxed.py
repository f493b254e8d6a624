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

**Non-whitened data**: no closed form. :func:`projected_gradient` minimises the least-squares objective from
the moments with the same singular-value maps as projection (band, ball) or proximal step (penalty), step
:math:`1/L`, :math:`L = 2\lambda_{\max}(X^\top X)`; the objective never increases and it stops at a stationary
point (the global optimum when only the upper band bound binds, the set then being convex).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch

from .._checks import check_choice, check_nonnegative
from .solution import ClosedFormSolution
from .distributed import solve_once
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


def _cubic_roots(sigma: np.ndarray, c: float, mu: float) -> np.ndarray:
    """Positive roots of 2 mu s^3 + (c - 2 mu) s - sigma = 0 (NumPy float64, mu finite > 0).

    Cardano's formula (trigonometric form when three roots are real) gives a start, moved right of the
    cubic's local minimum so that Newton's method on the convex increasing branch converges to the root.
    """
    if mu == 0:
        return sigma / c if c > 0 else np.zeros_like(sigma)
    P = (c - 2 * mu) / (2 * mu)  # depressed cubic s^3 + P s + Q = 0
    Q = -sigma / (2 * mu)
    disc = (Q / 2) ** 2 + (P / 3) ** 3
    with np.errstate(invalid="ignore", divide="ignore"):
        sq = np.sqrt(np.maximum(disc, 0.0))
        one = np.cbrt(-Q / 2 + sq) + np.cbrt(-Q / 2 - sq)
        if P < 0:
            r = np.sqrt(-P / 3)
            arg = np.clip((3 * Q / (2 * P)) * np.sqrt(-3 / P), -1.0, 1.0)
            three = 2 * r * np.cos(np.arccos(arg) / 3)
        else:
            three = one
    start = np.where(disc >= 0, one, three)
    s_min = np.sqrt(max(0.0, (2 * mu - c) / (6 * mu)))
    s = np.maximum(np.nan_to_num(start, nan=1.0), s_min)
    for _ in range(100):
        f = 2 * mu * s ** 3 + (c - 2 * mu) * s - sigma
        df = 6 * mu * s ** 2 + (c - 2 * mu)
        step = np.where(df > 0, f / np.where(df > 0, df, 1.0), 0.0)
        s_new = np.maximum(s - step, s_min)
        done = np.all(np.abs(s - s_new) <= 4 * np.finfo(np.float64).eps * np.maximum(np.abs(s), 1e-300))
        s = s_new
        if done:
            break
    return s


def penalty_singular_values(sigma: torch.Tensor, c: float, mu: float) -> torch.Tensor:
    r"""Minimiser over :math:`s \ge 0` of :math:`c s^2 - 2\sigma s + \mu (s^2 - 1)^2`, elementwise: the unique
    positive root of :math:`2\mu s^3 + (c - 2\mu)s - \sigma = 0` (``sigma`` ≥ 0, ``c`` ≥ 0, ``mu`` ≥ 0).

    The cubic is convex on :math:`s > 0`, negative at 0 and positive at :math:`\max(1, \sigma/c)`, so Newton's
    method from that right end decreases monotonically to the root (float64; the short vector is solved on
    the CPU).
    """
    if mu == math.inf:
        return torch.ones_like(sigma)
    if mu == 0:
        return sigma / c if c > 0 else torch.zeros_like(sigma)
    z = sigma.detach().to("cpu", torch.float64).numpy()
    return torch.from_numpy(_cubic_roots(z, float(c), float(mu))).to(sigma.device, sigma.dtype)


def _deviation(s: np.ndarray) -> float:
    return float(np.sqrt(((s ** 2 - 1) ** 2).sum()))


def frobenius_deviation_of(s: torch.Tensor) -> float:
    r""":math:`\lVert G - I\rVert_F = \sqrt{\sum_i (s_i^2 - 1)^2}` for singular values ``s``."""
    return float(torch.sqrt(((s.double() ** 2 - 1) ** 2).sum()))


def frobenius_singular_values(z: torch.Tensor, radius: float) -> torch.Tensor:
    r"""Euclidean projection of ``z`` (≥ 0) on :math:`\{s \ge 0 : \sum_i (s_i^2-1)^2 \le r^2\}`.

    Inside the ball it returns ``z``; otherwise the KKT conditions give :math:`s_i` = the positive root of
    :math:`2\nu s^3 + (1 - 2\nu)s - z_i = 0` (:func:`penalty_singular_values` with c = 1) for one multiplier
    :math:`\nu > 0`; the deviation decreases monotonically in ν, and ν is found by bracketing and Brent's
    bisection-secant method (:func:`scipy.optimize.brentq`) so that :math:`\sum (s_i^2 - 1)^2 = r^2` to rounding.
    """
    if radius == math.inf or frobenius_deviation_of(z) <= radius:
        return z.clone()
    if radius == 0:
        return torch.ones_like(z)
    zz = z.detach().to("cpu", torch.float64).numpy()

    def excess(nu: float) -> float:
        return _deviation(_cubic_roots(zz, 1.0, nu)) - radius

    lo, hi = 0.0, 1.0
    while excess(hi) > 0:
        lo, hi = hi, hi * 4
        if hi > 1e300:  # pragma: no cover - the deviation tends to 0
            break
    from scipy.optimize import brentq  # imported here: scipy.optimize costs ~1 s to import

    nu = brentq(excess, lo, hi, xtol=1e-300, rtol=4 * np.finfo(np.float64).eps, maxiter=500)
    return torch.from_numpy(_cubic_roots(zz, 1.0, nu)).to(z.device, z.dtype)


def _svd_map(M: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(M, full_matrices=False)
    return (u * fn(s)) @ vh


def relaxed_objective(A: torch.Tensor, M: torch.Tensor, W: torch.Tensor, yy: torch.Tensor, mu: float = 0.0):
    r""":math:`\lVert XW - Y\rVert_F^2 + \mu\lVert G(W) - I\rVert_F^2` from the moments (``mu`` = 0: plain least squares)."""
    f = (W * (A @ W)).sum() - 2 * (W * M).sum() + yy
    if mu:
        s = torch.linalg.svdvals(W)
        f = f + mu * ((s ** 2 - 1) ** 2).sum()
    return f


def projected_gradient(A: torch.Tensor, M: torch.Tensor, sv_map: Callable[[torch.Tensor, float], torch.Tensor],
                       W0: torch.Tensor, *, yy: torch.Tensor | None = None, mu: float = 0.0, max_iter: int = 500,
                       tol: float = 1e-10) -> tuple[torch.Tensor, dict]:
    r"""Accelerated projected (proximal) gradient for
    :math:`\min_W \operatorname{tr}(W^\top AW) - 2\operatorname{tr}(W^\top M)` over a unitarily invariant set
    (or plus a spectral penalty).

    A step maps :math:`V \mapsto P(V) = U\,\mathrm{diag}(\phi(s, t))\,V^\top` with
    :math:`V - t\nabla f(V) = U\,\mathrm{diag}(s)\,V^\top`, :math:`\nabla f = 2(AV - M)`, step :math:`t = 1/L`,
    :math:`L = 2\lambda_{\max}(A)`, and ``sv_map(s, t)`` = φ the projection of the singular values on the set
    (or the proximal map of the penalty for step t). Iterates take Nesterov-extrapolated steps
    :math:`W_{k+1} = P(W_k + \tfrac{k-1}{k+2}(W_k - W_{k-1}))` and fall back to the plain step
    :math:`P(W_k)` (restarting the momentum) whenever the extrapolated step would increase the objective
    (O'Donoghue & Candès 2015). With an exact projection onto a closed set and step 1/L the plain step
    never increases the objective (Bolte, Sabach & Teboulle 2014), so the iteration is monotone. Stops when
    :math:`\lVert W_{k+1} - W_k\rVert_F \le` tol · max(1, ‖W_k‖_F) or after ``max_iter`` steps.
    """
    L = 2 * float(torch.linalg.eigvalsh(A)[-1])
    if L <= 0:
        return W0, {"iterations": 0, "objective": []}
    t = 1.0 / L
    zero = torch.zeros((), dtype=A.dtype, device=A.device)
    yy = zero if yy is None else yy

    def step(V):
        return _svd_map(V - t * 2 * (A @ V - M), lambda s: sv_map(s, t))

    W, W_prev = W0, W0
    f = float(relaxed_objective(A, M, W, yy, mu))
    history = [f]
    it, k = 0, 0
    for it in range(1, max_iter + 1):
        k += 1
        W_new = step(W + ((k - 1) / (k + 2)) * (W - W_prev)) if k > 1 else step(W)
        f_new = float(relaxed_objective(A, M, W_new, yy, mu))
        if f_new > f and k > 1:  # restart the momentum with a plain (monotone) step
            k = 1
            W_new = step(W)
            f_new = float(relaxed_objective(A, M, W_new, yy, mu))
        change = float(torch.linalg.matrix_norm(W_new - W))
        W_prev, W, f = W, W_new, min(f, f_new)
        history.append(f_new)
        if change <= tol * max(1.0, float(torch.linalg.matrix_norm(W))):
            break
    return W, {"iterations": it, "objective": history, "step": t}


def _setup(m: PairedMoments, center: bool, solver: str, whitened_tol: float):
    check_choice(solver, "solver", SOLVERS)
    whitened_tol = check_nonnegative(whitened_tol, "whitened_tol")
    A = m.gram_x(center=center)
    M = m.cross(center=center)
    c = float(torch.trace(A)) / A.shape[0]
    dev = float(torch.linalg.matrix_norm(A - c * torch.eye(A.shape[0], dtype=A.dtype, device=A.device)))
    whitened = dev <= whitened_tol * max(float(torch.linalg.matrix_norm(A)), 1e-300)
    use_pg = solver == "projected_gradient" or (solver == "auto" and not whitened)
    return A, M, c, whitened, use_pg


def _finish(m: PairedMoments, W: torch.Tensor, center: bool, info: dict) -> ClosedFormSolution:
    bias = m.mean_y() - m.mean_x() @ W if center else None
    return ClosedFormSolution(W, bias, info=info)


def _solve(m, center, solver, whitened_tol, max_iter, tol, closed_sv, pg_sv, mu=0.0):
    A, M, c, whitened, use_pg = _setup(m, center, solver, whitened_tol)
    W = _svd_map(M, closed_sv(c))
    info = {"whitened": whitened, "c": c, "solver": "closed_form"}
    if use_pg:
        W, pg_info = projected_gradient(A, M, pg_sv, W, mu=mu, max_iter=max_iter, tol=tol)
        info.update(pg_info, solver="projected_gradient")
    return _finish(m, W, center, info)


def solve_relaxed_penalty(m: PairedMoments, *, mu: float, center: bool = False, solver: str = "auto",
                          whitened_tol: float = WHITENED_TOL, max_iter: int = 500,
                          tol: float = 1e-10) -> ClosedFormSolution:
    r"""Penalized relaxed Procrustes :math:`\min_W \lVert XW - Y\rVert_F^2 + \mu\lVert G(W) - I\rVert_F^2`
    (``mu`` ≥ 0, ``math.inf`` allowed: UVᵀ). Whitened X: :math:`W = U\,\mathrm{diag}(s)V^\top`, :math:`s_i` the
    positive root of :math:`2\mu s^3 + (c - 2\mu)s - \sigma_i = 0`, :math:`c = \operatorname{tr}(X^\top X)/p`;
    otherwise proximal gradient (:func:`projected_gradient`). ``center=True`` fits on centred data and adds
    the bias :math:`\mu_y - \mu_x W`. See the module documentation."""
    mu = check_nonnegative(mu, "mu", allow_inf=True)
    return _solve(m, center, solver, whitened_tol, max_iter, tol,
                  lambda c: (lambda s: penalty_singular_values(s, c, mu)),
                  lambda s, t: penalty_singular_values(s, 1.0, 2 * t * mu) if mu != math.inf else torch.ones_like(s),
                  mu=0.0 if mu == math.inf else mu)


def _band(lower: float, upper: float) -> tuple[float, float]:
    lower = check_nonnegative(lower, "lower")
    upper = check_nonnegative(upper, "upper", allow_inf=True)
    if lower > upper:
        raise ValueError(f"the band needs lower <= upper, got lower={lower!r} > upper={upper!r}")
    return lower, upper


def solve_relaxed_band(m: PairedMoments, *, lower: float = 0.0, upper: float = math.inf, center: bool = False,
                       solver: str = "auto", whitened_tol: float = WHITENED_TOL, max_iter: int = 500,
                       tol: float = 1e-10) -> ClosedFormSolution:
    r"""Band-constrained relaxed Procrustes :math:`\min_W \lVert XW - Y\rVert_F^2` s.t. every singular value of W
    lies in [``lower``, ``upper``] (0 ≤ lower ≤ upper ≤ ∞; :func:`band_from_epsilon` converts a spectral ε).
    Whitened X: :math:`W = U\,\mathrm{clip}(\Sigma/c, a, b)\,V^\top`, the least-squares map with its singular
    values clipped; [1, 1] gives UVᵀ and [0, ∞) least squares. Otherwise projected gradient with the clip as
    projection (clipping alone would only be a heuristic)."""
    lower, upper = _band(lower, upper)
    clip = lambda s: s.clamp(lower, upper)  # noqa: E731
    return _solve(m, center, solver, whitened_tol, max_iter, tol,
                  lambda c: (lambda s: clip(s / c if c > 0 else torch.zeros_like(s))), lambda s, t: clip(s))


def solve_relaxed_frobenius(m: PairedMoments, *, radius: float, center: bool = False, solver: str = "auto",
                            whitened_tol: float = WHITENED_TOL, max_iter: int = 500,
                            tol: float = 1e-10) -> ClosedFormSolution:
    r"""Frobenius-ball relaxed Procrustes :math:`\min_W \lVert XW - Y\rVert_F^2` s.t.
    :math:`\lVert G(W) - I\rVert_F \le` ``radius`` (the deviation :class:`~relaxedortho.LambdaOrthoLinear`
    measures and holds near its ``lam``; 0 gives UVᵀ, ∞ least squares). Whitened X: the projection of
    :math:`\Sigma/c` on the ball (:func:`frobenius_singular_values`); otherwise projected gradient."""
    radius = check_nonnegative(radius, "radius", allow_inf=True)
    proj = lambda s: frobenius_singular_values(s, radius)  # noqa: E731
    return _solve(m, center, solver, whitened_tol, max_iter, tol,
                  lambda c: (lambda s: proj(s / c if c > 0 else torch.zeros_like(s))), lambda s, t: proj(s))


def lambda_init(X: Any, Y: Any = None, lam: float = 1.0, *, center: bool = True, solver: str = "auto",
                chunk_size: int | None = None, group: Any = None, distributed: bool = False, **module_kwargs):
    r"""A :class:`~relaxedortho.LambdaOrthoLinear` with tolerance ``lam`` started at the Frobenius-ball
    relaxed Procrustes solution of the same radius: :math:`\lVert G(W) - I\rVert_F \le \lambda` — the map the
    λ-orthogonality penalty aims at, before any training.

    ``X, Y`` as for :func:`~relaxedortho.closed_form.fit_closed_form` (arrays, tensors, a chunk stream or
    moments). ``center`` (default True) fits the bias too; other keyword arguments go to the
    :class:`~relaxedortho.LambdaOrthoLinear` constructor (``alpha``, ``gate``, ``penalty_weight``, ...).
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
    m = accumulate_moments(X, Y, second_moments=("x",), chunk_size=chunk_size, group=group, distributed=distributed)
    if center and m.n < 2:
        raise ValueError("center=True needs at least 2 rows (X has fewer)")
    sol = solve_once(lambda: solve_relaxed_frobenius(m, radius=lam, center=center, solver=solver),
                     device=m.device, group=group, distributed=distributed)
    dtype = torch.float32 if m.dtype in (torch.float16, torch.bfloat16) else m.dtype
    if "bias" in module_kwargs:
        raise TypeError("lambda_init sets the bias from center= (True: fitted bias, False: no bias); drop bias=")
    return LambdaOrthoLinear.from_matrix(sol.W.mT.to(dtype).contiguous(),
                                         None if sol.bias is None else sol.bias.to(dtype), lam=lam, **module_kwargs)
