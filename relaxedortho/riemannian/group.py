r"""The orthogonal group O(n), its two components and the nearest matrix in a component.

O(n) has two connected components: SO(n) (rotations, :math:`\det R = +1`) and the reflections
(:math:`\det R = -1`). Geodesics, logarithms and Karcher means only exist inside one component; the functions of
:mod:`relaxedortho.riemannian` raise a :class:`ValueError` when asked to join matrices of different components
(``docs/math.md`` §10).
"""
from __future__ import annotations

from numbers import Real
from typing import Any

import numpy as np
import torch

from .._checks import as_float_tensor
from ..linalg import orthonormality_tolerance

__all__ = ["check_orthogonal", "determinant_sign", "special_polar"]


def check_orthogonal(R: Any, name: str = "R", *, square: bool = True, min_ndim: int = 2) -> torch.Tensor:
    r"""``R`` as a floating tensor of shape ``(..., n, n)`` (or ``(..., n, p)``, n ≥ p, with ``square=False``)
    whose matrices are orthonormal: :math:`\lVert R^\top R - I\rVert_F` at most
    :func:`~relaxedortho.linalg.orthonormality_tolerance` (``100·eps·p^1.5``; 1e-6 in float32), evaluated in
    float64. Raises :class:`ValueError` (naming ``name``) otherwise.

    Example:
        >>> check_orthogonal(torch.eye(3)).shape
        torch.Size([3, 3])
    """
    R = as_float_tensor(R, name, allow_half=False)
    if R.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions {'(..., n, n)' if square else '(..., n, p)'}"
                         f", got shape {tuple(R.shape)}")
    n, p = R.shape[-2], R.shape[-1]
    if square and n != p:
        raise ValueError(f"{name} must be square (..., n, n), got shape {tuple(R.shape)}")
    if not square and n < p:
        raise ValueError(f"{name} must be tall (..., n, p) with n >= p (orthonormal columns), got shape "
                         f"{tuple(R.shape)}")
    if R.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(R.shape)})")
    r = R.double()
    eye = torch.eye(p, dtype=torch.float64, device=R.device)
    errs = torch.linalg.matrix_norm(r.mT @ r - eye)
    err = float(errs.max())
    tol = max(orthonormality_tolerance(R[(0,) * (R.ndim - 2)]), 1e-6 if R.dtype == torch.float32 else 0.0)
    if err > tol:
        if R.ndim > 2:   # name the worst matrix of the batch
            where = torch.unravel_index(errs.argmax(), errs.shape)
            name = f"{name}[{', '.join(str(int(i)) for i in where)}]"
        raise ValueError(f"{name} must be orthogonal (orthonormal columns): ||R^T R - I||_F = {err:.3g} > tolerance "
                         f"{tol:.3g}; project it first, e.g. with relaxedortho.linalg.polar")
    return R


def _square(R: Any, name: str) -> torch.Tensor:
    """``R`` as a finite float32/float64 tensor of square matrices ``(..., n, n)``."""
    R = as_float_tensor(R, name, allow_half=False)
    if R.ndim < 2 or R.shape[-1] != R.shape[-2]:
        raise ValueError(f"{name} must be square (..., n, n), got shape {tuple(R.shape)}")
    return R


def determinant_sign(R: Any) -> torch.Tensor:
    r"""The sign (+1 or −1, as float64) of :math:`\det R` for orthogonal ``R`` of shape ``(..., n, n)``.

    Computed from an LU factorisation in float64; for an orthogonal matrix :math:`|\det R| = 1`, so the sign is
    never ambiguous. Any other finite square matrix gets the sign of its determinant (0 when it is exactly
    singular). Raises :class:`TypeError` for non-float input and :class:`ValueError` for NaN/Inf or a shape that is
    not ``(..., n, n)``.

    Example:
        >>> float(determinant_sign(torch.diag(torch.tensor([1.0, -1.0]))))
        -1.0
    """
    return _det_sign(_square(R, "R"))


def _det_sign(R: torch.Tensor) -> torch.Tensor:
    """:func:`determinant_sign` of an already validated tensor."""
    sign, _ = torch.linalg.slogdet(R.double())
    return sign


def special_polar(M: Any, sign: Any = 1.0) -> torch.Tensor:
    r"""The orthogonal matrix nearest to the square ``M`` (Frobenius norm) among those with :math:`\det = ` ``sign``.

    With :math:`M = U\Sigma V^\top`, it is :math:`U\,\mathrm{diag}(1,\dots,1,s)\,V^\top` where
    :math:`s = \mathrm{sign}\cdot\det(UV^\top)` (Kabsch 1976; Umeyama 1991): the polar factor :math:`UV^\top` when it
    already has the requested sign, otherwise the direction of the smallest singular value is flipped. ``sign`` is
    +1, −1 or a tensor of them broadcastable to the batch shape of ``M`` (``(..., n, n)``; else a
    :class:`ValueError`). ``M`` must be a finite float32 or float64 tensor of square matrices. Computed in float64 and
    returned in ``M``'s dtype.

    Example:
        >>> r = special_polar(torch.diag(torch.tensor([2.0, -1.0])))
        >>> r.tolist(), float(torch.linalg.det(r))
        ([[1.0, 0.0], [0.0, 1.0]], 1.0)
    """
    M = _square(M, "M")
    if M.numel() == 0:
        raise ValueError(f"M is empty (shape {tuple(M.shape)})")
    if isinstance(sign, (bool, np.bool_)) or not isinstance(sign, (Real, torch.Tensor, np.ndarray)) or (
            isinstance(sign, np.ndarray) and sign.dtype.kind not in "iuf") or (
            isinstance(sign, torch.Tensor) and (sign.dtype == torch.bool or sign.is_complex())):
        raise TypeError(f"sign must be +1, -1 or a tensor of them, got {type(sign).__name__}"
                        + (f" of dtype {sign.dtype}" if hasattr(sign, "dtype") else ""))
    s = torch.as_tensor(sign, device=M.device).to(torch.float64)
    bad = s[s.abs() != 1]
    if bad.numel():
        raise ValueError(f"sign must hold only +1 and -1 (the determinant of the result), got {float(bad[0])!r}")
    try:
        torch.broadcast_shapes(s.shape, M.shape[:-2])
    except RuntimeError:
        raise ValueError(f"sign of shape {tuple(s.shape)} does not broadcast to the batch shape "
                         f"{tuple(M.shape[:-2])} of M") from None
    return _special_polar(M, s)


def _special_polar(M: torch.Tensor, sign: Any) -> torch.Tensor:
    """:func:`special_polar` of an already validated ``M`` and ``sign`` (±1)."""
    m = M.double()
    u, _, vh = torch.linalg.svd(m)
    sign = torch.as_tensor(sign, dtype=torch.float64, device=m.device)
    flip = sign * torch.linalg.det(u @ vh).sign()
    u = torch.cat([u[..., :-1], u[..., -1:] * flip[..., None, None]], dim=-1)
    return (u @ vh).to(M.dtype)
