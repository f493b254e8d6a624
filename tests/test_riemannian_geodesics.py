"""Geodesics, logarithm, Cayley chart and Stiefel geodesics: property tests against SciPy and constructed ground
truth."""
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from relaxedortho.linalg import random_orthogonal, skew_retraction
from relaxedortho.riemannian import (cayley, cayley_inverse, distance, exp_map, geodesic, log_map, skew_log,
                                     stiefel_exp, stiefel_geodesic, stiefel_log)
from relaxedortho.riemannian.geodesics import CUT_LOCUS_FACTOR, _expm64

seeds = st.integers(0, 2**31 - 1)
dtypes = st.sampled_from([torch.float64, torch.float32])


def eps(dtype):
    return torch.finfo(dtype).eps


def orth_err(R):
    R = R.double()
    return float(torch.linalg.matrix_norm(R.mT @ R - torch.eye(R.shape[-1], dtype=torch.float64)).max())


def rotation_from_angles(angles, n, seed, det=1.0):
    """R = Q blockdiag(rot(a_1), ..., 1, ...) Q^T with its logarithm X built from the same blocks (float64)."""
    g = torch.Generator().manual_seed(seed)
    Q = random_orthogonal(n, n, generator=g, dtype=torch.float64)
    B = torch.eye(n, dtype=torch.float64)
    X = torch.zeros(n, n, dtype=torch.float64)
    for j, a in enumerate(angles):
        c, s = math.cos(a), math.sin(a)
        B[2 * j:2 * j + 2, 2 * j:2 * j + 2] = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
        X[2 * j:2 * j + 2, 2 * j:2 * j + 2] = torch.tensor([[0.0, -a], [a, 0.0]], dtype=torch.float64)
    if det < 0:
        B[-1, -1] = -1.0
    return Q @ B @ Q.T, Q @ X @ Q.T


@st.composite
def angle_sets(draw, max_n=9):
    """(n, angles): up to n // 2 plane angles in (-pi, pi), some of them close to +-pi or 0."""
    n = draw(st.integers(2, max_n))
    k = draw(st.integers(0, n // 2))
    near = st.builds(lambda e, s: s * (math.pi - 10.0 ** -e), st.integers(1, 10), st.sampled_from([-1.0, 1.0]))
    small = st.builds(lambda e, s: s * 10.0 ** -e, st.integers(1, 12), st.sampled_from([-1.0, 1.0]))
    generic = st.floats(-3.0, 3.0)
    angles = draw(st.lists(st.one_of(generic, generic, small, near), min_size=k, max_size=k))
    return n, angles


# -- the principal logarithm ------------------------------------------------------------------------------------------
@given(angle_sets(), seeds, dtypes)
def test_skew_log_inverts_exp_including_near_pi(case, seed, dtype):
    n, angles = case
    R, X = rotation_from_angles(angles, n, seed)
    cut = CUT_LOCUS_FACTOR * math.sqrt(n) * eps(dtype)   # within this of pi the logarithm is declared ambiguous
    gap = min([math.pi - abs(a) for a in angles], default=math.pi)
    if gap <= cut / 2:
        with pytest.raises(ValueError, match="eigenvalue -1"):
            skew_log(R.to(dtype))
        return
    assume(gap > 2 * cut)
    L = skew_log(R.to(dtype))
    assert L.dtype == dtype
    L64 = L.double()
    assert float(torch.linalg.matrix_norm(L64 + L64.T)) == 0.0  # exactly skew
    # backward error: exp(log R) = R to rounding, whatever the angles
    back = float(torch.linalg.matrix_norm(_expm64(L64) - R.to(dtype).double()))
    assert back <= 200 * eps(dtype) * n
    # forward error against the constructed logarithm: well-conditioned unless two planes are both near pi
    near_pi = sum(abs(a) > math.pi - 1e-2 for a in angles)
    if near_pi <= 1:
        assert float(torch.linalg.matrix_norm(L64 - X)) <= 400 * eps(dtype) * n


@given(st.integers(2, 8), seeds)
def test_skew_log_matches_scipy_logm(n, seed):
    R = random_orthogonal(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64, special=True)
    angles = torch.angle(torch.linalg.eigvals(R)).abs()
    assume(float(angles.max()) < math.pi - 0.05)
    ref = scipy.linalg.logm(R.numpy())
    np.testing.assert_allclose(skew_log(R).numpy(), np.real(ref), atol=1e-12, rtol=0)


@given(st.integers(1, 4), st.integers(2, 6), seeds)
def test_skew_log_batched_equals_one_by_one(b, n, seed):
    g = torch.Generator().manual_seed(seed)
    Rs = torch.stack([random_orthogonal(n, n, generator=g, dtype=torch.float64, special=True) for _ in range(b)])
    angles = torch.angle(torch.linalg.eigvals(Rs)).abs()
    assume(float(angles.max()) < math.pi - 1e-6)
    batched = skew_log(Rs)
    for i in range(b):
        torch.testing.assert_close(batched[i], skew_log(Rs[i]), atol=1e-13, rtol=0)


def test_skew_log_raises_on_reflections_and_on_the_cut_locus():
    with pytest.raises(ValueError, match="determinant -1"):
        skew_log(torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)))
    with pytest.raises(ValueError, match="eigenvalue -1"):
        skew_log(torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64)))
    R, _ = rotation_from_angles([math.pi - 1e-15], 3, 0)
    with pytest.raises(ValueError, match="eigenvalue -1"):
        skew_log(R)
    with pytest.raises(ValueError, match="orthogonal"):
        skew_log(torch.tensor([[1.0, 0.1], [0.0, 1.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="square"):
        skew_log(torch.zeros(3, 2))


def test_expm64_is_accurate_where_torch_single_matrix_exp_is_not():
    # pytorch/pytorch#196592: the degree-8 Taylor branch of a single matrix loses digits (float64 1-norms ~1e-2)
    for s in (5e-3, 1e-2, 2e-2, 4e-2):
        A = torch.tensor([[0.0, -s, 0.3 * s], [s, 0.0, -0.2 * s], [-0.3 * s, 0.2 * s, 0.0]], dtype=torch.float64)
        ref = torch.from_numpy(scipy.linalg.expm(A.numpy()))
        assert float((_expm64(A) - ref).abs().max()) <= 4 * eps(torch.float64)


# -- log/exp maps, geodesics, distance ---------------------------------------------------------------------------------
@st.composite
def same_component_pairs(draw, max_n=7, max_angle=3.0):
    n = draw(st.integers(2, max_n))
    det = draw(st.sampled_from([1.0, -1.0]))
    seed = draw(seeds)
    g = torch.Generator().manual_seed(seed)
    R0 = random_orthogonal(n, n, generator=g, dtype=torch.float64, special=True)
    if det < 0:
        R0[:, 0] = -R0[:, 0]
    angles = draw(st.lists(st.floats(-max_angle, max_angle), min_size=n // 2, max_size=n // 2))
    D, X = rotation_from_angles(angles, n, seed + 1)
    return R0, R0 @ D, X


@given(same_component_pairs(), dtypes)
def test_exp_of_log_at_a_point_returns_the_endpoint(pair, dtype):
    R0, R1, _ = pair
    xi = log_map(R0.to(dtype), R1.to(dtype))
    out = exp_map(R0.to(dtype), xi)
    assert out.dtype == dtype
    n = R0.shape[0]
    assert float(torch.linalg.matrix_norm(out.double() - R1.to(dtype).double())) <= 300 * eps(dtype) * n
    assert orth_err(out) <= 100 * eps(dtype) * n


@given(same_component_pairs(), st.lists(st.floats(0.0, 1.0), min_size=2, max_size=5))
def test_geodesic_endpoints_constant_speed_and_orthogonality(pair, times):
    R0, R1, X = pair
    d = float(distance(R0, R1))
    # the distance is the root of the summed squared angles of R0^T R1
    assert d == pytest.approx(float(torch.linalg.matrix_norm(X)) / math.sqrt(2), abs=1e-12)
    assert torch.equal(geodesic(R0, R1, 0.0), R0)
    torch.testing.assert_close(geodesic(R0, R1, 1.0), R1, atol=1e-13, rtol=0)
    t = torch.tensor(times, dtype=torch.float64)
    G = geodesic(R0, R1, t)
    assert G.shape == (len(times),) + R0.shape
    assert orth_err(G) <= 1e-13
    for i in range(len(times)):
        for j in range(i + 1, len(times)):
            assert float(distance(G[i], G[j])) == pytest.approx(abs(times[i] - times[j]) * d, abs=1e-11)


def test_points_in_different_components_are_not_joined():
    R0 = torch.eye(3, dtype=torch.float64)
    R1 = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    for f in (log_map, distance, lambda a, b: geodesic(a, b, 0.5)):
        with pytest.raises(ValueError, match="different components"):
            f(R0, R1)


def test_exp_map_rejects_non_tangent_vectors():
    with pytest.raises(ValueError, match="skew-symmetric"):
        exp_map(torch.eye(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64))


# -- the Cayley chart --------------------------------------------------------------------------------------------------
@given(st.integers(1, 8), seeds, st.floats(0.01, 10.0), dtypes)
def test_cayley_against_an_independent_solve_and_its_inverse(n, seed, scale, dtype):
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(n, n, generator=g, dtype=torch.float64)
    A = scale * (M - M.T) / max(float(torch.linalg.matrix_norm(M - M.T, ord=2)), 1e-12)
    R = cayley(A.to(dtype))
    assert R.dtype == dtype
    I = np.eye(n)
    ref = np.linalg.solve(I - A.numpy(), I + A.numpy())
    np.testing.assert_allclose(R.double().numpy(), ref, atol=100 * eps(dtype) * n, rtol=0)
    assert orth_err(R) <= 100 * eps(dtype) * n
    assert float(torch.linalg.det(R.double())) == pytest.approx(1.0, abs=1e-5)
    # the inverse: conditioned like 1 + ||A||^2
    back = cayley_inverse(R).double()
    assert float((back - A.to(dtype).double()).abs().max()) <= 100 * eps(dtype) * n * (1 + scale ** 2)


@given(st.floats(-3.1, 3.1))
def test_cayley_coordinate_is_tan_half_angle_and_the_library_retraction_uses_half_of_it(theta):
    J = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    R = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]], dtype=torch.float64)
    torch.testing.assert_close(cayley(math.tan(theta / 2) * J), R, atol=1e-14, rtol=0)
    A = torch.tensor([[0.0, -0.3, 0.2], [0.3, 0.0, -0.1], [-0.2, 0.1, 0.0]], dtype=torch.float64)
    lib = skew_retraction(torch.eye(3, dtype=torch.float64), A, kind="cayley")
    torch.testing.assert_close(cayley(A / 2), lib, atol=1e-15, rtol=0)


def test_cayley_errors():
    with pytest.raises(ValueError, match="skew"):
        cayley(torch.eye(2))
    with pytest.raises(ValueError, match="determinant -1"):
        cayley_inverse(torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64)))
    with pytest.raises(ValueError, match="eigenvalue -1"):
        cayley_inverse(-torch.eye(2, dtype=torch.float64))


# -- Stiefel -----------------------------------------------------------------------------------------------------------
@st.composite
def stiefel_tangents(draw, scale=(0.05, 1.5)):
    n = draw(st.integers(2, 8))
    p = draw(st.integers(1, n))
    g = torch.Generator().manual_seed(draw(seeds))
    U = random_orthogonal(n, p, generator=g, dtype=torch.float64)
    M = torch.randn(p, p, generator=g, dtype=torch.float64)
    D = U @ (M - M.T) + (torch.eye(n, dtype=torch.float64) - U @ U.T) @ torch.randn(n, p, generator=g,
                                                                                   dtype=torch.float64)
    nrm = float(torch.linalg.matrix_norm(D))
    assume(nrm > 1e-3)
    return U, D * draw(st.floats(*scale)) / nrm


def _second_derivative(f, h=1e-3):
    return (f(h) - 2 * f(0.0) + f(-h)) / h ** 2, (f(h) - f(-h)) / (2 * h), f(0.0)


@given(stiefel_tangents(), st.floats(-0.7, 0.7))
def test_stiefel_exponentials_solve_their_geodesic_equations(case, t0):
    U, D = case
    for metric in ("canonical", "euclidean"):
        curve = lambda s, m=metric: stiefel_exp(U, (t0 + s) * D, metric=m)  # noqa: E731
        Ydd, Yd, Y = _second_derivative(curve)
        assert orth_err(Y) <= 1e-13
        if metric == "canonical":   # Edelman, Arias & Smith (1998) Eq. 2.41
            res = Ydd + Yd @ Yd.T @ Y + Y @ ((Y.T @ Yd) @ (Y.T @ Yd) + Yd.T @ Yd)
        else:                       # Eq. 2.7 (embedded metric)
            res = Ydd + Y @ (Yd.T @ Yd)
        assert float(res.abs().max()) <= 1e-5


@given(stiefel_tangents(scale=(0.05, 1.0)), dtypes)
def test_stiefel_log_inverts_exp(case, dtype):
    U, D = case
    U1 = stiefel_exp(U, D)
    L, info = stiefel_log(U.to(dtype), U1.to(dtype), return_info=True)
    assert info["converged"] and L.dtype == dtype
    tol = 2e-12 if dtype == torch.float64 else 2e-5
    assert float((L.double() - D).abs().max()) <= tol
    back = stiefel_exp(U.to(dtype), L).double()
    assert float((back - U1.to(dtype).double()).abs().max()) <= tol


@given(stiefel_tangents(scale=(0.05, 1.0)), st.floats(0.0, 1.0))
def test_stiefel_geodesic_endpoints(case, t):
    U, D = case
    U1 = stiefel_exp(U, D)
    torch.testing.assert_close(stiefel_geodesic(U, U1, 0.0), U, atol=1e-13, rtol=0)
    torch.testing.assert_close(stiefel_geodesic(U, U1, 1.0), U1, atol=1e-11, rtol=0)
    torch.testing.assert_close(stiefel_geodesic(U, U1, t), stiefel_exp(U, t * D), atol=1e-11, rtol=0)
    G = stiefel_geodesic(U, U1, torch.tensor([0.0, t, 1.0]))
    assert G.shape == (3,) + U.shape and orth_err(G) <= 1e-12


def test_stiefel_square_case_is_the_group_geodesic():
    g = torch.Generator().manual_seed(3)
    R0 = random_orthogonal(4, 4, generator=g, dtype=torch.float64)
    R1 = R0 @ random_orthogonal(4, 4, generator=g, dtype=torch.float64, special=True)
    xi = log_map(R0, R1)
    torch.testing.assert_close(stiefel_log(R0, R1), xi, atol=1e-12, rtol=0)
    torch.testing.assert_close(stiefel_exp(R0, 0.3 * xi), geodesic(R0, R1, 0.3), atol=1e-12, rtol=0)


def test_stiefel_errors():
    U = torch.eye(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="skew-symmetric"):
        stiefel_exp(U, torch.eye(4, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="metric"):
        stiefel_exp(U, torch.zeros(4, 2, dtype=torch.float64), metric="other")
    with pytest.raises(ValueError, match="tall"):
        stiefel_exp(U.T, torch.zeros(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="different components"):
        stiefel_log(torch.eye(2, dtype=torch.float64), torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64)))
    far = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        stiefel_log(U, random_orthogonal(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64),
                    max_iter=1)
    assert far.shape == U.shape


def test_stiefel_geodesic_passes_tol_and_max_iter_to_the_logarithm():
    """``tol`` and ``max_iter`` are stiefel_geodesic's own keywords now (they went through ``**log_options``)."""
    g = torch.Generator().manual_seed(0)
    U0 = random_orthogonal(4, 2, generator=g, dtype=torch.float64)
    U1 = random_orthogonal(4, 2, generator=g, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="did not converge in 1 iterations"):
        stiefel_geodesic(U0, U1, 0.5, max_iter=1)
    loose = stiefel_geodesic(U0, U1, 1.0, tol=1e-3)
    assert 1e-12 < float((loose - U1).abs().max()) <= 1e-2
    torch.testing.assert_close(stiefel_geodesic(U0, U1, 1.0), U1, atol=1e-11, rtol=0)


def test_geodesic_takes_times_as_numbers_lists_and_arrays():
    g = torch.Generator().manual_seed(1)
    R0 = random_orthogonal(3, 3, generator=g, dtype=torch.float64)
    R1 = R0 @ random_orthogonal(3, 3, generator=g, dtype=torch.float64, special=True)
    ref = geodesic(R0, R1, torch.tensor([0.25, 0.5]))
    for t in ([0.25, 0.5], np.array([0.25, 0.5]), np.array([0.25, 0.5], dtype=np.float32)):
        torch.testing.assert_close(geodesic(R0, R1, t), ref, atol=0, rtol=0)
    torch.testing.assert_close(geodesic(R0, R1, np.float64(0.5)), ref[1], atol=1e-15, rtol=0)
    torch.testing.assert_close(geodesic(R0, R1, 1), R1, atol=1e-12, rtol=0)
