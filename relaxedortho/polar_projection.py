r"""Projection onto the Stiefel manifold that is fast near it and safe everywhere (the orthogonal polar factor).

For a tall matrix :math:`X` (``n x k``, ``n >= k``; a wide matrix is handled through its transpose) with
:math:`E = X^\top X - I`, the orthogonal polar factor is :math:`X (I + E)^{-1/2}`, the nearest matrix with
orthonormal columns (docs/math.md §4). After an optimizer step :math:`X` is close to the manifold and one
pass of a Taylor polynomial of :math:`(1 + e)^{-1/2}` reaches it:

.. math::

    X' = X\,p_d(E), \qquad p_d(e) = \sum_{j=0}^{d} a_j e^j
    = 1 - \tfrac12 e + \tfrac38 e^2 - \tfrac5{16} e^3 + \tfrac{35}{128} e^4 - \dots

Since :math:`p_d(E)` is a polynomial in :math:`E`, :math:`X'^\top X' - I = F_d(E)` exactly, with the scalar
polynomial :math:`F_d(e) = (1 + e)\,p_d(e)^2 - 1 = O(e^{d+1})`. So, for every eigenvalue :math:`|\lambda| \le \beta`,

.. math::

    \lVert X'^\top X' - I\rVert_F \le \varphi_d(\beta)\,\lVert E\rVert_F, \qquad
    \varphi_d(\beta) = \sum_j |c_j|\,\beta^j \text{ for } F_d(e)/e = \sum_j c_j e^j ,

and :math:`\beta = \lVert E^2\rVert_F^{1/2}` is a guaranteed upper bound on :math:`\lVert E\rVert_2` (a power-
iteration estimate is a lower bound, which cannot guarantee anything). :func:`project_orthonormal` computes
:math:`E` and :math:`E^2`, reads the two norms in one synchronisation, and takes the cheapest degree
:math:`d \in \{2, 4, 6\}` (0, 1 or 2 more ``k x k`` products) whose bound is at the dtype's rounding level; when
none is, it makes the degree-6 pass and repeats. Near the manifold this is two ``n x k x k`` products plus one to
three ``k x k x k`` products, against three and one per iteration for third-order Newton–Schulz, which needs two
iterations at Adam's first steps. The old iteration's failure mode is gone: third-order Newton–Schulz diverges once
a singular value exceeds :math:`\sqrt{7/3}`, a polynomial pass is only used for :math:`\beta \le 1/2` (every
singular value in :math:`[0.70, 1.23]`), where :math:`\varphi_6(\beta) \le 0.03`.

Farther away (a large first step of Adam on uncentred data, a hand edit, a rank-deficient or huge matrix) the
polar factor is computed from the SVD in float64, after dividing by :math:`\max_{ij}|X_{ij}|` so that nothing
overflows (Higham, *Functions of Matrices*, 2008, §8). That is exact for every finite matrix; a matrix with NaN or
Inf entries has no polar factor and raises :class:`FloatingPointError`.
"""
from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache

import torch

__all__ = ["project_orthonormal", "project_orthonormal_", "projection_bound", "default_tolerance", "POLYNOMIAL_DEGREES",
           "POLYNOMIAL_REGION"]

#: Degrees of the Taylor polynomial of a pass, cheapest first (0, 1 and 2 products after :math:`E^2`).
POLYNOMIAL_DEGREES = (2, 4, 6)
#: Largest :math:`\beta = \lVert E^2\rVert_F^{1/2}` for which a polynomial pass is used; beyond it, the SVD.
POLYNOMIAL_REGION = 0.5
#: At most this many polynomial passes before falling back to the SVD (each shrinks the error by ≥ 30×).
MAX_PASSES = 4


def _inverse_sqrt_taylor(d: int) -> list[Fraction]:
    """Coefficients :math:`a_0 .. a_d` of the Taylor series of :math:`(1 + e)^{-1/2}`."""
    a = [Fraction(1)]
    for j in range(1, d + 1):
        a.append(a[-1] * Fraction(-(2 * j - 1), 2 * j))
    return a


def _poly_mul(p: list[Fraction], q: list[Fraction]) -> list[Fraction]:
    out = [Fraction(0)] * (len(p) + len(q) - 1)
    for i, pi in enumerate(p):
        for j, qj in enumerate(q):
            out[i + j] += pi * qj
    return out


@lru_cache(maxsize=None)
def _defect_coefficients(d: int) -> tuple[float, ...]:
    """Coefficients :math:`c_0, c_1, \\dots` of :math:`F_d(e)/e = ((1 + e) p_d(e)^2 - 1)/e` (exact, then floats)."""
    p = _inverse_sqrt_taylor(d)
    f = _poly_mul([Fraction(1), Fraction(1)], _poly_mul(p, p))
    f[0] -= 1
    assert f[0] == 0 and all(c == 0 for c in f[1:d + 1])  # F_d(e) = O(e^(d+1))
    return tuple(float(c) for c in f[1:])


def projection_bound(degree: int, beta: float) -> float:
    r""":math:`\varphi_d(\beta) = \sum_j |c_j|\beta^j`: after a pass of degree ``degree`` from :math:`E` with
    :math:`\lVert E\rVert_2 \le \beta`, :math:`\lVert X'^\top X' - I\rVert_F \le \varphi_d(\beta)\lVert E\rVert_F`
    in exact arithmetic (see the module documentation).

    Example:
        >>> round(projection_bound(2, 0.1) / 0.1**2, 3)  # leading term 5/8 e^2 (third-order Newton–Schulz)
        0.65
    """
    return sum(abs(c) * beta ** j for j, c in enumerate(_defect_coefficients(degree)))


def _polynomial_step(x: torch.Tensor, e: torch.Tensor, e2: torch.Tensor, degree: int, wide: bool,
                     inplace: bool = False) -> torch.Tensor:
    """``x p_d(e)`` (tall ``x``) or ``p_d(e) x`` (wide ``x``) for the Taylor polynomial of degree 2, 4 or 6,
    given ``e`` and ``e2 = e @ e`` (symmetric, so both orientations use the same ``q = p_d(e) - I``); with
    ``inplace`` the increment is added to ``x`` itself (``x + x q``: the product is formed before ``x`` changes)."""
    a = [float(c) for c in _inverse_sqrt_taylor(degree)]
    if degree == 2:
        q = torch.add(e, e2, alpha=a[2] / a[1]).mul_(a[1])
    elif degree == 4:  # a1 E + E^2 (a2 I + a3 E + a4 E^2)
        inner = torch.add(e, e2, alpha=a[4] / a[3]).mul_(a[3])
        inner.diagonal().add_(a[2])
        q = torch.addmm(e, e2, inner, beta=a[1])
    else:  # a1 E + a2 E^2 + a3 E^3 + E^3 (a4 E + a5 E^2 + a6 E^3)
        e3 = e2 @ e
        inner = torch.add(e, e2, alpha=a[5] / a[4]).mul_(a[4]).add_(e3, alpha=a[6])
        q = torch.add(e, e2, alpha=a[2] / a[1]).mul_(a[1]).add_(e3, alpha=a[3])
        q = q.addmm_(e3, inner)
    if inplace:
        return x.add_(q @ x if wide else x @ q)
    return torch.addmm(x, q, x) if wide else torch.addmm(x, x, q)


def _svd_polar(x: torch.Tensor) -> torch.Tensor:
    """Polar factor of a finite matrix by the float64 SVD of ``x / max|x|`` (any completion if rank-deficient)."""
    x64 = x.double()
    scale = x64.abs().amax()
    if float(scale) > 0:
        x64 = x64 / scale
    u, _, vh = torch.linalg.svd(x64, full_matrices=False)
    return (u @ vh).to(x.dtype)


def default_tolerance(k: int, dtype: torch.dtype) -> float:
    r"""Rounding level of :math:`\lVert G - I\rVert_F` for ``k`` orthonormal columns:
    :math:`\max(2\varepsilon\sqrt k,\ \varepsilon k/4)` (float32's :math:`\varepsilon` for half precision, whose
    projection is computed in float32).

    The second term is the floor of what can be measured: the Gram of an orthonormal matrix rounded to the dtype,
    computed in the dtype, reads :math:`\lVert G - I\rVert_F \approx 0.1\,\varepsilon k` (1.2e-5 in float32 at
    k = 1024, n = 2048); asking a pass to guarantee less than that (:math:`2\varepsilon\sqrt k` = 7.6e-6 there)
    only made every re-projection after an Adam step at lr 1e-3 take a second pass on rounding noise (about 30 %
    of the step of a 2048 -> 1024 map). It is the larger term from k = 64 on."""
    eps = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps
    return max(2.0 * eps * math.sqrt(k), 0.25 * eps * k)


def project_orthonormal(matrix: torch.Tensor, *, tol: float | None = None, max_passes: int = MAX_PASSES,
                        inplace: bool = False, info: dict | None = None) -> torch.Tensor:
    r"""The orthogonal polar factor of a 2-D ``matrix`` (orthonormal columns if tall, rows if wide), to rounding.

    Fast near the manifold (Taylor-polynomial passes whose error bound is guaranteed, see the module
    documentation), the float64 SVD elsewhere; never divergent, never NaN for a finite input.

    Args:
        matrix: ``n x k`` or ``k x n`` floating tensor (half precision is computed in float32 and cast back).
        tol: target for :math:`\lVert G - I\rVert_F` beyond rounding (default :func:`default_tolerance`). A matrix
            already within ``tol`` is returned as it is (the same tensor).
        max_passes: polynomial passes at most before the SVD takes over (default :data:`MAX_PASSES`).
        inplace: write the result into ``matrix`` (float32 or float64) and return it; saves two passes over the
            matrix per polynomial pass. If it raises, ``matrix`` is unchanged.
        info: if given, a dict that receives ``"passes"`` (the degrees of the polynomial passes made) and
            ``"svd"`` (whether the SVD was used).

    Returns:
        A new tensor of the same shape and dtype, or ``matrix`` itself when it is within ``tol`` already (or
        with ``inplace``).

    Raises:
        FloatingPointError: ``matrix`` has NaN or Inf entries.

    Reads two scalars per pass (one device synchronisation on a GPU).

    Example:
        >>> x = torch.eye(4, 3, dtype=torch.float64) * 1.01
        >>> y = project_orthonormal(x)
        >>> bool(torch.allclose(y.T @ y, torch.eye(3, dtype=torch.float64), atol=1e-15))
        True
        >>> torch.equal(project_orthonormal(torch.eye(4, 3)), torch.eye(4, 3))  # already orthonormal: unchanged
        True
    """
    if matrix.ndim != 2:
        raise ValueError(f"matrix must be 2-dimensional, got shape {tuple(matrix.shape)}")
    wide = matrix.shape[0] < matrix.shape[1]
    if inplace and matrix.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"inplace=True needs a float32 or float64 matrix, got {matrix.dtype}")
    x = matrix if matrix.dtype in (torch.float32, torch.float64) else matrix.float()
    k = min(x.shape)
    tol = default_tolerance(k, matrix.dtype) if tol is None else tol
    record = info if info is not None else {}
    record.update(passes=[], svd=False)
    err = math.inf
    for _ in range(max_passes + 1):
        e, e2, err, err2 = _defect(x, wide)
        if not (math.isfinite(err) and math.isfinite(err2)):
            if not bool(torch.isfinite(matrix).all()):
                raise FloatingPointError("the matrix to project onto orthonormal columns holds NaN or Inf entries")
            err = math.inf
            break  # finite, but E overflowed: far from the manifold, the SVD copes
        beta = math.sqrt(err2)
        if err <= tol or beta > POLYNOMIAL_REGION or len(record["passes"]) >= max_passes:
            break
        degree = _degree_for(beta, err, tol)
        x = _polynomial_step(x, e, e2, degree, wide, inplace=inplace)
        record["passes"].append(degree)
        if projection_bound(degree, beta) * err <= tol:
            err = 0.0
            break
    if err > tol:
        y = _svd_polar(x)
        y = _polish(y, tol, wide, record) if max_passes else y
        x = matrix.copy_(y) if inplace else y
        record["svd"] = True
    elif not record["passes"]:
        return matrix
    return x.to(matrix.dtype) if x.dtype != matrix.dtype else x


def _polish(x: torch.Tensor, tol: float, wide: bool, record: dict) -> torch.Tensor:
    """One polynomial pass after the SVD when its own rounding exceeds ``tol``: LAPACK's singular vectors are
    orthonormal to about :math:`\varepsilon k` (float64: 1.9e-14 at k = 64, 6.5e-14 at k = 256 on a 2-core CPU,
    4-5 times the tolerance), which one pass brings to the pass's own rounding (1.1-1.2 times the tolerance there;
    ``tests/test_polar_projection.py``)."""
    e, e2, err, err2 = _defect(x, wide)
    if not (math.isfinite(err) and err > tol and math.sqrt(err2) <= POLYNOMIAL_REGION):
        return x
    degree = _degree_for(math.sqrt(err2), err, tol)
    record["passes"].append(degree)
    return _polynomial_step(x, e, e2, degree, wide, inplace=False)


def _defect(x: torch.Tensor, wide: bool) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """:math:`E = G - I` of the small Gram, :math:`E^2`, and their Frobenius norms (one synchronisation)."""
    e = x @ x.mT if wide else x.mT @ x
    e.diagonal().sub_(1.0)
    e2 = e @ e
    err, err2 = torch.stack([torch.linalg.vector_norm(e), torch.linalg.vector_norm(e2)]).tolist()
    return e, e2, err, err2


def _degree_for(beta: float, err: float, tol: float) -> int:
    """The lowest polynomial degree whose guaranteed bound brings ``err`` under ``tol`` (the highest otherwise)."""
    return next((d for d in POLYNOMIAL_DEGREES if projection_bound(d, beta) * err <= tol), POLYNOMIAL_DEGREES[-1])


@torch.no_grad()
def project_orthonormal_(matrix: torch.Tensor, **options) -> torch.Tensor:
    """:func:`project_orthonormal` written into ``matrix`` (in place for float32/float64, through a copy for half
    precision); returns ``matrix``. ``options`` go to :func:`project_orthonormal`."""
    if matrix.dtype in (torch.float32, torch.float64):
        return project_orthonormal(matrix, inplace=True, **options)
    y = project_orthonormal(matrix, **options)
    return matrix if y is matrix else matrix.copy_(y)
