r"""Maps on singular values, and applying one to a matrix: the building blocks of the relaxed Procrustes solvers.

Every relaxed constraint or penalty of :mod:`relaxedortho.closed_form.relaxed` depends on a matrix only through its
singular values, so its projection or proximal map acts on them alone (``docs/math.md`` §5):
:math:`V = U\,\mathrm{diag}(\sigma)\,\bar V^\top \mapsto U\,\mathrm{diag}(\phi(\sigma))\,\bar V^\top`.

- :func:`cubic_roots`: the positive root of :math:`2\mu s^3 + (c - 2\mu)s - z = 0`, the minimiser over
  :math:`s \ge 0` of :math:`c s^2 - 2zs + \mu(s^2 - 1)^2` (the penalty's map, and the Frobenius ball's with one
  shared multiplier);
- :func:`ball_values`: the Euclidean projection on :math:`\{s \ge 0: \sum_i (s_i^2 - 1)^2 \le r^2\}`;
- :func:`map_singular_values`: :math:`U\,\mathrm{diag}(\phi(\sigma))\,\bar V^\top` from an eigendecomposition
  of the small Gram (min(p, q) square) instead of a full SVD.

The scalar maps run in NumPy float64 (a vector of at most min(p, q) values).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

_EPS = float(np.finfo(np.float64).eps)

#: :func:`map_singular_values` uses the Gram eigendecomposition while the smallest singular value is at least
#: this fraction of the largest (the Gram loses about :math:`\varepsilon\,(\sigma_1/\sigma_k)^2` relative
#: accuracy in :math:`\sigma_k`: 1e-8 at this floor); below it, a full SVD.
GRAM_FLOOR = 1e-4

#: The same for float32 input (relative accuracy about 1e-5 in :math:`\sigma_k` at this floor); below it the
#: float64 Gram path is used.
GRAM_FLOOR_FLOAT32 = 0.05


def cubic_roots(z: np.ndarray, c: float, mu: float) -> np.ndarray:
    r"""Elementwise positive root of :math:`2\mu s^3 + (c - 2\mu)s - z = 0` (``z`` ≥ 0, ``c`` ≥ 0, ``mu`` > 0
    finite; NumPy float64), i.e. the minimiser over :math:`s \ge 0` of :math:`c s^2 - 2zs + \mu(s^2 - 1)^2`.

    The cubic :math:`g(s) = 2\mu s(s-1)(s+1) + cs - z` (evaluated in this factored form, without cancellation
    at large μ) is convex on :math:`s > 0`, increasing right of
    :math:`s_0 = \sqrt{\max(0, (2\mu - c)/6\mu)}`, with :math:`g(0) = -z \le 0`: Newton's method from any
    start right of :math:`s_0` lands right of the root after one step and then decreases monotonically to it,
    quadratically near it. The start is the linearisation at s = 1, :math:`1 + (z - c)/(4\mu + c)` (exact to
    first order for z near c, the common case), or, when that is not right of :math:`s_0`, the upper bound
    :math:`\min(1 + (z/2\mu)^{1/3}, \max(1, z/c))`.
    """
    z = np.asarray(z, dtype=np.float64)
    a = 2.0 * mu
    s_min = math.sqrt(max(0.0, (a - c) / (3.0 * a)))
    upper = 1.0 + np.cbrt(z / a)
    if c > 0:
        with np.errstate(over="ignore"):
            upper = np.minimum(upper, np.maximum(1.0, z / c))
    s = 1.0 + (z - c) / (2.0 * a + c)
    s = np.where(s > s_min * (1.0 + 1e-3) + 1e-300, s, upper)
    for _ in range(200):
        g = a * s * (s - 1.0) * (s + 1.0) + c * s - z
        dg = a * (3.0 * s * s - 1.0) + c
        step = np.where(dg > 0, g / np.where(dg > 0, dg, 1.0), 0.0)
        s_new = np.maximum(s - step, s_min)
        if np.all(np.abs(s - s_new) <= 4 * _EPS * s):
            return s_new
        s = s_new
    return s


def penalty_values(z: np.ndarray, c: float, mu: float) -> np.ndarray:
    r"""Minimiser over :math:`s \ge 0` of :math:`c s^2 - 2zs + \mu(s^2 - 1)^2` for ``mu`` in [0, ∞]:
    :func:`cubic_roots`, or z/c at μ = 0 (0 when c = 0), or 1 at μ = ∞."""
    z = np.asarray(z, dtype=np.float64)
    if mu == math.inf:
        return np.ones_like(z)
    if mu == 0:
        return z / c if c > 0 else np.zeros_like(z)
    return cubic_roots(z, c, mu)


def ball_values(z: np.ndarray, radius: float, nu0: float | None = None) -> tuple[np.ndarray, float]:
    r"""Euclidean projection of ``z`` ≥ 0 on :math:`\{s \ge 0: \sum_i (s_i^2 - 1)^2 \le r^2\}` and its
    multiplier ν (0 when ``z`` is inside, ∞ at r = 0).

    Outside the ball the KKT conditions give :math:`s_i(\nu)` = :func:`cubic_roots` (c = 1, μ = ν) with one
    ν > 0 such that :math:`D(\nu) = \sum_i (s_i(\nu)^2 - 1)^2 = r^2`. D decreases in ν, roughly as a power of ν,
    so ν is found by Newton's method on :math:`\log D` against :math:`\log \nu` (derivative
    :math:`D' = \sum_i 4 s_i (s_i^2-1)\, s_i'`, :math:`s_i' = -2s_i(s_i^2-1)/(6\nu s_i^2 + 1 - 2\nu)` from the
    implicit function theorem), safeguarded by bisection on a bracket, to rounding; the returned point is
    feasible up to rounding. ``nu0`` is a start for ν (e.g. the multiplier of a nearby call).
    """
    z = np.asarray(z, dtype=np.float64)
    if radius == math.inf or _deviation(z) <= radius:
        return z.copy(), 0.0
    if radius <= 1e-20:  # the projection is 1 + O(radius), which rounds to 1
        return np.ones_like(z), math.inf
    lo, hi = 0.0, math.inf  # d(lo) > r >= d(hi), d = sqrt(D)
    s_hi = None
    # start: the linearisation s - 1 ~ (z - 1) / (1 + 4 nu) around s = 1
    nu = max((2.0 * float(np.linalg.norm(z - 1.0)) / radius - 1.0) / 4.0, 1e-3) if not nu0 else nu0
    s, d = z, math.inf
    for _ in range(300):
        s = cubic_roots(z, 1.0, nu)
        e = (s - 1.0) * (s + 1.0)
        d = _deviation(s)
        if d > radius:
            lo = nu
        else:
            hi, s_hi = nu, s
        if abs(d - radius) <= 4 * _EPS * radius or (hi < math.inf and hi - lo <= 4 * _EPS * hi):
            break
        ds = -2.0 * s * e / (2.0 * nu * (3.0 * s * s - 1.0) + 1.0)
        # d log d / d log nu = nu * D' / (2 D), D' = sum 4 s e s'
        slope = nu * float((4.0 * s * e * ds).sum()) / (2.0 * d * d) if d > 0 else 0.0
        new = nu * math.exp(min(-(math.log(d) - math.log(radius)) / slope, 50.0)) if slope < 0 else math.nan
        if not lo < new < hi:
            if hi == math.inf:
                new = 4.0 * nu
            elif lo == 0.0:
                new = hi / 4.0
            else:
                new = math.sqrt(lo * hi)
        nu = new
    if d > radius * (1.0 + 4 * _EPS) and s_hi is not None:  # stopped on the bracket: its feasible end
        return s_hi, hi
    return s, nu


def _deviation(s: np.ndarray) -> float:
    """sqrt(sum (s_i^2 - 1)^2) without overflow or underflow of the squares."""
    return float(np.linalg.norm((s - 1.0) * (s + 1.0)))


def band_values(z: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """Projection of ``z`` on the band [``lower``, ``upper``]: the clip."""
    return np.clip(np.asarray(z, dtype=np.float64), lower, upper)


def map_singular_values(V: torch.Tensor, fn: Callable[[np.ndarray], np.ndarray]
                        ) -> tuple[torch.Tensor, np.ndarray]:
    r""":math:`U\,\mathrm{diag}(\phi(\sigma))\,\bar V^\top` for :math:`V = U\,\mathrm{diag}(\sigma)\,\bar V^\top`
    (p×q float64, any device) and ``fn`` = φ acting on the vector of the k = min(p, q) singular values (NumPy
    float64, ascending); returns the matrix and :math:`\phi(\sigma)`.

    With :math:`C = V^\top V = \bar V\,\mathrm{diag}(\sigma^2)\,\bar V^\top` (p ≥ q; :math:`VV^\top` when p < q),
    the result is :math:`V\,\bar V\,\mathrm{diag}(\phi(\sigma)/\sigma)\,\bar V^\top`: one k×k eigendecomposition
    and two products instead of an SVD of V (about half the time at k = 512). The Gram squares the condition
    number, so when the smallest singular value is below :data:`GRAM_FLOOR` times the largest (or V = 0) a
    full SVD is used instead; float32 input is computed in float32 above :data:`GRAM_FLOOR_FLOAT32` and in
    float64 below it.
    """
    p, q = V.shape
    tall = p >= q
    C = V.mT @ V if tall else V @ V.mT
    beta, E = torch.linalg.eigh(C)
    sigma = beta.clamp_min(0).sqrt()
    sig = sigma.cpu().numpy().astype(np.float64)
    if V.dtype != torch.float64 and sig.size and sig[0] < GRAM_FLOOR_FLOAT32 * sig[-1]:
        out, out_s = map_singular_values(V.to(torch.float64), fn)
        return out.to(V.dtype), out_s
    if sig.size == 0 or not sig[-1] > 0 or sig[0] < GRAM_FLOOR * sig[-1]:
        u, s, vh = torch.linalg.svd(V, full_matrices=False)
        out_s = fn(s.cpu().numpy()[::-1].copy())[::-1].copy()  # ascending for fn, as on the Gram path
        return (u * torch.from_numpy(out_s).to(V)) @ vh, out_s[::-1].copy()
    out_s = fn(sig)
    scale = torch.from_numpy(out_s / sig).to(V)
    core = (E * scale) @ E.mT
    return (V @ core if tall else core @ V), out_s
