r"""The interface every map of the spectrum shares.

A map is an :class:`torch.nn.Module` computing ``y = x A^T + b`` like :class:`torch.nn.Linear`, with ``A`` of
shape ``out_features x in_features``. :class:`AlignmentMap` adds what an alignment needs on top of the
module: the deviation from orthogonality of the small Gram, the singular values, a regularizer for the
training loss (zero for hard and free maps), initialisation from a given matrix, export to a plain
:class:`torch.nn.Linear`, and the inverse map.
"""
from __future__ import annotations

import math
import os
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .._checks import as_float_tensor, check_device, check_dtype, check_weight_shape
from ..linalg import (ROUNDING_FACTOR, gram_deviation, orthogonality_error, orthonormality_tolerance,
                      random_orthogonal, semi_identity)
from ..linalg import check_orthonormal  # noqa: F401  (re-exported: defined here in 0.1.0)
from ..polar_projection import project_orthonormal

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
        w = self.weight
        check_input_dtype(x, w)
        return F.linear(x, w, self.bias)

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

    def to_linear(self) -> nn.Linear:
        """A plain :class:`torch.nn.Linear` with a copy of this map's weight and bias (same outputs)."""
        return linear_copy(self.weight, self.bias)

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

        ``in_features``/``out_features`` come from ``weight``, and so do dtype and device unless ``kwargs`` name
        them (``dtype=``, ``device=``: the map is built there and ``weight`` converted); other constructor options
        go in ``kwargs``. ``bias`` is a vector (the map gets that bias), ``None``/``False`` (no bias) or
        ``True`` (a zero bias).
        """
        w = as_float_tensor(weight, "weight", ndim=2)
        dtype = kwargs.pop("dtype", None) or w.dtype
        device = kwargs.pop("device", None)
        device = w.device if device is None else check_device(device)
        if isinstance(bias, bool):
            has_bias, bias = bias, None
        else:
            has_bias = bias is not None
        if "bias" in kwargs:
            raise TypeError("from_matrix() takes the bias as its second argument (a vector, True or None)")
        m = cls(w.shape[1], w.shape[0], bias=has_bias, dtype=dtype, device=device, **kwargs)
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


@torch.no_grad()
def linear_copy(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """A plain :class:`torch.nn.Linear` holding copies of ``weight`` (``out x in``) and ``bias`` (or none), on their
    device and in their dtype: what every ``to_linear`` returns.

    Example:
        >>> lin = linear_copy(torch.eye(2, 3), None)
        >>> lin, lin.weight.requires_grad
        (Linear(in_features=3, out_features=2, bias=False), True)
    """
    w = weight.detach()
    lin = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, dtype=w.dtype, device=w.device)
    lin.weight.copy_(w)
    if bias is not None:
        lin.bias.copy_(bias.detach())
    return lin


def entry_dtype(value: Any) -> torch.dtype | None:
    """The floating torch dtype of a matrix given as a tensor or NumPy array (``None`` for anything else)."""
    if isinstance(value, torch.Tensor):
        return value.dtype
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        return torch.from_numpy(np.zeros(0, dtype=value.dtype)).dtype
    return None


def check_input_dtype(x: torch.Tensor, weight: torch.Tensor) -> None:
    """Raise :class:`ValueError` when ``x``'s last dimension is not the map's ``in_features`` (``weight``'s columns);
    raise :class:`TypeError` when ``x``'s dtype differs from the map's (``weight``'s) outside autocast (autocast
    casts float32 and half precision, never float64), with a
    message that says what to convert (a float64 map in a float32 model fails at ``F.linear`` with a message that
    names neither). A comparison of dtypes: no synchronisation, and ``torch.compile`` guards on it."""
    if x.ndim == 0 or x.shape[-1] != weight.shape[-1]:
        raise ValueError(f"input must have in_features = {weight.shape[-1]} features in its last dimension, got shape "
                         f"{tuple(x.shape)}")
    if x.dtype != weight.dtype and (torch.float64 in (x.dtype, weight.dtype) or not _autocast_enabled(x.device.type)):
        raise TypeError(f"input has dtype {x.dtype} but the map's weight has {weight.dtype}; convert one of them "
                        f"(x.to({weight.dtype}) or map.to({x.dtype})), or run a float32 map under torch.autocast")


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no device type
        return torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()


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


#: A matrix entering a hard map with :math:`\lVert G - I\rVert_F \le` ``ACCEPT_FACTOR`` :math:`\cdot\,\varepsilon k`
#: (:math:`k` = the shorter side, :math:`\varepsilon` its dtype's epsilon) is rounding: it is taken bit for bit.
ACCEPT_FACTOR = ROUNDING_FACTOR
#: A matrix beyond rounding but with :math:`\lVert G - I\rVert_2 \le` ``PROJECT_BOUND`` (every singular value
#: within about 2.5 % of 1: a matrix stored in half precision, or one that drifted in another library's training)
#: is replaced by its orthogonal polar factor, with a warning; farther matrices are rejected.
PROJECT_BOUND = 0.05


class OrthonormalityWarning(UserWarning):
    """A matrix given to a hard map was not orthonormal to rounding and was replaced by its polar factor."""


def _caller_stacklevel() -> int:
    """``stacklevel`` for :func:`warnings.warn` that points at the first frame outside relaxedortho and torch (the
    user's call), however deep the entry (constructor, ``from_matrix``, ``load_state_dict``)."""
    import sys

    inside = (os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
              os.path.dirname(os.path.abspath(torch.__file__)))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(inside):
        frame, level = frame.f_back, level + 1
    return level


@torch.no_grad()
def orthonormal_entry(w: torch.Tensor, name: str, *, source_dtype: torch.dtype | None = None) -> torch.Tensor:
    r"""Validate a matrix that enters a hard map (``init``, :meth:`~AlignmentMap.load_matrix_`, a loaded state) and
    return the matrix the map must hold.

    - :math:`\lVert G - I\rVert_F \le` :func:`~relaxedortho.linalg.orthonormality_tolerance` (rounding in ``w``'s dtype): ``w`` itself;
    - within the rounding level of a coarser ``source_dtype`` (a float32 matrix given to a float64 map): its polar
      factor (:func:`~relaxedortho.polar_projection.project_orthonormal`), silently;
    - :math:`\lVert G - I\rVert_2 \le` :data:`PROJECT_BOUND`: its polar factor, with an
      :class:`OrthonormalityWarning` that gives the deviation;
    - otherwise :class:`ValueError`.
    """
    err = float(orthogonality_error(w.detach().double()))
    tol = orthonormality_tolerance(w)
    if err <= tol:
        return w
    coarser = source_dtype is not None and source_dtype.is_floating_point and \
        torch.finfo(source_dtype).eps > torch.finfo(w.dtype).eps
    if coarser and err <= orthonormality_tolerance(w, source_dtype):
        return project_orthonormal(w)
    k = min(w.shape)
    if err <= PROJECT_BOUND:
        spectral = err  # ||.||_2 <= ||.||_F
    elif err > PROJECT_BOUND * math.sqrt(k):
        spectral = err / math.sqrt(k)  # ||.||_2 >= ||.||_F / sqrt(k) > PROJECT_BOUND: no need for the exact value
    else:
        spectral = float(torch.linalg.eigvalsh(gram_deviation(w.detach().double())).abs().max())
    if spectral <= PROJECT_BOUND:
        warnings.warn(f"{name} is not orthonormal to rounding (||G - I||_F = {err:.3g} > {tol:.3g}, "
                      f"||G - I||_2 = {spectral:.3g}); replaced by its orthogonal polar factor",
                      OrthonormalityWarning, stacklevel=_caller_stacklevel())
        return project_orthonormal(w)
    raise ValueError(f"{name} must have orthonormal columns (or rows when wide): ||G - I||_F = {err:.3g}, "
                     f"||G - I||_2 >= {spectral:.3g} > {PROJECT_BOUND} (rounding level: {tol:.3g}); project it first, "
                     "e.g. with relaxedortho.linalg.polar")
