"""Properties of relaxedortho.linalg, cross-checked against NumPy/SciPy in float64."""
import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given
from hypothesis import strategies as st

from relaxedortho import linalg
from relaxedortho.testing import strategies as ros


def small_gram_np(a: np.ndarray) -> np.ndarray:
    return a.T @ a if a.shape[0] >= a.shape[1] else a @ a.T


@given(ros.matrices(max_condition=10.0))
def test_small_gram_matches_numpy(a):
    g = linalg.small_gram(a)
    k = min(a.shape)
    assert g.shape == (k, k) and g.dtype == a.dtype
    ref = small_gram_np(a.double().numpy())
    np.testing.assert_allclose(g.double().numpy(), ref, atol=ros.dtype_tolerance(a.dtype, max(a.shape)))


@given(ros.matrices(max_condition=10.0, scale=(0.5, 2.0)))
def test_orthogonality_error_matches_numpy(a):
    err = linalg.orthogonality_error(a)
    assert err.dtype == (torch.float64 if a.dtype == torch.float64 else torch.float32)
    a64 = a.double().numpy()
    ref = np.linalg.norm(small_gram_np(a64) - np.eye(min(a.shape)))
    tol = ros.dtype_tolerance(a.dtype, max(a.shape)) * 4.0
    assert abs(float(err) - ref) <= tol * (1 + ref)


@given(ros.orthogonal_matrices())
def test_random_orthogonal_is_orthonormal(q):
    tol = ros.dtype_tolerance(q.dtype, max(q.shape))
    assert float(linalg.orthogonality_error(q.double())) <= tol


@given(ros.seeds(), st.integers(1, 8))
def test_random_orthogonal_special_has_det_plus_one(seed, n):
    q = linalg.random_orthogonal(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64,
                                 special=True)
    assert float(torch.linalg.det(q)) == pytest.approx(1.0, abs=1e-10)


def test_random_orthogonal_reproducible_and_factory_args():
    a = linalg.random_orthogonal(5, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float32)
    b = linalg.random_orthogonal(5, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float32)
    assert torch.equal(a, b) and a.dtype == torch.float32 and a.shape == (5, 3)
    with pytest.raises(ValueError, match="special"):
        linalg.random_orthogonal(5, 3, special=True)


def test_random_orthogonal_is_haar_like():
    # E[Q] = 0 and E[Q_ij^2] = 1/n for a Haar orthogonal matrix
    g = torch.Generator().manual_seed(0)
    qs = torch.stack([linalg.random_orthogonal(4, 4, generator=g, dtype=torch.float64) for _ in range(2000)])
    assert qs.mean(0).abs().max() < 0.05
    assert (qs.square().mean(0) - 0.25).abs().max() < 0.03


@given(ros.matrices(max_condition=100.0))
def test_polar_matches_scipy(a):
    a64 = a.double()
    p = linalg.polar(a64).numpy()
    tall = a.shape[0] >= a.shape[1]
    u, _ = scipy.linalg.polar(a64.numpy(), side="right" if tall else "left")
    kappa = 100.0
    np.testing.assert_allclose(p, u, atol=ros.dtype_tolerance(torch.float64, max(a.shape), kappa))
    assert np.linalg.norm(small_gram_np(p) - np.eye(min(a.shape))) <= ros.dtype_tolerance(torch.float64, 8)


@given(ros.orthogonal_matrices(), ros.seeds(), st.floats(1e-3, 0.1))
def test_newton_schulz_converges_quadratically_to_polar(q, seed, size):
    q = q.double()
    noise = torch.randn(q.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = q + size * noise / max(float(torch.linalg.matrix_norm(noise, 2)), 1e-12)  # spectral perturbation = size
    target = linalg.polar(x)
    e0 = float(linalg.orthogonality_error(x))
    x1 = linalg.newton_schulz_polar(x, steps=1)
    e1 = float(linalg.orthogonality_error(x1))
    # sigma -> sigma (3 - sigma^2) / 2 maps 1 + e to 1 - 3e^2/2 + O(e^3): error squared (times a constant)
    assert e1 <= 2.0 * e0**2 + 1e-13
    x3 = linalg.newton_schulz_polar(x, steps=4)
    assert float(torch.linalg.matrix_norm(x3 - target)) <= 1e-10
    assert x3.shape == x.shape


def test_newton_schulz_keeps_dtype_and_orientation():
    x = torch.eye(3, 5, dtype=torch.float32) * 1.01
    y = linalg.newton_schulz_polar(x, steps=4)
    assert y.shape == (3, 5) and y.dtype == torch.float32
    assert float(linalg.orthogonality_error(y.double())) < 1e-5


@given(ros.shapes(), ros.float_dtypes())
def test_semi_identity_and_tall(shape, dtype):
    e = linalg.semi_identity(*shape, dtype=dtype)
    assert e.shape == shape and e.dtype == dtype
    assert float(linalg.orthogonality_error(e)) == 0.0
    t = linalg.tall(e)
    assert t.shape[0] >= t.shape[1]


@given(ros.orthogonal_matrices(), ros.seeds(), st.floats(1e-3, 0.1))
def test_third_order_newton_schulz_converges_cubically(q, seed, size):
    q = q.double()
    noise = torch.randn(q.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = q + size * noise / max(float(torch.linalg.matrix_norm(noise, 2)), 1e-12)
    e0 = float(linalg.orthogonality_error(x))
    e1 = float(linalg.orthogonality_error(linalg.newton_schulz_polar(x, steps=1, order=2)))
    # sigma -> sigma (15 - 10 sigma^2 + 3 sigma^4) / 8 maps 1 + e to 1 + O(e^3); (5/8) e^3 per singular value
    assert e1 <= 1.0 * e0**3 + 1e-13
    x2 = linalg.newton_schulz_polar(x, steps=3, order=2)
    assert float(torch.linalg.matrix_norm(x2 - linalg.polar(x))) <= 1e-10


def test_newton_schulz_tol_stops_early_and_order_is_checked():
    x = torch.eye(6, 4, dtype=torch.float64) * (1 + 1e-9)
    # starting error ~ 4e-9 <= tol: exactly one iteration is made, to float64 rounding
    y = linalg.newton_schulz_polar(x, steps=50, order=2, tol=1e-5)
    assert torch.equal(y, linalg.newton_schulz_polar(x, steps=1, order=2))
    assert float(linalg.orthogonality_error(y)) < 1e-14
    with pytest.raises(ValueError, match="order"):
        linalg.newton_schulz_polar(x, order=3)
