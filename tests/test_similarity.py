"""Linear CKA and the Procrustes distance: invariances, brute-force agreement, metric axioms."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from relaxedortho.closed_form import fit_closed_form
from relaxedortho.similarity import linear_cka, procrustes_distance

from helpers import haar

seeds = st.integers(0, 2**31 - 1)


def cka_reference(X, Y):
    """Kornblith et al. 2019 via HSIC with centred linear kernels (n x n)."""
    n = X.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    K, L = H @ X @ X.T @ H, H @ Y @ Y.T @ H
    return float((K * L).sum() / np.sqrt((K * K).sum() * (L * L).sum()))


@given(n=st.integers(3, 30), p=st.integers(1, 8), q=st.integers(1, 8), scale=st.floats(1e-3, 1e3), seed=seeds)
def test_cka_matches_reference_and_is_invariant(n, p, q, scale, seed):
    rng = np.random.default_rng(seed)
    X, Y = rng.standard_normal((n, p)), rng.standard_normal((n, q))
    c = linear_cka(X, Y)
    assert abs(c - cka_reference(X, Y)) < 1e-10
    assert -1e-12 <= c <= 1 + 1e-12
    assert abs(linear_cka(Y, X) - c) < 1e-12
    Rx, Ry = haar(p, rng), haar(q, rng)
    shift = rng.standard_normal(p) * 10
    assert abs(linear_cka(scale * X @ Rx + shift, Y @ Ry) - c) < 1e-9
    assert abs(linear_cka(X, X @ Rx * scale) - 1) < 1e-10


def test_cka_not_invariant_to_general_linear_maps_and_accepts_tensors():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 4))
    B = np.diag([10.0, 1.0, 0.1, 0.01])
    assert linear_cka(X, X @ B) < 0.9
    assert abs(linear_cka(torch.from_numpy(X).float(), torch.from_numpy(X @ B).float()) - linear_cka(X, X @ B)) < 1e-5
    with pytest.raises(ValueError, match="constant"):
        linear_cka(np.ones((5, 2)), X[:5])
    with pytest.raises(ValueError, match="same number of rows"):
        linear_cka(X, X[:10])
    with pytest.raises(TypeError, match="X"):
        linear_cka(np.ones((5, 2), dtype=int), X[:5, :2])


@given(n=st.integers(3, 25), p=st.integers(1, 6), q=st.integers(1, 6), seed=seeds)
def test_procrustes_distance_is_the_aligned_residual(n, p, q, seed):
    rng = np.random.default_rng(seed)
    X, Y = rng.standard_normal((n, p)), rng.standard_normal((n, q))
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    Xn, Yn = Xc / np.linalg.norm(Xc), Yc / np.linalg.norm(Yc)
    # brute force: the residual of the best orthonormal map between the normalised shapes (p <= q exact;
    # for p > q compare with the nuclear-norm definition, which is what the distance uses)
    d = procrustes_distance(X, Y)
    nuc = np.linalg.svd(Xn.T @ Yn, compute_uv=False).sum()
    assert abs(d - math.sqrt(max(0.0, 2 - 2 * nuc))) < 1e-10
    if p <= q:
        W = fit_closed_form(Xn, Yn, kind="orthogonal").weight.detach().numpy().T
        assert abs(d ** 2 - ((Xn @ W - Yn) ** 2).sum()) < 1e-9
    theta = procrustes_distance(X, Y, angular=True)
    assert 0 <= theta <= math.pi / 2 + 1e-12
    assert abs(math.cos(theta) - min(1.0, nuc)) < 1e-10
    assert abs(procrustes_distance(Y, X) - d) < 1e-10


@given(n=st.integers(4, 25), d=st.integers(1, 6), seed=seeds, scale=st.floats(1e-2, 1e2))
def test_procrustes_distance_zero_for_similar_shapes(n, d, seed, scale):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    Y = scale * X @ haar(d, rng) + rng.standard_normal(d)
    assert procrustes_distance(X, Y) < 1e-6
    assert procrustes_distance(X, Y, angular=True) < 1e-6


@given(n=st.integers(4, 20), d=st.integers(1, 5), seed=seeds)
def test_angular_procrustes_triangle_inequality(n, d, seed):
    rng = np.random.default_rng(seed)
    A, B, C = (rng.standard_normal((n, d)) for _ in range(3))
    ab = procrustes_distance(A, B, angular=True)
    bc = procrustes_distance(B, C, angular=True)
    ac = procrustes_distance(A, C, angular=True)
    assert ac <= ab + bc + 1e-9


def test_procrustes_distance_options_and_errors():
    X = np.arange(12.0).reshape(6, 2)
    assert procrustes_distance(X, X, center=False) < 1e-7
    with pytest.raises(ValueError, match="zero"):
        procrustes_distance(np.ones((4, 2)), X[:4])
    with pytest.raises(ValueError, match="at least 2 rows"):
        procrustes_distance(X[:1], X[:1])


@given(n=st.integers(3, 25), p=st.integers(1, 6), q=st.integers(1, 6), seed=seeds,
       ex=st.integers(-300, 300), ey=st.integers(-300, 300), dtype=st.sampled_from([np.float32, np.float64]))
def test_scale_invariance_for_every_finite_scale(n, p, q, seed, ex, ey, dtype):
    """Both measures are invariant to a positive scale of either set, for every finite input: no overflow at
    1e200 (CKA was NaN, the Procrustes distance sqrt 2), no underflow at 1e-200 (issue 11 defect 5)."""
    top = 30 if dtype == np.float32 else 300
    ex, ey = max(-top, min(top, ex)), max(-top, min(top, ey))
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p)).astype(dtype).astype(np.float64) + 2.0  # an offset: centring must not overflow
    Y = (X[:, :1] @ rng.standard_normal((1, q)) + rng.standard_normal((n, q))).astype(dtype).astype(np.float64)
    Xs, Ys = (X * 10.0 ** ex).astype(dtype), (Y * 10.0 ** ey).astype(dtype)
    assert np.isfinite(Xs).all() and np.isfinite(Ys).all()
    tol = 1e-9 if dtype == np.float64 else 1e-5
    assert abs(linear_cka(Xs, Ys) - cka_reference(X, Y)) < tol
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    nuc = min(1.0, np.linalg.svd((Xc / np.linalg.norm(Xc)).T @ (Yc / np.linalg.norm(Yc)), compute_uv=False).sum())
    assert abs(procrustes_distance(Xs, Ys) - math.sqrt(max(0.0, 2 - 2 * nuc))) < math.sqrt(tol)
    assert abs(procrustes_distance(Xs, Ys, angular=True) - math.acos(nuc)) < math.sqrt(tol)
    nuc0 = min(1.0, np.linalg.svd((X / np.linalg.norm(X)).T @ (Y / np.linalg.norm(Y)), compute_uv=False).sum())
    assert abs(procrustes_distance(Xs, Ys, angular=True, center=False) - math.acos(nuc0)) < math.sqrt(tol)


@pytest.mark.parametrize("scale", [1e-200, 1e200, 1e300])
def test_issue_reproducer_extreme_scale(scale):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 6))
    Y = X @ rng.standard_normal((6, 4))
    assert linear_cka(X * scale, Y * scale) == pytest.approx(linear_cka(X, Y), abs=1e-12)
    assert procrustes_distance(X * scale, Y * scale) == pytest.approx(procrustes_distance(X, Y), abs=1e-7)
