"""Relaxed Procrustes closed forms: limits, brute-force optimisers, projected gradient, lambda_init."""
import math

import numpy as np
import pytest
import scipy.optimize
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import relaxedortho as ro
from relaxedortho.closed_form.relaxed_solver import DEFAULT_TOL
from relaxedortho.closed_form import (accumulate_moments, band_from_epsilon, fit_closed_form,
                                      frobenius_singular_values, lambda_init, penalty_singular_values,
                                      projected_gradient, solve_relaxed_band, solve_relaxed_frobenius,
                                      solve_relaxed_penalty)

seeds = st.integers(0, 2**31 - 1)


def whitened_problem(n, p, q, rng, c=None):
    c = rng.uniform(0.5, 20) if c is None else c
    X = np.linalg.qr(rng.standard_normal((n, p)))[0] * math.sqrt(c)  # X^T X = c I
    Y = X @ (rng.standard_normal((p, q)) * 0.6) + 0.3 * rng.standard_normal((n, q))
    return X, Y, c


def W_of(m):
    return m.weight.detach().double().numpy().T


def sse(X, Y, W):
    return float(((X @ W - Y) ** 2).sum())


def dev(W):
    s = np.linalg.svd(W, compute_uv=False)
    return float(np.sqrt(((s ** 2 - 1) ** 2).sum()))


def uvt(M):
    u, _, vh = np.linalg.svd(M, full_matrices=False)
    return u @ vh


# -- scalar maps ---------------------------------------------------------------------------------------
@given(sigma=st.lists(st.floats(0, 1e3), min_size=1, max_size=6), c=st.floats(1e-3, 1e3), mu=st.floats(1e-6, 1e6))
def test_penalty_roots_solve_the_cubic_and_minimise(sigma, c, mu):
    s = penalty_singular_values(torch.tensor(sigma, dtype=torch.float64), c, mu).numpy()
    sig = np.array(sigma)
    assert np.all(s >= 0)
    resid = 2 * mu * s ** 3 + (c - 2 * mu) * s - sig
    scale = 2 * mu * s ** 3 + abs(c - 2 * mu) * s + sig + 1e-300
    assert np.all(np.abs(resid) <= 1e-9 * scale + 1e-12)
    h = lambda t, z: c * t ** 2 - 2 * z * t + mu * (t ** 2 - 1) ** 2  # noqa: E731
    grid = np.linspace(0, max(1.0, sig.max() / c) * 1.5, 2001)
    for si, zi in zip(s, sig):
        assert h(si, zi) <= h(grid, zi).min() + 1e-9 * (1 + abs(h(si, zi)))


def test_penalty_roots_at_the_ends_of_mu():
    """mu = 0 is least squares sigma / c, mu = inf the orthonormal 1; c = mu = 0 has no minimiser."""
    sigma = torch.tensor([0.0, 0.3, 2.0, 7.5], dtype=torch.float64)
    assert torch.equal(penalty_singular_values(sigma, 2.5, 0.0), sigma / 2.5)
    assert torch.equal(penalty_singular_values(sigma, 2.5, math.inf), torch.ones(4, dtype=torch.float64))
    s32 = penalty_singular_values(sigma.float(), 2.5, 1e-3)
    assert s32.dtype == torch.float32
    torch.testing.assert_close(s32.double(), penalty_singular_values(sigma, 2.5, 1e-3), rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="c > 0 or mu > 0"):
        penalty_singular_values(sigma, 0.0, 0.0)


@settings(max_examples=15)
@given(z=st.lists(st.floats(0, 5), min_size=1, max_size=6), radius=st.floats(0, 3))
def test_frobenius_projection_is_feasible_and_nearest(z, radius):
    zt = torch.tensor(z, dtype=torch.float64)
    s = frobenius_singular_values(zt, radius).numpy()
    zz = np.array(z)
    d = np.sqrt(((s ** 2 - 1) ** 2).sum())
    assert d <= radius * (1 + 1e-10) + 1e-12
    if np.sqrt(((zz ** 2 - 1) ** 2).sum()) > radius:
        assert abs(d - radius) <= 1e-8 * (1 + radius)  # active constraint
    # nearest feasible point: beats a brute-force SLSQP from several starts
    best = ((s - zz) ** 2).sum()
    cons = {"type": "ineq", "fun": lambda t: radius ** 2 - ((t ** 2 - 1) ** 2).sum()}
    for x0 in (np.ones_like(zz), np.clip(zz, 0.5, 1.5)):
        r = scipy.optimize.minimize(lambda t: ((t - zz) ** 2).sum(), x0, constraints=[cons], method="SLSQP",
                                    bounds=[(0, None)] * len(zz), options={"ftol": 1e-14, "maxiter": 500})
        if r.success and cons["fun"](r.x) >= -1e-9:
            assert best <= r.fun + 1e-6


def test_band_from_epsilon():
    assert band_from_epsilon(0) == (1.0, 1.0)
    assert band_from_epsilon(2.0) == (0.0, math.sqrt(3))
    assert band_from_epsilon(math.inf) == (0.0, math.inf)
    with pytest.raises(ValueError, match="epsilon"):
        band_from_epsilon(-1)


# -- whitened closed forms: limits -----------------------------------------------------------------------
@given(n=st.integers(8, 30), p=st.integers(1, 5), q=st.integers(1, 5), seed=seeds)
def test_relaxed_limits(n, p, q, seed):
    rng = np.random.default_rng(seed)
    X, Y, c = whitened_problem(n, p, q, rng)
    M = X.T @ Y
    ls, ortho = M / c, uvt(M)
    tol = 1e-7 * (1 + np.abs(ls).max())
    fit = lambda kind, **o: W_of(fit_closed_form(X, Y, kind=kind, **o))  # noqa: E731
    np.testing.assert_allclose(fit("relaxed_penalty", mu=0.0), ls, atol=tol)
    np.testing.assert_allclose(fit("relaxed_penalty", mu=1e-9), ls, atol=1e-6 * (1 + np.abs(ls).max()))
    np.testing.assert_allclose(fit("relaxed_penalty", mu=math.inf), ortho, atol=1e-10)
    np.testing.assert_allclose(fit("relaxed_penalty", mu=1e9), ortho, atol=1e-6)
    np.testing.assert_allclose(fit("relaxed_band", lower=1.0, upper=1.0), ortho, atol=1e-10)
    np.testing.assert_allclose(fit("relaxed_band", epsilon=0.0), ortho, atol=1e-10)
    np.testing.assert_allclose(fit("relaxed_band"), ls, atol=tol)  # default band [0, inf)
    np.testing.assert_allclose(fit("relaxed_frobenius", radius=0.0), ortho, atol=1e-10)
    np.testing.assert_allclose(fit("relaxed_frobenius", radius=math.inf), ls, atol=tol)
    # least squares is the whitened affine fit without intercept
    np.testing.assert_allclose(ls, np.linalg.lstsq(X, Y, rcond=None)[0], atol=1e-8 * (1 + np.abs(ls).max()))


@given(n=st.integers(8, 20), p=st.integers(1, 3), q=st.integers(1, 3), mu=st.floats(0.01, 30), seed=seeds)
def test_relaxed_penalty_matches_lbfgs(n, p, q, mu, seed):
    rng = np.random.default_rng(seed)
    X, Y, c = whitened_problem(n, p, q, rng)
    W = W_of(fit_closed_form(X, Y, kind="relaxed_penalty", mu=mu))

    def obj(w):
        w = w.reshape(p, q)
        k = min(p, q)
        G = w.T @ w if p >= q else w @ w.T
        return sse(X, Y, w) + mu * float(((G - np.eye(k)) ** 2).sum())
    best = obj(W.ravel())
    for x0 in (W.ravel() + 0.3 * rng.standard_normal(p * q), rng.standard_normal(p * q), uvt(X.T @ Y).ravel()):
        r = scipy.optimize.minimize(obj, x0, method="L-BFGS-B", options={"ftol": 1e-15, "gtol": 1e-12})
        assert best <= r.fun + 1e-7 * (1 + abs(r.fun))


def _band_constraints(p, q, lower, upper):
    def eig(w):
        w = w.reshape(p, q)
        return np.linalg.eigvalsh(w.T @ w if p >= q else w @ w.T)
    cons = [{"type": "ineq", "fun": lambda w: eig(w) - lower ** 2}]
    if np.isfinite(upper):
        cons.append({"type": "ineq", "fun": lambda w: upper ** 2 - eig(w)})
    return cons


@settings(max_examples=10)
@given(n=st.integers(8, 20), p=st.integers(1, 3), q=st.integers(1, 3), eps=st.floats(0, 1.5), seed=seeds)
def test_relaxed_band_beats_slsqp_and_random_feasible_maps(n, p, q, eps, seed):
    rng = np.random.default_rng(seed)
    X, Y, c = whitened_problem(n, p, q, rng)
    lower, upper = band_from_epsilon(eps)
    m = fit_closed_form(X, Y, kind="relaxed_band", epsilon=eps)
    W = W_of(m)
    s = np.linalg.svd(W, compute_uv=False)
    assert np.all(s >= lower - 1e-12) and np.all(s <= upper + 1e-12)
    best = sse(X, Y, W)
    k = min(p, q)
    for _ in range(20):  # random feasible maps
        u = np.linalg.qr(rng.standard_normal((p, k)))[0]
        v = np.linalg.qr(rng.standard_normal((q, k)))[0]
        assert best <= sse(X, Y, (u * rng.uniform(lower, upper, k)) @ v.T) + 1e-9
    cons = _band_constraints(p, q, lower, upper)
    for x0 in (uvt(X.T @ Y).ravel(), W.ravel() + 0.05 * rng.standard_normal(p * q)):
        r = scipy.optimize.minimize(lambda w: sse(X, Y, w.reshape(p, q)), x0, method="SLSQP", constraints=cons,
                                    options={"ftol": 1e-12, "maxiter": 200})
        if r.success and all(np.all(cn["fun"](r.x) >= -1e-9) for cn in cons):
            assert best <= r.fun + 1e-6 * (1 + abs(r.fun))


@settings(max_examples=15)
@given(n=st.integers(8, 20), p=st.integers(1, 3), q=st.integers(1, 3), radius=st.floats(0, 2), seed=seeds)
def test_relaxed_frobenius_matches_slsqp(n, p, q, radius, seed):
    rng = np.random.default_rng(seed)
    X, Y, c = whitened_problem(n, p, q, rng)
    W = W_of(fit_closed_form(X, Y, kind="relaxed_frobenius", radius=radius))
    assert dev(W) <= radius * (1 + 1e-9) + 1e-10
    best = sse(X, Y, W)
    k = min(p, q)

    def con(w):
        w = w.reshape(p, q)
        G = w.T @ w if p >= q else w @ w.T
        return radius ** 2 - float(((G - np.eye(k)) ** 2).sum())
    for x0 in (uvt(X.T @ Y).ravel(), W.ravel() + 0.05 * rng.standard_normal(p * q)):
        r = scipy.optimize.minimize(lambda w: sse(X, Y, w.reshape(p, q)), x0, method="SLSQP",
                                    constraints=[{"type": "ineq", "fun": con}], options={"ftol": 1e-12, "maxiter": 200})
        if r.success and con(r.x) >= -1e-9:
            assert best <= r.fun + 1e-6 * (1 + abs(r.fun))


# -- non-whitened: projected gradient --------------------------------------------------------------------
@pytest.mark.parametrize("kind,opts", [("relaxed_band", {"lower": 0.0, "upper": 1.2}),
                                       ("relaxed_band", {"lower": 0.8, "upper": 1.2}),
                                       ("relaxed_frobenius", {"radius": 0.5}),
                                       ("relaxed_penalty", {"mu": 3.0})])
def test_projected_gradient_decreases_and_beats_heuristics(kind, opts):
    rng = np.random.default_rng(7)
    X = rng.standard_normal((60, 4)) * np.array([3.0, 1.0, 0.5, 2.0])
    Y = X @ rng.standard_normal((4, 3)) + 0.1 * rng.standard_normal((60, 3))
    mom = accumulate_moments(X, Y)
    solver = {"relaxed_band": solve_relaxed_band, "relaxed_frobenius": solve_relaxed_frobenius,
              "relaxed_penalty": solve_relaxed_penalty}[kind]
    sol = solver(mom, **opts)
    heur = solver(mom, **opts, solver="closed_form")
    assert sol.info["solver"] == "projected_gradient" and not sol.info["whitened"]
    assert sol.info["converged"] and sol.info["residual"] <= DEFAULT_TOL
    env = sol.info["envelope"]  # the forward-backward envelope never increases
    assert all(b <= a + 1e-12 * abs(a) for a, b in zip(env, env[1:]))
    W, Wh = sol.W.numpy(), heur.W.numpy()
    mu = opts.get("mu", 0.0)
    obj = lambda w: sse(X, Y, w) + mu * dev(w) ** 2  # noqa: E731
    assert obj(W) <= obj(Wh) + 1e-9
    assert sol.info["objective"][-1] + float((Y ** 2).sum()) == pytest.approx(obj(W), rel=1e-10)
    if kind == "relaxed_band":
        s = np.linalg.svd(W, compute_uv=False)
        assert np.all(s <= opts["upper"] + 1e-12) and np.all(s >= opts["lower"] - 1e-12)
    if kind == "relaxed_frobenius":
        assert dev(W) <= opts["radius"] * (1 + 1e-9)
    # brute force from the solution's neighbourhood and from UV^T: no better point
    if kind == "relaxed_penalty":
        r = scipy.optimize.minimize(lambda w: obj(w.reshape(4, 3)), W.ravel(), method="L-BFGS-B")
        assert obj(W) <= r.fun + 1e-6 * abs(r.fun)
    elif kind == "relaxed_band" and opts["lower"] == 0.0:  # convex: global optimum
        cons = _band_constraints(4, 3, 0.0, opts["upper"])
        r = scipy.optimize.minimize(lambda w: sse(X, Y, w.reshape(4, 3)), uvt(X.T @ Y).ravel(), method="SLSQP",
                                    constraints=cons[1:], options={"ftol": 1e-14, "maxiter": 2000})
        u, sv, vh = np.linalg.svd(r.x.reshape(4, 3), full_matrices=False)
        feasible = (u * np.minimum(sv, opts["upper"])) @ vh  # SLSQP ends slightly outside the band
        assert obj(W) <= obj(feasible) + 1e-9 * obj(W)
        assert obj(W) <= r.fun * (1 + 1e-4)


def test_projected_gradient_on_whitened_data_equals_closed_form():
    rng = np.random.default_rng(8)
    X, Y, c = whitened_problem(40, 4, 3, rng)
    mom = accumulate_moments(X, Y)
    for solver, opts in ((solve_relaxed_band, {"lower": 0.9, "upper": 1.1}), (solve_relaxed_frobenius, {"radius": 0.3}),
                         (solve_relaxed_penalty, {"mu": 2.0})):
        a = solver(mom, **opts)
        b = solver(mom, **opts, solver="projected_gradient", tol=1e-12)
        assert a.info["solver"] == "closed_form"
        assert b.info["converged"]
        np.testing.assert_allclose(a.W.numpy(), b.W.numpy(), atol=1e-8)


def test_public_projected_gradient_matches_the_solvers():
    rng = np.random.default_rng(11)
    X = rng.standard_normal((50, 5)) * np.geomspace(3, 0.2, 5)
    Y = X @ rng.standard_normal((5, 4))
    A, M = torch.from_numpy(X.T @ X), torch.from_numpy(X.T @ Y)
    W0 = torch.from_numpy(uvt(X.T @ Y))
    W, info = projected_gradient(A, M, lambda s, t: s.clamp(0.7, 1.3), W0, yy=torch.tensor((Y ** 2).sum()))
    ref = solve_relaxed_band(accumulate_moments(X, Y), lower=0.7, upper=1.3)
    assert info["converged"]
    assert sse(X, Y, W.numpy()) == pytest.approx(sse(X, Y, ref.W.numpy()), rel=1e-10)
    assert info["objective"][-1] == pytest.approx(sse(X, Y, W.numpy()), rel=1e-10)


def test_relaxed_center_adds_bias():
    rng = np.random.default_rng(9)
    X, Y, _ = whitened_problem(50, 3, 3, rng)
    X = X - X.mean(0)
    t = np.array([1.0, -2.0, 3.0])
    m = fit_closed_form(X + 5.0, Y + t, kind="relaxed_band", lower=0.0, upper=math.inf, center=True)
    np.testing.assert_allclose(m(torch.from_numpy(X + 5.0)).detach().numpy(),
                               (X @ np.linalg.lstsq(X, Y - Y.mean(0), rcond=None)[0]) + Y.mean(0) + t, atol=1e-8)


# -- LambdaOrthoLinear initialisation ---------------------------------------------------------------------
@pytest.mark.parametrize("lam", [0.0, 0.3, 2.0, math.inf])
def test_lambda_init(lam):
    rng = np.random.default_rng(10)
    X, Y, _ = whitened_problem(80, 5, 4, rng)
    m = lambda_init(X, Y + 1.0, lam=lam, alpha=5.0)
    assert isinstance(m, ro.LambdaOrthoLinear) and m.lam == lam and m.alpha == 5.0
    assert m.weight.dtype == torch.float64 and m.bias is not None
    assert m.orthogonality_error() <= lam + 1e-9
    ref = fit_closed_form(X, Y + 1.0, kind="relaxed_frobenius", radius=lam, center=True)
    torch.testing.assert_close(m.weight, ref.weight)
    torch.testing.assert_close(m.bias, ref.bias)
    with pytest.raises(TypeError, match="center"):
        lambda_init(X, Y, lam=1.0, bias=False)


def test_relaxed_option_errors():
    X, Y = np.eye(4), np.eye(4)
    with pytest.raises(ValueError, match="radius"):
        fit_closed_form(X, Y, kind="relaxed_frobenius", radius=-1.0)
    with pytest.raises(ValueError, match="solver"):
        fit_closed_form(X, Y, kind="relaxed_frobenius", radius=1.0, solver="lbfgs")
    with pytest.raises(TypeError, match="epsilon or the band"):
        fit_closed_form(X, Y, kind="relaxed_band", epsilon=0.1, upper=2.0)
