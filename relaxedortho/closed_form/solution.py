r"""The result of a closed-form fit before it becomes a map module.

Solvers work in the row convention of ``docs/math.md`` (a p×q matrix ``W`` predicts ``XW + b``) and in float64;
:meth:`ClosedFormSolution.to_module` turns the result into one of the map modules, whose weight is
:math:`A = W^\top` (out×in, like :class:`torch.nn.Linear`), in the dtype of the inputs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..maps import AffineMap, OrthogonalLinear
from ..maps.base import check_orthonormal


@dataclass
class ClosedFormSolution:
    """``W`` (p×q, float64, row convention), optional bias ``b`` (q,), and what kind of matrix ``W`` is.

    Attributes:
        W: the p×q matrix (``y ≈ x W + b``).
        bias: the translation, or ``None``.
        orthogonal: ``W`` has orthonormal rows or columns (returned as :class:`~relaxedortho.OrthogonalLinear`).
        group: ``"SO"`` for a rotation (det +1), else ``"O"``.
        info: solver diagnostics (iterations, objective history, ...).
    """

    W: torch.Tensor
    bias: torch.Tensor | None = None
    orthogonal: bool = False
    group: str = "O"
    info: dict = field(default_factory=dict)

    def to_module(self, dtype: torch.dtype):
        """An :class:`~relaxedortho.OrthogonalLinear` (orthonormal ``W``) or :class:`~relaxedortho.AffineMap`
        with ``weight = Wᵀ`` in ``dtype``. Half-precision inputs give float32 maps."""
        if dtype in (torch.float16, torch.bfloat16):
            dtype = torch.float32
        weight = self.W.mT.to(dtype).contiguous()
        bias = None if self.bias is None else self.bias.to(dtype)
        if self.orthogonal:
            try:
                check_orthonormal(weight, "weight")
            except ValueError:  # pragma: no cover - polar factors are orthonormal to rounding
                pass
            else:
                return OrthogonalLinear.from_matrix(weight, bias, group=self.group)
        return AffineMap.from_matrix(weight, bias)
