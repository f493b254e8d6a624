r"""Geodesics of the orthogonal group: the matrix logarithm of a rotation, log/exp maps at a point, geodesic
interpolation and the geodesic distance (``docs/math.md`` §10).

Metric: the bi-invariant metric :math:`\langle X, Y\rangle = \tfrac12\operatorname{tr}(X^\top Y)` on skew-symmetric
generators, under which a rotation by an angle :math:`\theta` in one plane has length :math:`|\theta|`. Geodesics
through :math:`R_0` are :math:`t \mapsto R_0\exp(tX)` (left translates of one-parameter subgroups), and the distance
is

.. math:: d(R_0, R_1) = \tfrac{1}{\sqrt2}\lVert\log(R_0^\top R_1)\rVert_F = \Big(\sum_j \theta_j^2\Big)^{1/2},

:math:`\theta_j \in [0, \pi]` the rotation angles of :math:`R_0^\top R_1` (one per invariant plane). Only matrices of
the same component of O(n) (equal determinant) are joined by a geodesic.

**The principal logarithm.** PyTorch has :func:`torch.matrix_exp` but no matrix logarithm. :func:`skew_log` computes
the real skew-symmetric logarithm of a rotation with angles :math:`\theta_j \in [0, \pi)` from the symmetric
eigendecomposition of :math:`S = (R + R^\top)/2` (eigenvalues :math:`\cos\theta_j`) and the skew part
:math:`K = (R - R^\top)/2` (which commutes with :math:`S` and equals :math:`\sin\theta_j` times a complex structure
on each invariant plane): with :math:`S = U\,\mathrm{diag}(c)\,U^\top` and :math:`\tilde K = U^\top K U`,

.. math:: s_j = \lVert \tilde K_{j,:}\rVert_2,\quad \theta_j = \operatorname{atan2}(s_j, c_j),\quad
          g_j = \theta_j / s_j,\quad \log R = U\,\big(\min(g_i, g_j)\,\tilde K_{ij}\big)_{ij}\,U^\top .

Taking the angle from ``atan2`` of both the cosine and the sine keeps it accurate to rounding at every angle
(``arccos`` of the cosine alone loses half the digits near 0 and π). The principal logarithm does not exist, or is
not unique, when :math:`R` has the eigenvalue −1 (an angle of exactly π: the rotation by +π and by −π coincide);
:func:`skew_log` raises a :class:`ValueError` there, and for matrices with determinant −1, which have no real
logarithm at all. Close to an angle π the logarithm stays accurate when one plane rotates by nearly π; when two
planes both rotate by nearly π it is ill-conditioned (its derivative grows like :math:`1/(2\pi - \theta_i -
\theta_j)`), a property of the logarithm, not of the algorithm.
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Any

import numpy as np
import torch

from .._checks import as_float_tensor, check_bool
from .group import _det_sign, check_orthogonal

__all__ = ["skew_log", "log_map", "exp_map", "geodesic", "distance", "CUT_LOCUS_FACTOR"]

#: An angle counts as π (the cut locus, where the logarithm is not unique) when its sine is below
#: ``CUT_LOCUS_FACTOR * sqrt(n) * eps`` of the input's dtype.
CUT_LOCUS_FACTOR = 64.0


def _expm64(X: torch.Tensor) -> torch.Tensor:
    """:func:`torch.matrix_exp` of ``(..., n, n)`` float64 matrices, always on its highest-degree path.

    For a single matrix PyTorch picks the Taylor degree by norm, and its degree-8 branch (float64 1-norms of about
    3e-4 to 5e-2) loses up to four digits (pytorch/pytorch#196592: a wrong coefficient; measured here: errors of
    2.7e-12 at norm 0.026 against :func:`scipy.linalg.expm`). Batches of two or more matrices take the
    degree-18 path, accurate to rounding, so a single matrix is exponentiated together with a zero matrix.
    """
    flat = X.reshape((-1,) + X.shape[-2:])
    if flat.shape[0] == 1:
        flat = torch.cat([flat, torch.zeros_like(flat)])
        return torch.matrix_exp(flat)[:1].reshape(X.shape)
    return torch.matrix_exp(flat).reshape(X.shape)


def _skew_log64(R: torch.Tensor, dtype: torch.dtype, name: str) -> torch.Tensor:
    """The principal skew logarithm of rotations ``R`` (float64, ``(..., n, n)``); raises on the cut locus.

    See the module documentation: eigendecomposition of the symmetric part, the far subspace (angles > the split,
    about π/2) handled through ``-R`` and a polar factor, everything else by ``atan2``.
    """
    n = R.shape[-1]
    S = 0.5 * (R + R.mT)
    K = 0.5 * (R - R.mT)
    c, U = torch.linalg.eigh(S)
    Kt = U.mT @ K @ U
    Kt = 0.5 * (Kt - Kt.mT)
    # Split at the widest gap of the cosines inside [-1/2, 1/2]: far = angles beyond the split (cos < t).
    window = torch.cat([c.clamp(-0.5, 0.5), torch.full_like(c[..., :1], -0.5), torch.full_like(c[..., :1], 0.5)], -1)
    window = window.sort(dim=-1).values
    k = (window[..., 1:] - window[..., :-1]).argmax(dim=-1, keepdim=True)
    t = 0.5 * (window.gather(-1, k) + window.gather(-1, k + 1))
    far = c < t
    f = torch.where(far, -1.0, 1.0).to(c)
    same = far[..., :, None] == far[..., None, :]
    # log of R' = (near part of R) (+) (-(far part of R)), all of whose angles are <= 2pi/3, in the eigenbasis.
    Kp = torch.where(same, f[..., :, None] * Kt, torch.zeros_like(Kt))
    cp = f * c
    s = torch.linalg.vector_norm(Kp, dim=-1)
    theta = torch.atan2(s, cp)
    g = torch.where(s > 0, theta / torch.where(s > 0, s, torch.ones_like(s)), torch.ones_like(s))
    Y = torch.minimum(g[..., :, None], g[..., None, :]) * Kp
    if bool(far.any()):
        # On the far block R = -exp(Y): log R = Y - pi * polar(Y) (polar(Y) is a complex structure commuting with Y).
        both = far[..., :, None] & far[..., None, :]
        Yf = torch.where(both, Y, torch.zeros_like(Y)) + torch.diag_embed((~far).to(Y.dtype))
        u, sv, vh = torch.linalg.svd(Yf)
        cut_tol = CUT_LOCUS_FACTOR * math.sqrt(n) * torch.finfo(dtype).eps
        if bool((sv[..., -1] <= cut_tol).any()):
            raise ValueError(f"{name} has the eigenvalue -1 (a rotation by pi in some plane, to within "
                             f"{cut_tol:.2g} in angle): its logarithm is not unique (+pi and -pi give the same "
                             "rotation), so no principal logarithm or unique geodesic exists")
        J = torch.where(both, u @ vh, torch.zeros_like(Y))
        Y = Y - math.pi * J
    L = U @ Y @ U.mT
    return 0.5 * (L - L.mT)


def skew_log(R: Any, *, check: bool = True) -> torch.Tensor:
    r"""The principal logarithm of a rotation: the skew-symmetric :math:`X` with :math:`\exp(X) = R` whose rotation
    angles lie in :math:`[0, \pi)`.

    Args:
        R: rotations, shape ``(..., n, n)`` (batched), float32 or float64, any device. Computed in float64 and
            returned in ``R``'s dtype.
        check: validate that ``R`` is orthogonal with determinant +1 (one device synchronisation). Turn off only for
            inputs known to be rotations.

    Raises:
        ValueError: ``R`` is not orthogonal, has determinant −1 (no real logarithm: the reflections form the other
            component of O(n)), or has the eigenvalue −1 (an angle of π to within :data:`CUT_LOCUS_FACTOR`
            :math:`\sqrt n\,\varepsilon` in its sine: the logarithm is not unique there).

    The algorithm (eigendecomposition of the symmetric part, angles by ``atan2``) and its accuracy near π are in the
    module documentation; ``docs/math.md`` §10. Example:

        >>> import math
        >>> c, s = math.cos(0.5), math.sin(0.5)
        >>> X = skew_log(torch.tensor([[c, -s], [s, c]], dtype=torch.float64))
        >>> round(float(X[1, 0]), 12)
        0.5
    """
    if check_bool(check, "check"):
        R = check_orthogonal(R, "R")
    else:
        R = as_float_tensor(R, "R", allow_half=False)
        if R.ndim < 2 or R.shape[-1] != R.shape[-2] or R.numel() == 0:
            raise ValueError(f"R must be a non-empty batch of square matrices (..., n, n), got shape {tuple(R.shape)}")
    if check and bool((_det_sign(R) < 0).any()):
        raise ValueError("R has determinant -1 (a reflection): it has no real logarithm; geodesics stay in one "
                         "component of O(n), use log_map(R0, R1) with R0, R1 of equal determinant")
    return _skew_log64(R.double(), R.dtype, "R").to(R.dtype)


def _batch_shape(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str]) -> tuple[int, ...]:
    """The broadcast batch shape of two stacks of matrices ``(..., n, m)``; a one-line error when there is none."""
    try:
        return tuple(torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
    except RuntimeError:
        raise ValueError(f"{names[0]} and {names[1]} have batch shapes {tuple(a.shape[:-2])} and "
                         f"{tuple(b.shape[:-2])}, which do not broadcast") from None


def _pair(R0: Any, R1: Any) -> tuple[torch.Tensor, torch.Tensor, torch.dtype]:
    """Two validated stacks of orthogonal matrices of one size, broadcastable batch shapes and equal determinants,
    and their promoted dtype."""
    R0, R1 = check_orthogonal(R0, "R0"), check_orthogonal(R1, "R1")
    if R0.shape[-1] != R1.shape[-1]:
        raise ValueError(f"R0 and R1 must have the same size n, got {R0.shape[-1]} and {R1.shape[-1]}")
    _batch_shape(R0, R1, ("R0", "R1"))
    if R1.device != R0.device:
        raise ValueError(f"R0 and R1 must be on the same device, got {R0.device} and {R1.device}")
    d0, d1 = _det_sign(R0), _det_sign(R1)
    if bool((d0 != d1).any()):
        raise ValueError("R0 and R1 lie in different components of O(n) (determinants of opposite sign): no geodesic "
                         "joins a rotation to a reflection")
    return R0, R1, torch.promote_types(R0.dtype, R1.dtype)


def _check_times(t: Any, device: torch.device) -> torch.Tensor:
    """``t`` as a float64 scalar or 1-d tensor of finite times."""
    if isinstance(t, (bool, np.bool_)) or not isinstance(t, (Real, torch.Tensor, np.ndarray, list, tuple)):
        raise TypeError(f"t must be a real number or a 1-d tensor of times, got {type(t).__name__}")
    if isinstance(t, Real):
        tt = torch.tensor(float(t), dtype=torch.float64, device=device)
    else:
        arr = t if isinstance(t, torch.Tensor) else torch.as_tensor(np.asarray(t))
        if arr.dtype == torch.bool or arr.is_complex() or not (arr.is_floating_point() or arr.dtype in (
                torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
            raise TypeError(f"t must hold real numbers, got dtype {arr.dtype}")
        tt = arr.to(dtype=torch.float64, device=device)
    if tt.ndim > 1:
        raise ValueError(f"t must be a number or a 1-d tensor of times, got shape {tuple(tt.shape)}")
    if not bool(torch.isfinite(tt).all()):
        raise ValueError("t contains NaN or Inf values")
    return tt


def log_map(R0: Any, R1: Any) -> torch.Tensor:
    r"""The Riemannian logarithm at ``R0``: the tangent vector :math:`\xi = R_0\log(R_0^\top R_1)` at :math:`R_0`
    with :math:`\exp_{R_0}(\xi) = R_1`, of length :math:`d(R_0, R_1)`.

    The generator :math:`X = \log(R_0^\top R_1)` (skew) is :math:`R_0^\top\xi`; tangent vectors at :math:`R_0` are
    :math:`R_0 X` with :math:`X` skew. ``R0`` and ``R1`` (``(..., n, n)``, broadcast) must be orthogonal and of the
    same component of O(n) (equal determinant; else a :class:`ValueError`), and :math:`R_0^\top R_1` must not have
    the eigenvalue −1 (see :func:`skew_log`). Computed in float64, returned in the promoted dtype of the inputs.

    Example:
        >>> R = torch.diag(torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64))
        >>> torch.allclose(exp_map(R, log_map(R, R)), R)
        True
    """
    R0, R1, dtype = _pair(R0, R1)
    r0 = R0.double()
    X = _skew_log64(r0.mT @ R1.double(), dtype, "R0^T R1")
    return (r0 @ X).to(dtype)


def exp_map(R0: Any, xi: Any) -> torch.Tensor:
    r"""The Riemannian exponential at ``R0``: :math:`\exp_{R_0}(\xi) = R_0\exp(R_0^\top\xi)` for a tangent vector
    :math:`\xi = R_0X` (:math:`X` skew), shape ``(..., n, n)``.

    Raises :class:`ValueError` when :math:`R_0^\top\xi` is not skew-symmetric (relative to its norm, beyond a
    rounding tolerance): ``xi`` is not tangent at ``R0``. Computed in float64 with :func:`torch.matrix_exp`.
    """
    R0 = check_orthogonal(R0, "R0")
    xi = as_float_tensor(xi, "xi")
    if xi.shape[-2:] != R0.shape[-2:]:
        raise ValueError(f"xi must have the shape of R0's matrices {tuple(R0.shape[-2:])}, got {tuple(xi.shape)}")
    _batch_shape(R0, xi, ("R0", "xi"))
    xi = xi.to(R0.device)
    dtype = torch.promote_types(R0.dtype, xi.dtype)
    r0 = R0.double()
    X = r0.mT @ xi.double()
    _check_skew(X, "R0^T xi", dtype)
    X = 0.5 * (X - X.mT)
    return (r0 @ _expm64(X)).to(dtype)


def _check_skew(X: torch.Tensor, name: str, dtype: torch.dtype) -> None:
    n = X.shape[-1]
    sym = torch.linalg.matrix_norm(X + X.mT)
    scale = torch.linalg.matrix_norm(X).clamp_min(1.0)
    tol = 100.0 * torch.finfo(dtype).eps * n
    if bool((sym > tol * scale).any()):
        raise ValueError(f"{name} must be skew-symmetric (a tangent vector): ||X + X^T||_F = {float(sym.max()):.3g}")


def geodesic(R0: Any, R1: Any, t: Any) -> torch.Tensor:
    r"""The point at time ``t`` on the minimizing geodesic from ``R0`` (t = 0) to ``R1`` (t = 1):

    .. math:: \gamma(t) = R_0\exp\big(t\log(R_0^\top R_1)\big).

    It has constant speed :math:`d(R_0, R_1)`: :math:`d(\gamma(s), \gamma(t)) = |t - s|\,d(R_0, R_1)` for
    :math:`s, t \in [0, 1]`; ``t`` outside [0, 1] extrapolates along the same geodesic. ``t`` is a finite real
    number (result ``(..., n, n)``) or a 1-d tensor, list or array of T finite times (result ``(T, ..., n, n)``).
    The same conditions as :func:`log_map`:
    equal determinants (else :class:`ValueError`), no eigenvalue −1 of :math:`R_0^\top R_1` (the two geodesics of
    angle ±π would tie). ``γ(0)`` is ``R0`` exactly.

    Example:
        >>> R0 = torch.eye(2, dtype=torch.float64)
        >>> R1 = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)   # rotation by pi/2
        >>> g = geodesic(R0, R1, 0.5)
        >>> round(float(torch.atan2(g[1, 0], g[0, 0])), 12) == round(math.pi / 4, 12)
        True
    """
    R0, R1, dtype = _pair(R0, R1)
    tt = _check_times(t, R0.device)
    r0 = R0.double()
    X = _skew_log64(r0.mT @ R1.double(), dtype, "R0^T R1")
    if tt.ndim == 1:
        Xt = tt.reshape((-1,) + (1,) * X.ndim) * X
    else:
        Xt = tt * X
    return (r0 @ _expm64(Xt)).to(dtype)


def distance(R0: Any, R1: Any) -> torch.Tensor:
    r"""The geodesic distance :math:`d(R_0, R_1) = \lVert\log(R_0^\top R_1)\rVert_F/\sqrt2 = (\sum_j\theta_j^2)^{1/2}`
    (:math:`\theta_j` the rotation angles of :math:`R_0^\top R_1`), shape ``(...)``, in float64.

    Equal determinants are required (else :class:`ValueError`); at the cut locus (an angle of π) the distance is
    well defined but the logarithm is not, so this raises there too.

    Example:
        >>> R = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
        >>> round(float(distance(torch.eye(2, dtype=torch.float64), R)), 12) == round(math.pi / 2, 12)
        True
    """
    R0, R1, dtype = _pair(R0, R1)
    X = _skew_log64(R0.double().mT @ R1.double(), dtype, "R0^T R1")
    return torch.linalg.matrix_norm(X) / math.sqrt(2.0)
