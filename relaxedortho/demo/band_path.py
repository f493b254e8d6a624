"""The nested band maps of the demo: the band-constrained relaxed Procrustes along a path of ε."""
from __future__ import annotations

import torch

from ..metrics import fit_mse

def fit_band_path(X: torch.Tensor, Y: torch.Tensor, eps_values, steps: int | None = None, *,
                  tol: float | None = None, with_info: bool = False) -> list:
    r"""Affine maps :math:`xW + b` minimising :math:`\tfrac1n\lVert XW + \mathbf 1b - Y\rVert_F^2` subject to
    :math:`\sigma_i(W)\in[\sqrt{\max(0, 1-\varepsilon)}, \sqrt{1+\varepsilon}]` (spectral
    :math:`\lVert W^\top W - I\rVert_2\le\varepsilon` for square/expanding ``W``; docs/math.md §5), for increasing ε.

    Each band is solved by the library's band-constrained relaxed Procrustes,
    :func:`~relaxedortho.closed_form.relaxed.solve_relaxed_band` with ``center=True`` (the bias is optimal in
    closed form, :math:`b = \mu_Y - \mu_X W`): the clipped least-squares map when :math:`X_c^\top X_c = cI`, its
    accelerated projected-gradient solver otherwise (which warns with
    :class:`~relaxedortho.exceptions.ConvergenceWarning` when it stops at its iteration limit); the moments are
    accumulated once for the whole path. The exact optimum's fit is non-increasing in ε (the bands are nested);
    to keep that to the last digit, a band whose solution fits worse than the previous (tighter, hence
    feasible) band's keeps the previous solution.

    Args:
        X, Y: paired rows (n×p, n×q).
        eps_values: the spectral tolerances ε ≥ 0 (any order; solved and returned ascending).
        steps: iteration limit of the solver (default: the solver's,
            :data:`~relaxedortho.closed_form.relaxed_solver.DEFAULT_MAX_ITER`).
        tol: the solver's stopping tolerance, a relative KKT residual (default: the solver's,
            :data:`~relaxedortho.closed_form.relaxed_solver.DEFAULT_TOL`).
        with_info: also return the solver's diagnostics (``converged``, ``iterations``, ``residual``, ...).

    Returns:
        A list of ``(eps, W (p×q), b (q,), mse)`` in float64 (with ``with_info``, ``(eps, W, b, mse, info)``),
        ``mse`` the mean over rows of the squared row error :math:`\tfrac1n\lVert X_cW - Y_c\rVert_F^2`
        (:func:`~relaxedortho.metrics.fit_mse`, docs/math.md §6).
    """
    from ..closed_form import accumulate_moments
    from ..closed_form.relaxed import band_from_epsilon, solve_relaxed_band
    from ..closed_form.relaxed_solver import DEFAULT_MAX_ITER, DEFAULT_TOL

    X64, Y64 = X.double(), Y.double()
    Xc, Yc = X64 - X64.mean(0), Y64 - Y64.mean(0)
    moments = accumulate_moments(X64, Y64, second_moments=("x",))

    def mse(W):
        return fit_mse(Xc @ W, Yc)

    out, prev = [], None
    for eps in sorted(float(e) for e in eps_values):
        lower, upper = band_from_epsilon(eps)
        sol = solve_relaxed_band(moments, lower=lower, upper=upper, center=True, tol=DEFAULT_TOL if tol is None else tol,
                                 max_iter=DEFAULT_MAX_ITER if steps is None else steps)
        W, b, info = sol.W.to(X64), sol.bias.to(X64), dict(sol.info)
        if prev is not None and mse(prev[0]) < mse(W):
            W, b = prev
            info["kept_previous_band"] = True
        prev = (W, b)
        out.append((eps, W, b, mse(W), info) if with_info else (eps, W, b, mse(W)))
    return out
