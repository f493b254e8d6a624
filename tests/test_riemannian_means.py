"""Karcher and chordal means of orthogonal matrices: closed forms in SO(2), symmetric configurations, invariance."""
import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given
from hypothesis import strategies as st

from relaxedortho.linalg import random_orthogonal
from relaxedortho.riemannian import chordal_mean, distance, karcher_mean, skew_log
from relaxedortho.riemannian.geodesics import _expm64

seeds = st.integers(0, 2**31 - 1)
dtypes = st.sampled_from([torch.float64, torch.float32])


def orth_err(R):
    R = R.double()
    return float(torch.linalg.matrix_norm(R.mT @ R - torch.eye(R.shape[-1], dtype=torch.float64)))


def small_rotation(n, radius, g):
    """exp(X) with X skew of geodesic length ||X||_F / sqrt(2) = radius."""
    M = torch.randn(n, n, generator=g, dtype=torch.float64)
    X = M - M.T
    return _expm64(X * radius * math.sqrt(2) / max(float(torch.linalg.matrix_norm(X)), 1e-12))


@st.composite
def clouds(draw, max_n=6, max_points=6, radius=0.7):
    """(center, points, weights): up to max_points rotations within `radius` of a random center (any component)."""
    n = draw(st.integers(2, max_n))
    N = draw(st.integers(1, max_points))
    g = torch.Generator().manual_seed(draw(seeds))
    C = random_orthogonal(n, n, generator=g, dtype=torch.float64)
    pts = torch.stack([C @ small_rotation(n, draw(st.floats(0.0, radius)), g) for _ in range(N)])
    w = torch.tensor(draw(st.lists(st.floats(0.05, 1.0), min_size=N, max_size=N)), dtype=torch.float64)
    return C, pts, w


def rot2(a):
    return torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64)


@given(st.lists(st.floats(-0.75, 0.75), min_size=1, max_size=8), st.floats(-3.0, 3.0), st.data())
def test_karcher_mean_in_so2_is_the_weighted_mean_angle(angles, offset, data):
    # SO(2) is a circle: for angles within an arc shorter than pi the mean is the (weighted) mean angle
    w = data.draw(st.lists(st.floats(0.05, 1.0), min_size=len(angles), max_size=len(angles)))
    pts = torch.stack([rot2(offset + a) for a in angles])
    res = karcher_mean(pts, weights=w)
    expected = rot2(offset + float(np.average(angles, weights=w)))
    assert res.converged and res.within_convexity_radius
    torch.testing.assert_close(res.mean, expected, atol=1e-13, rtol=0)
    # rotations of the plane commute: one step of size 1 from any data point lands on the mean
    one = karcher_mean(pts, weights=w, init=pts[-1])
    assert one.iterations <= 1
    torch.testing.assert_close(one.mean, expected, atol=1e-13, rtol=0)


@given(st.integers(2, 7), st.integers(1, 4), seeds, dtypes)
def test_mean_of_symmetric_pairs_is_the_center(n, k, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    R = random_orthogonal(n, n, generator=g, dtype=torch.float64)
    Qs = [small_rotation(n, 0.7, g) for _ in range(k)]
    pts = torch.stack([R @ q for q in Qs] + [R @ q.T for q in Qs]).to(dtype)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    res = karcher_mean(pts)
    assert res.mean.dtype == dtype and res.converged
    assert float((res.mean.double() - R).abs().max()) <= tol
    assert float((chordal_mean(pts).double() - R).abs().max()) <= tol


@given(clouds(), seeds)
def test_means_are_invariant_to_left_and_right_multiplication(cloud, seed):
    _, pts, w = cloud
    n = pts.shape[-1]
    g = torch.Generator().manual_seed(seed)
    Q = random_orthogonal(n, n, generator=g, dtype=torch.float64)   # any component
    P = random_orthogonal(n, n, generator=g, dtype=torch.float64)
    moved = Q @ pts @ P
    base = karcher_mean(pts, w)
    torch.testing.assert_close(karcher_mean(moved, w).mean, Q @ base.mean @ P, atol=1e-12, rtol=0)
    torch.testing.assert_close(chordal_mean(moved, w), Q @ chordal_mean(pts, w) @ P, atol=1e-12, rtol=0)


@given(clouds())
def test_karcher_mean_is_stationary_orthogonal_and_beats_other_candidates(cloud):
    C, pts, w = cloud
    res = karcher_mean(pts, w)
    M = res.mean
    assert res.converged and res.within_convexity_radius and orth_err(M) <= 1e-13
    assert float(torch.linalg.det(M)) == pytest.approx(float(torch.linalg.det(pts[0])), abs=1e-9)
    grad = (w[:, None, None] / w.sum() * skew_log(M.T @ pts)).sum(0)
    assert float(torch.linalg.matrix_norm(grad)) <= 1e-11
    # the cost never increases and ends below the cost at the chordal mean, the center and every data point
    assert all(b <= a + 1e-15 for a, b in zip(res.cost, res.cost[1:]))

    def cost(R):
        return 0.5 * float((w / w.sum() * distance(R.expand_as(pts), pts) ** 2).sum())
    for cand in [chordal_mean(pts, w), C, *pts]:
        assert res.cost[-1] <= cost(cand) + 1e-13


@given(clouds())
def test_chordal_mean_is_the_polar_factor_and_minimises_the_chordal_cost(cloud):
    _, pts, w = cloud
    M = chordal_mean(pts, w)
    ref, _ = scipy.linalg.polar((w[:, None, None] * pts).sum(0).numpy())
    np.testing.assert_allclose(M.numpy(), ref, atol=1e-12)
    assert orth_err(M) <= 1e-13
    cost = lambda R: float((w[:, None, None] * (R - pts) ** 2).sum())  # noqa: E731
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        other = M @ small_rotation(pts.shape[-1], 0.1, g)
        assert cost(M) <= cost(other)


def test_chordal_mean_of_stiefel_matrices():
    g = torch.Generator().manual_seed(0)
    pts = [random_orthogonal(5, 2, generator=g, dtype=torch.float64) for _ in range(3)]
    M = chordal_mean(pts)
    ref, _ = scipy.linalg.polar(sum(p.numpy() for p in pts) / 3)
    np.testing.assert_allclose(M.numpy(), ref, atol=1e-13)
    with pytest.raises(ValueError, match="square"):
        chordal_mean(pts, group="SO")


def test_component_handling():
    R = rot2(0.3)
    F = torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="different components"):
        karcher_mean([R, F])
    # a mean of reflections is a reflection, and equals F times the mean of the rotations F^T R_i
    refl = karcher_mean([F @ rot2(0.2), F @ rot2(-0.4)]).mean
    torch.testing.assert_close(refl, F @ rot2(-0.1), atol=1e-14, rtol=0)
    assert float(torch.linalg.det(chordal_mean([F @ rot2(0.2), F @ rot2(-0.4)]))) == pytest.approx(-1.0)
    assert float(torch.linalg.det(chordal_mean([R, F], group="SO"))) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="other component"):
        karcher_mean([R, R.T], init=F)
    # three half-turns about the axes sum to -I: the plain polar factor leaves SO(3), the component mean does not
    half_turns = [torch.diag(torch.tensor(v, dtype=torch.float64)) for v in ([1.0, -1.0, -1.0], [-1.0, 1.0, -1.0],
                                                                             [-1.0, -1.0, 1.0])]
    assert float(torch.linalg.det(chordal_mean(half_turns, group="O"))) == pytest.approx(-1.0)
    inside = chordal_mean(half_turns)
    assert float(torch.linalg.det(inside)) == pytest.approx(1.0) and orth_err(inside) <= 1e-14


def test_flags_warnings_and_bad_input():
    g = torch.Generator().manual_seed(1)
    spread = torch.stack([random_orthogonal(4, 4, generator=g, dtype=torch.float64, special=True) for _ in range(6)])
    with pytest.warns(RuntimeWarning):
        res = karcher_mean(spread, max_iter=1)
    assert res.iterations == 1 and not (res.converged and res.within_convexity_radius)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        karcher_mean(spread, max_iter=1, warn=False)
    with pytest.raises(ValueError, match="weights"):
        karcher_mean([rot2(0.1), rot2(0.2)], weights=[1.0])
    with pytest.raises(ValueError, match=">= 0"):
        karcher_mean([rot2(0.1), rot2(0.2)], weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="empty"):
        chordal_mean([])
    with pytest.raises(ValueError, match="orthogonal"):
        karcher_mean([torch.ones(2, 2, dtype=torch.float64)])


@given(clouds(max_n=4, max_points=4))
def test_weights_are_scale_free_up_to_the_float64_limit(cloud):
    """Weights are normalised without overflow: w and scale * w give the same means even when their sum
    overflows float64 (1.7e308 each; the sum used to be inf, turning every weight into 0)."""
    _, pts, w = cloud
    w = w / w.max()
    ref_k, ref_c = karcher_mean(pts, w, warn=False).mean, chordal_mean(pts, w)
    for scale in (1e-300, 1e300, 1.7e308):
        torch.testing.assert_close(karcher_mean(pts, scale * w, warn=False).mean, ref_k, atol=1e-12, rtol=0)
        torch.testing.assert_close(chordal_mean(pts, scale * w), ref_c, atol=1e-12, rtol=0)
