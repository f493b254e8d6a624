r"""The interface every map of the spectrum shares.

A map is an :class:`torch.nn.Module` computing ``y = x A^T + b`` like :class:`torch.nn.Linear`, with ``A`` of
shape ``out_features x in_features``. :class:`AlignmentMap` adds what an alignment needs on top of the
module: the deviation from orthogonality of the small Gram, the singular values, a regularizer for the
training loss (zero for hard and free maps), initialisation from a given matrix, export to a plain
:class:`torch.nn.Linear`, and the inverse map.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .._checks import as_float_tensor, check_weight_shape
from ..linalg import orthogonality_error, random_orthogonal, semi_identity

INIT_CHOICES = ("orthogonal", "identity", "kaiming")


class AlignmentMap:
    """Mixin for the maps of the spectrum; subclasses are :class:`torch.nn.Module` s.

    Subclasses provide ``in_features``, ``out_features``, a ``weight`` (``out x in``; a parameter or a
    computed tensor), a ``bias`` (a parameter or ``None``) and :meth:`config` (the constructor's keyword
    arguments, for :func:`relaxedortho.save`).
    """

    in_features: int
    out_features: int
    weight: torch.Tensor
    bias: torch.Tensor | None

    #: True when ``weight`` is constrained to have orthonormal rows or columns.
    is_orthogonal: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x A^T + b`` for inputs of shape ``(..., in_features)``."""
        return F.linear(x, self.weight, self.bias)

    def regularizer(self) -> torch.Tensor:
        """The term this map adds to the training loss: 0 here (hard and free maps)."""
        w = self.weight
        return torch.zeros((), dtype=w.dtype if w.dtype == torch.float64 else torch.float32, device=w.device)

    @torch.no_grad()
    def orthogonality_error(self) -> float:
        r""":math:`\lVert G(A) - I\rVert_F` of the small Gram, evaluated in float64 (a diagnostic, not a loss)."""
        return float(orthogonality_error(self.weight.detach().double()))

    @torch.no_grad()
    def singular_values(self) -> torch.Tensor:
        """Singular values of ``A`` in descending order (detached)."""
        return torch.linalg.svdvals(self.weight.detach())

    @torch.no_grad()
    def to_linear(self) -> nn.Linear:
        """A plain :class:`torch.nn.Linear` with a copy of this map's weight and bias (same outputs)."""
        w = self.weight.detach()
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        dtype=w.dtype, device=w.device)
        lin.weight.copy_(w)
        if self.bias is not None:
            lin.bias.copy_(self.bias.detach())
        return lin

    @torch.no_grad()
    def inverse(self):
        r"""The inverse map ``y \mapsto (y - b) (A^+)^T`` as an :class:`~relaxedortho.AffineMap` (in and out swapped).

        For an orthogonal ``A`` the pseudo-inverse is the transpose, computed exactly; otherwise
        :func:`torch.linalg.pinv`. Exact inverse when ``A`` is square and invertible, the least-squares
        inverse (left inverse for tall ``A``) otherwise.
        """
        from .affine import AffineMap

        w = self.weight.detach()
        pinv = w.mT.clone() if self.is_orthogonal else torch.linalg.pinv(w)
        bias = None if self.bias is None else -(pinv @ self.bias.detach())
        return AffineMap.from_matrix(pinv, bias)

    def load_matrix_(self, weight: Any, bias: Any = None):
        """Set the map to the given ``out x in`` matrix (and bias), in place; returns ``self``.

        Accepts tensors or NumPy arrays; validates shape and finiteness. Hard maps check that the matrix is
        orthonormal (to a tolerance scaled by dtype) and raise otherwise.
        """
        raise NotImplementedError  # pragma: no cover - every concrete map defines it

    @classmethod
    def from_matrix(cls, weight: Any, bias: Any = None, **kwargs):
        """Build a map of this class whose weight (and bias) equal the given ones.

        ``in_features``/``out_features``, dtype and device come from ``weight``; other constructor options
        go in ``kwargs``. ``bias`` is a vector (the map gets that bias), ``None``/``False`` (no bias) or
        ``True`` (a zero bias).
        """
        w = as_float_tensor(weight, "weight", ndim=2)
        if isinstance(bias, bool):
            has_bias, bias = bias, None
        else:
            has_bias = bias is not None
        if "bias" in kwargs:
            raise TypeError("from_matrix() takes the bias as its second argument (a vector, True or None)")
        m = cls(w.shape[1], w.shape[0], bias=has_bias, dtype=w.dtype, device=w.device, **kwargs)
        return m.load_matrix_(w, bias)

    def config(self) -> dict:
        """Constructor keyword arguments that rebuild this map (without its values)."""
        raise NotImplementedError  # pragma: no cover

    def _validated(self, weight: Any, bias: Any):
        w = as_float_tensor(weight, "weight", ndim=2)
        check_weight_shape(w, self.out_features, self.in_features)
        b = None
        if bias is not None:
            if self.bias is None:
                raise ValueError("bias given but the map was built with bias=False")
            b = as_float_tensor(bias, "bias", ndim=1)
            if b.shape[0] != self.out_features:
                raise ValueError(f"bias must have shape ({self.out_features},), got {tuple(b.shape)}")
        return w, b


def check_dtype(dtype: Any) -> None:
    """Raise :class:`TypeError` unless ``dtype`` (the constructor argument) is ``None`` or a floating dtype."""
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype (e.g. torch.float32 or torch.float64), got {dtype!r}")


def initial_weight(init: Any, out_features: int, in_features: int, *, dtype=None, device=None) -> torch.Tensor:
    """The starting ``out x in`` matrix named by ``init`` (a string of :data:`INIT_CHOICES` or a matrix)."""
    if isinstance(init, (torch.Tensor, np.ndarray)):
        w = as_float_tensor(init, "init", ndim=2)
        check_weight_shape(w, out_features, in_features, "init")
        return w.to(dtype=dtype or w.dtype, device=device)
    if init == "orthogonal":
        return random_orthogonal(out_features, in_features, dtype=dtype, device=device)
    if init == "identity":
        return semi_identity(out_features, in_features, dtype=dtype, device=device)
    if init == "kaiming":
        lin = nn.Linear(in_features, out_features, dtype=dtype, device=device)
        return lin.weight.detach()
    raise ValueError(f"init must be one of {INIT_CHOICES} or an (out_features, in_features) matrix, got {init!r}")


def orthonormality_tolerance(weight: torch.Tensor) -> float:
    """Tolerance on ``||G - I||_F`` for accepting a matrix as orthonormal: ``100 * eps * sqrt(k) * k``."""
    k = min(weight.shape)
    eps = torch.finfo(weight.dtype).eps
    return 100.0 * eps * k ** 1.5


def check_orthonormal(w: torch.Tensor, name: str) -> None:
    """Raise :class:`ValueError` unless ``w`` has orthonormal columns (tall) or rows (wide) to tolerance."""
    err = float(orthogonality_error(w.detach().double()))
    tol = max(orthonormality_tolerance(w), 1e-6 if w.dtype == torch.float32 else 0.0)
    if err > tol:
        raise ValueError(f"{name} must have orthonormal columns (or rows when wide): ||G - I||_F = {err:.3g} "
                         f"> tolerance {tol:.3g}; project it first, e.g. with relaxedortho.linalg.polar")
