"""The components of O(n): determinant_sign and special_polar against independent computations (NumPy, SciPy)."""
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from relaxedortho.linalg import random_orthogonal
from relaxedortho.riemannian import determinant_sign, special_polar

seeds = st.integers(0, 2**31 - 1)
dtypes = st.sampled_from([torch.float64, torch.float32])


def _anisotropic(n, g, dtype, cond):
    """An n x n matrix with singular values spread log-uniformly over [1/cond, 1], random singular vectors."""
    U = random_orthogonal(n, n, generator=g, dtype=torch.float64)
    V = random_orthogonal(n, n, generator=g, dtype=torch.float64)
    s = torch.logspace(0.0, -np.log10(cond), n, dtype=torch.float64)
    return (U * s @ V.T).to(dtype)


@given(st.integers(1, 7), st.integers(1, 4), seeds, dtypes)
def test_determinant_sign_matches_numpy_on_both_components_and_general_matrices(n, batch, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    Q = torch.stack([random_orthogonal(n, n, generator=g, dtype=torch.float64) for _ in range(batch)]).to(dtype)
    M = torch.randn(batch, n, n, generator=g, dtype=torch.float64).to(dtype)
    for A in (Q, M, 1e-30 * M, 1e30 * M):          # the sign only: no overflow of det at any scale
        np.testing.assert_array_equal(determinant_sign(A).numpy(), np.linalg.slogdet(A.double().numpy())[0])
    assert determinant_sign(torch.zeros(3, 3)).item() == 0.0          # exactly singular: sign 0, documented


@given(st.sampled_from([1.0, -1.0]), st.sampled_from([10.0, 1e3, 1e8]), seeds, dtypes)
def test_special_polar_in_3d_matches_scipy_kabsch(sign, cond, seed, dtype):
    """For n = 3 the nearest rotation is SciPy's Kabsch solution (Rotation.align_vectors(M^T, I) maximises
    tr(C^T M)); the nearest det -1 matrix is -(nearest rotation to -M). Singular values 1, cond^-1/2, cond^-1: the
    answer is unique, with a sensitivity of about 1/gap = sqrt(cond) (cond = 1 would make the flipped direction
    arbitrary whenever a flip is needed)."""
    g = torch.Generator().manual_seed(seed)
    M = _anisotropic(3, g, dtype, cond)
    R = special_polar(M, sign)
    assert R.dtype == dtype
    m = M.double().numpy() * sign
    C, _ = Rotation.align_vectors(m.T, np.eye(3))
    expected = sign * C.as_matrix()
    # both computed in float64 from the same (rounded) M; float32 adds the rounding of the returned matrix
    tol = 1e-12 * np.sqrt(cond) + (3e-7 if dtype == torch.float32 else 0.0)
    np.testing.assert_allclose(R.double().numpy(), expected, atol=tol, rtol=0)
    assert float(torch.linalg.det(R.double())) == pytest.approx(sign, abs=10 * tol)


@given(st.integers(2, 6), seeds)
def test_special_polar_is_the_nearest_matrix_of_its_component(n, seed):
    """No matrix of the requested component is closer to M (random competitors, and the polar factor when it has
    the requested determinant)."""
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(n, n, generator=g, dtype=torch.float64)
    for sign in (1.0, -1.0):
        R = special_polar(M, sign)
        best = float(torch.linalg.matrix_norm(R - M))
        for _ in range(20):
            Q = random_orthogonal(n, n, generator=g, dtype=torch.float64)
            if float(torch.linalg.det(Q)) * sign < 0:
                Q[:, 0] = -Q[:, 0]
            assert best <= float(torch.linalg.matrix_norm(Q - M)) + 1e-12
        u, _, vh = torch.linalg.svd(M)
        P = u @ vh
        if float(torch.linalg.det(P)) * sign > 0:
            torch.testing.assert_close(R, P, atol=1e-12, rtol=0)


def test_special_polar_takes_a_batch_of_signs():
    M = torch.eye(3, dtype=torch.float64).expand(2, 3, 3)
    R = special_polar(M, torch.tensor([1, -1]))
    np.testing.assert_allclose(torch.linalg.det(R).numpy(), [1.0, -1.0], atol=1e-15)
    torch.testing.assert_close(R[0], torch.eye(3, dtype=torch.float64))
