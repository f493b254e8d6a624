r"""The result of a closed-form fit before it becomes a map module.

Solvers work in the row convention of ``docs/math.md`` (a p×q matrix ``W`` predicts ``XW + b``) and in float64;
:meth:`ClosedFormSolution.to_module` turns the result into one of the map modules, whose weight is
:math:`A = W^\top` (out×in, like :class:`torch.nn.Linear`), in the dtype of the inputs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..linalg import check_orthonormal
from ..maps import AffineMap, OrthogonalLinear


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
        with ``weight = Wᵀ`` in ``dtype``. Half-precision inputs give float32 maps. An :class:`OverflowError`
        says when the float64 solution does not fit ``dtype`` (e.g. a float32 map from X of size 1e-30 to Y of
        size 1e30 needs weights of size 1e60): the cast would give Inf or flush the weights to zero."""
        if dtype in (torch.float16, torch.bfloat16):
            dtype = torch.float32
        weight = _cast(self.W.mT, dtype, "weight").contiguous()
        bias = None if self.bias is None else _cast(self.bias, dtype, "bias", underflow=False)
        if self.orthogonal:
            try:
                check_orthonormal(weight, "weight")
            except ValueError:  # pragma: no cover - polar factors are orthonormal to rounding
                pass
            else:
                return OrthogonalLinear.from_matrix(weight, bias, group=self.group)
        return AffineMap.from_matrix(weight, bias)


def _cast(t: torch.Tensor, dtype: torch.dtype, name: str, underflow: bool = True) -> torch.Tensor:
    """``t`` in ``dtype``; an :class:`OverflowError` when an entry overflows or (``underflow``) the largest entry
    falls below the normal range of ``dtype`` (the map would be silently wrong: Inf, or flushed to zero). A
    bias below that range is a rounding-level residual and is cast as is."""
    out = t.to(dtype)
    if dtype == t.dtype or t.numel() == 0:
        return out
    big = float(t.abs().amax())
    info = torch.finfo(dtype)
    if not bool(torch.isfinite(out).all()) or (underflow and 0 < big < info.tiny):
        raise OverflowError(f"the fitted {name} has entries of size {big:.3g}, outside the range of {dtype} "
                            f"({info.tiny:.3g} … {info.max:.3g}); fit with float64 inputs or rescale X or Y")
    return out
