r"""Sufficient statistics of paired data, accumulated chunk by chunk.

Every closed form of this package needs only the first and second moments of the paired rows
X (n×p), Y (n×q): the sums of the rows, the cross product :math:`X^\top Y` and, for some kinds, the Grams
:math:`X^\top X`, :math:`Y^\top Y`. :func:`accumulate_moments` computes them in one pass over

- in-memory arrays (NumPy or torch, any device), read in row chunks;
- memory-mapped arrays (:class:`numpy.memmap`, ``np.load(..., mmap_mode="r")``): only one chunk is in memory;
- an iterable of ``(X_chunk, Y_chunk)`` pairs (e.g. a generator that embeds a batch at a time).

Memory is :math:`O(pq + p^2 + q^2 + \text{chunk})` whatever ``n``.

Numerics. Sums are kept in float64. Rows are shifted by the mean of the first chunk before the products
(the "shifted data" algorithm, Chan, Golub & LeVeque 1983), which avoids the catastrophic cancellation of
:math:`X^\top Y - n\mu_x^\top\mu_y` when the data sit far from the origin; the uncentred and centred
products are recovered exactly in float64:

.. math::

    X^\top Y = S + s_x^\top k_y + k_x^\top s_y + n\,k_x^\top k_y,\qquad
    (X - \mu_x)^\top (Y - \mu_y) = S - n\,\bar s_x^\top \bar s_y,

with :math:`k` the shifts, :math:`S = \sum (x - k_x)^\top (y - k_y)`, :math:`s` the sums of the shifted rows and
:math:`\bar s = s/n`. With ``precision="auto"`` float32 (or half) inputs use float32 chunk GEMMs whose results
are summed into float64 accumulators (the fast path: one float32 GEMM per chunk, the rounding error of a chunk
product does not grow with ``n``); float64 inputs use float64 GEMMs. ``precision="float64"`` upcasts every
chunk first.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .._checks import FLOAT_DTYPES, check_choice

PRECISIONS = ("auto", "float64")

#: Default number of matrix entries per chunk (rows = this // width): 4 Mi entries, 16 MiB in float32.
DEFAULT_CHUNK_ENTRIES = 1 << 22


@dataclass
class PairedMoments:
    r"""First and second moments of paired rows, in float64 (see the module documentation for the formulas).

    Attributes:
        n: number of rows seen.
        shift_x, shift_y: the shifts :math:`k_x, k_y` (mean of the first chunk).
        sum_x, sum_y: column sums of the shifted rows.
        cross_shifted: :math:`\sum (x - k_x)^\top (y - k_y)` (p×q).
        gram_x_shifted, gram_y_shifted: the shifted Grams, or ``None`` when not requested.
        dtype: the floating dtype of the inputs (result maps use it).
    """

    n: int
    shift_x: torch.Tensor
    shift_y: torch.Tensor
    sum_x: torch.Tensor
    sum_y: torch.Tensor
    cross_shifted: torch.Tensor
    gram_x_shifted: torch.Tensor | None = None
    gram_y_shifted: torch.Tensor | None = None
    dtype: torch.dtype = torch.float64
    info: dict = field(default_factory=dict)
    has_sums: bool = True

    @property
    def in_features(self) -> int:
        return int(self.shift_x.shape[0])

    @property
    def out_features(self) -> int:
        return int(self.shift_y.shape[0])

    @property
    def device(self) -> torch.device:
        return self.cross_shifted.device

    def _need_sums(self) -> None:
        if not self.has_sums:
            raise RuntimeError("the column sums were not accumulated (means=False); accumulate with means=True")

    def mean_x(self) -> torch.Tensor:
        """Column means of X (float64)."""
        self._need_sums()
        return self.shift_x + self.sum_x / self.n

    def mean_y(self) -> torch.Tensor:
        """Column means of Y (float64)."""
        self._need_sums()
        return self.shift_y + self.sum_y / self.n

    def cross(self, center: bool = False) -> torch.Tensor:
        r""":math:`X^\top Y` (``center=False``) or :math:`(X-\mu_x)^\top(Y-\mu_y)` (``center=True``), p×q."""
        if center:
            self._need_sums()
            return self.cross_shifted - torch.outer(self.sum_x, self.sum_y) / self.n
        return (self.cross_shifted + torch.outer(self.sum_x, self.shift_y) + torch.outer(self.shift_x, self.sum_y)
                + self.n * torch.outer(self.shift_x, self.shift_y))

    def _gram(self, g: torch.Tensor | None, s: torch.Tensor, k: torch.Tensor, center: bool, name: str):
        if g is None:
            raise RuntimeError(f"the Gram of {name} was not accumulated; pass second_moments including {name!r}")
        if center:
            self._need_sums()
            return g - torch.outer(s, s) / self.n
        sk = torch.outer(s, k)
        return g + sk + sk.mT + self.n * torch.outer(k, k)

    def gram_x(self, center: bool = False) -> torch.Tensor:
        r""":math:`X^\top X` or the centred scatter :math:`(X-\mu_x)^\top(X-\mu_x)` (p×p)."""
        return self._gram(self.gram_x_shifted, self.sum_x, self.shift_x, center, "x")

    def gram_y(self, center: bool = False) -> torch.Tensor:
        r""":math:`Y^\top Y` or the centred scatter (q×q)."""
        return self._gram(self.gram_y_shifted, self.sum_y, self.shift_y, center, "y")

    def sq_norm_x(self, center: bool = False) -> torch.Tensor:
        r""":math:`\lVert X\rVert_F^2` (or of the centred X): the trace of the Gram (needs ``"x"`` accumulated)."""
        return torch.trace(self.gram_x(center))

    def sq_norm_y(self, center: bool = False) -> torch.Tensor:
        r""":math:`\lVert Y\rVert_F^2` (or of the centred Y): the trace of the Gram (needs ``"y"`` accumulated)."""
        return torch.trace(self.gram_y(center))


def _is_array(x: Any) -> bool:
    return isinstance(x, (torch.Tensor, np.ndarray))


def _chunk_tensor(x: Any, name: str, where: str, device) -> torch.Tensor:
    """A chunk as a 2-D floating tensor on ``device`` (no finiteness check here: see the sums)."""
    if isinstance(x, torch.Tensor):
        t = x
    elif isinstance(x, np.ndarray):
        if x.dtype.kind != "f":
            raise TypeError(f"{name}{where} must hold floating-point numbers, got NumPy dtype {x.dtype}")
        if not (x.flags.c_contiguous and x.flags.writeable):
            x = np.array(x, order="C")  # one chunk copied (memory maps are read-only)
        t = torch.from_numpy(x)
    else:
        raise TypeError(f"{name}{where} must be a torch.Tensor or a NumPy array, got {type(x).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}{where} must have a floating dtype (float32 or float64), got {t.dtype}")
    if t.ndim != 2:
        raise ValueError(f"{name}{where} must be 2-dimensional (rows are samples), got shape {tuple(t.shape)}")
    return t if device is None else t.to(device)


def _array_chunks(X: Any, Y: Any, chunk_size: int | None):
    """Row slices of two in-memory or memory-mapped arrays (validated once here)."""
    for a, name in ((X, "X"), (Y, "Y")):
        if not _is_array(a):
            raise TypeError(f"{name} must be a torch.Tensor or a NumPy array (or pass an iterable of (X, Y) "
                            f"chunks as X with Y=None), got {type(a).__name__}")
        if isinstance(a, np.ndarray) and a.dtype.kind != "f":
            raise TypeError(f"{name} must hold floating-point numbers, got NumPy dtype {a.dtype}")
        if isinstance(a, torch.Tensor) and a.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must have a floating dtype (float32 or float64), got {a.dtype}")
        if a.ndim != 2:
            raise ValueError(f"{name} must be 2-dimensional (rows are samples), got shape {tuple(a.shape)}")
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X and Y must have the same number of rows (paired samples), got {X.shape[0]} and "
                         f"{Y.shape[0]}")
    n = X.shape[0]
    if chunk_size is None:
        chunk_size = max(256, DEFAULT_CHUNK_ENTRIES // max(1, X.shape[1], Y.shape[1]))
    for start in range(0, n, chunk_size):
        yield X[start:start + chunk_size], Y[start:start + chunk_size]


def accumulate_moments(X: Any, Y: Any = None, *, second_moments: Iterable[str] = ("x",), means: bool = True,
                       chunk_size: int | None = None, precision: str = "auto",
                       device: torch.device | str | None = None) -> PairedMoments:
    r"""One pass over paired rows; returns their :class:`PairedMoments` (float64).

    Args:
        X: an array (NumPy, memory-mapped NumPy, or torch on any device) of shape (n, p) with ``Y`` the
            paired (n, q) array; or, with ``Y=None``, an iterable of ``(X_chunk, Y_chunk)`` pairs (or an
            already computed :class:`PairedMoments`, returned unchanged).
        second_moments: which Grams to accumulate besides :math:`X^\top Y`: any of ``"x"``, ``"y"``.
        means: accumulate the column sums (default). With ``means=False`` and data that need no shift, the
            only per-chunk work is the GEMM (the fast path of the uncentred kinds); :meth:`PairedMoments.mean_x`
            is then unavailable.
        chunk_size: rows per chunk for arrays (default: about 4 Mi entries per chunk).
        precision: ``"auto"`` (float32 chunk GEMMs summed in float64 for float32 inputs) or ``"float64"``.
        device: where to compute (default: the device of the first chunk).

    Raises ``TypeError`` for non-floating data and ``ValueError`` for NaN/Inf, row-count mismatches and
    chunks whose widths disagree (naming the chunk). Finiteness is read off the float64 column sums, which
    every NaN or Inf poisons, so no separate pass over the data is made.

    Example:
        >>> import numpy as np
        >>> X = np.arange(12.0).reshape(6, 2); Y = X[:, ::-1].copy()
        >>> m = accumulate_moments(X, Y)
        >>> bool(np.allclose(m.cross().numpy(), X.T @ Y))
        True
    """
    if isinstance(X, PairedMoments):
        return X
    check_choice(precision, "precision", PRECISIONS)
    need = set(second_moments)
    if not need <= {"x", "y"}:
        raise ValueError(f"second_moments must contain only 'x' and 'y', got {sorted(need)}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer))
                                   or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if Y is not None:
        chunks = _array_chunks(X, Y, None if chunk_size is None else int(chunk_size))
        stream = False
    else:
        if _is_array(X):
            raise TypeError("Y is missing: pass fit(X, Y) with paired arrays, or X as an iterable of "
                            "(X_chunk, Y_chunk) pairs")
        if not isinstance(X, Iterable):
            raise TypeError(f"X must be an array or an iterable of (X_chunk, Y_chunk) pairs, got {type(X).__name__}")
        chunks = iter(X)
        stream = True

    acc = None
    for index, pair in enumerate(chunks):
        where = f" (chunk {index})" if stream else ""
        if stream:
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise TypeError(f"chunk {index} must be a pair (X_chunk, Y_chunk), got {type(pair).__name__}")
        xc, yc = pair
        xc = _chunk_tensor(xc, "X", where, device if acc is None else acc["device"])
        yc = _chunk_tensor(yc, "Y", where, xc.device)
        if xc.shape[0] != yc.shape[0]:
            raise ValueError(f"X and Y{where} must have the same number of rows, got {xc.shape[0]} and "
                             f"{yc.shape[0]}")
        if acc is None:
            acc = _start(xc, yc, need, precision, where)
            acc["sums"] = means or any(acc["shifted"])
        elif xc.shape[1] != acc["p"] or yc.shape[1] != acc["q"]:
            raise ValueError(f"chunk {index} has widths X: {xc.shape[1]}, Y: {yc.shape[1]} but chunk 0 had "
                             f"X: {acc['p']}, Y: {acc['q']}; every chunk must have the same number of columns")
        if xc.shape[0]:
            _add(acc, xc, yc, where)
    if acc is None or acc["n"] == 0:
        raise ValueError("no rows: X and Y must contain at least one paired row")
    return PairedMoments(n=acc["n"], shift_x=acc["kx"], shift_y=acc["ky"], sum_x=acc["sx"], sum_y=acc["sy"],
                         cross_shifted=acc["sxy"], gram_x_shifted=acc.get("gxx"),
                         gram_y_shifted=acc.get("gyy"), dtype=acc["dtype"],
                         info={"chunks": acc["chunks"], "gemm_dtype": acc["work"], "shifted": acc["shifted"]},
                         has_sums=acc["sums"])


def _needs_shift(chunk64: torch.Tensor, mean: torch.Tensor) -> bool:
    """Shift when the mean dominates the spread (||mean||^2 > total variance / 4): then the uncentred
    products would cancel; otherwise the shift buys nothing and costs a pass over every chunk."""
    if chunk64.shape[0] < 2:
        return True
    var = float(((chunk64 - mean) ** 2).sum()) / chunk64.shape[0]
    return float(mean.dot(mean)) > 0.25 * var


def _start(xc: torch.Tensor, yc: torch.Tensor, need: set, precision: str, where: str) -> dict:
    dev = xc.device
    dtype = torch.promote_types(xc.dtype, yc.dtype)
    work = torch.float64 if (precision == "float64" or dtype == torch.float64) else torch.float32
    p, q = xc.shape[1], yc.shape[1]
    f64 = dict(dtype=torch.float64, device=dev)
    shifts = []
    for c, name, width in ((xc, "X", p), (yc, "Y", q)):
        k = torch.zeros(width, **f64)
        if c.shape[0]:
            c64 = c.to(torch.float64)
            mean = c64.mean(0)
            if not bool(torch.isfinite(mean).all()):
                raise ValueError(f"{name}{where} contains NaN or Inf values")
            if _needs_shift(c64, mean):
                k = mean
        shifts.append(k)
    kx, ky = shifts
    acc = {"device": dev, "dtype": dtype, "work": work, "p": p, "q": q, "n": 0, "chunks": 0,
           "kx": kx, "ky": ky, "kxw": kx.to(work) if bool(kx.any()) else None,
           "kyw": ky.to(work) if bool(ky.any()) else None,
           "sx": torch.zeros(p, **f64), "sy": torch.zeros(q, **f64), "sxy": torch.zeros(p, q, **f64), "buf": {}}
    acc["shifted"] = (acc["kxw"] is not None, acc["kyw"] is not None)
    if "x" in need:
        acc["gxx"] = torch.zeros(p, p, **f64)
    if "y" in need:
        acc["gyy"] = torch.zeros(q, q, **f64)
    return acc


def _shifted(acc: dict, c: torch.Tensor, key: str) -> torch.Tensor:
    """The chunk in the working dtype minus its shift, in a reused buffer (no copy when there is no shift)."""
    c = c.to(acc["work"])
    k = acc[key]
    if k is None:
        return c
    buf = acc["buf"].get(key)
    if buf is None or buf.shape[0] < c.shape[0] or buf.device != c.device:
        buf = acc["buf"][key] = torch.empty_like(c, memory_format=torch.contiguous_format)
    out = buf[:c.shape[0]]
    return torch.sub(c, k, out=out)


def _add(acc: dict, xc: torch.Tensor, yc: torch.Tensor, where: str) -> None:
    x = _shifted(acc, xc, "kxw")
    y = _shifted(acc, yc, "kyw")
    xy = x.mT @ y
    # every NaN/Inf poisons its column sum (or, without sums, its row/column of the product): one small
    # check per chunk instead of a separate pass over the data
    checks = [(xy, "X or Y")]
    if acc["sums"]:
        sx = x.sum(0)  # cascade summation in the working dtype, accumulated across chunks in float64
        sy = y.sum(0)
        checks = [(sx, "X"), (sy, "Y")]
        acc["sx"].add_(sx)
        acc["sy"].add_(sy)
    for s, name in checks:
        if not bool(torch.isfinite(s.sum())):  # one scalar: NaN/Inf survive the sum
            if name == "X or Y":  # failure path only: find the culprit
                name = "Y" if bool(torch.isfinite(xc).all()) else "X"
            raise ValueError(f"{name}{where} contains NaN or Inf values")
    acc["sxy"].add_(xy)  # float32 product summed into the float64 accumulator (no temporary)
    if "gxx" in acc:
        acc["gxx"].add_(x.mT @ x)
    if "gyy" in acc:
        acc["gyy"].add_(y.mT @ y)
    acc["n"] += int(xc.shape[0])
    acc["chunks"] += 1
