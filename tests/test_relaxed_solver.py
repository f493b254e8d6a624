"""The iterative relaxed Procrustes solver: same optimum as an independent projected gradient, KKT conditions,
convergence reporting, scale invariance, and the singular-value maps it is built on."""
import ast
import math
import pathlib
import warnings

import numpy as np
import pytest
import scipy.optimize
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import relaxedortho as ro
from relaxedortho.closed_form import (accumulate_moments, fit_closed_form, lambda_init, solve_relaxed_band,
                                      solve_relaxed_frobenius, solve_relaxed_penalty)
from relaxedortho.closed_form.singular_value_maps import (GRAM_FLOOR, ball_values, cubic_roots,
                                                          map_singular_values)
from relaxedortho.closed_form.relaxed_solver import DEFAULT_TOL
from relaxedortho.exceptions import ConvergenceWarning

seeds = st.integers(0, 2**31 - 1)
SOLVERS = {"penalty": solve_relaxed_penalty, "band": solve_relaxed_band, "ball": solve_relaxed_frobenius}


def embedding_like(rng, n, p, q, *, cond=100.0, offset=3.0, scale=1.0, gain=1.0, dtype=np.float64):
    """Rows with a power-law (geometric) spectrum of condition ``cond``, a common offset, and a target made by a
    planted semi-orthogonal map (det -1 when square) times ``gain``, plus noise."""
    ev = np.geomspace(1.0, 1.0 / cond, p)
    R = np.linalg.qr(rng.standard_normal((p, p)))[0]
    mean = rng.standard_normal(p) * offset * math.sqrt(ev.sum() / p)
    X = (rng.standard_normal((n, p)) * np.sqrt(ev)) @ R.T + mean
    T = np.linalg.qr(rng.standard_normal((max(p, q), min(p, q))))[0]
    T = T if p >= q else T.T
    if p == q and np.linalg.det(T) > 0:
        T[:, 0] *= -1
    Y = gain * X @ T + 0.2 * math.sqrt(ev.mean()) * rng.standard_normal((n, q)) + rng.standard_normal(q)
    return (X * scale).astype(dtype), (Y * scale).astype(dtype)


def prox_of(kind, par):
    if kind == "penalty":
        return lambda s, t: cubic_roots(s, 1.0, 2 * t * par) if par > 0 else s
    if kind == "band":
        return lambda s, t: np.clip(s, *par)
    return lambda s, t: ball_values(s, par)[0]


def options(kind, par):
    if kind == "band":
        return {"lower": par[0], "upper": par[1]}
    return {"mu": par} if kind == "penalty" else {"radius": par}


def objective(A, M, W, kind, par):
    f = float((W * (A @ W)).sum() - 2 * (W * M).sum())
    if kind == "penalty":
        s = np.linalg.svd(W, compute_uv=False)
        f += par * float(((s ** 2 - 1) ** 2).sum())
    return f


def reference_solve(A, M, kind, par, W0, max_iter=100_000):
    """Plain NumPy accelerated projected gradient (FISTA with restart, step 1/L, full SVD per step), run until
    the iterates stop moving: an independent implementation of the problem."""
    L = 2 * np.linalg.eigvalsh(A)[-1]
    t = 1 / L
    phi = prox_of(kind, par)

    def step(V):
        u, s, vh = np.linalg.svd(V - t * 2 * (A @ V - M), full_matrices=False)
        return (u * phi(s, t)) @ vh
    W = Wp = W0
    f, k = objective(A, M, W, kind, par), 0
    for _ in range(max_iter):
        k += 1
        Wn = step(W + (k - 1) / (k + 2) * (W - Wp))
        fn = objective(A, M, Wn, kind, par)
        if fn > f:
            k, Wn = 1, step(W)
            fn = objective(A, M, Wn, kind, par)
        done = np.linalg.norm(Wn - W) <= 1e-14 * max(1.0, np.linalg.norm(W))
        Wp, W, f = W, Wn, fn
        if done:
            break
    return W


def fb_residual(A, M, W, kind, par):
    """Relative fixed-point residual of the forward-backward map, computed with a full SVD."""
    t = 0.95 / (2 * np.linalg.eigvalsh(A)[-1])
    G = 2 * (A @ W - M)
    u, s, vh = np.linalg.svd(W - t * G, full_matrices=False)
    R = W - (u * prox_of(kind, par)(s, t)) @ vh
    return np.linalg.norm(R) / t / (2 * np.linalg.norm(A @ W) + 2 * np.linalg.norm(M))


kinds = st.sampled_from(["penalty", "band", "ball"])


@st.composite
def problems(draw):
    kind = draw(kinds)
    shape = draw(st.sampled_from(["square", "tall", "wide"]))
    a, b = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    p, q = {"square": (a, a), "tall": (a + b, a), "wide": (a, a + b)}[shape]  # W is p x q (in x out)
    cond = 10 ** draw(st.floats(0, 2.5))
    gain = 10 ** draw(st.floats(-0.5, 0.5))
    if kind == "penalty":
        par = 10 ** draw(st.floats(-2, 2))
    elif kind == "band":
        lo = draw(st.floats(0, 1.2))
        par = (lo, lo + draw(st.floats(0, 1)))
    else:
        par = draw(st.sampled_from([0.0, 0.1, 0.5, 2.0]))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return kind, p, q, cond, gain, par, dtype, draw(seeds)


# -- same optimum as an independent solver; KKT conditions ---------------------------------------------------
@settings(max_examples=15)
@given(problems())
def test_solver_reaches_the_reference_optimum_and_kkt_holds(problem):
    kind, p, q, cond, gain, par, dtype, seed = problem
    rng = np.random.default_rng(seed)
    X, Y = embedding_like(rng, 12 * (p + q), p, q, cond=cond, gain=gain, dtype=dtype)
    m = accumulate_moments(X, Y)
    if kind == "penalty":
        par = par * float(np.trace(m.gram_x(center=True).numpy())) / p  # mu on the data's scale
    sol = SOLVERS[kind](m, **options(kind, par), center=True, solver="projected_gradient")
    A, M = m.gram_x(center=True).numpy(), m.cross(center=True).numpy()
    W = sol.W.numpy()
    assert sol.info["converged"] and sol.info["residual"] <= DEFAULT_TOL
    ref = reference_solve(A, M, kind, par, W0=solve_with_closed_form(m, kind, par))
    yy = float(((Y.astype(np.float64) - Y.mean(0)) ** 2).sum())
    F, F_ref = objective(A, M, W, kind, par) + yy, objective(A, M, ref, kind, par) + yy
    assert F <= F_ref + 1e-8 * abs(F_ref)
    # KKT: fixed point of the forward-backward map (independent computation with a full SVD)
    assert fb_residual(A, M, W, kind, par) <= 1e-6
    s = np.linalg.svd(W, compute_uv=False)
    if kind == "band":
        assert np.all(s >= par[0] - 1e-12) and np.all(s <= par[1] + 1e-12)
    if kind == "ball":
        assert np.sqrt(((s ** 2 - 1) ** 2).sum()) <= par * (1 + 1e-9) + 1e-12


def solve_with_closed_form(m, kind, par):
    return SOLVERS[kind](m, **options(kind, par), center=True, solver="closed_form").W.numpy()


@settings(max_examples=10)
@given(p=st.integers(2, 5), q=st.integers(2, 5), radius=st.floats(0.05, 3.0), seed=seeds)
def test_ball_solution_satisfies_the_lagrange_conditions(p, q, radius, seed):
    rng = np.random.default_rng(seed)
    X, Y = embedding_like(rng, 80, p, q, cond=300.0, gain=2.0)
    m = accumulate_moments(X, Y)
    W = solve_relaxed_frobenius(m, radius=radius, center=True).W.numpy()
    A, M = m.gram_x(center=True).numpy(), m.cross(center=True).numpy()
    grad_f = 2 * (A @ W - M)
    B = W.T @ W if p >= q else W @ W.T
    D = B - np.eye(B.shape[0])
    grad_P = 4 * (W @ D if p >= q else D @ W)  # gradient of ||G - I||_F^2
    dev = np.linalg.norm(D)
    nu = -float((grad_f * grad_P).sum()) / max(float((grad_P * grad_P).sum()), 1e-300)
    scale = 2 * np.linalg.norm(A @ W) + 2 * np.linalg.norm(M)
    assert dev <= radius * (1 + 1e-9)
    if dev < radius * (1 - 1e-6):  # inactive: a stationary point of f (the least-squares map)
        assert np.linalg.norm(grad_f) <= 1e-6 * scale
    else:  # active: grad f + nu grad P = 0 with nu >= 0
        assert nu >= -1e-8 * scale
        assert np.linalg.norm(grad_f + nu * grad_P) <= 1e-6 * scale


@settings(max_examples=10)
@given(p=st.integers(2, 5), q=st.integers(2, 5), lower=st.floats(0.0, 1.0), width=st.floats(0.0, 1.0), seed=seeds)
def test_band_solution_satisfies_the_kkt_conditions(p, q, lower, width, seed):
    """-grad f(W) lies in the normal cone of the band at W = U diag(s) V^T: in the singular bases,
    K = U^T (-grad f) V is diagonal except inside clusters of equal singular values at a bound (where it is
    symmetric), with K_ii >= 0 where s_i = upper, <= 0 where s_i = lower > 0, and 0 inside; nothing is left
    outside the span of U (all s_i > 0)."""
    upper = lower + width
    if upper == 0:  # the band is {0}
        return
    rng = np.random.default_rng(seed)
    X, Y = embedding_like(rng, 80, p, q, cond=300.0, gain=1.5)
    m = accumulate_moments(X, Y)
    W = solve_relaxed_band(m, lower=lower, upper=upper, center=True).W.numpy()
    A, M = m.gram_x(center=True).numpy(), m.cross(center=True).numpy()
    G = -2 * (A @ W - M)
    u, s, vh = np.linalg.svd(W, full_matrices=False)
    K = u.T @ G @ vh.T
    scale = 2 * np.linalg.norm(A @ W) + 2 * np.linalg.norm(M)
    tol = 1e-6 * scale
    at_upper, at_lower = s >= upper - 1e-9, (s <= lower + 1e-9) & (lower > 0)
    cluster = (at_upper[:, None] & at_upper[None, :]) | (at_lower[:, None] & at_lower[None, :])
    off = ~np.eye(len(s), dtype=bool)
    assert np.abs(K[off & ~cluster]).max(initial=0.0) <= tol
    assert np.abs(K - K.T).max() <= tol
    assert np.linalg.norm(u @ u.T @ G @ vh.T @ vh - G) <= tol
    eta = np.diag(K)
    assert np.all(eta[at_upper & ~at_lower] >= -tol)
    assert np.all(eta[at_lower & ~at_upper] <= tol)
    assert np.all(np.abs(eta[~at_upper & ~at_lower]) <= tol)


@pytest.mark.parametrize("kind,par", [("penalty", 30.0), ("band", (0.8, 1.2)), ("ball", 0.5), ("ball", 4.0)])
def test_default_tolerance_gives_the_optimum_to_1e8(kind, par):
    rng = np.random.default_rng(3)
    X, Y = embedding_like(rng, 600, 24, 16, cond=1e3, offset=5.0, gain=2.0)
    m = accumulate_moments(X, Y)
    if kind == "penalty":
        par = par * float(np.trace(m.gram_x(center=True).numpy())) / 24
    A, M = m.gram_x(center=True).numpy(), m.cross(center=True).numpy()
    yy = float(((Y - Y.mean(0)) ** 2).sum())
    W = SOLVERS[kind](m, **options(kind, par), center=True).W.numpy()
    W_tight = SOLVERS[kind](m, **options(kind, par), center=True, tol=1e-11, max_iter=5000).W.numpy()
    F, F_tight = objective(A, M, W, kind, par) + yy, objective(A, M, W_tight, kind, par) + yy
    assert abs(F - F_tight) <= 1e-8 * F_tight


# -- convergence reporting --------------------------------------------------------------------------------
def test_convergence_warning_at_max_iter():
    rng = np.random.default_rng(4)
    X, Y = embedding_like(rng, 200, 8, 6, cond=1e3, gain=2.0)
    m = accumulate_moments(X, Y)
    with pytest.warns(ConvergenceWarning, match="max_iter=2"):
        sol = solve_relaxed_frobenius(m, radius=0.5, center=True, max_iter=2)
    assert not sol.info["converged"] and sol.info["iterations"] == 2 and sol.info["residual"] > DEFAULT_TOL
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sol = solve_relaxed_frobenius(m, radius=0.5, center=True)
    assert sol.info["converged"] and sol.info["residual"] <= DEFAULT_TOL and sol.info["iterations"] > 2
    with pytest.warns(ConvergenceWarning):
        lambda_init(X, Y, lam=0.5, max_iter=1)
    assert issubclass(ConvergenceWarning, UserWarning)
    assert ro.ConvergenceWarning is ConvergenceWarning and "ConvergenceWarning" in ro.__all__  # the public name


def test_max_iter_and_tol_are_checked():
    X, Y = embedding_like(np.random.default_rng(5), 50, 3, 3)
    m = accumulate_moments(X, Y)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_iter"):
            solve_relaxed_band(m, upper=1.0, max_iter=bad)
    with pytest.raises(ValueError, match="tol"):
        solve_relaxed_band(m, upper=1.0, tol=-1.0)


def test_exact_shortcuts():
    rng = np.random.default_rng(6)
    X, Y = embedding_like(rng, 100, 4, 6, cond=50.0)
    m = accumulate_moments(X, Y)
    # every singular value pinned and p <= q: a times the polar factor of X^T Y, no iteration
    sol = solve_relaxed_band(m, lower=0.7, upper=0.7)
    u, _, vh = np.linalg.svd(m.cross().numpy(), full_matrices=False)
    assert sol.info["solver"] == "polar"
    np.testing.assert_allclose(sol.W.numpy(), 0.7 * u @ vh, atol=1e-12)
    # a radius the least-squares map satisfies: the least-squares map
    sol = solve_relaxed_frobenius(m, radius=1e6, center=True)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    assert sol.info["solver"] == "least_squares"
    np.testing.assert_allclose(sol.W.numpy(), np.linalg.lstsq(Xc, Yc, rcond=None)[0], atol=1e-9)


# -- scale, devices, errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1e-30, 1e-8, 1e8, 1e30])
@pytest.mark.parametrize("kind", ["penalty", "band", "ball"])
def test_extreme_scales_give_the_same_map(kind, scale):
    rng = np.random.default_rng(12)
    X, Y = embedding_like(rng, 120, 6, 4, cond=100.0, gain=2.0)
    par = {"penalty": 50.0, "band": (0.8, 1.2), "ball": 0.5}[kind]
    ref = SOLVERS[kind](accumulate_moments(X, Y), **options(kind, par), center=True).W.numpy()
    par_s = par * scale ** 2 if kind == "penalty" else par  # mu multiplies ||G - I||^2, the data ||XW - Y||^2
    sol = SOLVERS[kind](accumulate_moments(X * scale, Y * scale), **options(kind, par_s), center=True)
    assert sol.info["converged"]
    np.testing.assert_allclose(sol.W.numpy(), ref, atol=1e-6 * np.abs(ref).max())


def test_float32_data_at_large_scale():
    rng = np.random.default_rng(13)
    X, Y = embedding_like(rng, 200, 6, 6, cond=100.0, gain=2.0)
    ref = lambda_init(X, Y, lam=0.5, dtype=torch.float64).weight.detach().numpy()
    m = lambda_init((X * 1e15).astype(np.float32), (Y * 1e15).astype(np.float32), lam=0.5)
    assert m.weight.dtype == torch.float32
    np.testing.assert_allclose(m.weight.detach().double().numpy(), ref, atol=1e-3)


def test_non_finite_moments_raise_a_clear_error():
    m = accumulate_moments(np.eye(3), np.eye(3))
    m.cross_shifted[0, 0] = math.inf
    with pytest.raises(ValueError, match="not finite.*overflow"):
        solve_relaxed_frobenius(m, radius=0.5, solver="projected_gradient")


def test_lambda_init_device():
    X, Y = embedding_like(np.random.default_rng(14), 60, 4, 3)
    m = lambda_init(X, Y, lam=0.5, device="cpu")
    assert m.weight.device.type == "cpu"
    torch.testing.assert_close(m.weight, lambda_init(X, Y, lam=0.5).weight)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            lambda_init(X, Y, lam=0.5, device="cuda")
    with pytest.raises(ValueError, match="device"):
        lambda_init(X, Y, lam=0.5, device="tpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_solver_on_cuda_matches_cpu():
    X, Y = embedding_like(np.random.default_rng(15), 300, 12, 8, cond=100.0, gain=2.0)
    cpu = fit_closed_form(X, Y, kind="relaxed_frobenius", radius=0.5, center=True)
    gpu = fit_closed_form(torch.from_numpy(X).cuda(), torch.from_numpy(Y).cuda(), kind="relaxed_frobenius",
                          radius=0.5, center=True)
    torch.testing.assert_close(gpu.weight.cpu(), cpu.weight, atol=1e-8, rtol=0)


def test_relaxed_modules_import_scipy_lazily():
    """scipy.optimize costs about a second at import; the relaxed solvers must not import it at module level."""
    root = pathlib.Path(__file__).resolve().parents[1] / "relaxedortho" / "closed_form"
    for name in ("relaxed.py", "relaxed_solver.py", "singular_value_maps.py"):
        tree = ast.parse((root / name).read_text())
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mod = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                assert not (mod or "").startswith("scipy"), f"{name} imports {mod} at module level"


# -- the singular-value maps ------------------------------------------------------------------------------
@given(z=st.lists(st.floats(0, 1e6), min_size=1, max_size=8), c=st.floats(0, 1e3), mu=st.floats(1e-8, 1e8))
def test_cubic_roots_are_the_positive_roots(z, c, mu):
    z = np.array(z)
    s = cubic_roots(z, c, mu)
    for zi, si in zip(z, s):
        roots = np.roots([2 * mu, 0.0, c - 2 * mu, -zi])
        real = roots[np.abs(roots.imag) <= 1e-7 * (1 + np.abs(roots))].real
        best = real[real >= -1e-12].max() if zi > 0 or c < 2 * mu else 0.0
        assert si == pytest.approx(max(best, 0.0), rel=1e-7, abs=1e-9 * (1 + abs(best)))


@settings(max_examples=20)
@given(z=st.lists(st.floats(0, 10), min_size=1, max_size=10), radius=st.floats(0, 4))
def test_ball_values_solve_their_kkt_system(z, radius):
    z = np.array(z)
    s, nu = ball_values(z, radius)
    d = math.sqrt(((s ** 2 - 1) ** 2).sum())
    assert d <= radius * (1 + 1e-12) + 1e-15
    if math.sqrt(((z ** 2 - 1) ** 2).sum()) <= radius:
        assert nu == 0.0 and np.array_equal(s, z)
    elif radius > 1e-20:
        assert d == pytest.approx(radius, rel=1e-9)
        np.testing.assert_allclose(s, cubic_roots(z, 1.0, nu), rtol=1e-12)  # one shared multiplier
    else:  # the projection 1 + O(radius) rounds to 1
        assert np.array_equal(s, np.ones_like(z))


@settings(max_examples=20)
@given(p=st.integers(1, 7), q=st.integers(1, 7), cond=st.floats(0, 8), seed=seeds)
def test_map_singular_values_matches_the_svd(p, q, cond, seed):
    rng = np.random.default_rng(seed)
    k = min(p, q)
    u = np.linalg.qr(rng.standard_normal((p, k)))[0]
    v = np.linalg.qr(rng.standard_normal((q, k)))[0]
    sig = np.sort(10.0 ** (-cond * rng.uniform(0, 1, k)))[::-1]
    V = torch.from_numpy((u * sig) @ v.T)
    fn = lambda s: np.clip(s, 0.3, 0.9)  # noqa: E731
    out, s = map_singular_values(V, fn)
    np.testing.assert_allclose(out.numpy(), (u * fn(sig)) @ v.T, atol=1e-9)
    np.testing.assert_allclose(np.sort(s), np.sort(fn(sig)), atol=1e-12)
    assert GRAM_FLOOR < 1e-3  # the Gram path is used only where it keeps 1e-8 relative accuracy


def test_float32_first_phase_reaches_the_float64_optimum(monkeypatch):
    """Large problems run a float32 phase first (to FLOAT32_SWITCH), then float64 to tol: same optimum."""
    import relaxedortho.closed_form.relaxed_solver as rs
    monkeypatch.setattr(rs, "_FLOAT32_MIN_SIZE", 1)  # use the float32 phase at this small size
    rng = np.random.default_rng(16)
    X, Y = embedding_like(rng, 300, 40, 30, cond=300.0, gain=2.0)
    m = accumulate_moments(X, Y)
    A, M = m.gram_x(center=True).numpy(), m.cross(center=True).numpy()
    yy = float(((Y - Y.mean(0)) ** 2).sum())
    mixed = solve_relaxed_frobenius(m, radius=0.5, center=True)
    monkeypatch.setattr(rs, "FLOAT32_SWITCH", 0.0)  # float64 throughout
    plain = solve_relaxed_frobenius(m, radius=0.5, center=True)
    assert mixed.info["float32_iterations"] > 0 and plain.info["float32_iterations"] == 0
    assert mixed.W.dtype == torch.float64 and mixed.info["converged"] and plain.info["converged"]
    F_mixed = objective(A, M, mixed.W.numpy(), "ball", 0.5) + yy
    F_plain = objective(A, M, plain.W.numpy(), "ball", 0.5) + yy
    assert abs(F_mixed - F_plain) <= 1e-9 * F_plain
    s = np.linalg.svd(mixed.W.numpy(), compute_uv=False)
    assert np.sqrt(((s ** 2 - 1) ** 2).sum()) <= 0.5 * (1 + 1e-9)
