"""project_orthonormal against SciPy's polar decomposition in float64, and its guaranteed bound."""
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given
from hypothesis import strategies as st

from relaxedortho import linalg
from relaxedortho.polar_projection import (POLYNOMIAL_DEGREES, POLYNOMIAL_REGION, _inverse_sqrt_taylor,
                                           default_tolerance, project_orthonormal, projection_bound)
from relaxedortho.testing import strategies as ros


def scipy_polar(a: np.ndarray) -> np.ndarray:
    tall = a.shape[0] >= a.shape[1]
    u, _ = scipy.linalg.polar(a if tall else a.T, side="right")
    return u if tall else u.T


@given(ros.orthogonal_matrices(), ros.seeds(), st.floats(-9.0, 1.5), st.integers(-30, 30))
def test_matches_scipy_polar_at_any_distance_and_scale(q, seed, log_size, log_scale):
    """Near the manifold (polynomial passes) and far from it (the SVD), at any scale: orthonormal to rounding and the
    polar factor (SciPy, float64) up to rounding amplified by the conditioning."""
    noise = torch.randn(q.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x64 = (q.double() + 10.0**log_size * noise / max(float(torch.linalg.matrix_norm(noise, 2)), 1e-300))
    x = (x64 * 10.0**log_scale).to(q.dtype)
    if not bool(torch.isfinite(x).all()) or float(x.abs().max()) == 0.0:
        return  # beyond the dtype's range: nothing to project
    info = {}
    y = project_orthonormal(x, info=info)
    assert y.shape == x.shape and y.dtype == x.dtype
    k = min(x.shape)
    assert float(linalg.orthogonality_error(y.double())) <= 4 * default_tolerance(k, x.dtype) + \
        10 * torch.finfo(x.dtype).eps * k
    sv = torch.linalg.svdvals(x.double())
    cond = float(sv[0] / sv[-1]) if float(sv[-1]) > 0 else math.inf
    if cond < 1e3:  # the polar factor is unique and well conditioned
        ref = scipy_polar(x.double().numpy())
        err = np.abs(y.double().numpy() - ref).max()
        assert err <= 100 * torch.finfo(x.dtype).eps * k * cond
    if log_size <= -2 and abs(log_scale) == 0 and x.dtype == torch.float32:
        assert not info["svd"] and len(info["passes"]) <= 1  # one pass near the manifold


@given(st.integers(2, 6), st.sampled_from(POLYNOMIAL_DEGREES), st.floats(1e-3, POLYNOMIAL_REGION), ros.seeds())
def test_projection_bound_holds_in_exact_arithmetic(k, degree, beta, seed):
    """||X'^T X' - I||_F <= phi_d(beta) ||E||_F for every symmetric E with ||E||_2 <= beta (float64, brute force with
    the exact polynomial); and the bound is attained to within a factor 2 at E = beta I."""
    g = torch.Generator().manual_seed(seed)
    qm, _ = torch.linalg.qr(torch.randn(k, k, generator=g, dtype=torch.float64))
    lam = (torch.rand(k, generator=g, dtype=torch.float64) * 2 - 1) * beta
    e = qm @ torch.diag(lam) @ qm.T
    a = [float(c) for c in _inverse_sqrt_taylor(degree)]
    p = sum(c * torch.linalg.matrix_power(e, j) for j, c in enumerate(a))
    defect = p @ (torch.eye(k, dtype=torch.float64) + e) @ p - torch.eye(k, dtype=torch.float64)
    assert float(torch.linalg.matrix_norm(defect)) <= projection_bound(degree, beta) * \
        float(torch.linalg.matrix_norm(e)) * (1 + 1e-9) + 1e-15
    f = (1 + beta) * sum(c * beta**j for j, c in enumerate(a)) ** 2 - 1
    assert abs(f) / beta >= 0.5 * projection_bound(degree, beta)


def test_the_guarantee_is_a_bound_not_an_estimate():
    """A rank-one E (Adam's first step on uncentred data) that a power iteration from a fixed start vector would miss
    is still bounded: beta = ||E^2||_F^(1/2) >= ||E||_2 for every E."""
    k = 64
    v = torch.zeros(k, dtype=torch.float64)
    v[1] = 1.0
    start = torch.cos(torch.arange(k, dtype=torch.float64) * 0.7 + 0.3)
    v = v - (v @ start) / (start @ start) * start  # orthogonal to the power iteration's start vector
    v = v / v.norm()
    x = torch.eye(k, dtype=torch.float64) + 0.3 * torch.outer(v, v)  # E = 0.69 v v^T
    info = {}
    y = project_orthonormal(x, info=info)
    assert float(linalg.orthogonality_error(y)) <= 1e-14
    assert info["svd"]  # beta = 0.69 > 0.5: outside the polynomial region


def test_returns_the_same_tensor_when_orthonormal_and_raises_on_nan():
    q = linalg.random_orthogonal(7, 4, generator=torch.Generator().manual_seed(0))
    assert project_orthonormal(q) is q
    bad = q.clone()
    bad[0, 0] = math.nan
    with pytest.raises(FloatingPointError, match="NaN"):
        project_orthonormal(bad)
    with pytest.raises(ValueError, match="2-dimensional"):
        project_orthonormal(torch.ones(2, 2, 2))


def test_rank_deficient_and_zero_matrices_get_a_completion():
    x = torch.zeros(5, 3)
    x[0, 0] = 1.0
    y = project_orthonormal(x)
    assert float(linalg.orthogonality_error(y.double())) <= 1e-6
    assert float(linalg.orthogonality_error(project_orthonormal(torch.zeros(3, 5)).double())) <= 1e-6


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(dtype):
    x = (linalg.random_orthogonal(16, 8, generator=torch.Generator().manual_seed(0)) * 1.05).to(dtype)
    y = project_orthonormal(x)
    assert y.dtype == dtype
    assert float(linalg.orthogonality_error(y.double())) <= 10 * torch.finfo(dtype).eps * 8


def test_max_passes_hands_over_to_the_svd():
    q = linalg.random_orthogonal(30, 20, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = q * 1.3  # beta = 0.69: outside the polynomial region anyway; and inside it with max_passes=0
    info = {}
    project_orthonormal(q * 1.01, max_passes=0, info=info)
    assert info == {"passes": [], "svd": True}
    project_orthonormal(x, info=info)
    assert info["svd"]


def test_a_rounded_orthonormal_matrix_needs_no_pass_at_large_k():
    """A float64 orthonormal matrix rounded to float32 measures ||G - I||_F ~ 0.1 eps k in float32 (above the old
    target 2 eps sqrt(k) from k ~ 400 on): the tolerance covers it, so no pass is spent on rounding noise (after every
    Adam step of a 2048 -> 1024 map the old target forced a second pass)."""
    k = 1024
    q = torch.linalg.qr(torch.randn(2 * k, k, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0]
    x = q.float()
    eps = torch.finfo(torch.float32).eps
    measured = float(linalg.orthogonality_error(x))  # the float32 Gram, as the projection measures it
    assert 0.5 * eps * math.sqrt(k) < measured <= default_tolerance(k, torch.float32)  # 6e-6 to 1.2e-5 by machine
    info = {}
    assert project_orthonormal(x, info=info) is x
    assert info == {"passes": [], "svd": False}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n, k", [(96, 64), (300, 256), (256, 256)])
def test_the_svd_path_is_polished_to_rounding_and_is_the_polar_factor(n, k, dtype):
    """Far from the manifold (anisotropic singular values 1 … 1e3, an offset) the SVD is taken. Its singular vectors
    are orthonormal only to about eps k (float64 here: 1.9e-14 at k = 64, 6.5e-14 at k = 256, 4-5 times the
    tolerance); when that exceeds the tolerance one polynomial pass follows, which brings the defect to its own
    rounding (1.1-1.2 times the tolerance here), and the result is the polar factor (SciPy's, float64)."""
    g = torch.Generator().manual_seed(k)
    u = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(k, k, generator=g, dtype=torch.float64))[0]
    x = (u @ torch.diag(torch.logspace(0, 3, k, dtype=torch.float64)) @ v.T + 0.5).to(dtype)
    svd_only = float(linalg.orthogonality_error(project_orthonormal(x, max_passes=0)))
    info = {}
    y = project_orthonormal(x, info=info)
    assert info["svd"] and y.dtype == dtype
    err = float(linalg.orthogonality_error(y))
    tol = default_tolerance(k, dtype)
    assert err <= 2 * tol
    if info["passes"]:  # the SVD alone was above the tolerance: the pass must have improved it
        assert svd_only > tol and err < 0.5 * svd_only
    else:
        assert err == svd_only <= tol
    ref = torch.from_numpy(scipy_polar(x.double().numpy()))
    close = 1e-9 if dtype == torch.float64 else 1e-2  # the polar factor's condition: sigma_max / sigma_min = 1e3
    assert float((y.double() - ref).abs().max()) <= close
