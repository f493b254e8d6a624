"""Helpers shared by the test files (one definition each): Haar matrices, residuals, orthonormality checks and the
tolerances they use. The map variants themselves come from the registry :mod:`relaxedortho.testing.maps`."""
import math

import numpy as np
import torch

from relaxedortho.linalg import orthogonality_error, orthonormality_tolerance
from relaxedortho.testing import strategies as ros
from relaxedortho.testing.maps import stored_weight


def haar(d, rng, special=False):
    """A Haar-distributed ``d x d`` orthogonal matrix (NumPy float64, QR of a Gaussian with the sign fix of
    Mezzadri 2007); a rotation with ``special=True``."""
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    q = q * np.sign(np.diag(r))
    if special and np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def sse(X, Y, W, b=None):
    """Sum of squared residuals of ``X W (+ b) - Y`` (row convention, NumPy)."""
    r = X @ W - Y
    if b is not None:
        r = r + b
    return float((r ** 2).sum())


def deviation(w):
    """``||G - I||_F`` of the small Gram, in float64."""
    return float(orthogonality_error(w.detach().double()))


def assert_orthonormal(m):
    """The map's weight (and the tensor it stores it in) is finite and orthonormal to rounding."""
    w = m.weight.detach()
    assert bool(torch.isfinite(w).all())
    assert m.orthogonality_error() <= orthonormality_tolerance(w)
    stored = stored_weight(m).detach()
    if stored.shape[-2:] in (w.shape, w.mT.shape) and not hasattr(m, "parametrizations"):
        assert deviation(stored) <= orthonormality_tolerance(stored)


def tol(dtype, n, cond=1.0):
    """Forward-error tolerance of a computation on ``n``-dimensional data (:func:`~ros.dtype_tolerance`)."""
    return ros.dtype_tolerance(dtype, n, cond)


def drift_tolerance(dtype, k, steps):
    """Rounding of one re-projection is O(eps k); independent errors over ``steps`` steps add up like a
    random walk (the retractions that do not re-project from scratch): 100 eps k sqrt(steps)."""
    return 100 * torch.finfo(dtype).eps * max(k, 1) * math.sqrt(steps)
