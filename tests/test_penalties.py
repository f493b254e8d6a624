"""Properties of relaxedortho.penalties against independent float64 NumPy evaluations (docs/math.md §2-§3)."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import relaxedortho as ro
from relaxedortho import penalties as P
from relaxedortho.testing import strategies as ros


def deviation_np(a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    g = a.T @ a if a.shape[0] >= a.shape[1] else a @ a.T
    return g - np.eye(g.shape[0])


def eq6_np(a, lam, alpha) -> float:
    """Ricci et al. 2025, Eq. 6, in float64 NumPy: sigmoid(alpha (n - lam)) * n, n = ||G - I||_F."""
    n = np.linalg.norm(deviation_np(a))
    z = alpha * (n - lam)
    sig = 1.0 / (1.0 + np.exp(-z)) if z >= 0 else np.exp(z) / (1.0 + np.exp(z))
    return float(sig * n)


def tol_for(a: torch.Tensor, value: float = 1.0) -> float:
    k = max(a.shape)
    return ros.dtype_tolerance(a.dtype, k) * k * (1.0 + abs(value))


# -- the lambda-regularizer -------------------------------------------------------------------------------------
@given(ros.matrices(max_condition=10.0, scale=(0.3, 2.0)), st.floats(0.0, 5.0), st.floats(0.1, 50.0))
def test_lambda_orthogonality_matches_eq6(a, lam, alpha):
    got = float(P.lambda_orthogonality(a, lam, alpha))
    ref = eq6_np(a.double().numpy(), lam, alpha)
    # the gate's slope alpha * sigma' amplifies the rounding error of n
    assert abs(got - ref) <= tol_for(a, ref) * (1 + alpha)


@given(ros.matrices(max_condition=10.0, scale=(0.3, 2.0)), st.floats(0.0, 5.0))
def test_heaviside_gate_is_eq5(a, lam):
    n = np.linalg.norm(deviation_np(a.double().numpy()))
    if abs(n - lam) < 1e-3:
        return
    got = float(P.lambda_orthogonality(a, lam, 1.0, gate="heaviside"))
    ref = n if n > lam else 0.0
    assert abs(got - ref) <= tol_for(a, ref)


@given(st.floats(0.0, 5.0), st.floats(-3.0, 3.0).filter(lambda d: abs(d) > 1e-2))
def test_gate_tends_to_heaviside(lam, delta):
    n = torch.tensor(max(lam + delta, 0.0), dtype=torch.float64)
    h = float(n > lam)
    gaps = [abs(float(P.lambda_gate(n, lam, alpha)) - h) for alpha in (1.0, 10.0, 100.0, 1e4)]
    assert all(b <= a for a, b in zip(gaps, gaps[1:]))  # monotone in alpha
    d = abs(float(n) - lam)
    # |sigma(alpha d) - H(d)| = sigma(-alpha |d|) <= exp(-alpha |d|), up to the rounding of both sides (a few ulps:
    # hypothesis found sigmoid(-468.75) one rounding step above exp(-468.75))
    assert gaps[-1] <= math.exp(-1e4 * d) * (1 + 1e-12) + 1e-300


def test_lambda_inf_is_exactly_zero():
    a = torch.randn(5, 3, requires_grad=True)
    r = P.lambda_orthogonality(a, math.inf)
    assert float(r.detach()) == 0.0 and r.dtype == torch.float32
    assert float(P.lambda_gate(torch.tensor(1e30), math.inf, 10.0)) == 0.0


@given(ros.shapes(min_side=2, max_side=8), ros.seeds(), st.floats(0.05, 1.0), st.floats(12.0, 40.0),
       st.floats(5.0, 50.0))
def test_gradient_negligible_well_below_lambda(shape, seed, dev_size, steepness, alpha):
    """'Well below' means alpha (lam - n) >= 12; then |dL/dA| <= 1e-2 |dn/dA| (the stated tolerance)."""
    margin = steepness / alpha
    # A = Q diag(1 + e) (columns or rows scaled): n = ||G - I||_F is at most about 2 dev_size; lam = n + margin
    from relaxedortho.linalg import random_orthogonal
    g = torch.Generator().manual_seed(seed)
    q = random_orthogonal(*shape, generator=g, dtype=torch.float64)
    e = 1 + dev_size * torch.rand(min(shape), generator=g, dtype=torch.float64) / math.sqrt(min(shape))
    a = q * e if shape[0] >= shape[1] else q * e[:, None]
    a.requires_grad_(True)
    n = float(P.frobenius_deviation(a).detach())
    lam = n + margin
    (grad,) = torch.autograd.grad(P.lambda_orthogonality(a, lam, alpha), a)
    (grad_n,) = torch.autograd.grad(P.frobenius_deviation(a), a)
    # stated tolerance: dL/dA = (sigma + alpha n sigma (1 - sigma)) dn/dA, sigma = sigmoid(-alpha margin)
    sig = 1.0 / (1.0 + math.exp(alpha * margin))
    bound = sig * (1.0 + alpha * n) * float(grad_n.norm()) * (1 + 1e-9)
    assert float(grad.norm()) <= bound
    assert float(grad.norm()) <= 1e-2 * float(grad_n.norm())  # negligible next to the unsquared penalty's


@given(st.floats(0.0, 2.0), st.floats(1.0, 30.0), st.integers(1, 6))
def test_penalty_grows_past_lambda(lam, alpha, d):
    # A = s I: n = sqrt(d) |s^2 - 1| grows with s > 1; past lam the penalty increases and tends to n
    ss = torch.linspace(1.0, 3.0, 50, dtype=torch.float64)
    vals = np.array([float(P.lambda_orthogonality(s * torch.eye(d, dtype=torch.float64), lam, alpha)) for s in ss])
    ns = np.sqrt(d) * (ss.numpy() ** 2 - 1)
    past = ns > lam
    assert np.all(np.diff(vals[past]) > 0)
    far = ns > lam + 10.0 / alpha
    assert np.all(np.abs(vals[far] - ns[far]) <= ns[far] * math.exp(-10.0) * 1.01)


@given(ros.matrices(dtype=torch.float64, shape=ros.shapes(min_side=1, max_side=5), max_condition=10.0,
                    scale=(0.5, 1.5)))
def test_frobenius_deviation_gradcheck(a):
    a = a.clone().requires_grad_(True)
    if float(P.frobenius_deviation(a).detach()) < 1e-3:  # the norm has a kink at D = 0
        return
    assert torch.autograd.gradcheck(P.frobenius_deviation, (a,), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(lambda w: P.lambda_orthogonality(w, 0.3, 5.0), (a,), eps=1e-6, atol=1e-6)


@given(ros.shapes(max_side=6))
def test_frobenius_backward_matches_autograd_formula(shape):
    a = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    (g1,) = torch.autograd.grad(P.frobenius_deviation(a), a)
    b = a.detach().clone().requires_grad_(True)
    gram = b.mT @ b if shape[0] >= shape[1] else b @ b.mT
    (g2,) = torch.autograd.grad(torch.linalg.matrix_norm(gram - torch.eye(gram.shape[0], dtype=b.dtype)), b)
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)


@given(ros.signed_permutations(), st.sampled_from(["square", "tall", "wide"]))
def test_gradient_zero_not_nan_at_identity_gram(p, kind):
    n = p.shape[0]
    a = p if kind == "square" else (torch.cat([p, torch.zeros(2, n, dtype=p.dtype)]) if kind == "tall"
                                     else torch.cat([p, torch.zeros(n, 2, dtype=p.dtype)], dim=1))
    a = a.clone().requires_grad_(True)
    for fn in (P.frobenius_deviation, lambda w: P.lambda_orthogonality(w, 0.0, 10.0),
               lambda w: P.lambda_orthogonality(w, 1.0), lambda w: P.randomized_deviation(w, 3)):
        (g,) = torch.autograd.grad(fn(a), a)
        assert torch.isfinite(g).all() and float(g.abs().max()) == 0.0


@pytest.mark.parametrize("estimator", ["exact", "randomized"])
@pytest.mark.parametrize("shape", [(256, 256), (384, 128), (96, 320)])
def test_lambda_zero_does_not_kick_an_orthonormal_map(estimator, shape):
    """Issue 11, defect 7: at rounding-level ||G - I|| the direction D/n is noise; with it, one Adam step on the
    λ = 0 penalty alone moved a 256-d orthogonal map to ||G - I||_F = 0.46. The backward treats it as 0."""
    torch.manual_seed(0)
    m = ro.LambdaOrthoLinear(shape[1], shape[0], lam=0.0, estimator=estimator)
    before = m.orthogonality_error()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    opt.zero_grad()
    m.regularizer().backward()
    opt.step()
    assert m.orthogonality_error() == before


@given(ros.orthogonal_matrices(), ros.seeds(), st.floats(-2.0, 5.0))
def test_rounding_floor_of_the_deviation_gradient(q, seed, log_ratio):
    """At or below 10 eps k (orthonormality_rounding) the gradient is exactly 0; above it, it is finite and non-zero,
    and far above it (1000x, where rounding no longer blurs D/n) it is the analytic 2 A D / n of a float64 reference."""
    k = min(q.shape)
    floor = ro.linalg.orthonormality_rounding(k, q.dtype)
    noise = torch.randn(q.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    # a perturbation whose Gram deviation is about 10**log_ratio * floor
    a = (q.double() + 10**log_ratio * floor * noise / (2 * float(noise.norm()))).to(q.dtype).requires_grad_(True)
    n = float(P.frobenius_deviation(a).detach())
    (g,) = torch.autograd.grad(P.frobenius_deviation(a), a)
    assert bool(torch.isfinite(g).all())
    if n <= floor:
        assert float(g.abs().max()) == 0.0
        return
    assert float(g.abs().max()) > 0.0
    if n >= 1e3 * floor:
        a64 = a.detach().double()
        d = torch.tensor(deviation_np(a64.numpy()))
        ref = 2 * (a64 @ d if a64.shape[0] >= a64.shape[1] else d @ a64) / float(torch.linalg.matrix_norm(d))
        assert float((g.double() - ref).norm()) <= 1e-2 * float(ref.norm())


def test_lambda_slope_is_the_derivative_of_the_penalty():
    for lam, alpha in [(0.0, 10.0), (0.5, 10.0), (2.0, 3.0), (8.0, 50.0)]:
        for n in np.linspace(0.0, lam + 2.0, 23):
            t = torch.tensor(float(n), dtype=torch.float64, requires_grad=True)
            (ref,) = torch.autograd.grad(P.lambda_gate(t, lam, alpha) * t, t)
            assert P.lambda_slope(float(n), lam, alpha) == pytest.approx(float(ref), rel=1e-12, abs=1e-300)


@given(st.floats(0.05, 20.0), st.floats(1.0, 200.0), st.floats(1e-3, 1.0))
def test_lambda_equilibrium_balances_the_pull_and_sits_below_lambda(lam, alpha, pull):
    n = P.lambda_equilibrium(lam, alpha, pull)
    if n == 0.0:
        assert P.lambda_slope(0.0, lam, alpha) >= pull
        return
    assert P.lambda_slope(n, lam, alpha) == pytest.approx(pull, rel=1e-9)
    grid = np.linspace(0.0, n, 200)[:-1]  # the first crossing: the slope is below the pull before it
    assert all(P.lambda_slope(float(v), lam, alpha) < pull for v in grid)
    assert n < lam + 2.0 / alpha  # a pull <= 1 never passes the threshold by more than the gate's width
    if alpha * lam >= 10 and (1 + alpha * lam) / pull >= 20:  # the closed-form approximation of the docstring
        approx = lam - math.log((1 + alpha * lam) / pull) / alpha
        assert abs(n - approx) <= 1.5 / alpha


def test_lambda_equilibrium_overrun_and_arguments():
    assert P.lambda_equilibrium(2.0, 10.0, 5.6) == math.inf  # above the slope's peak (5.55)
    assert P.lambda_equilibrium(2.0, 10.0, 5.5) < 2.2
    assert P.lambda_equilibrium(0.0, 10.0, 0.4) == 0.0  # sigma(0) = 1/2 >= 0.4: no deviation at all
    with pytest.raises(ValueError, match="pull"):
        P.lambda_equilibrium(1.0, 10.0, -1.0)
    with pytest.raises(ValueError, match="alpha"):
        P.lambda_equilibrium(1.0, 0.0, 1.0)


# -- the classic penalties -----------------------------------------------------------------------------------
ALL_PENALTIES = {
    "frobenius": P.frobenius_deviation,
    "lambda0": lambda w: P.lambda_orthogonality(w, 0.0),
    "so": P.so_penalty,
    "mc": P.mc_penalty,
    "srip": lambda w: P.srip_penalty(w, generator=torch.Generator().manual_seed(0)),
    "randomized": lambda w: P.randomized_deviation(w, 4, generator=torch.Generator().manual_seed(0)),
}


@given(ros.orthogonal_matrices(), st.sampled_from(sorted(ALL_PENALTIES)))
def test_penalties_vanish_on_orthogonal(q, name):
    v = float(ALL_PENALTIES[name](q))
    k = max(q.shape)
    tol = ros.dtype_tolerance(q.dtype, k) * k
    assert 0.0 <= v <= (tol**2 if name == "so" else tol)


@given(ros.signed_permutations(), st.sampled_from(sorted(ALL_PENALTIES) + ["dso"]))
def test_penalties_exactly_zero_on_signed_permutations(p, name):
    fn = P.dso_penalty if name == "dso" else ALL_PENALTIES[name]
    assert float(fn(p)) == 0.0


@given(ros.orthogonal_matrices(shape=ros.shapes(["tall", "wide"]), dtype=torch.float64))
def test_dso_does_not_vanish_on_rectangular(q):
    diff = abs(q.shape[0] - q.shape[1])
    # the large Gram is a rank-k projector: ||P - I||_F^2 = diff
    assert float(P.dso_penalty(q)) == pytest.approx(diff, rel=1e-10)


@given(ros.matrices(max_condition=10.0, scale=(0.3, 2.0), dtype=torch.float64))
def test_so_dso_mc_match_numpy(a):
    d = deviation_np(a.numpy())
    a64 = a.numpy()
    assert float(P.so_penalty(a)) == pytest.approx(np.sum(d**2), rel=1e-10, abs=1e-12)
    assert float(P.mc_penalty(a)) == pytest.approx(np.abs(d).max(), rel=1e-10, abs=1e-12)
    dso = np.sum((a64.T @ a64 - np.eye(a64.shape[1]))**2) + np.sum((a64 @ a64.T - np.eye(a64.shape[0]))**2)
    assert float(P.dso_penalty(a)) == pytest.approx(dso, rel=1e-10, abs=1e-12)


@given(ros.matrices(max_condition=10.0, scale=(0.3, 2.0), dtype=torch.float64), ros.seeds())
def test_srip_bounded_by_exact_spectral_norm(a, seed):
    exact = np.linalg.norm(deviation_np(a.numpy()), 2)
    est = float(P.srip_penalty(a, n_iter=2, generator=torch.Generator().manual_seed(seed)))
    assert est <= exact * (1 + 1e-10) + 1e-12  # ||D v|| <= ||D||_2 for unit v


@given(ros.shapes(min_side=2), ros.seeds(), st.floats(1.5, 3.0))
def test_srip_converges_to_spectral_norm_with_a_gap(shape, seed, top):
    # singular values s with s_1^2 - 1 = top and the other |s_i^2 - 1| <= 0.5: eigen-gap ratio <= 1/3
    from relaxedortho.linalg import random_orthogonal
    g = torch.Generator().manual_seed(seed)
    k = min(shape)
    u = random_orthogonal(shape[0], k, generator=g, dtype=torch.float64)
    v = random_orthogonal(shape[1], k, generator=g, dtype=torch.float64)
    s2 = 1 + (torch.rand(k, generator=g, dtype=torch.float64) - 0.5)
    s2[0] = 1 + top
    a = (u * s2.sqrt()) @ v.mT
    exact = np.linalg.norm(deviation_np(a.numpy()), 2)
    assert exact == pytest.approx(top, rel=1e-10)
    est = float(P.srip_penalty(a, n_iter=60, generator=torch.Generator().manual_seed(seed + 1)))
    assert est == pytest.approx(exact, rel=1e-8)


# -- the randomized estimator: bias and variance ------------------------------------------------------------
def _estimates(a: torch.Tensor, k: int, n: int) -> np.ndarray:
    g = torch.Generator().manual_seed(1234)
    return np.array([float(P.randomized_deviation(a, k, generator=g)) ** 2 for _ in range(n)])


@pytest.mark.parametrize("shape,k", [((6, 6), 1), ((7, 4), 4), ((3, 8), 16)])
def test_randomized_squared_estimate_unbiased_with_documented_variance(shape, k):
    g = torch.Generator().manual_seed(7)
    from relaxedortho.linalg import random_orthogonal
    u = random_orthogonal(shape[0], min(shape), generator=g, dtype=torch.float64)
    v = random_orthogonal(shape[1], min(shape), generator=g, dtype=torch.float64)
    a = (u * torch.linspace(0.5, 1.5, min(shape), dtype=torch.float64)) @ v.mT
    d = deviation_np(a.numpy())
    mu = np.linalg.eigvalsh(d @ d)  # eigenvalues of D^2; v^T D^2 v is a weighted chi-square
    # cumulants of the mean of k quadratic forms: kappa_r = 2^(r-1) (r-1)! sum(mu^r) / k^(r-1)
    mean = mu.sum()
    var = 2 * (mu**2).sum() / k
    k4 = 48 * (mu**4).sum() / k**3
    assert mean == pytest.approx(np.sum(d**2), rel=1e-10)
    assert var == pytest.approx(2 * np.sum((d @ d) ** 2) / k, rel=1e-10)  # the documented 2||D^2||_F^2 / k
    n = 4000
    x = _estimates(a, k, n)
    z = 5.0  # five standard errors: a false alarm has probability < 1e-6
    assert abs(x.mean() - mean) <= z * math.sqrt(var / n)
    # standard error of the sample variance: sqrt((kappa4 + 2 var^2) / n)
    assert abs(x.var(ddof=1) - var) <= z * math.sqrt((k4 + 2 * var**2) / n)


def test_randomized_norm_estimate_is_biased_low():
    a = torch.diag(torch.tensor([0.5, 1.0, 1.3, 1.4], dtype=torch.float64))
    est = np.sqrt(_estimates(a, 2, 3000))
    exact = float(P.frobenius_deviation(a))
    assert est.mean() < exact  # Jensen


# -- precision, autocast, bad input -------------------------------------------------------------------------
@pytest.mark.parametrize("estimator", ["exact", "randomized"])
def test_autocast_bf16_regularizer_is_float32(estimator):
    import relaxedortho as ro
    m = ro.LambdaOrthoLinear(16, 12, lam=0.0, estimator=estimator)
    with torch.no_grad():
        m.weight.mul_(1.5)
    x = torch.randn(4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
        r = m.regularizer()
    assert y.dtype == torch.bfloat16
    assert r.dtype == torch.float32
    (r + y.float().sum()).backward()
    assert m.weight.grad.dtype == torch.float32 and torch.isfinite(m.weight.grad).all()
    ref = float(P.lambda_orthogonality(m.weight.detach().double(), 0.0))
    if estimator == "exact":
        assert float(r.detach()) == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_weights_evaluated_in_float32(dtype):
    w = torch.eye(4, dtype=dtype) * 1.5
    for fn in (P.frobenius_deviation, P.so_penalty, P.mc_penalty, P.dso_penalty,
               lambda x: P.lambda_orthogonality(x, 0.5), lambda x: P.randomized_deviation(x, 2),
               P.srip_penalty):
        assert fn(w).dtype == torch.float32


@pytest.mark.parametrize("kwargs,exc,name", [
    ({"lam": -1.0}, ValueError, "lam"), ({"lam": float("nan")}, ValueError, "lam"),
    ({"lam": "1"}, TypeError, "lam"), ({"alpha": 0.0}, ValueError, "alpha"),
    ({"alpha": -2.0}, ValueError, "alpha"), ({"alpha": math.inf}, ValueError, "alpha"),
    ({"gate": "step"}, ValueError, "gate")])
def test_lambda_orthogonality_bad_arguments(kwargs, exc, name):
    args = {"lam": 1.0, "alpha": 10.0, **kwargs}
    with pytest.raises(exc, match=name):
        P.lambda_orthogonality(torch.eye(3), args.pop("lam"), args.pop("alpha"), **args)


def test_estimator_bad_arguments():
    with pytest.raises(ValueError, match="num_probes"):
        P.randomized_deviation(torch.eye(3), 0)
    with pytest.raises(ValueError, match="num_probes"):
        P.randomized_deviation(torch.eye(3), 2.5)
    with pytest.raises(ValueError, match="n_iter"):
        P.srip_penalty(torch.eye(3), 0)


def test_auto_alpha_is_finite_for_every_lambda():
    """100/λ overflows for a subnormal λ (found by notebook 04's property test); "auto" caps it."""
    from relaxedortho.penalties import AUTO_ALPHA_MAX, lambda_orthogonality, resolved_alpha

    for lam in (5e-324, 1e-300, 1e-5, 1e-4, 0.01, 1.0, 10.0, 1e300):
        a = resolved_alpha("auto", lam)
        assert math.isfinite(a) and 10.0 <= a <= AUTO_ALPHA_MAX
    assert resolved_alpha("auto", 1e-4) == AUTO_ALPHA_MAX and resolved_alpha("auto", 0.0) == 10.0
    v = (1.1 * torch.eye(3, dtype=torch.float64)).requires_grad_(True)  # off the manifold, at a subnormal λ
    pen = lambda_orthogonality(v, lam=5e-324)
    pen.backward()
    assert math.isfinite(float(pen.detach())) and bool(torch.isfinite(v.grad).all())
