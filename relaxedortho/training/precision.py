r"""Mixed precision for the trainers: which autocast dtype, and whether gradients need scaling.

``amp`` is ``None``/``False`` (off), ``"bf16"``, ``"fp16"`` or ``True`` (bf16, or fp16 on a CUDA device
without bf16). bf16 works on CPU and CUDA; fp16 needs CUDA and a :class:`torch.amp.GradScaler` (its
range is too small for unscaled gradients). The forward pass runs under :func:`torch.autocast`; the
losses are computed in float32 and the maps' regularizers outside autocast, so the orthogonality penalty
(a difference of nearly equal numbers, :math:`G - I`) never loses its precision to half-precision rounding.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from .._checks import check_device


@dataclass(frozen=True)
class Precision:
    """A resolved mixed-precision setting."""

    device_type: str
    dtype: torch.dtype | None  # None: autocast off

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    @property
    def needs_scaler(self) -> bool:
        return self.dtype == torch.float16

    def autocast(self):
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> "torch.amp.GradScaler | None":
        return torch.amp.GradScaler(self.device_type) if self.needs_scaler else None


def resolve_precision(amp: Any, device: torch.device) -> Precision:
    """Validate ``amp`` for ``device`` and return the :class:`Precision` to use."""
    dt = device.type
    if amp is None or amp is False:
        return Precision(dt, None)
    if amp is True or amp == "auto":
        if dt == "cuda" and not torch.cuda.is_bf16_supported():
            return Precision(dt, torch.float16)
        return Precision(dt, torch.bfloat16)
    if amp in ("bf16", "bfloat16", torch.bfloat16):
        return Precision(dt, torch.bfloat16)
    if amp in ("fp16", "float16", torch.float16):
        if dt != "cuda":
            raise ValueError(f"amp='fp16' needs a CUDA device (training on {dt}); use amp='bf16' on CPU")
        return Precision(dt, torch.float16)
    raise ValueError(f"amp must be None, False, True, 'bf16' or 'fp16'; got {amp!r}")


def resolve_device(device: Any) -> torch.device:
    """``"auto"`` (or ``None``) is CUDA when available, else CPU; anything else is checked by the library's one
    device check, :func:`relaxedortho._checks.check_device` (a :class:`ValueError` naming the problem)."""
    return check_device(device, allow_auto=True)
