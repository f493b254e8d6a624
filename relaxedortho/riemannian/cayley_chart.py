r"""The Cayley chart of SO(n): skew-symmetric matrices ↔ rotations without the eigenvalue −1
(``docs/math.md`` §10).

.. math:: R = \operatorname{cay}(A) = (I - A)^{-1}(I + A), \qquad A = \operatorname{cay}^{-1}(R) = (R + I)^{-1}(R - I).

The two factors of each product commute (both are rational functions of the same matrix), so the order does not
matter. For a rotation by :math:`\theta` in one plane, :math:`A` has the entries :math:`\pm\tan(\theta/2)` in that
plane: the chart maps angles :math:`(-\pi, \pi)` onto the whole real line, so :math:`\lVert A\rVert` grows without
bound as an angle approaches π, and rotations with the eigenvalue −1 (an angle of exactly π) and reflections
(:math:`\det = -1`) are outside it. It agrees with the exponential map to second order only after halving:
:math:`\operatorname{cay}(A/2) = \exp(A) + O(\lVert A\rVert^3)`.

Conventions differ between sources, and they are not interchangeable:

- this module and OrthoMerge (Yang, Shi & Liu 2026, whose code merges in this chart): :math:`(I - A)^{-1}(I + A)`;
- :func:`relaxedortho.linalg.skew_retraction` and PyTorch's ``parametrizations.orthogonal(orthogonal_map="cayley")``:
  :math:`(I - A/2)^{-1}(I + A/2) = \operatorname{cay}(A/2)`, i.e. their generator is twice this chart's coordinate;
- some texts write :math:`(I + A)^{-1}(I - A) = \operatorname{cay}(-A)` (the transpose).
"""
from __future__ import annotations

import math
from typing import Any

import torch

from .._checks import as_float_tensor
from .geodesics import CUT_LOCUS_FACTOR, _check_skew
from .group import _det_sign, check_orthogonal

__all__ = ["cayley", "cayley_inverse"]


def cayley(A: Any) -> torch.Tensor:
    r"""The rotation :math:`(I - A)^{-1}(I + A)` of a skew-symmetric ``A`` (``(..., n, n)``, batched).

    Exactly orthogonal with determinant +1 for every skew ``A`` (:math:`I - A` is always invertible: its eigenvalues
    are :math:`1 - i\,t`). Computed with one linear solve in float64, returned in ``A``'s dtype. Raises
    :class:`ValueError` when ``A`` is not skew-symmetric (beyond rounding). The inverse is :func:`cayley_inverse`;
    conventions of other sources are in the module documentation.

    Example:
        >>> A = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)   # tan(pi/4): a quarter turn
        >>> cayley(A).round(decimals=12).tolist()
        [[0.0, -1.0], [1.0, 0.0]]
    """
    A = as_float_tensor(A, "A", allow_half=False)
    if A.ndim < 2 or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"A must be square (..., n, n), got shape {tuple(A.shape)}")
    a = A.double()
    _check_skew(a, "A", A.dtype)
    a = 0.5 * (a - a.mT)
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    return torch.linalg.solve(eye - a, eye + a).to(A.dtype)


def cayley_inverse(R: Any) -> torch.Tensor:
    r"""The chart coordinate :math:`A = (R + I)^{-1}(R - I)` (skew-symmetric) of a rotation ``R`` (``(..., n, n)``).

    Raises :class:`ValueError` when ``R`` is not orthogonal, has determinant −1 (a reflection: :math:`R + I` is
    singular), or has the eigenvalue −1 (an angle of π, where the chart coordinate is infinite; judged by
    :math:`\lVert A\rVert_2 = \tan(\theta_{\max}/2)` exceeding :math:`1/(c\sqrt n\,\varepsilon)` with
    c = :data:`~relaxedortho.riemannian.geodesics.CUT_LOCUS_FACTOR`). Computed in float64 with one solve and
    skew-symmetrized (removing rounding), returned in ``R``'s dtype. Near an angle π the coordinate is
    ill-conditioned (it grows like :math:`2/(\pi - \theta)`); merge in the logarithm
    (:func:`~relaxedortho.riemannian.skew_log`) if angles can be large.

    Example:
        >>> R = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
        >>> cayley_inverse(R).round(decimals=12).tolist()
        [[0.0, -1.0], [1.0, 0.0]]
    """
    R = check_orthogonal(R, "R")
    if bool((_det_sign(R) < 0).any()):
        raise ValueError("R has determinant -1 (a reflection): it is outside the Cayley chart of SO(n) "
                         "(R + I is singular)")
    r = R.double()
    n = r.shape[-1]
    eye = torch.eye(n, dtype=r.dtype, device=r.device)
    limit = 1.0 / (CUT_LOCUS_FACTOR * math.sqrt(n) * torch.finfo(R.dtype).eps)
    try:
        a = torch.linalg.solve(r + eye, r - eye)
    except RuntimeError:  # exactly singular R + I
        a = torch.full_like(r, math.inf)
    if not bool(torch.isfinite(a).all()) or float(torch.linalg.matrix_norm(a, ord=2).max()) > limit:
        raise ValueError("R has the eigenvalue -1 (a rotation by pi in some plane): it is outside the Cayley chart "
                         f"(the coordinate tan(angle/2) exceeds {limit:.2g})")
    return (0.5 * (a - a.mT)).to(R.dtype)
