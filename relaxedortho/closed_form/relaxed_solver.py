r"""The iterative solver of the relaxed Procrustes problems on non-whitened data.

Problem (row convention, ``docs/math.md`` §5): with :math:`A = X^\top X` (p×p), :math:`M = X^\top Y` (p×q),

.. math::

    \min_W\; F(W) = f(W) + h(\sigma(W)),\qquad f(W) = \operatorname{tr}(W^\top A W) - 2\operatorname{tr}(W^\top M),

h a function of the singular values of W only: the indicator of a band or of a Frobenius ball of the small Gram,
or the penalty :math:`\mu\sum_i (\sigma_i^2 - 1)^2`. (:math:`\lVert XW - Y\rVert_F^2 = f(W) + \lVert Y\rVert_F^2`,
so only the moments are needed.)

**Cheap iterations.** With :math:`A = Q\Lambda Q^\top` (one eigendecomposition, p×p) and
:math:`\tilde W = Q^\top W`, f becomes :math:`\sum_i \lambda_i \lVert\tilde w_i\rVert^2 - 2\langle \tilde W,
Q^\top M\rangle` while h is unchanged (singular values are invariant under :math:`Q^\top`): the gradient is a row
scaling, :math:`2(\Lambda\tilde W - \tilde M)`, and every iteration works on p×q and min(p,q)² quantities
only. The proximal map of h is applied through an eigendecomposition of the small Gram
(:func:`~relaxedortho.closed_form.singular_value_maps.map_singular_values`), not a full SVD.

**Few iterations.** The forward–backward (projected/proximal gradient) map
:math:`T(W) = \operatorname{prox}_{th}(W - t\nabla f(W))`, :math:`t = 0.95/L`, :math:`L = 2\lambda_{\max}(A)`,
is accelerated by PANOC (Stella, Themelis, Sopasakis & Patrinos, CDC 2017; Themelis, Stella & Patrinos, SIAM J.
Optim. 2018): L-BFGS directions :math:`d = -H R` on the fixed-point residual :math:`R(W) = W - T(W)` (initial
matrix the row scaling :math:`(2t\Lambda)^{-1}`, exact where h is flat), blended with the forward–backward step,
:math:`W^+ = W - (1-\tau)R + \tau d`, with τ ∈ {1, ½, …, 0} the first that decreases the forward–backward
envelope

.. math::

    \varphi(W) = f(W) - \langle\nabla f(W), R(W)\rangle + \tfrac{1}{2t}\lVert R(W)\rVert_F^2 + h(T(W))

by at least :math:`\tfrac{1 - tL}{4t}\lVert R\rVert_F^2` (τ = 0, the plain forward–backward step, always does).
φ is continuous, :math:`F(T(W)) \le \varphi(W) \le F(W)`, and its stationary points are the fixed points of T
(the KKT points of the problem): the iteration reaches the points today's projected gradient reaches, a few
times faster (ill-conditioned :math:`X^\top X` is what makes plain gradient steps slow).

**Converged** means a relative fixed-point (KKT) residual

.. math::

    \rho(W) = \frac{\lVert W - T(W)\rVert_F / t}{2\lVert\Lambda\tilde W\rVert_F + 2\lVert\tilde M\rVert_F} \le
    \texttt{tol},

the norm of the proximal-gradient mapping (zero exactly at KKT points) relative to the size of the two terms of
the gradient: scale-free (unchanged when X and Y are scaled together), and at 1e-10 the objective agrees with the
optimum to about 1e-12 relative on the benchmark problems. The moments are divided by :math:`\lambda_{\max}(A)`
first, so data of any finite scale give the same iterations.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable

import numpy as np
import torch

from ..exceptions import ConvergenceWarning
from .singular_value_maps import map_singular_values

#: ``prox(sigma, t) -> (s, h_s)``: the proximal map of t·h on the singular values (NumPy float64, ascending) and
#: the value h(s).
SpectralProx = Callable[[np.ndarray, float], "tuple[np.ndarray, float]"]

#: Relative fixed-point residual under which the solver stops (see the module documentation).
DEFAULT_TOL = 1e-6

#: Iteration limit of the relaxed solvers.
DEFAULT_MAX_ITER = 1000

#: The float32 first phase runs until this relative residual (then float64 to ``tol``).
FLOAT32_SWITCH = 1e-4

_FLOAT32_MIN_SIZE = 1 << 14  # p*q from which the float32 phase is used (below it, per-call overhead dominates)
_MEMORY = 8  # L-BFGS pairs
_STEP = 0.95  # t = _STEP / L
_SIGMA_FACTOR = 0.5  # sufficient decrease: this fraction of the forward-backward step's guaranteed decrease


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.vdot(a.reshape(-1), b.reshape(-1)))


class _LBFGS:
    """Two-loop recursion (Nocedal & Wright, Alg. 7.4) with a diagonal initial matrix; pairs with
    ⟨s, y⟩ ≤ 1e-12 ‖s‖‖y‖ are skipped (the residual map is not the gradient of a convex function)."""

    def __init__(self, memory: int, h0: torch.Tensor):
        self.memory, self.h0 = memory, h0
        self.s: list[torch.Tensor] = []
        self.y: list[torch.Tensor] = []
        self.rho: list[float] = []

    def update(self, s: torch.Tensor, y: torch.Tensor) -> None:
        sy = _dot(s, y)
        if sy > 1e-12 * float(torch.linalg.vector_norm(s)) * float(torch.linalg.vector_norm(y)):
            self.s.append(s)
            self.y.append(y)
            self.rho.append(1.0 / sy)
            if len(self.s) > self.memory:
                del self.s[0], self.y[0], self.rho[0]

    def to(self, dtype: torch.dtype, h0: torch.Tensor) -> "_LBFGS":
        self.s = [v.to(dtype) for v in self.s]
        self.y = [v.to(dtype) for v in self.y]
        self.h0 = h0
        return self

    def apply(self, g: torch.Tensor) -> torch.Tensor:
        q = g.clone()
        alphas = []
        for s, y, rho in zip(reversed(self.s), reversed(self.y), reversed(self.rho)):
            a = rho * _dot(s, q)
            alphas.append(a)
            q.sub_(y, alpha=a)
        if self.s:
            y = self.y[-1]
            gamma = 1.0 / (self.rho[-1] * _dot(y, self.h0 * y))
        else:
            gamma = 1.0
        r = (gamma * self.h0) * q
        for s, y, rho, a in zip(self.s, self.y, self.rho, reversed(alphas)):
            b = rho * _dot(y, r)
            r.add_(s, alpha=a - b)
        return r


def minimize_spectral(A: torch.Tensor, M: torch.Tensor, prox: SpectralProx, W0: torch.Tensor, *,
                      max_iter: int = DEFAULT_MAX_ITER, tol: float = DEFAULT_TOL,
                      shortcut: Callable[[np.ndarray], bool] | None = None,
                      what: str = "relaxed Procrustes") -> tuple[torch.Tensor, dict]:
    r"""Minimise :math:`\operatorname{tr}(W^\top AW) - 2\operatorname{tr}(W^\top M) + h(\sigma(W))` from ``W0`` by
    PANOC in the eigenbasis of A (module documentation).

    Args:
        A: :math:`X^\top X` (p×p, symmetric positive semi-definite, float64).
        M: :math:`X^\top Y` (p×q, float64).
        prox: ``prox(sigma, t) -> (s, h(s))``, the proximal map of t·h on singular values (in the units of A
            and M as given) and the value of h there.
        W0: the start (p×q), a point where h is finite.
        max_iter: iteration limit; reaching it unconverged warns (:class:`~relaxedortho.exceptions.ConvergenceWarning`).
        tol: the relative fixed-point residual at which to stop.
        shortcut: ``shortcut(s)`` is True when singular values ``s`` make h zero and the map feasible; then, if
            A is invertible and the least-squares map :math:`A^{-1}M` has such singular values, it is returned
            (it minimises f, hence F).
        what: the problem's name in the warning.

    Returns:
        ``(W, info)``; ``info`` holds ``iterations`` (``float32_iterations`` of them in the float32 first
        phase, run when p·q ≥ 2¹⁴ and ``tol`` < :data:`FLOAT32_SWITCH`), ``prox_evaluations``, ``residual``
        (ρ at the returned point's iterate), ``converged`` (ρ ≤ tol), ``objective`` (:math:`F(T(W_k))` per
        iteration, without :math:`\lVert Y\rVert^2`; not monotone), ``envelope`` (φ(W_k), non-increasing)
        and ``step`` (t).
    """
    if not (bool(torch.isfinite(A).all()) and bool(torch.isfinite(M).all())):
        raise ValueError(f"{what}: the moments XᵀX, XᵀY are not finite (their accumulation overflowed); "
                         "rescale the data or accumulate in float64 (precision='float64')")
    dev, f64 = A.device, torch.float64
    A, M, W0 = A.to(f64), M.to(f64), W0.to(device=dev, dtype=f64)
    scale = float(A.abs().max()) if A.numel() else 0.0
    info: dict = {"solver": "projected_gradient", "iterations": 0, "float32_iterations": 0, "prox_evaluations": 0,
                  "objective": [], "envelope": [], "step": math.inf,
                  "residual": 0.0, "converged": True}
    if not scale > 0:  # X = 0 (or constant and centred): then M = 0 as well and every feasible point is optimal
        return W0.clone(), info
    lam, Q = torch.linalg.eigh(A / scale)
    lam = lam.clamp_min(0)
    lmax = float(lam[-1])
    if not lmax > 0:  # pragma: no cover - A != 0 and PSD has a positive eigenvalue
        return W0.clone(), info
    lam, Q = lam / lmax, Q  # normalised: lambda_max = 1
    scale *= lmax
    Mt = Q.mT @ (M / scale)
    if shortcut is not None and float(lam[0]) > 1e-10:
        W_ls = Mt / lam[:, None]
        if shortcut(torch.linalg.svdvals(W_ls).cpu().numpy()):
            info.update(solver="least_squares")
            return Q @ W_ls, info
    W = Q.mT @ W0
    L = 2.0
    t = _STEP / L
    m_norm = float(torch.linalg.matrix_norm(Mt))
    n_prox = 0
    sigma = _SIGMA_FACTOR * (1.0 - t * L) / (2.0 * t)
    history, envelope, residuals = [], [], []
    best = (math.inf, None, math.inf)
    it = 0
    converged = False
    # phase 1 in float32 on large problems (about twice as fast per iteration), until the residual reaches
    # FLOAT32_SWITCH or stops improving; then float64 to tol, keeping the L-BFGS memory
    phases = [torch.float32, f64] if W.numel() >= _FLOAT32_MIN_SIZE and tol < FLOAT32_SWITCH else [f64]
    lbfgs = None
    it32 = 0
    for dtype in phases:
        lam_col = lam[:, None].to(dtype)
        Mt_w = Mt.to(dtype)
        h0 = 1.0 / (2.0 * t * (lam_col + 1e-6))  # inverse of the residual's Jacobian where h is flat
        W = W.to(dtype)
        phase_tol = max(tol, FLOAT32_SWITCH) if dtype == torch.float32 else tol

        def forward_backward(W):
            nonlocal n_prox
            AW = lam_col * W
            grad = torch.sub(AW, Mt_w).mul_(2.0)
            fW = _dot(W, AW) - 2.0 * _dot(W, Mt_w)
            held = {}

            def sv_map(sig):
                s, held["h"] = prox(sig, t / scale)
                return s
            T, _ = map_singular_values(torch.add(W, grad, alpha=-t), sv_map)
            hT = held["h"] / scale
            n_prox += 1
            R = torch.sub(W, T)
            rr = _dot(R, R)
            env = fW - _dot(grad, R) + rr / (2.0 * t) + hT
            gscale = 2.0 * (math.sqrt(_dot(AW, AW)) + m_norm)
            res = math.sqrt(rr) / t / gscale if gscale > 0 else 0.0
            fT = _dot(T, lam_col * T) - 2.0 * _dot(T, Mt_w) + hT
            return T, R, rr, env, res, fT

        def record(T, env, res, fT):
            """Append the iterate's objective, envelope and residual; keep the best float64 iterate."""
            nonlocal best
            history.append(fT * scale)
            envelope.append(env * scale)
            residuals.append(res)
            if dtype == f64 and fT <= best[0]:
                best = (fT, T, res)
            return res <= tol

        T, R, rr, env, res, fT = forward_backward(W)
        lbfgs = _LBFGS(_MEMORY, h0) if lbfgs is None else lbfgs.to(dtype, h0)
        converged = record(T, env, res, fT)
        stall, best_res = 0, res
        while res > phase_tol and it < max_iter:
            it += 1
            d = lbfgs.apply(R).neg_()
            tau = 1.0
            while True:
                W_new = T if tau == 0.0 else W - (1.0 - tau) * R + tau * d
                T_new, R_new, rr_new, env_new, res_new, fT_new = forward_backward(W_new)
                if tau == 0.0 or env_new <= env - sigma * rr + 1e-13 * abs(env):
                    break
                tau = tau / 2.0 if tau > 1.0 / 16.0 else 0.0
            lbfgs.update(W_new - W, R_new - R)
            W, T, R, rr, env, res, fT = W_new, T_new, R_new, rr_new, env_new, res_new, fT_new
            converged = record(T, env, res, fT)
            if res < 0.5 * best_res:
                stall, best_res = 0, res
            else:
                stall += 1
                if dtype != f64 and stall >= 20:  # at the float32 rounding floor
                    break
        if dtype != f64:
            it32 = it
    if not converged:
        fT, T, res = best
        warnings.warn(f"{what}: stopped after {it} iterations (max_iter={max_iter}) with relative KKT residual "
                      f"{res:.2e} > tol={tol:.1e}; the result may be off the optimum: raise max_iter",
                      ConvergenceWarning, stacklevel=3)
    info.update(iterations=it, float32_iterations=it32, prox_evaluations=n_prox, objective=history, envelope=envelope,
                residuals=residuals,
                step=t / scale, residual=res, converged=converged)
    return Q @ T, info
