r"""Orthogonality penalties usable on any weight matrix.

All functions take a 2-D weight ``A`` (``out x in``, the :class:`torch.nn.Linear` convention) and work with
its *small Gram* :math:`G` (see :func:`relaxedortho.linalg.small_gram`); ``D = G - I``.

.. list-table::
   :header-rows: 1
   :widths: 25 50 25

   * - name
     - value
     - source
   * - :func:`lambda_orthogonality`
     - :math:`\sigma(\alpha(\lVert D\rVert_F-\lambda))\,\lVert D\rVert_F`
     - Ricci et al. 2025, Eq. 6
   * - :func:`frobenius_deviation`
     - :math:`\lVert D\rVert_F` (unsquared soft orthogonality)
     - Ricci et al. 2025, Eq. 3
   * - :func:`so_penalty`
     - :math:`\lVert D\rVert_F^2`
     - Bansal et al. 2018 (SO)
   * - :func:`dso_penalty`
     - :math:`\lVert A^\top A-I\rVert_F^2+\lVert AA^\top-I\rVert_F^2`
     - Bansal et al. 2018 (DSO)
   * - :func:`mc_penalty`
     - :math:`\max_{ij} |D_{ij}|`
     - Bansal et al. 2018 (MC)
   * - :func:`srip_penalty`
     - :math:`\sigma_{\max}(D)` by power iteration
     - Bansal et al. 2018 (SRIP)
   * - :func:`randomized_deviation`
     - :math:`\sqrt{\tfrac1k\sum_i \lVert D v_i\rVert^2}`, :math:`v_i\sim\mathcal N(0,I)`
     - Hutchinson-type estimate

The penalties are evaluated in at least float32, also under autocast (docs/math.md §2).
"""
from __future__ import annotations

import math
from typing import Any

import torch

from ._checks import check_choice, check_matrix, check_nonnegative, check_positive
from .linalg import gram_deviation, orthonormality_rounding


#: The smallest sigmoid steepness α of ``alpha="auto"`` (the default), and its α at λ = 0 and λ = ∞. The paper gives
#: no value. With α = 10 the gate passes from 1 % to 99 % over a band of ±0.46 around λ in ‖G − I‖_F, and the
#: penalty's slope at the threshold is ½ + 2.5·λ.
DEFAULT_ALPHA = 10.0
#: ``alpha="auto"`` uses :math:`\alpha = \max(\text{DEFAULT\_ALPHA}, \text{AUTO\_ALPHA\_SCALE}/\lambda)`: a gate whose
#: width shrinks with λ, so that training settles at a fixed *fraction* of λ (docs/math.md §2).
AUTO_ALPHA_SCALE = 100.0
#: The largest α of ``alpha="auto"`` (reached for λ below 1e-4): 100/λ grows without bound as λ → 0 (infinite for a
#: subnormal λ); beyond 1e6 the gate, 1 % to 99 % over λ ± 4.6e-6, is a Heaviside step to the float32 penalty anyway.
AUTO_ALPHA_MAX = 1e6


def resolved_alpha(alpha: Any, lam: float) -> float:
    r"""The sigmoid steepness for the option ``alpha`` (a number, or ``"auto"``:
    :math:`\min(\text{AUTO\_ALPHA\_MAX}, \max(\text{DEFAULT\_ALPHA}, \text{AUTO\_ALPHA\_SCALE}/\lambda))`,
    DEFAULT_ALPHA at λ = 0 or ∞).

    Example:
        >>> resolved_alpha("auto", 2.0), resolved_alpha("auto", 20.0), resolved_alpha(3.0, 2.0)
        (50.0, 10.0, 3.0)
        >>> resolved_alpha("auto", 5e-324)  # a subnormal λ: capped, never infinite
        1000000.0
    """
    if isinstance(alpha, str):
        if alpha != "auto":
            raise ValueError(f"alpha must be a positive number or 'auto', got {alpha!r}")
        lam = check_nonnegative(lam, "lam", allow_inf=True)
        if lam == 0 or math.isinf(lam):
            return DEFAULT_ALPHA
        return min(AUTO_ALPHA_MAX, max(DEFAULT_ALPHA, AUTO_ALPHA_SCALE / lam))
    return check_positive(alpha, "alpha")


def _at_least_float32(weight: torch.Tensor) -> torch.Tensor:
    check_matrix(weight, "weight")
    return weight if weight.dtype in (torch.float32, torch.float64) else weight.float()


def _rounding_level(w: torch.Tensor) -> float:
    r"""The deviation :math:`\lVert G - I\rVert_F` below which ``w`` counts as orthonormal to rounding
    (:func:`~relaxedortho.linalg.orthonormality_rounding`, in the dtype the penalty is computed in)."""
    return orthonormality_rounding(min(w.shape[-2:]), w.dtype)


class _FrobeniusDeviation(torch.autograd.Function):
    r""":math:`n(A) = \lVert G(A) - I\rVert_F` with the hand-written gradient

    .. math:: \partial n / \partial A = 2 A D / n \;(\text{tall}), \qquad 2 D A / n \;(\text{wide}),

    defined as 0 where :math:`n \le 10\,\varepsilon k` (:func:`~relaxedortho.linalg.orthonormality_rounding`): at
    :math:`D = 0` the unsquared norm is not differentiable (autograd through ``sqrt(sum(D**2))`` gives NaN), and
    at rounding level :math:`D/n` is a unit-norm direction made of rounding noise, which Adam would turn into a
    full step (from ``||G - I||_F`` = 6e-7 to 0.46 in one step at d = 256, lr 1e-3, without this rule). The
    forward value is exact. Costs one Gram product forward and one product backward.
    """

    @staticmethod
    def forward(ctx, weight: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        d = gram_deviation(weight)
        n = torch.linalg.matrix_norm(d)
        ctx.save_for_backward(weight, d, n)
        return n

    @staticmethod
    def backward(ctx, grad_n: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        weight, d, n = ctx.saved_tensors
        floor = _rounding_level(weight)
        scale = torch.where(n > floor, 2.0 * grad_n / n.clamp_min(max(floor, torch.finfo(n.dtype).tiny)),
                            torch.zeros_like(n))
        if weight.shape[-2] >= weight.shape[-1]:
            return (weight @ d) * scale
        return (d @ weight) * scale


def frobenius_deviation(weight: torch.Tensor) -> torch.Tensor:
    r"""Unsquared soft orthogonality :math:`\lVert G(A) - I\rVert_F` (Ricci et al. 2025, Eq. 3).

    Differentiable everywhere, with gradient 0 where the deviation is at rounding level,
    :math:`\lVert G - I\rVert_F \le 10\,\varepsilon k` (:func:`~relaxedortho.linalg.orthonormality_rounding`; at
    :math:`G = I` the norm has no derivative, and just above it the direction is rounding noise). Never NaN.
    Evaluated in at least float32, with autocast disabled inside.

    Example:
        >>> import torch
        >>> float(frobenius_deviation(torch.eye(4)))
        0.0
    """
    w = _at_least_float32(weight)
    with torch.autocast(device_type=w.device.type, enabled=False):
        return _FrobeniusDeviation.apply(w)


def lambda_gate(deviation: torch.Tensor, lam: float, alpha: float, gate: str = "sigmoid") -> torch.Tensor:
    r"""Gate of the λ-orthogonality penalty: :math:`\sigma(\alpha(n - \lambda))` or :math:`H(n - \lambda)`.

    ``lam = math.inf`` gives a gate of exactly 0.
    """
    lam = check_nonnegative(lam, "lam", allow_inf=True)
    check_choice(gate, "gate", ("sigmoid", "heaviside"))
    if math.isinf(lam):
        return torch.zeros_like(deviation)
    if gate == "heaviside":
        return (deviation > lam).to(deviation.dtype)
    return torch.sigmoid(alpha * (deviation - lam))


def lambda_orthogonality(weight: torch.Tensor, lam: float, alpha: Any = "auto", *, gate: str = "sigmoid",
                         deviation: torch.Tensor | None = None) -> torch.Tensor:
    r"""The λ-orthogonality regularizer (Ricci et al., NeurIPS 2025, arXiv 2509.16664, Eq. 6):

    .. math:: L_\lambda(A) = \sigma\big(\alpha(\lVert G - I\rVert_F - \lambda)\big)\,\lVert G - I\rVert_F,

    with the **unsquared** Frobenius norm of the small Gram. ``gate="heaviside"`` gives Eq. 5,
    :math:`H(\lVert G-I\rVert_F-\lambda)\lVert G-I\rVert_F`. ``lam = 0`` with a large ``alpha`` is unsquared soft
    orthogonality (not a hard constraint: its slope is bounded, see docs/math.md §2); ``lam = math.inf`` gives
    exactly 0 (the free affine map).

    Args:
        weight: 2-D weight (``out x in``).
        lam: tolerance λ >= 0 on :math:`\lVert G - I\rVert_F` (``math.inf`` allowed).
        alpha: steepness α > 0 of the sigmoid gate, or ``"auto"`` (default): :func:`resolved_alpha`,
            :math:`\max(10, 100/\lambda)` (10 before; docs/math.md §2).
        gate: ``"sigmoid"`` (Eq. 6) or ``"heaviside"`` (Eq. 5).
        deviation: a precomputed :math:`\lVert G-I\rVert_F` (e.g. a randomized estimate); computed exactly
            with :func:`frobenius_deviation` when omitted.

    The gradient with respect to the deviation :math:`n` is :math:`\sigma + \alpha n \sigma(1-\sigma)`:
    about :math:`\tfrac12 + \alpha\lambda/4` at the threshold and tending to 1 beyond it.

    Example:
        >>> import torch
        >>> w = 1.1 * torch.eye(3)
        >>> round(float(lambda_orthogonality(w, lam=0.0, alpha=1e6)), 4)  # = ||1.21 I - I||_F
        0.3637
    """
    lam = check_nonnegative(lam, "lam", allow_inf=True)
    alpha = resolved_alpha(alpha, lam)
    check_choice(gate, "gate", ("sigmoid", "heaviside"))
    if math.isinf(lam):
        return weight.new_zeros((), dtype=_at_least_float32(weight).dtype)
    n = frobenius_deviation(weight) if deviation is None else deviation
    return lambda_gate(n, lam, alpha, gate) * n


def lambda_slope(n: float, lam: float, alpha: float) -> float:
    r"""Derivative of the smooth λ-orthogonality penalty with respect to the deviation :math:`n`:
    :math:`\sigma + \alpha n \sigma (1 - \sigma)`, :math:`\sigma = \sigma(\alpha(n - \lambda))`.

    Example:
        >>> round(lambda_slope(2.0, 2.0, 10.0), 4)  # 1/2 + alpha lambda / 4 at the threshold
        5.5
    """
    n = check_nonnegative(n, "n")
    lam = check_nonnegative(lam, "lam")
    alpha = check_positive(alpha, "alpha")
    return _slope(n, lam, alpha)


def _slope(n: float, lam: float, alpha: float) -> float:
    u = alpha * (n - lam)
    sig = 1.0 / (1.0 + math.exp(-u)) if u > -700 else 0.0
    return sig + alpha * n * sig * (1.0 - sig)


def lambda_equilibrium(lam: float, alpha: float, pull: float) -> float:
    r"""Where training with the smooth λ-penalty settles: the smallest deviation :math:`n^*` at which the penalty's
    slope :func:`lambda_slope` equals the data term's ``pull`` :math:`\pi = -\partial L_{\text{data}}/\partial n`
    (docs/math.md §2), found by bisection; ``math.inf`` when the pull exceeds the slope's maximum (the penalty is
    overrun).

    Below λ the slope is :math:`\approx e^{\alpha(n-\lambda)}(1 + \alpha\lambda)`, so

    .. math:: n^* \approx \lambda - \frac{1}{\alpha}\ln\frac{1 + \alpha\lambda}{\pi}

    (within :math:`1.5/\alpha` when :math:`\alpha\lambda \ge 10` and :math:`(1 + \alpha\lambda)/\pi \ge 20`):

    training settles *below* λ, by a gap that grows like :math:`\ln(\alpha\lambda)/\alpha`. With α = 10 and
    :math:`\pi = 1`: 0.39, 1.72, 7.57 for λ = 0.5, 2, 8. ``alpha="auto"`` of
    :class:`~relaxedortho.LambdaOrthoLinear` (:math:`\alpha = \max(10, 100/\lambda)`) keeps
    :math:`n^*/\lambda \ge 1 - \ln(101/\pi)/100` while :math:`100/\lambda \ge 10`: 0.95 for :math:`\pi = 1`, 0.91
    for :math:`\pi = 0.01`.

    Example:
        >>> round(lambda_equilibrium(2.0, 10.0, 1.0), 2)
        1.72
        >>> lambda_equilibrium(2.0, 10.0, 100.0)
        inf
    """
    lam = check_nonnegative(lam, "lam")
    alpha = check_positive(alpha, "alpha")
    pull = check_nonnegative(pull, "pull")
    if _slope(0.0, lam, alpha) >= pull:
        return 0.0
    # the slope rises from ~0 to a peak a few 1/alpha beyond lam, then falls back to 1: scan up to the peak
    hi, step = lam, 1.0 / alpha
    best = _slope(hi, lam, alpha)
    while best < pull:
        nxt = _slope(hi + step, lam, alpha)
        if nxt <= best and hi > lam + 50.0 / alpha:
            return math.inf
        hi, best = hi + step, max(best, nxt)
    lo = 0.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _slope(mid, lam, alpha) < pull:
            lo = mid
        else:
            hi = mid
    return hi


def so_penalty(weight: torch.Tensor) -> torch.Tensor:
    r"""Soft orthogonality (SO): :math:`\lVert G - I\rVert_F^2` on the small Gram (Bansal et al. 2018)."""
    w = _at_least_float32(weight)
    return gram_deviation(w).square().sum()


def dso_penalty(weight: torch.Tensor) -> torch.Tensor:
    r"""Double soft orthogonality (DSO): :math:`\lVert A^\top A - I\rVert_F^2 + \lVert AA^\top - I\rVert_F^2`.

    Bansal et al. 2018. Only zero for square orthogonal matrices: a rectangular matrix has one Gram of
    rank < its size, so the larger term cannot vanish.
    """
    w = _at_least_float32(weight)
    i_in = torch.eye(w.shape[-1], dtype=w.dtype, device=w.device)
    i_out = torch.eye(w.shape[-2], dtype=w.dtype, device=w.device)
    return (w.mT @ w - i_in).square().sum() + (w @ w.mT - i_out).square().sum()


def mc_penalty(weight: torch.Tensor) -> torch.Tensor:
    r"""Mutual coherence (MC): :math:`\max_{ij} |(G - I)_{ij}|` (Bansal et al. 2018).

    Bansal et al. state it for unit-norm columns, where only off-diagonal entries matter; here the
    diagonal counts too so that the penalty vanishes exactly on orthonormal matrices only.
    """
    return gram_deviation(_at_least_float32(weight)).abs().amax()


def srip_penalty(weight: torch.Tensor, n_iter: int = 2, *, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Spectral restricted isometry property (SRIP): :math:`\sigma_{\max}(G - I)` (Bansal et al. 2018).

    Power iteration with the matrix-free product :math:`v \mapsto A^\top(Av) - v` (tall orientation), ``n_iter``
    iterations from a Gaussian start (the paper uses 2). Published code disagrees on :math:`\sigma` vs
    :math:`\sigma^2`; this returns :math:`\sigma` (not squared). The iterate is detached, so the gradient is
    that of :math:`\lVert (G-I) v\rVert` at the final direction :math:`v`. An estimate from below.
    """
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}")
    w = _at_least_float32(weight)
    a = w if w.shape[-2] >= w.shape[-1] else w.mT

    def apply(v: torch.Tensor) -> torch.Tensor:
        return a.mT @ (a @ v) - v

    v = torch.randn(a.shape[-1], 1, generator=generator, dtype=w.dtype, device="cpu").to(w.device)
    with torch.no_grad():
        for _ in range(n_iter):
            v = apply(v)
            v = v / v.norm().clamp_min(torch.finfo(w.dtype).tiny)
    return apply(v).norm()


def randomized_deviation(weight: torch.Tensor, num_probes: int = 16, *,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Cheap estimate of :math:`\lVert G - I\rVert_F` from ``num_probes`` Gaussian probes.

    .. math:: \hat n = \Big(\tfrac1k \sum_{i=1}^k \lVert (G - I) v_i\rVert^2\Big)^{1/2}, \quad v_i \sim \mathcal N(0, I).

    Costs :math:`O(k \cdot p \cdot q)` instead of a full Gram product. The squared estimate is *unbiased*
    for :math:`\lVert D\rVert_F^2` with variance :math:`2\lVert D^2\rVert_F^2 / k \le 2\lVert D\rVert_F^4/k`
    (relative standard deviation at most :math:`\sqrt{2/k}`); its square root is biased low (Jensen),
    by about :math:`\operatorname{Var}/(8 n^3)` to first order. Gradient 0 where the estimate is at rounding level,
    :math:`\hat n \le 10\,\varepsilon k` (as for :func:`frobenius_deviation`).
    """
    if isinstance(num_probes, bool) or not isinstance(num_probes, int) or num_probes < 1:
        raise ValueError(f"num_probes must be a positive integer, got {num_probes!r}")
    w = _at_least_float32(weight)
    a = w if w.shape[-2] >= w.shape[-1] else w.mT
    with torch.autocast(device_type=w.device.type, enabled=False):
        v = torch.randn(a.shape[-1], num_probes, generator=generator, dtype=w.dtype,
                        device="cpu" if generator is not None and generator.device.type == "cpu" else w.device)
        v = v.to(w.device)
        r = a.mT @ (a @ v) - v
        sq = r.square().sum() / num_probes
        tiny = torch.finfo(w.dtype).tiny
        root = torch.where(sq > tiny, sq.clamp_min(tiny).sqrt(), torch.zeros_like(sq))
        floor = _rounding_level(w)
        return torch.where(sq > floor * floor, root, root.detach())  # no gradient at rounding level
