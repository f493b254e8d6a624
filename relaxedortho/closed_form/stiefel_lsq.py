r"""Least squares over matrices with orthonormal columns: the unbalanced (compressing) Procrustes problem.

For a p×p positive semi-definite :math:`A = X^\top X` and a p×q :math:`M = X^\top Y` (p > q),

.. math:: \min_{W^\top W = I_q} f(W), \qquad f(W) = \operatorname{tr}(W^\top A W) - 2\operatorname{tr}(W^\top M)
          = \lVert XW - Y\rVert_F^2 - \lVert Y\rVert_F^2 .

There is no closed form (Gower & Dijksterhuis 2004, *Procrustes Problems* §5; ``docs/math.md`` §5). The
classical majorization :math:`W \leftarrow \operatorname{polar}(M + (\rho I - A)W)` (Kiers 1990) converges at
the rate :math:`1 - \lambda_{\min}(A)/\lambda_{\max}(A)` per step: with feature scales 1 … 0.01 it needs tens of
thousands of iterations. :func:`stiefel_lsq` instead runs a Riemannian trust-region Newton method (Absil, Baker &
Gallivan 2007, *Found. Comput. Math.* 7; Absil, Mahony & Sepulchre 2008, *Optimization Algorithms on Matrix
Manifolds* §7) on the Stiefel manifold with the embedded metric:

- gradient :math:`\operatorname{grad} f(W) = P_W(\nabla f)`, :math:`\nabla f = 2(AW - M)`,
  :math:`P_W(Z) = Z - W\operatorname{sym}(W^\top Z)`;
- Hessian :math:`\operatorname{Hess} f(W)[\xi] = P_W\big(2A\xi - \xi\,S\big)`,
  :math:`S = \operatorname{sym}(W^\top\nabla f)`
  (Absil, Mahony & Trumpf 2013, "An extrinsic look at the Riemannian Hessian");
- the trust-region subproblem by truncated preconditioned conjugate gradients (Steihaug–Toint) in a
  Euclidean trust region of radius at most :math:`\sqrt q` (the manifold's scale), the step retracted with
  the polar factor :math:`(W+\eta)\big((W+\eta)^\top(W+\eta)\big)^{-1/2}`.

Everything runs in the eigenbasis of :math:`A` (one symmetric eigendecomposition), where :math:`A` is diagonal and
a Hessian product costs :math:`O(pq^2)`. The preconditioner is the exact inverse, on the tangent space, of
:math:`\xi \mapsto P_W(D\xi)` with the diagonal :math:`D = 2\Lambda + \sigma I`,
:math:`\sigma = \max(0, -\operatorname{mean}\,\operatorname{eig} S)`: :math:`\xi = D^{-1}(r + W\Sigma)` with the
symmetric :math:`\Sigma` from a q×q Lyapunov equation. It removes the conditioning of :math:`A` from the
iteration count (measured in ``docs/closed_forms.md``).

Global optimality. The problem can have non-global local minima. A stationary point whose Lagrange multiplier
:math:`\Lambda_W = W^\top(AW - M)` (symmetric at a stationary point) satisfies
:math:`\lambda_{\max}(\Lambda_W) \le \lambda_{\min}(A)` is a global minimum: the Lagrangian
:math:`f(W) - \operatorname{tr}(\Lambda_W(W^\top W - I))` is then convex and :math:`W` minimises it (the standard
sufficient condition of Lagrangian duality; necessary too for q = 1, the trust-region subproblem). The solver
starts from the better of :math:`UV^\top` (``kind="orthogonal"``) and the polar factor of the least-squares map
:math:`A^{+}M`; when the certificate fails it also runs from the other one and from ``restarts`` seeded random
points and keeps the best. ``info["certified_global"]`` says whether the result carries the certificate.
"""
from __future__ import annotations

import math
import warnings

import torch

from ..exceptions import ConvergenceWarning
from ..linalg import random_orthogonal


def _sym(S: torch.Tensor) -> torch.Tensor:
    return (S + S.mT) / 2


def _project(W: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
    """Orthogonal projection of ``Z`` onto the tangent space of the Stiefel manifold at ``W``."""
    return Z - W @ _sym(W.mT @ Z)


def _inner(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum())


def _orthonormalize(Z: torch.Tensor) -> torch.Tensor:
    r"""The polar factor :math:`Z(Z^\top Z)^{-1/2}` of a full-column-rank tall ``Z`` (q×q eigendecomposition)."""
    evals, V = torch.linalg.eigh(Z.mT @ Z)
    return Z @ ((V * evals.clamp_min(torch.finfo(Z.dtype).tiny).rsqrt()) @ V.mT)


def _polar(M: torch.Tensor) -> torch.Tensor:
    u, _, vh = torch.linalg.svd(M, full_matrices=False)
    return u @ vh


class _Problem:
    """The objective in the eigenbasis of A, scaled so that max(|A|, |M|) = 1."""

    def __init__(self, lam: torch.Tensor, M: torch.Tensor) -> None:
        self.lam, self.M = lam, M

    def value(self, W: torch.Tensor) -> float:
        return _inner(W, self.lam[:, None] * W) - 2 * _inner(W, self.M)

    def decrease(self, W: torch.Tensor, Wn: torch.Tensor) -> float:
        """f(W) - f(Wn) without cancellation: -<Wn - W, A(Wn + W) - 2M>."""
        D = Wn - W
        return -(_inner(D, self.lam[:, None] * (Wn + W)) - 2 * _inner(D, self.M))

    def egrad(self, W: torch.Tensor) -> torch.Tensor:
        return 2 * (self.lam[:, None] * W - self.M)


def _preconditioner(P: _Problem, W: torch.Tensor, S: torch.Tensor):
    r"""The inverse of :math:`\xi \mapsto P_W(D\xi)` on the tangent space, :math:`D = 2\Lambda + \sigma I`.

    :math:`\xi = D^{-1}(r + W\Sigma)` is tangent when :math:`\operatorname{sym}(W^\top\xi) = 0`, i.e.
    :math:`G\Sigma + \Sigma G = -2\operatorname{sym}(W^\top D^{-1} r)` with :math:`G = W^\top D^{-1}W` (SPD),
    solved in the eigenbasis of G."""
    theta = torch.linalg.eigvalsh(S)
    sigma = max(0.0, -float(theta.mean()))
    d = 2 * P.lam + sigma
    d = d.clamp_min(float(d.max()) * 1e-12 + torch.finfo(d.dtype).tiny)
    dinv = (1.0 / d)[:, None]
    gev, GV = torch.linalg.eigh(W.mT @ (dinv * W))
    gden = gev[:, None] + gev[None, :]

    def apply(r: torch.Tensor) -> torch.Tensor:
        y = dinv * r
        c = GV.mT @ _sym(W.mT @ y) @ GV
        sig = GV @ (-2 * c / gden) @ GV.mT
        return y + dinv * (W @ sig)

    return apply, d


def _truncated_cg(hess, prec, g: torch.Tensor, delta: float, gscale: float, tol: float, max_inner: int):
    """Truncated preconditioned CG (Steihaug–Toint) for min <g, eta> + <eta, H eta>/2 with ||eta||_F <= delta.

    The trust region is Euclidean: in the preconditioner's norm a tiny eigenvalue of A would allow steps far
    beyond the manifold's scale along its eigenvector, where the quadratic model of f on the manifold fails.
    Returns (eta, H eta, Hessian products, stopped at the boundary)."""
    eta = torch.zeros_like(g)
    h_eta = torch.zeros_like(g)
    r = g
    z = prec(r)
    z_r = _inner(z, r)
    direction = -z
    r0 = math.sqrt(_inner(r, r))
    target = max(r0 * min(r0 / gscale, 0.1), 0.5 * tol * gscale)  # superlinear, never beyond the tolerance
    for j in range(1, max_inner + 1):
        hd = hess(direction)
        d_hd = _inner(direction, hd)
        e_e, e_d, d_d = _inner(eta, eta), _inner(eta, direction), _inner(direction, direction)
        alpha = z_r / d_hd if d_hd > 0 else math.inf
        if d_hd <= 0 or e_e + 2 * alpha * e_d + alpha * alpha * d_d >= delta * delta:
            tau = (-e_d + math.sqrt(max(e_d * e_d + d_d * (delta * delta - e_e), 0.0))) / d_d
            return eta + tau * direction, h_eta + tau * hd, j, True
        eta = eta + alpha * direction
        h_eta = h_eta + alpha * hd
        r = r + alpha * hd
        if math.sqrt(_inner(r, r)) <= target:
            return eta, h_eta, j, False
        z = prec(r)
        z_r_old, z_r = z_r, _inner(z, r)
        direction = -z + (z_r / z_r_old) * direction
    return eta, h_eta, max_inner, False


#: Newton steps taken after the gradient criterion holds, while each at least halves the gradient: the criterion
#: bounds the gradient, not the error of W, which is the gradient over the smallest Hessian eigenvalue (measured:
#: a relative gradient of 1e-13 left W 1e-9 from the optimum on offset-heavy features); quadratic convergence
#: takes the gradient to rounding level in one or two such steps.
POLISH_STEPS = 2


def _trust_region(P: _Problem, W: torch.Tensor, max_iter: int, tol: float) -> tuple[torch.Tensor, dict]:
    """Riemannian trust-region Newton from ``W`` (orthonormal columns, eigenbasis coordinates)."""
    p, q = W.shape
    max_inner = p * q - q * (q + 1) // 2
    f = P.value(W)
    history = [f]
    delta = None
    products = 0
    grad_rel = math.inf
    converged = stalled = False
    polish = POLISH_STEPS
    before = None  # (W, f, relative gradient) before a polishing step
    it = steps = 0
    eps = torch.finfo(W.dtype).eps
    while True:
        eg = P.egrad(W)
        S = _sym(W.mT @ eg)
        g = _project(W, eg)
        gscale = 2 * (math.sqrt(_inner(P.lam[:, None] * W, P.lam[:, None] * W)) + math.sqrt(_inner(P.M, P.M)))
        grad_rel = math.sqrt(_inner(g, g)) / gscale if gscale > 0 else 0.0
        if before is not None and grad_rel > 0.5 * before[2]:  # polishing stopped helping: keep the better point
            if grad_rel > before[2]:
                W, f, grad_rel = before
                history.append(f)
            break
        if grad_rel <= tol:
            converged = True
            if polish == 0 or grad_rel == 0:
                break
            polish -= 1
            before = (W, f, grad_rel)
        elif steps == max_iter:
            break
        prec, _ = _preconditioner(P, W, S)
        delta_bar = math.sqrt(q)  # steps on the Stiefel manifold beyond its scale are meaningless
        if delta is None:
            pg = prec(g)
            delta = min(math.sqrt(_inner(pg, pg)), delta_bar)
        if delta < 1e3 * eps * delta_bar:  # the trust region collapsed: no progress possible in float64
            stalled = not converged
            break

        def hess(xi, W=W, S=S):
            return _project(W, 2 * P.lam[:, None] * xi - xi @ S)

        eta, h_eta, j, boundary = _truncated_cg(hess, prec, g, delta, gscale, 0.0 if converged else tol, max_inner)
        products += j
        steps += 1
        if not converged:
            it = steps
        W_new = _orthonormalize(W + _project(W, eta))
        actual = P.decrease(W, W_new)
        model = -(_inner(g, eta) + 0.5 * _inner(eta, h_eta))
        reg = 1e3 * eps * max(1.0, abs(f))  # rounding-level decreases count as agreement (Manopt's rho_reg)
        rho = (actual + reg) / (model + reg)
        if rho < 0.25:
            delta *= 0.25
        elif rho > 0.75 and boundary:
            delta = min(2 * delta, delta_bar)
        if rho > 0.1 and actual >= -reg:
            W, f = W_new, f - actual
        history.append(f)
    return W, {"iterations": it, "polish_steps": steps - it, "hessian_products": products, "converged": converged,
               "stalled": stalled, "gradient_norm": grad_rel, "objective": history}


def _certificate(P: _Problem, W: torch.Tensor) -> float:
    r""":math:`\lambda_{\min}(A) - \lambda_{\max}(\operatorname{sym}W^\top(AW - M))`, relative to
    :math:`\lambda_{\max}(A) + \lVert M\rVert_2`; :math:`\ge 0` certifies a global minimum."""
    mult = _sym(W.mT @ (P.lam[:, None] * W - P.M))
    scale = float(P.lam.max()) + float(torch.linalg.matrix_norm(P.M, 2))
    return (float(P.lam.min()) - float(torch.linalg.eigvalsh(mult)[-1])) / scale if scale > 0 else 0.0


def stiefel_lsq(A: torch.Tensor, M: torch.Tensor, *, max_iter: int = 500, tol: float = 1e-12, restarts: int = 4,
                seed: int = 0) -> tuple[torch.Tensor, dict]:
    r"""Minimise :math:`\operatorname{tr}(W^\top AW) - 2\operatorname{tr}(W^\top M)` over p×q W with
    :math:`W^\top W = I` (p ≥ q, A symmetric PSD) by Riemannian trust-region Newton (module documentation).

    Args:
        A: p×p symmetric positive semi-definite (:math:`X^\top X`), float64.
        M: p×q (:math:`X^\top Y`), float64.
        max_iter: outer (trust-region) iterations per start before the gradient criterion holds; up to
            :data:`POLISH_STEPS` Newton steps follow while each halves the gradient (the criterion bounds the
            gradient, the error of W is the gradient over the smallest Hessian eigenvalue).
        tol: stop when :math:`\lVert\operatorname{grad} f\rVert_F \le \mathrm{tol}\cdot 2(\lVert AW\rVert_F +
            \lVert M\rVert_F)` (a scale-free first-order criterion; 1e-12 is about 100 rounding errors).
        restarts: seeded random starts tried besides the two deterministic ones when the global certificate
            fails (0 keeps the first local minimum).
        seed: seed of the random starts (results are reproducible).

    Returns:
        ``(W, info)``; ``info`` has ``iterations`` (outer, of the returned run, until ``tol`` held),
        ``polish_steps`` (the steps after it), ``hessian_products`` (all
        runs), ``converged``, ``stalled`` (stopped because no step of float64 size made progress),
        ``gradient_norm`` (the relative criterion above), ``certified_global``,
        ``starts`` (runs made), ``objective`` (history of f of the returned run, in the units of A and M).
        A :class:`~relaxedortho.exceptions.ConvergenceWarning` is issued when the returned run did not reach
        ``tol`` within ``max_iter``.
    """
    p, q = M.shape
    scale = max(float(A.abs().amax()), float(M.abs().amax()))
    if scale == 0:
        return _polar(M), {"iterations": 0, "polish_steps": 0, "hessian_products": 0, "converged": True,
                           "stalled": False, "gradient_norm": 0.0,
                           "certified_global": True, "starts": 0, "objective": [0.0]}
    lam, Q = torch.linalg.eigh(A / scale)
    lam = lam.clamp_min(0)
    P = _Problem(lam, Q.mT @ (M / scale))
    w_uvt = _polar(P.M)
    keep = lam > float(lam.max()) * p * torch.finfo(lam.dtype).eps
    w_ls = _polar(torch.where(keep[:, None], P.M / torch.where(keep, lam, 1.0)[:, None], 0.0))
    starts = sorted([w_uvt, w_ls], key=P.value)
    runs = [_trust_region(P, starts[0], max_iter, tol)]
    certified = _certificate(P, runs[0][0]) >= -100 * torch.finfo(lam.dtype).eps
    if not certified:
        g = torch.Generator(device="cpu").manual_seed(int(seed))
        extra = [starts[1]] + [random_orthogonal(p, q, generator=g, dtype=lam.dtype).to(lam.device)
                               for _ in range(restarts)]
        runs += [_trust_region(P, w, max_iter, tol) for w in extra]
    W, info = min(runs, key=lambda r: (r[1]["objective"][-1], not r[1]["converged"]))
    if not certified:
        certified = _certificate(P, W) >= -100 * torch.finfo(lam.dtype).eps
    info = dict(info, hessian_products=sum(r[1]["hessian_products"] for r in runs), starts=len(runs),
                certified_global=bool(certified), objective=[v * scale for v in info["objective"]])
    if not info["converged"]:
        why = ("the trust region shrank to rounding level" if info["stalled"]
               else f"it stopped at max_iter={max_iter} trust-region iterations")
        warnings.warn(f"orthogonal_lsq did not converge: {why} with the relative gradient at "
                      f"{info['gradient_norm']:.2g} > tol={tol:g}; the map is the best point found (raise "
                      "max_iter, or tol if the gradient is at rounding level)", ConvergenceWarning, stacklevel=3)
    return _orthonormalize(Q @ W), info
