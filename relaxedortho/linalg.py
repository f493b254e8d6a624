r"""Small linear-algebra building blocks shared by the maps, penalties and closed forms.

Convention: a map's weight ``A`` is stored like :class:`torch.nn.Linear` (``out x in``) and computes
``y = x A^T + b``. The *small Gram* of ``A`` is the Gram of its shorter side:

.. math:: G(A) = A^\top A \;(\text{if out} \ge \text{in}), \qquad G(A) = A A^\top \;(\text{otherwise}),

the only Gram that can equal the identity for a rectangular matrix (``docs/math.md`` §1).
"""
from __future__ import annotations

from numbers import Real

import torch

from ._checks import check_device, check_dtype, check_features, check_int, check_matrix


def small_gram(weight: torch.Tensor) -> torch.Tensor:
    r"""The small Gram :math:`G(A)` of a 2-D weight (``min(out, in)`` square).

    Example:
        >>> import torch
        >>> small_gram(torch.eye(3, 2)).shape
        torch.Size([2, 2])
    """
    check_matrix(weight, "weight")
    out_f, in_f = weight.shape[-2], weight.shape[-1]
    return weight.mT @ weight if out_f >= in_f else weight @ weight.mT


def gram_deviation(weight: torch.Tensor) -> torch.Tensor:
    r""":math:`G(A) - I` for the small Gram."""
    check_matrix(weight, "weight")
    g = small_gram(weight)
    return g - torch.eye(g.shape[-1], dtype=g.dtype, device=g.device)


#: :math:`\lVert G - I\rVert_F \le` ``ROUNDING_FACTOR`` :math:`\cdot\,\varepsilon k` is rounding (see
#: :func:`orthonormality_rounding`).
ROUNDING_FACTOR = 10.0


def orthonormality_rounding(k: int, dtype: torch.dtype) -> float:
    r"""The rounding level of :math:`\lVert G - I\rVert_F` for a matrix with ``k`` orthonormal columns (or rows) in
    ``dtype``: :math:`10\,\varepsilon k`.

    A float64 orthonormal matrix rounded to float32, with its Gram computed in float32, reads
    :math:`0.07\text{–}0.3\,\varepsilon k` (measured for k = 4 … 1024, sides up to 4096); the factor 10 leaves
    room for the rounding of a training step. The hard maps accept matrices within it as they are, and the
    penalties treat a deviation within it as 0 in their backward pass.

    Example:
        >>> orthonormality_rounding(1024, torch.float32) < 1.3e-3
        True
    """
    k = check_features(k, "k")
    check_dtype(dtype)
    if dtype is None:
        raise TypeError("dtype must be a floating torch.dtype (e.g. torch.float32 or torch.float64), got None")
    return ROUNDING_FACTOR * torch.finfo(dtype).eps * k


def orthogonality_error(weight: torch.Tensor) -> torch.Tensor:
    r""":math:`\lVert G(A) - I \rVert_F`, computed in at least float32 (float64 stays float64).

    Zero exactly when ``A`` has orthonormal columns (tall/square) or rows (wide).
    """
    check_matrix(weight, "weight")
    w = weight if weight.dtype == torch.float64 else weight.float()
    return torch.linalg.matrix_norm(gram_deviation(w))


def orthonormality_tolerance(weight: torch.Tensor, dtype: torch.dtype | None = None) -> float:
    r"""Rounding-level tolerance on :math:`\lVert G - I\rVert_F` for ``weight`` in ``dtype`` (default its own):
    :math:`10\,\varepsilon k`, :math:`k` the shorter side.

    A float64 orthonormal matrix rounded to float32 has about :math:`0.01\text{–}0.1\,\varepsilon k`
    (measured, k = 4 … 1024); the hard maps' own training keeps :math:`\lVert G - I\rVert_F` below
    :math:`0.1\,\varepsilon k` (docs/benchmarks.md, drift).

    Example:
        >>> orthonormality_tolerance(torch.eye(3, 2, dtype=torch.float64)) == 10 * 2 * torch.finfo(torch.float64).eps
        True
    """
    check_matrix(weight, "weight")
    return orthonormality_rounding(min(weight.shape[-2:]), dtype or weight.dtype)


def check_orthonormal(w: torch.Tensor, name: str) -> None:
    """Raise :class:`ValueError` unless ``w`` has orthonormal columns (tall) or rows (wide) to rounding
    (:func:`orthonormality_tolerance`).

    Example:
        >>> check_orthonormal(2 * torch.eye(2), "W")
        Traceback (most recent call last):
        ...
        ValueError: W must have orthonormal columns (or rows when wide): ||G - I||_F = 4.24 > 2.38e-06 (rounding level); project it first, e.g. with relaxedortho.linalg.polar
    """
    check_matrix(w, name)
    err, tol = float(orthogonality_error(w.detach().double())), orthonormality_tolerance(w)
    if err > tol:
        raise ValueError(f"{name} must have orthonormal columns (or rows when wide): ||G - I||_F = {err:.3g} > "
                         f"{tol:.3g} (rounding level); project it first, e.g. with relaxedortho.linalg.polar")


def tall(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` if it has at least as many rows as columns, else its transpose (a view)."""
    check_matrix(weight, "weight")
    return weight if weight.shape[-2] >= weight.shape[-1] else weight.mT


def polar(matrix: torch.Tensor) -> torch.Tensor:
    r"""Orthogonal polar factor :math:`UV^\top` of ``matrix = U\Sigma V^\top`` (thin SVD).

    The nearest matrix with orthonormal columns (tall) or rows (wide) in Frobenius norm.
    Singular values that are exactly zero make the factor non-unique; any completion is returned.
    """
    check_matrix(matrix, "matrix")
    if not bool(torch.isfinite(matrix).all()):
        raise ValueError("matrix contains NaN or Inf values: it has no polar factor")
    u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    return u @ vh


def newton_schulz_polar(matrix: torch.Tensor, steps: int = 2, *, order: int = 1,
                        tol: float | None = None) -> torch.Tensor:
    r"""``steps`` Newton–Schulz iterations towards the orthogonal polar factor of ``matrix``.

    With :math:`E = X^\top X - I` (tall orientation, ``X`` n x k with n >= k):

    - ``order=1`` (quadratic): :math:`X \leftarrow X(I - \tfrac12 E) = \tfrac32 X - \tfrac12 X X^\top X`,
      two products (:math:`4nk^2` flops); the error :math:`\lVert E\rVert` goes to about
      :math:`\tfrac34\lVert E\rVert^2`;
    - ``order=2`` (cubic): :math:`X \leftarrow X(I - \tfrac12 E + \tfrac38 E^2)`, the degree-2 Taylor polynomial
      of :math:`(I + E)^{-1/2}`, three products (:math:`4nk^2 + 2k^3` flops); the error goes to about
      :math:`\tfrac58\lVert E\rVert^3` (:math:`(1 + e)(1 - e/2 + 3e^2/8)^2 - 1 = \tfrac58 e^3 + O(e^4)`).

    Both converge when every singular value lies in :math:`(0, \sqrt3)` (order 1) or close enough to 1
    (order 2; always for :math:`\lVert E\rVert_2 < 1`, and it diverges once a singular value exceeds
    :math:`\sqrt{7/3}`). Nothing here checks that: for a re-projection that cannot diverge, use
    :func:`~relaxedortho.polar_projection.project_orthonormal` (docs/math.md §4; Björck & Bowie 1971; Higham,
    *Functions of Matrices*, §8.3).

    With ``tol``, at most ``steps`` iterations are made, stopping after the first one whose predicted
    result error :math:`c\,\lVert E\rVert_2^{\,order}\lVert E\rVert_F` (:math:`c = \tfrac34` or :math:`\tfrac58`;
    :math:`\lVert E\rVert_2` from four power iterations, doubled for safety) is at most ``tol``. This reads one
    scalar per iteration: a device synchronisation on a GPU.
    """
    check_matrix(matrix, "matrix")
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order!r}")
    check_int(steps, "steps", minimum=0)
    x = tall(matrix)
    fused = x.ndim == 2
    for _ in range(steps):
        e = x.mT @ x
        e.diagonal(dim1=-2, dim2=-1).sub_(1.0)
        done = tol is not None and _predicted_error(e, order) <= tol
        if order == 1:
            x = torch.addmm(x, x, e, alpha=-0.5) if fused else x - 0.5 * (x @ e)
        else:
            q = torch.addmm(e, e, e, beta=-0.5, alpha=0.375) if fused else -0.5 * e + 0.375 * (e @ e)
            x = torch.addmm(x, x, q) if fused else x + x @ q
        if done:
            break
    return x if matrix.shape[-2] >= matrix.shape[-1] else x.mT


def _predicted_error(e: torch.Tensor, order: int) -> float:
    """Bound on ||E'||_F after one iteration of the given order from E (symmetric): c ||E||_2^order ||E||_F."""
    spectral = 2.0 * spectral_norm_estimate(e)
    c = 0.75 if order == 1 else 5.0 / 8.0
    return float(c * spectral ** order * torch.linalg.vector_norm(e))


def spectral_norm_estimate(matrix: torch.Tensor, iters: int = 4) -> torch.Tensor:
    r"""Estimate of :math:`\lVert M\rVert_2` (a 0-d tensor) by ``iters`` power iterations on :math:`M^\top M`.

    Starts from a fixed vector (deterministic, identical on every process), costs ``2 * iters + 1`` matrix-vector
    products and never synchronises; works on ``M / max|M_ij|`` so that no power overflows (a NaN or Inf entry gives
    NaN). The estimate is a lower bound (a Rayleigh quotient) that approaches the
    norm from below; callers that need an upper bound multiply it by a safety factor.

    Example:
        >>> m = torch.diag(torch.tensor([3.0, 1.0, 0.5]))
        >>> round(float(spectral_norm_estimate(m)), 4)
        3.0
    """
    check_matrix(matrix, "matrix")
    k = matrix.shape[-1]
    # scaled by max|M| first: M^T M v squares the entries, and vector_norm squares them again (a float32 matrix
    # with entries of 1e10 gave an estimate of 0 without the scaling)
    scale = matrix.abs().amax().clamp_min(torch.finfo(matrix.dtype).tiny)
    m = matrix / scale
    v = torch.cos(torch.arange(k, dtype=matrix.dtype, device=matrix.device) * 0.7 + 0.3).unsqueeze(-1)
    tiny = torch.finfo(matrix.dtype).tiny
    for _ in range(iters):
        v = m.mT @ (m @ v)
        v = v / torch.linalg.vector_norm(v).clamp_min(tiny)
    return torch.linalg.vector_norm(m @ v) * scale


#: Safety factor on the power-iteration estimate of ||A||_2 in :func:`skew_retraction`.
SKEW_NORM_SAFETY = 1.5


#: The maps :func:`skew_retraction` chooses from, cheapest first.
SKEW_RETRACTION_KINDS = ("quadratic", "cubic", "cayley")


def skew_retraction_kind(skew: torch.Tensor, dtype: torch.dtype | None = None) -> str:
    """The map :func:`skew_retraction` uses for ``skew`` in ``dtype`` (default: ``skew``'s): ``"quadratic"``,
    ``"cubic"`` or ``"cayley"``, the cheapest whose orthogonality defect is at most half of ``dtype``'s epsilon.

    Reads one scalar (a device synchronisation on a GPU).

    Example:
        >>> skew_retraction_kind(torch.tensor([[0.0, 0.05], [-0.05, 0.0]]))
        'cubic'
    """
    check_matrix(skew, "skew")
    return skew_retraction_kind_for_norm(SKEW_NORM_SAFETY * float(spectral_norm_estimate(skew)), dtype or skew.dtype)


def skew_retraction_kind_for_norm(sigma: float, dtype: torch.dtype) -> str:
    """The map :func:`skew_retraction_kind` picks for a skew matrix whose (safety-scaled) spectral norm estimate is
    ``sigma``: the cheapest with orthogonality defect at most half of ``dtype``'s epsilon (``"cayley"`` when
    ``sigma`` is not finite).

    Example:
        >>> skew_retraction_kind_for_norm(1e-3, torch.float32), skew_retraction_kind_for_norm(0.5, torch.float32)
        ('quadratic', 'cayley')
    """
    if isinstance(sigma, bool) or not isinstance(sigma, Real):
        raise TypeError(f"sigma must be a real number, got {type(sigma).__name__}")
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0 (a norm), got {sigma!r}")
    check_dtype(dtype)
    if dtype is None:
        raise TypeError("dtype must be a floating torch.dtype (e.g. torch.float32 or torch.float64), got None")
    eps = torch.finfo(dtype).eps
    if sigma <= (2.0 * eps) ** 0.25:  # sigma^4 / 4 <= eps / 2 (compared on sigma: no overflow for a huge sigma)
        return "quadratic"
    if sigma <= (32.0 * eps) ** (1.0 / 6.0):  # sigma^6 / 64 <= eps / 2
        return "cubic"
    return "cayley"


def skew_retraction(weight: torch.Tensor, skew: torch.Tensor, *, inplace: bool = False,
                    kind: str | None = None) -> torch.Tensor:
    r"""Rotate ``weight`` (``n x k``) by the orthogonal matrix :math:`R(A)` that a skew-symmetric ``skew`` = :math:`A`
    (``n x n``) generates: returns :math:`R(A)\,W`, a retraction on :math:`O(n)` in the direction :math:`AW`.

    The map :math:`R` is chosen per call, the cheapest one whose orthogonality defect is at most half the dtype's
    epsilon :math:`\varepsilon` for this :math:`A`, judged by :math:`\sigma = 1.5\times` a power-iteration estimate of
    :math:`\lVert A\rVert_2` (:func:`spectral_norm_estimate`):

    - the quadratic :math:`R(A) = I + A + \tfrac12 A^2` (two fused products, :math:`W + A(W + \tfrac12 AW)`), with
      :math:`R^\top R = I + \tfrac14 A^4` exactly: used when :math:`\sigma^4/4 \le \varepsilon/2`
      (estimate :math:`\lesssim 0.0147` in float32). Adam's steps shrink to this size once gradients are
      noisy (:math:`|\hat m|/\sqrt{\hat v} \ll 1`);
    - the cubic :math:`R(A) = I + A + \tfrac12 A^2 + \tfrac18 A^3` (three fused products, Horner's rule:
      :math:`W + A(W + A(\tfrac12 W + \tfrac18 AW))`), with :math:`R^\top R = I - \tfrac1{64} A^6` exactly (even part
      :math:`I + A^2/2`, odd part :math:`A + A^3/8`): used when :math:`\sigma^6/64 \le \varepsilon/2`
      (estimate :math:`\lesssim 0.084` in float32: Adam's first steps at lr 1e-3, :math:`\lVert A\rVert_2 \approx
      2\cdot10^{-3}\sqrt n`, up to n ≈ 1700; :math:`\lesssim 0.0029` in float64);
    - otherwise the Cayley transform :math:`(I - A/2)^{-1}(I + A/2)` (docs/math.md §4), exactly orthogonal for every
      skew :math:`A`, evaluated as :math:`W + (I - A/2)^{-1}(AW)` (one product and one solve).

    All three agree with the Cayley transform and with :math:`\exp(A)` to second order, and update ``W`` by an
    increment computed on its own, so rounding errors scale with the step, not with ``W``: evaluating
    :math:`2(I - A/2)^{-1}W - W` instead grows :math:`\lVert G - I\rVert_F` by about :math:`2\cdot10^{-6}` per
    float32 step at n = 128 (measured), a bias the increment form does not have. The choice reads one scalar
    (a device synchronisation on a GPU; :func:`skew_retraction_kind`); ``kind`` forces one of
    :data:`SKEW_RETRACTION_KINDS` instead. With ``inplace=True`` the result is written into ``weight`` (2-d only),
    which is returned.

    Example:
        >>> a = torch.tensor([[0.0, 0.1], [-0.1, 0.0]], dtype=torch.float64)
        >>> r = skew_retraction(torch.eye(2, dtype=torch.float64), a)
        >>> bool(torch.allclose(r.T @ r, torch.eye(2, dtype=torch.float64), atol=1e-15))
        True
    """
    n = weight.shape[-2]
    if skew.shape[-2:] != (n, n):
        raise ValueError(f"skew must be {n} x {n} for a weight with {n} rows, got {tuple(skew.shape)}")
    if inplace and (weight.ndim != 2 or skew.ndim != 2):
        raise ValueError("inplace=True needs 2-d weight and skew")
    if kind is None:
        kind = skew_retraction_kind(skew, weight.dtype)
    elif kind not in SKEW_RETRACTION_KINDS:
        raise ValueError(f"kind must be one of {SKEW_RETRACTION_KINDS} or None, got {kind!r}")
    out = weight if inplace else weight.clone()
    fused = weight.ndim == 2 and skew.ndim == 2
    if kind == "quadratic":
        if fused:
            return out.addmm_(skew, torch.addmm(weight, skew, weight, alpha=0.5))
        return out.add_(skew @ (weight + 0.5 * (skew @ weight)))
    if kind == "cubic":
        if fused:
            inner = torch.addmm(weight, skew, weight, beta=0.5, alpha=0.125)  # W/2 + AW/8
            inner = torch.addmm(weight, skew, inner)                         # W + A(...)
            return out.addmm_(skew, inner)                                   # W + A(...): the increment form
        inner = 0.5 * weight + 0.125 * (skew @ weight)
        return out.add_(skew @ (weight + skew @ inner))
    m = torch.eye(n, dtype=skew.dtype, device=skew.device).sub_(skew, alpha=0.5)
    return out.add_(torch.linalg.solve(m, skew @ weight))


def random_orthogonal(out_features: int, in_features: int, *, generator: torch.Generator | None = None,
                      dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                      special: bool = False) -> torch.Tensor:
    r"""A Haar-distributed matrix with orthonormal columns (tall) or rows (wide), shape ``out x in``.

    QR of a Gaussian matrix with the signs of ``diag(R)`` fixed (Mezzadri 2007). With ``special=True``
    (square only) the determinant is forced to +1 by flipping one column.
    """
    out_features, in_features = check_features(out_features, "out_features"), check_features(in_features, "in_features")
    check_dtype(dtype)
    device = None if device is None else check_device(device)
    n, k = max(out_features, in_features), min(out_features, in_features)
    g = torch.randn(n, k, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    q = q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(()))
    if special:
        if n != k:
            raise ValueError("special=True (det = +1) needs a square matrix")
        if torch.linalg.det(q) < 0:
            q[:, 0] = -q[:, 0]
    w = q if out_features >= in_features else q.mT
    return w.to(dtype=dtype or torch.get_default_dtype(), device=device).contiguous()


def semi_identity(out_features: int, in_features: int, *, dtype: torch.dtype | None = None,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """The ``out x in`` matrix with ones on its main diagonal (orthonormal rows or columns)."""
    out_features, in_features = check_features(out_features, "out_features"), check_features(in_features, "in_features")
    check_dtype(dtype)
    device = None if device is None else check_device(device)
    return torch.eye(out_features, in_features, dtype=dtype or torch.get_default_dtype(), device=device)
