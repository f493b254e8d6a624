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

Scale. Finite data of any magnitude give correct moments: a chunk whose float32 products overflow (entries
near 1e20 and beyond) or may have lost terms to underflow (near 1e-20 and below) is formed again from the
chunk times a power of two and the scale undone in float64 (exact; details at ``_RANGE`` in the source and in
``docs/math.md`` §15). ``info["scaled_chunks"]`` counts such chunks; ordinary magnitudes never
take that path. A NaN/Inf error always points at a NaN/Inf in the data.

Combining. Moments of disjoint rows merge exactly (:meth:`PairedMoments.merge`, ``a + b``, ``sum(parts)``), are
saved and loaded in a ``weights_only``-safe file (:meth:`PairedMoments.save`), and are summed over the
processes of a :mod:`torch.distributed` group on request (``group=``/``distributed=True``, see
:mod:`relaxedortho.closed_form.distributed`).
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .._checks import FLOAT_DTYPES, check_choice, check_device, check_int

PRECISIONS = ("auto", "float64")

#: Default number of matrix entries per chunk (rows = this // width): 4 Mi entries, 16 MiB in float32.
DEFAULT_CHUNK_ENTRIES = 1 << 22


@dataclass
class PairedMoments:
    r"""First and second moments of paired rows, in float64 (see the module documentation for the formulas).

    Moments of disjoint row sets combine exactly: ``a.merge(b)``, ``a + b`` and ``sum(list_of_moments)`` give
    the moments of the union (:meth:`merge`); :meth:`save` and :meth:`load` keep them in a file that
    ``torch.load(weights_only=True)`` reads, so shards accumulated by other processes or jobs can be merged
    later.

    Attributes:
        n: number of rows seen.
        shift_x, shift_y: the shifts :math:`k_x, k_y` (the mean of the first chunk, or of the union after a
            merge; 0 for data that need no shift).
        sum_x, sum_y: column sums of the shifted rows.
        cross_shifted: :math:`\sum (x - k_x)^\top (y - k_y)` (p×q).
        gram_x_shifted, gram_y_shifted: the shifted Grams, or ``None`` when not requested.
        dtype: the floating dtype of the inputs (result maps use it).
        info: diagnostics: ``chunks``, ``gemm_dtype`` (the dtype of the chunk products), ``shifted``,
            ``scaled_chunks`` (chunks whose magnitude needed the scaled path), ``parts`` (after merges).
        has_sums: whether the column sums are known (``means=False`` may drop them; then only the
            uncentred products are available).
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

    def merge(self, other: "PairedMoments") -> "PairedMoments":
        r"""The moments of the rows of ``self`` and ``other`` together (a new object; both stay unchanged).

        Exact in float64 whatever the two shifts: each side is moved to a common shift (the mean of the
        union, or the shift both share) and the two are added — the pairwise update of Chan, Golub & LeVeque
        (``docs/math.md`` §15; formulas in :mod:`relaxedortho.closed_form.pairwise_update`).
        The result equals the moments of all rows accumulated in one pass to float64 rounding, in any order
        and grouping (commutative and associative up to rounding). ``a + b`` and ``sum([a, b, ...])`` call it.

        - Widths must agree (``ValueError`` otherwise).
        - A Gram is kept when both sides hold it (the intersection); asking the result for a Gram only one side
          had raises the usual "was not accumulated" error.
        - Column sums: when one side has none (``means=False`` on data that needed no shift), the result has
          none either and holds the exact uncentred products; :meth:`mean_x` then raises.
        - The result lives on ``self``'s device; ``dtype`` is the promotion of both input dtypes and
          ``info["gemm_dtype"]`` the less precise of the two.

        Example:
            >>> import torch
            >>> X = torch.randn(10, 3, dtype=torch.float64) + 100; Y = torch.randn(10, 2, dtype=torch.float64)
            >>> a, b = accumulate_moments(X[:4], Y[:4]), accumulate_moments(X[4:], Y[4:])
            >>> whole = accumulate_moments(X, Y)
            >>> bool(torch.allclose((a + b).cross(center=True), whole.cross(center=True), rtol=1e-12, atol=1e-12))
            True
        """
        from .pairwise_update import merge_moments

        return merge_moments(self, other)

    def __add__(self, other: Any) -> "PairedMoments":
        if not isinstance(other, PairedMoments):
            return NotImplemented
        return self.merge(other)

    def __radd__(self, other: Any) -> "PairedMoments":
        if isinstance(other, int) and not isinstance(other, bool) and other == 0:
            return self  # the start value of sum()
        return NotImplemented

    def save(self, path: Any) -> None:
        """Write the moments to ``path`` in a ``weights_only``-safe format
        (:func:`~relaxedortho.closed_form.moments_file.save_moments`)."""
        from .moments_file import save_moments

        save_moments(self, path)

    @classmethod
    def load(cls, path: Any, device: torch.device | str | None = None) -> "PairedMoments":
        """Read moments written by :meth:`save` onto ``device`` (default: the CPU)
        (:func:`~relaxedortho.closed_form.moments_file.load_moments`)."""
        from .moments_file import load_moments

        return load_moments(path, device)


def check_moments(m: Any, name: str = "m") -> PairedMoments:
    """``m`` when it is a :class:`PairedMoments`, else a one-line :class:`TypeError` (the solvers take moments,
    not data)."""
    if not isinstance(m, PairedMoments):
        raise TypeError(f"{name} must be a PairedMoments (from accumulate_moments), got {type(m).__name__}; "
                        "to fit from data use fit_closed_form")
    return m


def _is_array(x: Any) -> bool:
    return isinstance(x, (torch.Tensor, np.ndarray))


def _chunk_tensor(x: Any, name: str, where: str, device) -> torch.Tensor:
    """A chunk as a 2-D floating tensor on ``device`` (no finiteness check here: see the chunk products)."""
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
                       device: torch.device | str | None = None, group: Any = None,
                       distributed: bool = False) -> PairedMoments:
    r"""One pass over paired rows; returns their :class:`PairedMoments` (float64).

    Args:
        X: an array (NumPy, memory-mapped NumPy, or torch on any device) of shape (n, p) with ``Y`` the
            paired (n, q) array; or, with ``Y=None``, an iterable of ``(X_chunk, Y_chunk)`` pairs (or an
            already computed :class:`PairedMoments`, returned unchanged; with ``group``/``distributed``, this
            process's moments, summed over the group).
        second_moments: which Grams to accumulate besides :math:`X^\top Y`: any of ``"x"``, ``"y"``.
        means: accumulate the column sums (default). With ``means=False`` and data that need no shift, the
            only per-chunk work is the GEMM (the fast path of the uncentred kinds); :meth:`PairedMoments.mean_x`
            is then unavailable.
        chunk_size: rows per chunk for arrays (default: about 4 Mi entries per chunk).
        precision: ``"auto"`` (float32 chunk GEMMs summed in float64 for float32 inputs) or ``"float64"``.
        device: where to compute (default: the device of the first chunk).
        group: a :mod:`torch.distributed` process group: ``X, Y`` (data or moments) are this process's shard,
            and every process of the group receives the moments of all shards (see
            :func:`~relaxedortho.closed_form.distributed.reduce_moments`). Every process of the group must
            make the same call; a process may hold no rows.
        distributed: ``True``: the same with the default process group. Never implied: a closed form called on
            one process only must not wait for the others.

    Raises ``TypeError`` for non-floating data and ``ValueError`` for NaN/Inf, row-count mismatches and
    chunks whose widths disagree (naming the chunk). Finiteness is read off the chunk products and sums,
    which every NaN or Inf poisons, so no separate pass over the data is made. Finite data of any magnitude
    are accumulated correctly (see the module documentation, "Scale"); float64 inputs whose moments exceed
    the range of float64 (entries beyond about 1e150 or below 1e-150) raise a ``ValueError`` that says so.

    Example:
        >>> import numpy as np
        >>> X = np.arange(12.0).reshape(6, 2); Y = X[:, ::-1].copy()
        >>> m = accumulate_moments(X, Y)
        >>> bool(np.allclose(m.cross().numpy(), X.T @ Y))
        True
    """
    if not isinstance(distributed, bool):
        raise TypeError(f"distributed must be True or False, got {distributed!r}")
    if device is not None:
        device = check_device(device)
    if group is not None or distributed:
        from .distributed import check_process_group, reduce_moments

        check_process_group(group)
        local, error, widths, need = None, None, None, ()
        try:
            need = _check_second_moments(second_moments)
            if isinstance(X, PairedMoments):
                local = X
            else:
                if Y is not None and _is_array(X) and _is_array(Y):
                    widths = (int(X.shape[1]), int(Y.shape[1])) if X.ndim == 2 and Y.ndim == 2 else None
                local = _accumulate(X, Y, need, means, chunk_size, precision, device)
        except Exception as exc:  # noqa: BLE001 - re-raised by reduce_moments once every process knows
            error = exc
        return reduce_moments(local, need=need, widths=widths, device=device, group=group, error=error)
    if isinstance(X, PairedMoments):
        return X
    m = _accumulate(X, Y, _check_second_moments(second_moments), means, chunk_size, precision, device)
    if m is None:
        raise ValueError("no rows: X and Y must contain at least one paired row")
    return m


def _check_second_moments(second_moments: Iterable[str]) -> frozenset:
    if isinstance(second_moments, str):
        second_moments = (second_moments,)
    need = frozenset(second_moments)
    if not need <= {"x", "y"}:
        raise ValueError(f"second_moments must contain only 'x' and 'y', got {sorted(need)}")
    return need


def _accumulate(X: Any, Y: Any, need: frozenset, means: bool, chunk_size: Any, precision: str,
                device: Any) -> PairedMoments | None:
    """The one pass of :func:`accumulate_moments` on this process's data (``None`` when there are no rows)."""
    check_choice(precision, "precision", PRECISIONS)
    chunk_size = check_int(chunk_size, "chunk_size", none_means="one chunk per array")
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
        return None
    _check_range(acc, final=True)
    return PairedMoments(n=acc["n"], shift_x=acc["kx"], shift_y=acc["ky"], sum_x=acc["sx"], sum_y=acc["sy"],
                         cross_shifted=acc["sxy"], gram_x_shifted=acc.get("gxx"),
                         gram_y_shifted=acc.get("gyy"), dtype=acc["dtype"],
                         info={"chunks": acc["chunks"], "gemm_dtype": acc["work"], "shifted": acc["shifted"],
                               "scaled_chunks": acc["scaled"], "parts": 1},
                         has_sums=acc["sums"])


# ---------------------------------------------------------------------------------------------------------
# Scale. A chunk product is formed in the working dtype; float32 overflows once |x||y|·rows passes 3.4e38
# and loses terms to underflow (subnormals, or zero under flush-to-zero) once |x||y| falls below 1.2e-38.
# The fast path forms the products as they are and reads two facts off results it computes anyway: every
# entry finite, and the largest entry of every product at least LOW. Below LOW a result might have lost
# terms to underflow; its absolute underflow error is at most 2·rows·(smallest normal), a relative 2^-40 of
# LOW at most. A chunk that fails either test is checked against its max-abs (a NaN/Inf there is the data's,
# and reported as such); if a side's max-abs lies outside [2^-E, 2^E], or a result overflowed, the products
# are formed again from the chunk times 2^-e (e the binary exponent of that side's max-abs, so |entries| < 1)
# and the scale is undone in the float64 accumulators. Scaling by a power of two is exact (no rounding) and
# commutes with every rounding of the GEMM, so a chunk scaled into range keeps the rounding errors it has at
# magnitude 1 (docs/math.md §15).
# ---------------------------------------------------------------------------------------------------------

#: Per working dtype: (E, LOW) of the scale check above.
_RANGE = {torch.float32: (40, 2.0 ** -60), torch.float64: (400, 2.0 ** -600)}
#: Largest binary exponent applied in one multiplication (2^±step is a normal number of the dtype).
_STEP = {torch.float32: 100, torch.float64: 1000}
_INF = float("inf")
#: float64 moments whose largest entry is below 2^_TINY (1e-289) come close to the subnormals (2^-1022).
_TINY = -960


def _ldexp_(t: torch.Tensor, e: int) -> torch.Tensor:
    """``t *= 2**e`` in place, exactly unless the result leaves the dtype's range, in steps whose factor is
    representable in ``t``'s dtype (``2.0 ** 149`` is Inf in float32)."""
    step = _STEP[t.dtype]
    while e:
        s = max(-step, min(step, e))
        t.mul_(2.0 ** s)
        e -= s
    return t


def _exponent(top: float) -> int:
    """The binary exponent e of a max-abs (``top`` in [2^(e-1), 2^e)); 0 for 0."""
    return math.frexp(top)[1] if top > 0 else 0


def _max_abs(t: torch.Tensor) -> torch.Tensor:
    """max |t| as a 0-d tensor (NaN when t holds a NaN)."""
    return torch.linalg.vector_norm(t, _INF) if t.numel() else t.new_zeros(())


def _needs_shift(chunk64: torch.Tensor, mean: torch.Tensor) -> bool:
    """Shift when the mean dominates the spread (||mean||^2 > total variance / 4): then the uncentred
    products would cancel; otherwise the shift buys nothing and costs a pass over every chunk."""
    if chunk64.shape[0] < 2:
        return True
    var = float(((chunk64 - mean) ** 2).sum()) / chunk64.shape[0]
    return float(mean.dot(mean)) > 0.25 * var


def _start(xc: torch.Tensor, yc: torch.Tensor, need: frozenset, precision: str, where: str) -> dict:
    dev = xc.device
    dtype = torch.promote_types(xc.dtype, yc.dtype)
    work = torch.float64 if (precision == "float64" or dtype == torch.float64) else torch.float32
    p, q = xc.shape[1], yc.shape[1]
    f64 = dict(dtype=torch.float64, device=dev)
    shifts = []
    for c, name, width in ((xc, "X", p), (yc, "Y", q)):
        k = torch.zeros(width, **f64)
        if c.shape[0]:
            top = float(_max_abs(c))
            if not math.isfinite(top):
                raise ValueError(f"{name}{where} contains NaN or Inf values")
            e = _exponent(top)  # the mean and spread of the first chunk scaled to |entries| < 1: no overflow
            c64 = _ldexp_(c.to(torch.float64, copy=True), -e)
            mean = c64.mean(0)
            if _needs_shift(c64, mean):
                k = _ldexp_(mean, e)
        shifts.append(k)
    kx, ky = shifts
    acc = {"device": dev, "dtype": dtype, "work": work, "p": p, "q": q, "n": 0, "chunks": 0, "scaled": 0,
           "kx": kx, "ky": ky, "kxw": kx.to(work) if bool(kx.any()) else None,
           "kyw": ky.to(work) if bool(ky.any()) else None, "top": [0.0, 0.0], "tiny": False,
           "sx": torch.zeros(p, **f64), "sy": torch.zeros(q, **f64), "sxy": torch.zeros(p, q, **f64), "buf": {}}
    acc["shifted"] = (acc["kxw"] is not None, acc["kyw"] is not None)
    acc["ktop"] = [float(_max_abs(k)) if k is not None else 0.0 for k in (acc["kxw"], acc["kyw"])]
    if "x" in need:
        acc["gxx"] = torch.zeros(p, p, **f64)
    if "y" in need:
        acc["gyy"] = torch.zeros(q, q, **f64)
    return acc


def _centred(acc: dict, c: torch.Tensor, key: str, e: int) -> torch.Tensor:
    """The chunk (working dtype) minus its shift, times 2^-e, in a reused buffer (the chunk itself when there
    is nothing to do)."""
    k = acc[key]
    if k is None and e == 0:
        return c
    buf = acc["buf"].get(key)
    if buf is None or buf.shape[0] < c.shape[0] or buf.device != c.device:
        buf = acc["buf"][key] = torch.empty_like(c, memory_format=torch.contiguous_format)
    out = buf[:c.shape[0]]
    if e == 0:
        return torch.sub(c, k, out=out)
    _ldexp_(out.copy_(c), -e)  # (c - k) 2^-e = c 2^-e - k 2^-e: no overflow in the subtraction
    if k is not None:
        out.sub_(_ldexp_(k.clone(), -e))
    return out


def _products(acc: dict, xw: torch.Tensor, yw: torch.Tensor, ex: int, ey: int) -> dict:
    """The chunk's products and sums, of the shifted chunk scaled by 2^-ex and 2^-ey, in the working dtype."""
    x = _centred(acc, xw, "kxw", ex)
    y = _centred(acc, yw, "kyw", ey)
    out = {"xy": x.mT @ y}
    if acc["sums"]:
        out["sx"] = x.sum(0)  # cascade summation in the working dtype, accumulated across chunks in float64
        out["sy"] = y.sum(0)
    if "gxx" in acc:
        out["gxx"] = x.mT @ x
    if "gyy" in acc:
        out["gyy"] = y.mT @ y
    return out


def _top_values(ts: list) -> list:
    """max |t| of each tensor (NaN for a NaN). CPU: NumPy's single-threaded pass; a p×q result is too small for
    OpenMP threads to pay off, and their start-up dominates on a loaded machine. Other devices: one
    synchronisation."""
    if all(t.device.type == "cpu" for t in ts):
        out = []
        for t in ts:
            a = t.detach().numpy()  # max and min propagate a NaN; no temporary
            out.append(max(float(a.max()), -float(a.min())) if a.size else 0.0)
        return out
    return torch.stack([_max_abs(t) for t in ts]).tolist()


def _trusted(res: dict, low: float) -> tuple[bool, bool]:
    """(every product finite with its largest entry >= low and every sum finite, everything finite)."""
    prods = [res[k] for k in ("xy", "gxx", "gyy") if k in res]
    sums = [res[k] for k in ("sx", "sy") if k in res]
    tops = _top_values(prods + sums)
    finite = all(v < _INF for v in tops)  # NaN fails too
    return finite and all(v >= low for v in tops[:len(prods)]), finite


def _add(acc: dict, xc: torch.Tensor, yc: torch.Tensor, where: str) -> None:
    xw, yw = xc.to(acc["work"]), yc.to(acc["work"])
    res = _products(acc, xw, yw, 0, 0)
    ex = ey = 0
    trusted, finite = _trusted(res, _RANGE[acc["work"]][1])
    if not trusted:  # rare: a NaN/Inf, an overflow, or a result small enough to have lost terms
        tops = [float(_max_abs(xw)), float(_max_abs(yw))]
        for top, name in zip(tops, "XY"):
            if not math.isfinite(top):
                raise ValueError(f"{name}{where} contains NaN or Inf values")
        acc["top"] = [max(a, b) for a, b in zip(acc["top"], tops)]
        ex, ey = (_exponent(max(t, k)) for t, k in zip(tops, acc["ktop"]))
        limit = _RANGE[acc["work"]][0]
        if finite and abs(ex) <= limit and abs(ey) <= limit:
            ex = ey = 0  # the data are in range: the small result is cancellation, not underflow
        else:
            res = _products(acc, xw, yw, ex, ey)
            acc["scaled"] += 1
    _scaled_add(acc["sxy"], res["xy"], ex + ey)
    if "sx" in res:
        _scaled_add(acc["sx"], res["sx"], ex)
        _scaled_add(acc["sy"], res["sy"], ey)
    if "gxx" in res:
        _scaled_add(acc["gxx"], res["gxx"], 2 * ex)
    if "gyy" in res:
        _scaled_add(acc["gyy"], res["gyy"], 2 * ey)
    if ex or ey:
        acc["tiny"] |= min(ex + ey, 2 * ex if "gxx" in res else 0, 2 * ey if "gyy" in res else 0) < _TINY
        _check_range(acc, final=False)
    acc["n"] += int(xc.shape[0])
    acc["chunks"] += 1


def _scaled_add(total: torch.Tensor, part: torch.Tensor, e: int) -> None:
    """``total += part * 2^e`` in float64 (exact scaling; ``alpha`` is applied in float64)."""
    if e == 0:
        total.add_(part)  # float32 product summed into the float64 accumulator (no temporary)
    elif abs(e) <= _STEP[torch.float64]:
        total.add_(part, alpha=2.0 ** e)
    else:  # float64 working dtype only: the factor itself is not a float64 number
        total.add_(_ldexp_(part.to(torch.float64), e))


def _check_range(acc: dict, final: bool) -> None:
    """Raise when float64 cannot hold the moments of finite data (float64 inputs beyond about 1e±150 only:
    the moments of float32 or half data always fit)."""
    if acc["work"] != torch.float64 or not (acc["scaled"] and (acc["tiny"] or not final)):
        return
    keys = [k for k in ("sxy", "gxx", "gyy") if k in acc]  # the second moments: the sums never underflow
    top = float(torch.stack([_max_abs(acc[k]) for k in keys]).max())
    tx, ty = acc["top"]
    if not math.isfinite(top):
        raise ValueError(f"the moments of X and Y overflow float64 (the data are finite, but max |X| = {tx:.3g} "
                         f"and max |Y| = {ty:.3g} give products beyond 1.8e308); divide X and Y by a constant")
    if final and acc["tiny"] and top < 2.0 ** _TINY:
        raise ValueError(f"the moments of X and Y underflow float64 (max |X| = {tx:.3g}, max |Y| = {ty:.3g} give "
                         f"products below 1e-289, near float64's subnormals); multiply X and Y by a constant")
