r"""Paired rows for training: tensors, in-memory NumPy arrays or memory maps, gathered a batch at a time.

Every array passed to a trainer becomes a :class:`RowArray`. Validation (float dtype, two dimensions,
finiteness) happens once here, before training. A memory map (:class:`numpy.memmap`, e.g. from
``np.load(path, mmap_mode="r")``) is never loaded whole: its finiteness check reads it in chunks and each
batch reads only its own rows. Tensors and in-memory arrays are moved to the training device once
(``preload=True``), so a step only gathers rows (or takes a view when the data are not shuffled).

The order of the rows in epoch ``e`` depends on the seed and ``e`` alone (:func:`epoch_order`), which makes a
resumed run visit the same batches as an uninterrupted one.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .._checks import FLOAT_DTYPES, tensor_from_numpy

#: Rows read per chunk when checking a memory map for NaN/Inf.
CHECK_CHUNK_ROWS = 65536

_GOLDEN = 0x9E3779B97F4A7C15  # 2^64 / golden ratio: spreads consecutive epochs over the seed space


def _finite_max_abs(t: torch.Tensor) -> float | None:
    """The largest absolute entry, or ``None`` when some entry is NaN or Inf. One pass, no n x d boolean
    temporary: min and max propagate NaN, and are finite iff all entries are."""
    if t.numel() == 0:
        return 0.0
    lo, hi = (float(v) for v in torch.aminmax(t))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    return max(-lo, hi)


def epoch_order(n: int, epoch: int, seed: int, shuffle: bool) -> torch.Tensor | None:
    """The row order of ``epoch``: a permutation drawn from a generator seeded by ``(seed, epoch)``, or
    ``None`` (rows in storage order) when ``shuffle`` is false."""
    if not shuffle:
        return None
    g = torch.Generator()
    g.manual_seed((int(seed) * _GOLDEN + int(epoch) + 1) % (2 ** 63))
    return torch.randperm(n, generator=g)


class RowArray:
    """One array of paired rows (features ``n x d`` or integer labels ``n``), validated once.

    Args:
        x: a :class:`torch.Tensor`, a NumPy array or a :class:`numpy.memmap`.
        name: the argument's name, used in error messages.
        labels: integer labels of shape ``(n,)`` instead of float features of shape ``(n, d)``.
        check_finite: scan the features for NaN/Inf (a full read for a memory map); records their largest
            absolute value as :attr:`max_abs` (``None`` without the scan).

    Rows read from a read-only memory map are copied into writable memory before they become tensors (PyTorch
    does not support tensors over non-writable arrays and warns).
    """

    def __init__(self, x: Any, name: str, *, labels: bool = False, check_finite: bool = True) -> None:
        self.name = name
        self.labels = labels
        self.memmap = isinstance(x, np.memmap)
        self.max_abs: float | None = None
        if isinstance(x, torch.Tensor):
            data = x.detach()
        elif isinstance(x, np.ndarray):
            data = x if self.memmap else tensor_from_numpy(x)
        elif isinstance(x, (list, tuple)) and labels:
            data = torch.as_tensor(x)
        else:
            raise TypeError(f"{name} must be a torch.Tensor, a NumPy array or a numpy.memmap, got {type(x).__name__}")
        ndim = 1 if labels else 2
        if data.ndim != ndim:
            what = "a 1-d array of labels" if labels else "2-dimensional (samples x features)"
            raise ValueError(f"{name} must be {what}, got shape {tuple(data.shape)}")
        if data.shape[0] == 0:
            raise ValueError(f"{name} is empty (0 rows)")
        if labels:
            kind = data.dtype.kind if self.memmap else ("i" if not data.dtype.is_floating_point
                                                        and not data.dtype.is_complex else "f")
            if kind not in "iu" or (not self.memmap and data.dtype == torch.bool):
                raise TypeError(f"{name} must hold integer class labels, got dtype {data.dtype}")
        elif self.memmap:
            if data.dtype.kind != "f":
                raise TypeError(f"{name} must hold floating-point numbers, got NumPy dtype {data.dtype}")
            if check_finite:
                self.max_abs = 0.0
                for start in range(0, data.shape[0], CHECK_CHUNK_ROWS):
                    chunk = np.asarray(data[start:start + CHECK_CHUNK_ROWS])
                    if chunk.size:  # min and max propagate NaN: finite iff every entry is
                        lo, hi = float(chunk.min()), float(chunk.max())
                        if not (math.isfinite(lo) and math.isfinite(hi)):
                            raise ValueError(f"{name} contains NaN or Inf values (rows from {start})")
                        self.max_abs = max(self.max_abs, -lo, hi)
        else:
            if data.dtype not in FLOAT_DTYPES:
                raise TypeError(f"{name} must have a floating dtype, got {data.dtype}")
            if check_finite:
                self.max_abs = _finite_max_abs(data)
                if self.max_abs is None:
                    raise ValueError(f"{name} contains NaN or Inf values")
        self.data = data
        self._fast: tuple | None = None  # (device, dtype) of preloaded features: rows() takes the short path

    def __len__(self) -> int:
        return int(self.data.shape[0])

    @property
    def dim(self) -> int:
        return int(self.data.shape[1])

    def preload(self, device: torch.device, dtype: torch.dtype | None) -> None:
        """Move an in-memory array to ``device`` (and ``dtype`` for features) once; memory maps stay lazy."""
        if self.memmap:
            return
        if self.labels:
            self.data = self.data.to(device=device, dtype=torch.long)
        else:
            self.data = self.data.to(device=device, dtype=dtype or self.data.dtype)
            self._fast = (self.data.device, self.data.dtype)

    def rows(self, index: torch.Tensor | slice, device: torch.device, dtype: torch.dtype | None) -> torch.Tensor:
        """The rows at ``index`` (an index tensor or a slice) on ``device``, features cast to ``dtype``."""
        if self._fast is not None and isinstance(index, torch.Tensor) and self._fast == (index.device, dtype):
            return self.data.index_select(0, index)  # preloaded on the device in the right dtype
        if self.memmap:
            sel = index if isinstance(index, slice) else index.cpu().numpy()
            t = tensor_from_numpy(self.data[sel])  # a slice of a read-only map is copied, gathered rows are not
        elif isinstance(index, slice):
            t = self.data[index]
        else:
            t = self.data.index_select(0, index.to(self.data.device, non_blocking=True))
        if self.labels:
            return t.to(device=device, dtype=torch.long, non_blocking=True)
        return t.to(device=device, dtype=dtype or t.dtype, non_blocking=True)

    def all_rows(self, device: torch.device, dtype: torch.dtype | None) -> torch.Tensor:
        """Every row (validation sets are loaded whole)."""
        return self.rows(slice(None), device, dtype)


def check_same_length(arrays: list[RowArray]) -> int:
    """All arrays pair row for row: the same number of rows, or a :class:`ValueError` naming them."""
    n = len(arrays[0])
    for a in arrays[1:]:
        if len(a) != n:
            raise ValueError(f"{arrays[0].name} and {a.name} must have the same number of rows (paired samples), "
                             f"got {n} and {len(a)}")
    return n


#: Rows per chunk of :func:`target_variance`.
VARIANCE_CHUNK = 65536


def target_variance(array: RowArray) -> float:
    r"""The variance per coordinate :math:`\operatorname{tr}\Sigma / q` of the rows of ``array`` (the mean square
    when the variance is 0, 1 when both are), in one streamed pass: float64 chunks scaled by a power of two
    (:attr:`RowArray.max_abs` when known, else each chunk's own), merged by Chan et al.'s pairwise update of means and
    centred sums, so that a large common offset does not cancel and data near the float limits do not overflow.

    Example:
        >>> import torch
        >>> round(target_variance(RowArray(torch.tensor([[1.0, 10.0], [3.0, 14.0]]), "y")), 6)  # (1 + 4) / 2
        2.5
    """
    n_total, mean, css, sq = 0, None, 0.0, 0.0
    scale = None
    for lo in range(0, len(array), VARIANCE_CHUNK):
        t = array.rows(slice(lo, lo + VARIANCE_CHUNK), torch.device("cpu"), torch.float64)
        if t.numel() == 0:
            continue
        if scale is None:
            peak = array.max_abs if array.max_abs is not None else float(t.abs().max())
            scale = 2.0 ** -math.frexp(peak)[1] if peak > 0 else 1.0
        t = t * scale
        m, k = t.mean(dim=0), t.shape[0]
        c = float(((t - m) ** 2).sum())
        sq += float((t * t).sum())
        if mean is None:
            mean, css = m, c
        else:
            delta = m - mean
            css += c + float((delta * delta).sum()) * n_total * k / (n_total + k)
            mean = mean + delta * (k / (n_total + k))
        n_total += k
    if not n_total:
        return 1.0
    q = array.dim
    var, ms = css / (n_total * q), sq / (n_total * q)
    value = var if var > 0 else ms
    return value / (scale * scale) if value > 0 else 1.0
