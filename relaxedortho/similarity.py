r"""Similarity measures between two sets of paired representations (``docs/math.md`` §9).

Both take X (n×p) and Y (n×q) with paired rows (NumPy or torch), compute in float64 and return a Python float.
Both are invariant to a positive scale of either set, so each set is first divided by its largest absolute entry:
the result is the same for every finite input scale (no overflow at 1e200, no underflow at 1e-200).
"""
from __future__ import annotations

import math
from typing import Any

import torch

from ._checks import as_float_tensor, check_paired


def _unit_max(x: torch.Tensor) -> torch.Tensor:
    """``x`` divided by its largest absolute entry (unchanged when it is zero)."""
    scale = x.abs().amax() if x.numel() else x.new_zeros(())
    return x / scale if float(scale) > 0 else x


def _pair(X: Any, Y: Any, center: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x = as_float_tensor(X, "X", ndim=2)
    y = as_float_tensor(Y, "Y", ndim=2)
    check_paired(x, y)
    if center and x.shape[0] < 2:
        raise ValueError(f"X and Y need at least 2 rows to be centred, got {x.shape[0]}")
    # both measures are invariant to a positive scale of either set: divide each by its largest absolute entry
    # first, so that no sum of squares (or column sum) overflows or underflows for any finite input
    x = _unit_max(x.to(torch.float64))
    y = _unit_max(y.to(device=x.device, dtype=torch.float64))
    if center:
        x, y = x - x.mean(0), y - y.mean(0)
    return x, y


def linear_cka(X: Any, Y: Any) -> float:
    r"""Linear centred kernel alignment (Kornblith et al. 2019, ICML, "Similarity of neural network
    representations revisited"):

    .. math:: \mathrm{CKA}(X, Y) = \frac{\lVert Y^\top X\rVert_F^2}{\lVert X^\top X\rVert_F\,\lVert Y^\top Y\rVert_F}

    on column-centred X, Y. In [0, 1]; invariant to orthogonal maps and isotropic scaling of either set
    (not to general invertible maps). Uses the n×n Grams when n is smaller than the widths.

    Example:
        >>> import torch
        >>> X = torch.randn(50, 6, dtype=torch.float64)
        >>> round(linear_cka(X, 3 * X), 12)
        1.0
    """
    x, y = _pair(X, Y, center=True)
    n, p, q = x.shape[0], x.shape[1], y.shape[1]
    if n < max(p, q):
        kx, ky = x @ x.mT, y @ y.mT
        num, dx, dy = (kx * ky).sum(), torch.linalg.matrix_norm(kx), torch.linalg.matrix_norm(ky)
    else:
        num = torch.linalg.matrix_norm(y.mT @ x) ** 2
        dx, dy = torch.linalg.matrix_norm(x.mT @ x), torch.linalg.matrix_norm(y.mT @ y)
    if float(dx) == 0 or float(dy) == 0:
        raise ValueError("linear CKA is undefined when X or Y is constant (zero after centring)")
    return float(num / (dx * dy))


def procrustes_distance(X: Any, Y: Any, *, angular: bool = False, center: bool = True) -> float:
    r"""Procrustes distance between shapes (Kendall 1984; Williams et al. 2021, NeurIPS, "Generalized shape
    metrics on neural representations").

    After centring (``center=True``) and scaling to :math:`\lVert X\rVert_F = \lVert Y\rVert_F = 1`,

    .. math::

        d^2 = \min_{W} \lVert XW - Y\rVert_F^2 = 2 - 2\lVert X^\top Y\rVert_*,\qquad
        \theta = \arccos \lVert X^\top Y\rVert_*\ (\texttt{angular=True}),

    with :math:`\lVert\cdot\rVert_*` the nuclear norm (the minimum is over orthonormal W; widths may differ).
    Both are metrics: 0 exactly when Y is an orthogonal transform of X (up to translation and scale);
    :math:`d \in [0, \sqrt2]`, :math:`\theta \in [0, \pi/2]`.

    Example:
        >>> import torch
        >>> X = torch.randn(30, 4, dtype=torch.float64)
        >>> procrustes_distance(X, 2 * X + 1) < 1e-7
        True
    """
    x, y = _pair(X, Y, center=center)
    nx, ny = torch.linalg.matrix_norm(x), torch.linalg.matrix_norm(y)
    if float(nx) == 0 or float(ny) == 0:
        raise ValueError("the Procrustes distance is undefined when X or Y is zero (after centring)")
    nuc = float(torch.linalg.matrix_norm((x / nx).mT @ (y / ny), ord="nuc"))
    nuc = min(1.0, max(0.0, nuc))
    if angular:
        return math.acos(nuc)
    return math.sqrt(max(0.0, 2.0 - 2.0 * nuc))
