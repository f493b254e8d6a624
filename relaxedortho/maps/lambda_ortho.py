r"""The relaxed middle of the spectrum: an affine map trained with the λ-orthogonality regularizer."""
from __future__ import annotations

import math
from typing import Any

import torch

from .._checks import check_choice, check_nonnegative, check_positive
from ..penalties import (AUTO_ALPHA_SCALE, DEFAULT_ALPHA, frobenius_deviation, lambda_orthogonality,
                         randomized_deviation, resolved_alpha)
from .affine import AffineMap

class LambdaOrthoLinear(AffineMap):
    r"""Affine map :math:`y = xA^\top + b` whose :meth:`regularizer` is the λ-orthogonality penalty.

    .. math::

        L_\lambda(A) = w \cdot \sigma\big(\alpha(\lVert G(A) - I\rVert_F - \lambda)\big)\,\lVert G(A) - I\rVert_F

    (Ricci et al., "λ-Orthogonality Regularization for Compatible Representation Learning",
    NeurIPS 2025, arXiv 2509.16664, Eq. 6), with :math:`G` the *small* Gram (:math:`A^\top A` for square and
    expanding maps, :math:`AA^\top` for compressing ones), the **unsquared** Frobenius norm, and penalty
    weight :math:`w` (1 in the paper). Add :meth:`regularizer` to the task loss.

    Where training settles: at the deviation :math:`n^*` where the penalty's slope
    :math:`\sigma + \alpha n\sigma(1 - \sigma)` equals the data term's pull :math:`\pi` on :math:`n`
    (:func:`~relaxedortho.penalties.lambda_equilibrium`). A mean loss pulls weakly (:math:`\pi \lesssim 1`), and the
    map stops *below* λ, at :math:`n^* \approx \lambda - \ln((1 + \alpha\lambda)/\pi)/\alpha`: with a fixed α = 10
    a planted problem ended at 0.32 / 1.62 / 7.41 for λ = 0.5 / 2 / 8 (docs/math.md §2), and on the shipped sentence
    embeddings at 0.05 λ for λ = 1 — the map never used its tolerance. The default ``alpha="auto"`` narrows the gate
    with λ, so the map settles at a fixed fraction of λ (0.91 λ there). λ is a tolerance the map stays under. A pull
    above the slope's peak (about :math:`\tfrac12 + \alpha\lambda/4`, e.g. a per-sample *summed* loss) overruns λ.

    By the distortion bound, for square and expanding maps :math:`\lVert A^\top A - I\rVert_2 \le \lambda`
    implies :math:`|\langle Aa, Ab\rangle - \langle a, b\rangle| \le \lambda \lVert a\rVert\lVert b\rVert`.

    Args:
        in_features, out_features: sizes of input and output samples (any, square or rectangular).
        bias: learn an additive bias (default ``True``, as in the paper).
        lam: tolerance λ >= 0 on :math:`\lVert G - I\rVert_F`. ``math.inf`` is exactly the free affine map
            (regularizer 0); ``0`` is unsquared soft orthogonality, not the hard constraint. Default 1.0:
            choose it for your width (the paper uses 12 for 1024-d features).
        alpha: sigmoid steepness α > 0, or ``"auto"`` (default): :math:`\alpha = \max(10, 100/\lambda)`
            (:data:`~relaxedortho.penalties.DEFAULT_ALPHA`, :data:`~relaxedortho.penalties.AUTO_ALPHA_SCALE`;
            re-evaluated when ``lam`` changes; 10 at λ = 0 and ∞).
            The gate then narrows with λ and a weak pull settles at a fixed fraction of λ, at least
            :math:`1 - \ln(101/\pi)/100` (0.95 for a pull :math:`\pi = 1`, 0.91 for :math:`\pi = 0.01`). On a planted
            4-d problem (mean loss, Adam lr 1e-2, 1500 steps; ``tests/test_orthogonal_training.py``) the deviation
            ended at 0.94 / 0.93 / 0.93 λ for λ = 0.5 / 1 / 2 with ``"auto"``, at 0.51 / 0.65 / 0.75 λ with α = 10;
            on the shipped sentence embeddings trained λ maps reach the relaxed closed form's held-out top-1 within
            0.008 with ``"auto"``, and missed it by up to 0.016 with α = 10 and weight 1 (docs/training.md). A
            number fixes α (the default before was 10).
        gate: ``"sigmoid"`` (Eq. 6, default) or ``"heaviside"`` (Eq. 5, not differentiable in λ).
        penalty_weight: multiplier :math:`w` >= 0 of the penalty (default 1, as in the paper).
        estimator: ``"exact"`` (default; one Gram product forward, one backward, hand-written gradient
            that is 0 at :math:`G = I`) or ``"randomized"`` (:func:`~relaxedortho.penalties.randomized_deviation`
            with ``num_probes`` Gaussian probes: :math:`O(k\,pq)` cost, unbiased for the squared norm,
            biased low by Jensen for the norm; see its documentation).
        num_probes: probes of the randomized estimator (default 16).
        init: starting weight: ``"orthogonal"`` (default), ``"identity"``, ``"kaiming"`` or a matrix.
        device, dtype: factory arguments.

    The regularizer is evaluated in float32 (float64 for float64 weights), also under autocast.

    Example:
        >>> import torch, relaxedortho as ro
        >>> m = ro.LambdaOrthoLinear(8, 8, lam=0.5, init="identity")
        >>> float(m.regularizer().detach())
        0.0
        >>> with torch.no_grad():
        ...     _ = m.weight.mul_(2.0)
        >>> round(m.orthogonality_error(), 4)  # ||4 I - I||_F = 3 * sqrt(8)
        8.4853
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, lam: float = 1.0,
                 alpha: Any = "auto", gate: str = "sigmoid", penalty_weight: float = 1.0,
                 estimator: str = "exact", num_probes: int = 16, init: Any = "orthogonal",
                 device=None, dtype=None) -> None:
        self_lam = check_nonnegative(lam, "lam", allow_inf=True)
        self_alpha = alpha if isinstance(alpha, str) and alpha == "auto" else check_positive(alpha, "alpha")
        check_choice(gate, "gate", ("sigmoid", "heaviside"))
        check_choice(estimator, "estimator", ("exact", "randomized"))
        pw = check_nonnegative(penalty_weight, "penalty_weight")
        if isinstance(num_probes, bool) or not isinstance(num_probes, int) or num_probes < 1:
            raise ValueError(f"num_probes must be a positive integer, got {num_probes!r}")
        super().__init__(in_features, out_features, bias=bias, init=init, device=device, dtype=dtype)
        self.lam = self_lam
        self.alpha_option = self_alpha
        self.gate = gate
        self.penalty_weight = pw
        self.estimator = estimator
        self.num_probes = num_probes

    @property
    def alpha(self) -> float:
        """The sigmoid steepness in use (resolved from ``"auto"`` for the current ``lam``)."""
        return resolved_alpha(self.alpha_option, self.lam)

    @alpha.setter
    def alpha(self, value) -> None:
        self.alpha_option = value if isinstance(value, str) and value == "auto" else check_positive(value, "alpha")

    def deviation(self) -> torch.Tensor:
        r""":math:`\lVert G - I\rVert_F` as the regularizer sees it (exact or randomized), differentiable."""
        if self.estimator == "randomized":
            return randomized_deviation(self.weight, self.num_probes)
        return frobenius_deviation(self.weight)

    def regularizer(self) -> torch.Tensor:
        r""":math:`w \cdot L_\lambda(A)`, a differentiable scalar in float32 (float64 for float64 weights)."""
        if math.isinf(self.lam) or self.penalty_weight == 0:
            return super().regularizer()
        pen = lambda_orthogonality(self.weight, self.lam, self.alpha, gate=self.gate, deviation=self.deviation())
        return pen * self.penalty_weight if self.penalty_weight != 1.0 else pen

    def config(self) -> dict:
        return {**super().config(), "lam": self.lam, "alpha": self.alpha_option, "gate": self.gate,
                "penalty_weight": self.penalty_weight, "estimator": self.estimator, "num_probes": self.num_probes}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, lam={self.lam}, alpha={self.alpha}, gate={self.gate!r}"
