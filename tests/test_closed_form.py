"""Closed forms of the Procrustes family, least squares and CCA: property tests against SciPy / NumPy."""
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import relaxedortho as ro
from relaxedortho.closed_form import (KINDS, fit_closed_form, generalized_procrustes,
                                      solve_orthogonal_lsq, accumulate_moments)

seeds = st.integers(0, 2**31 - 1)


def haar(d, rng, special=False):
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    q = q * np.sign(np.diag(r))
    if special and np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def stiefel(p, q, rng):
    """p x q with orthonormal columns (p >= q) or rows (p < q)."""
    a, b = max(p, q), min(p, q)
    m, r = np.linalg.qr(rng.standard_normal((a, b)))
    m = m * np.sign(np.diag(r))
    return m if p >= q else m.T


def rows_weight(m):
    """Module weight (out x in) -> row convention W (p x q), NumPy float64."""
    return m.weight.detach().double().numpy().T


def sse(X, Y, W, b=None):
    r = X @ W - Y
    if b is not None:
        r = r + b
    return float((r ** 2).sum())


def well_conditioned(M, ratio=1e-4):
    s = np.linalg.svd(M, compute_uv=False)
    return s.size and s[-1] > ratio * max(s[0], 1e-300)


# -- orthogonal Procrustes -----------------------------------------------------------------------------
@given(n=st.integers(2, 30), d=st.integers(1, 7), seed=seeds)
def test_orthogonal_matches_scipy(n, d, seed):
    rng = np.random.default_rng(seed)
    X, Y = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    assume(well_conditioned(X.T @ Y))
    R, _ = scipy.linalg.orthogonal_procrustes(X, Y)
    m = fit_closed_form(X, Y, kind="orthogonal")
    assert isinstance(m, ro.OrthogonalLinear) and m.weight.dtype == torch.float64
    np.testing.assert_allclose(rows_weight(m), R, atol=1e-10, rtol=0)


@given(n=st.integers(2, 30), p=st.integers(1, 6), q=st.integers(1, 6), seed=seeds)
def test_rectangular_orthogonal_matches_scipy_on_zero_padded_data(n, p, q, seed):
    rng = np.random.default_rng(seed)
    X, Y = rng.standard_normal((n, p)), rng.standard_normal((n, q))
    assume(well_conditioned(X.T @ Y))
    k = max(p, q)
    Xp, Yp = np.zeros((n, k)), np.zeros((n, k))
    Xp[:, :p], Yp[:, :q] = X, Y
    R, _ = scipy.linalg.orthogonal_procrustes(Xp, Yp)
    m = fit_closed_form(X, Y, kind="orthogonal")
    W = rows_weight(m)
    np.testing.assert_allclose(W, R[:p, :q], atol=1e-10, rtol=0)
    assert m.orthogonality_error() < 1e-12


@given(n=st.integers(3, 25), p=st.integers(1, 5), q=st.integers(1, 5), seed=seeds)
def test_orthogonal_maximises_trace_against_random_feasible_maps(n, p, q, seed):
    rng = np.random.default_rng(seed)
    X, Y = rng.standard_normal((n, p)), rng.standard_normal((n, q))
    W = rows_weight(fit_closed_form(X, Y, kind="orthogonal"))
    M = X.T @ Y
    best = np.trace(W.T @ M)
    for _ in range(20):
        assert np.trace(stiefel(p, q, rng).T @ M) <= best + 1e-10 * (1 + abs(best))
    if p <= q:  # the least-squares optimum too
        for _ in range(20):
            assert sse(X, Y, W) <= sse(X, Y, stiefel(p, q, rng)) + 1e-9


@given(n=st.integers(2, 20), d=st.integers(1, 6), seed=seeds)
def test_orthogonal_equivariance(n, d, seed):
    """Rotating X by R (X -> XR) rotates the answer: W' = R^T W (module weight A' = A R)."""
    rng = np.random.default_rng(seed)
    X, Y = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    assume(well_conditioned(X.T @ Y))
    R = haar(d, rng)
    W = rows_weight(fit_closed_form(X, Y, kind="orthogonal"))
    W2 = rows_weight(fit_closed_form(X @ R, Y, kind="orthogonal"))
    np.testing.assert_allclose(W2, R.T @ W, atol=1e-9)


@given(n=st.integers(8, 30), d=st.integers(1, 6), seed=seeds)
def test_planted_orthogonal_and_centered_recovery(n, d, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    R = haar(d, rng)
    t = rng.standard_normal(d) * 3
    np.testing.assert_allclose(rows_weight(fit_closed_form(X, X @ R, kind="orthogonal")), R, atol=1e-9)
    m = fit_closed_form(X, X @ R + t, kind="centered")
    np.testing.assert_allclose(rows_weight(m), R, atol=1e-9)
    np.testing.assert_allclose(m.bias.detach().numpy(), t, atol=1e-9)


@given(n=st.integers(2, 25), d=st.integers(2, 6), seed=seeds)
def test_rotation_has_det_plus_one_and_is_optimal_in_so(n, d, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    R = haar(d, rng)
    if np.linalg.det(R) > 0:
        R[:, 0] *= -1  # plant a reflection: the rotation fit must still have det +1
    Y = X @ R + 0.1 * rng.standard_normal((n, d))
    m = fit_closed_form(X, Y, kind="rotation")
    W = rows_weight(m)
    assert m.group == "SO"
    assert abs(np.linalg.det(W) - 1) < 1e-9
    assert m.orthogonality_error() < 1e-12
    for _ in range(15):
        assert sse(X, Y, W) <= sse(X, Y, haar(d, rng, special=True)) + 1e-9


def test_rotation_rejects_rectangular():
    with pytest.raises(ValueError, match="equal width"):
        fit_closed_form(np.ones((4, 3)), np.ones((4, 2)), kind="rotation")


@given(n=st.integers(1, 6), d=st.integers(2, 9), seed=seeds)
def test_rank_deficient_and_few_shot_still_orthogonal(n, d, seed):
    rng = np.random.default_rng(seed)
    X, Y = rng.standard_normal((n, d)), rng.standard_normal((n, d))  # n < d mostly: M rank <= n
    for kind in ("orthogonal", "rotation", "anchored"):
        opts = {"prior": np.eye(d), "gamma": 0.0} if kind == "anchored" else {}
        m = fit_closed_form(X, Y, kind=kind, **opts)
        assert m.orthogonality_error() < 1e-12
        W = rows_weight(m)
        # still optimal: the trace objective is attained
        assert np.trace(W.T @ X.T @ Y) >= np.linalg.svd(X.T @ Y, compute_uv=False).sum() - 1e-9 - (
            2 * np.linalg.svd(X.T @ Y, compute_uv=False).min() if kind == "rotation" else 0)
    m = fit_closed_form(np.zeros((3, d)), np.zeros((3, d)), kind="orthogonal")  # M = 0
    assert m.orthogonality_error() < 1e-12


# -- compressing least squares ----------------------------------------------------------------------
@given(n=st.integers(10, 40), p=st.integers(2, 7), q=st.integers(1, 4), seed=seeds)
def test_orthogonal_lsq_never_worse_than_uvt_and_stationary(n, p, q, seed):
    assume(p > q)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p)) * rng.uniform(0.2, 3.0, p)  # anisotropic: UV^T is not optimal
    Y = rng.standard_normal((n, q))
    m = fit_closed_form(X, Y, kind="orthogonal_lsq", max_iter=5000, tol=1e-15)
    W, W0 = rows_weight(m), rows_weight(fit_closed_form(X, Y, kind="orthogonal"))
    assert m.orthogonality_error() < 1e-12
    assert sse(X, Y, W) <= sse(X, Y, W0) + 1e-9
    sol = solve_orthogonal_lsq(accumulate_moments(X, Y), max_iter=300)
    hist = sol.info["objective"]
    assert all(b <= a + 1e-9 * abs(a) for a, b in zip(hist, hist[1:]))  # monotone
    for _ in range(30):
        assert sse(X, Y, W) <= sse(X, Y, stiefel(p, q, rng)) + 1e-8
    # first-order optimality on the Stiefel manifold: grad - W sym(W^T grad) = 0
    G = 2 * (X.T @ X @ W - X.T @ Y)
    S = W.T @ G
    riem = G - W @ (S + S.T) / 2
    assert np.linalg.norm(riem) <= 1e-4 * (1 + np.linalg.norm(G))


def test_orthogonal_lsq_improves_on_uvt_and_is_exact_for_whitened_x():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 6)) * np.array([5, 3, 1, 0.5, 0.2, 0.1])
    Y = rng.standard_normal((200, 2))
    W = rows_weight(fit_closed_form(X, Y, kind="orthogonal_lsq"))
    W0 = rows_weight(fit_closed_form(X, Y, kind="orthogonal"))
    assert sse(X, Y, W) < sse(X, Y, W0) - 1e-3
    Q = np.linalg.qr(rng.standard_normal((200, 6)))[0] * 4.0  # X^T X = 16 I
    np.testing.assert_allclose(rows_weight(fit_closed_form(Q, Y, kind="orthogonal_lsq")),
                               rows_weight(fit_closed_form(Q, Y, kind="orthogonal")), atol=1e-10)


# -- similarity, anchored ---------------------------------------------------------------------------
@given(n=st.integers(6, 30), d=st.integers(1, 6), seed=seeds, rotation=st.booleans())
def test_planted_similarity_recovery(n, d, seed, rotation):
    assume(n > d + 1)  # centred X must have full column rank for the map to be identifiable
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) + rng.standard_normal(d) * 5
    R = haar(d, rng, special=rotation)
    c, t = rng.uniform(0.1, 10), rng.standard_normal(d) * 4
    m = fit_closed_form(X, c * X @ R + t, kind="similarity", rotation=rotation)
    assert isinstance(m, ro.AffineMap)
    np.testing.assert_allclose(rows_weight(m), c * R, atol=1e-8 * c)
    np.testing.assert_allclose(m.bias.detach().numpy(), t, atol=1e-8 * (1 + c))


@given(n=st.integers(6, 30), d=st.integers(1, 5), seed=seeds)
def test_similarity_is_optimal_against_random_similarities(n, d, seed):
    rng = np.random.default_rng(seed)
    X, Y = rng.standard_normal((n, d)), rng.standard_normal((n, d)) + 1
    m = fit_closed_form(X, Y, kind="similarity")
    best = sse(X, Y, rows_weight(m), m.bias.detach().numpy())
    for _ in range(20):
        W = rng.uniform(0, 2) * haar(d, rng)
        b = Y.mean(0) - X.mean(0) @ W + 0.1 * rng.standard_normal(d)
        assert best <= sse(X, Y, W, b) + 1e-9


@given(n=st.integers(1, 12), d=st.integers(1, 5), gamma=st.floats(0, 50), seed=seeds)
def test_anchored_is_optimal(n, d, gamma, seed):
    rng = np.random.default_rng(seed)
    X, Y = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    W0 = haar(d, rng)
    m = fit_closed_form(X, Y, kind="anchored", prior=W0.T, gamma=gamma)  # prior given out x in
    W = rows_weight(m)

    def obj(V):
        return sse(X, Y, V) + gamma * float(((V - W0) ** 2).sum())
    for _ in range(15):
        assert obj(W) <= obj(haar(d, rng)) + 1e-9
    assert obj(W) <= obj(W0) + 1e-9


def test_anchored_limits_and_prior_module():
    rng = np.random.default_rng(1)
    X, Y = rng.standard_normal((3, 5)), rng.standard_normal((3, 5))
    prior = ro.OrthogonalLinear(5, 5, dtype=torch.float64)
    W0 = rows_weight(prior)
    np.testing.assert_allclose(rows_weight(fit_closed_form(X, Y, kind="anchored", prior=prior, gamma=math.inf)),
                               W0, atol=1e-12)
    np.testing.assert_allclose(rows_weight(fit_closed_form(X, Y, kind="anchored", prior=prior, gamma=1e12)),
                               W0, atol=1e-9)
    np.testing.assert_allclose(rows_weight(fit_closed_form(X, Y, kind="anchored", prior=prior, gamma=0)),
                               rows_weight(fit_closed_form(X, Y, kind="orthogonal")), atol=1e-12)
    with pytest.raises(ValueError, match="prior must have shape"):
        fit_closed_form(X, Y, kind="anchored", prior=np.eye(4), gamma=1.0)


# -- affine, ridge, CCA -----------------------------------------------------------------------------
@given(n=st.integers(10, 40), p=st.integers(1, 6), q=st.integers(1, 5), seed=seeds)
def test_planted_affine_recovery_and_lstsq_agreement(n, p, q, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p)) + 2
    Wt, b = rng.standard_normal((p, q)), rng.standard_normal(q)
    m = fit_closed_form(X, X @ Wt + b, kind="affine")
    np.testing.assert_allclose(rows_weight(m), Wt, atol=1e-8)
    np.testing.assert_allclose(m.bias.detach().numpy(), b, atol=1e-8)
    Y = rng.standard_normal((n, q))
    coef = np.linalg.lstsq(np.c_[X, np.ones(n)], Y, rcond=None)[0]
    m = fit_closed_form(X, Y, kind="affine")
    np.testing.assert_allclose(rows_weight(m), coef[:p], atol=1e-8)
    np.testing.assert_allclose(m.bias.detach().numpy(), coef[p], atol=1e-8)


def test_affine_underdetermined_is_minimum_norm():
    rng = np.random.default_rng(2)
    X, Y = rng.standard_normal((4, 8)), rng.standard_normal((4, 3))
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    m = fit_closed_form(X, Y, kind="affine")
    np.testing.assert_allclose(rows_weight(m), np.linalg.pinv(Xc) @ Yc, atol=1e-9)
    np.testing.assert_allclose(m(torch.from_numpy(X)).detach().numpy(), Y, atol=1e-9)  # interpolates


@given(n=st.integers(3, 30), p=st.integers(1, 6), q=st.integers(1, 4), ridge=st.floats(1e-3, 100), seed=seeds)
def test_ridge_matches_sklearn(n, p, q, ridge, seed):
    from sklearn.linear_model import Ridge
    rng = np.random.default_rng(seed)
    X, Y = rng.standard_normal((n, p)), rng.standard_normal((n, q))
    ref = Ridge(alpha=ridge, fit_intercept=True, solver="cholesky").fit(X, Y)
    m = fit_closed_form(X, Y, kind="ridge", ridge=ridge)
    np.testing.assert_allclose(m.weight.detach().numpy(), np.reshape(ref.coef_, (q, p)), atol=1e-8)
    np.testing.assert_allclose(m.bias.detach().numpy(), np.reshape(ref.intercept_, (q,)), atol=1e-8)


def _inv_sqrt(C):
    e, Q = np.linalg.eigh(C)
    return (Q / np.sqrt(e)) @ Q.T


@given(n=st.integers(20, 50), p=st.integers(1, 5), q=st.integers(1, 5), s=st.floats(0, 1), seed=seeds)
def test_cca_matches_independent_implementation(n, p, q, s, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p)) @ rng.standard_normal((p, p))
    Y = rng.standard_normal((n, q))
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    Px = s * np.eye(p) + (1 - s) * Xc.T @ Xc / n
    Py = s * np.eye(q) + (1 - s) * Yc.T @ Yc / n
    assume(np.linalg.eigvalsh(Px)[0] > 1e-6 and np.linalg.eigvalsh(Py)[0] > 1e-6)
    T = _inv_sqrt(Px) @ Xc.T @ Yc @ _inv_sqrt(Py)
    assume(well_conditioned(T))
    u, _, vh = np.linalg.svd(T, full_matrices=False)
    W = _inv_sqrt(Px) @ u @ vh @ scipy.linalg.sqrtm(Py).real
    m = fit_closed_form(X, Y, kind="cca", shrinkage=s)
    np.testing.assert_allclose(rows_weight(m), W, atol=1e-7 * (1 + np.abs(W).max()))


def test_cca_ends_and_invariance():
    rng = np.random.default_rng(3)
    X, Y = rng.standard_normal((60, 4)), rng.standard_normal((60, 4))
    np.testing.assert_allclose(rows_weight(fit_closed_form(X, Y, kind="cca", shrinkage=1.0)),
                               rows_weight(fit_closed_form(X, Y, kind="centered")), atol=1e-12)
    # full whitening: predictions do not depend on an invertible re-mixing of X
    B = rng.standard_normal((4, 4)) + 3 * np.eye(4)
    a = fit_closed_form(X, Y, kind="cca")(torch.from_numpy(X))
    b = fit_closed_form(X @ B, Y, kind="cca")(torch.from_numpy(X @ B))
    np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), atol=1e-9)
    with pytest.raises(ValueError, match="shrinkage"):
        fit_closed_form(X, Y, kind="cca", shrinkage=1.5)


# -- generalized Procrustes ---------------------------------------------------------------------------
def test_generalized_procrustes_recovers_relative_rotations():
    rng = np.random.default_rng(4)
    Z = rng.standard_normal((80, 5))
    Rs = [haar(5, rng) for _ in range(3)]
    views = [Z @ R.T + 0.01 * rng.standard_normal((80, 5)) + rng.standard_normal(5) for R in Rs]
    maps, consensus, info = generalized_procrustes(views)
    hist = info["objective"]
    assert all(b <= a + 1e-9 for a, b in zip(hist, hist[1:]))
    outs = [mp(torch.from_numpy(v)).detach().numpy() for mp, v in zip(maps, views)]
    for o in outs[1:]:
        assert np.abs(o - outs[0]).max() < 0.1
    # relative map view0 -> view1 is R1 R0^T (up to noise)
    W0, W1 = rows_weight(maps[0]), rows_weight(maps[1])
    np.testing.assert_allclose(W0 @ W1.T, Rs[0] @ Rs[1].T, atol=0.02)
    assert all(mp.orthogonality_error() < 1e-12 for mp in maps)
    with pytest.raises(ValueError, match="views"):
        generalized_procrustes([views[0]])
    with pytest.raises(ValueError, match=r"views\[1\]"):
        generalized_procrustes([views[0], views[1][:, :3]])


# -- module types, dtypes, estimator ------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_returns_a_map_in_the_input_dtype(kind, dtype):
    rng = np.random.default_rng(5)
    X, Y = rng.standard_normal((40, 4)).astype(dtype), rng.standard_normal((40, 4)).astype(dtype)
    opts = {"anchored": {"prior": np.eye(4), "gamma": 1.0}, "relaxed_penalty": {"mu": 1.0},
            "relaxed_frobenius": {"radius": 0.5}, "relaxed_band": {"lower": 0.9, "upper": 1.1}}.get(kind, {})
    m = fit_closed_form(X, Y, kind=kind, **opts)
    assert isinstance(m, ro.maps.AlignmentMap)
    assert m.weight.dtype == (torch.float32 if dtype == np.float32 else torch.float64)
    assert m(torch.from_numpy(X)).shape == (40, 4)
    orth = kind in ("orthogonal", "rotation", "orthogonal_lsq", "centered", "anchored", "permutation")
    assert isinstance(m, ro.OrthogonalLinear) == orth
    # tensors in, same answer
    m2 = fit_closed_form(torch.from_numpy(X), torch.from_numpy(Y), kind=kind, **opts)
    torch.testing.assert_close(m.weight, m2.weight)


# -- bad input ------------------------------------------------------------------------------------
def test_bad_input_messages():
    X, Y = np.ones((5, 3)), np.ones((5, 3))
    with pytest.raises(ValueError, match="same number of rows"):
        fit_closed_form(X, Y[:4])
    with pytest.raises(ValueError, match="at least 2 rows"):
        fit_closed_form(X[:1], Y[:1], kind="centered")
    with pytest.raises(ValueError, match="at least 2 rows"):
        fit_closed_form(X[:1], Y[:1], kind="relaxed_band", center=True)
    bad = X.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="X contains NaN or Inf"):
        fit_closed_form(bad, Y)
    bad[2, 1] = np.inf
    with pytest.raises(ValueError, match="Y contains NaN or Inf"):
        fit_closed_form(X, bad)
    with pytest.raises(TypeError, match="X must hold floating"):
        fit_closed_form(np.ones((5, 3), dtype=int), Y)
    with pytest.raises(TypeError, match="Y must have a floating"):
        fit_closed_form(torch.ones(5, 3), torch.ones(5, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="lower <= upper"):
        fit_closed_form(X, Y, kind="relaxed_band", lower=1.2, upper=1.0)
    with pytest.raises(ValueError, match="a <= b"):
        fit_closed_form(X, Y, kind="relaxed_band", a=1.2, b=1.0)
    with pytest.raises(ValueError, match="^a must be"):
        fit_closed_form(X, Y, kind="relaxed_band", a=-0.1, b=1.0)
    with pytest.raises(ValueError, match="gamma"):
        fit_closed_form(X, Y, kind="anchored", prior=np.eye(3), gamma=-1)
    with pytest.raises(ValueError, match="ridge"):
        fit_closed_form(X, Y, kind="ridge", ridge=-1)
    with pytest.raises(ValueError, match="mu"):
        fit_closed_form(X, Y, kind="relaxed_penalty", mu=float("nan"))
    with pytest.raises(ValueError, match="kind must be one of"):
        fit_closed_form(X, Y, kind="procrustes")
    with pytest.raises(TypeError, match="unexpected option 'lam'"):
        fit_closed_form(X, Y, kind="relaxed_frobenius", lam=1.0)
    with pytest.raises(TypeError, match="needs the option mu"):
        fit_closed_form(X, Y, kind="relaxed_penalty")
    with pytest.raises(TypeError, match="Y is missing"):
        fit_closed_form(X)
    with pytest.raises(ValueError, match="2-dimensional"):
        fit_closed_form(np.ones(5), np.ones(5))
