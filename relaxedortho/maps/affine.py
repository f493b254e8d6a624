r"""The free end of the spectrum: an unconstrained affine map ``y = x A^T + b``."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._checks import check_device, check_features
from .base import AlignmentMap, check_dtype, initial_weight


class AffineMap(AlignmentMap, nn.Linear):
    r"""Unconstrained affine map :math:`y = xA^\top + b` (an :class:`torch.nn.Linear` with the map interface).

    Its regularizer is 0; it fits paired data best and may distort the geometry of the source space.
    Equivalent to :class:`~relaxedortho.LambdaOrthoLinear` with ``lam = math.inf``.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        bias: learn an additive bias (default ``True``).
        init: ``"orthogonal"`` (default, random semi-orthogonal), ``"identity"``, ``"kaiming"``
            (:class:`torch.nn.Linear`'s default) or an ``out x in`` matrix.
        device, dtype: factory arguments, as for :class:`torch.nn.Linear`.

    Example:
        >>> import torch
        >>> m = AffineMap(4, 3)
        >>> m(torch.randn(2, 5, 4)).shape
        torch.Size([2, 5, 3])
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, init: Any = "orthogonal",
                 device=None, dtype=None) -> None:
        check_features(in_features, "in_features")
        check_features(out_features, "out_features")
        check_dtype(dtype)
        device = None if device is None else check_device(device)
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init = init if isinstance(init, str) else "matrix"
        with torch.no_grad():
            self.weight.copy_(initial_weight(init, out_features, in_features, dtype=self.weight.dtype,
                                             device=self.weight.device))
            if self.bias is not None:
                self.bias.zero_()

    @torch.no_grad()
    def load_matrix_(self, weight: Any, bias: Any = None) -> "AffineMap":
        w, b = self._validated(weight, bias)
        self.weight.copy_(w)
        if self.bias is not None:
            self.bias.copy_(b) if b is not None else self.bias.zero_()
        return self

    def config(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None}
