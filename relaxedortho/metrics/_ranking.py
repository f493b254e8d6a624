r"""The ranking engine behind every retrieval metric: input checks, scale-safe cosine similarity, pessimistic
tie-breaking and chunked CMC/AP counting (the conventions of :mod:`relaxedortho.metrics`)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any, Iterable

import numpy as np
import torch

from .._checks import as_float_tensor

#: Target number of similarity entries per chunk when ``chunk_size`` is not given.
_AUTO_CHUNK_ELEMENTS_CPU = 1 << 23
_AUTO_CHUNK_ELEMENTS_GPU = 1 << 26


# ----------------------------------------------------------------------------------------------- validation

def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    r"""The rows of ``x`` scaled to unit L2 norm without overflow or underflow (zero rows stay zero).

    :math:`\hat x = \tilde x/\lVert\tilde x\rVert_2` with :math:`\tilde x = x/\lVert x\rVert_\infty`: the entries of
    :math:`\tilde x` lie in [-1, 1] with one of modulus 1, so :math:`1 \le \lVert\tilde x\rVert_2 \le \sqrt d` and the
    sum of squares can neither overflow nor underflow (``torch.nn.functional.normalize`` squares ``x`` itself:
    it gives 0 for float32 rows of size 1e20 and rows of size ~1e-18 for rows of size 1e-30). The result is
    invariant to a positive scale of any row up to rounding, for every finite input (the scale-invariant
    equivalent of the LAPACK ``dnrm2`` scaling, Blue 1978).

    >>> _unit_rows(torch.tensor([[3e30, 4e30], [0.0, 0.0]]))
    tensor([[0.6000, 0.8000],
            [0.0000, 0.0000]])
    """
    scale = x.abs().amax(dim=-1, keepdim=True)
    x = x / torch.where(scale > 0, scale, torch.ones_like(scale))
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return x / torch.where(norm > 0, norm, torch.ones_like(norm))


def _as_labels(labels: Any, name: str, n: int, device: torch.device) -> Any:
    """1-D labels as a torch integer tensor, or a NumPy array of hashables (strings) to be coded later."""
    if isinstance(labels, torch.Tensor):
        if labels.is_floating_point() or labels.is_complex():
            raise TypeError(f"{name} must hold integer (or boolean) class labels, got dtype {labels.dtype}")
        t = labels
    else:
        arr = np.asarray(labels)
        if arr.dtype.kind in "iub":
            t = torch.from_numpy(np.ascontiguousarray(arr.astype(np.int64)))
        elif arr.dtype.kind in "USO":
            t = arr
        else:
            raise TypeError(f"{name} must hold integer or string class labels, got NumPy dtype {arr.dtype}")
    if t.ndim != 1:
        raise ValueError(f"{name} must be 1-dimensional, got shape {tuple(t.shape)}")
    if t.shape[0] != n:
        raise ValueError(f"{name} has {t.shape[0]} entries but there are {n} feature rows")
    return t


def _label_codes(ql: Any, gl: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Common integer codes 0..C-1 for query and gallery labels, on ``device``."""
    if isinstance(ql, torch.Tensor) and isinstance(gl, torch.Tensor):
        both = torch.cat([ql.to(device=device, dtype=torch.int64), gl.to(device=device, dtype=torch.int64)])
        _, inv = torch.unique(both, return_inverse=True)
    else:
        to_np = (lambda x: x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x)
        qa, ga = to_np(ql), to_np(gl)
        if qa.dtype.kind != ga.dtype.kind and "O" not in (qa.dtype.kind, ga.dtype.kind):
            qa, ga = qa.astype(object), ga.astype(object)
        try:
            _, inv_np = np.unique(np.concatenate([qa, ga]), return_inverse=True)
        except TypeError as exc:  # mixed types that do not sort
            raise TypeError("query_labels and gallery_labels must be of comparable types") from exc
        inv = torch.from_numpy(inv_np.reshape(-1).astype(np.int64)).to(device)
    n_q = ql.shape[0]
    return inv[:n_q], inv[n_q:]


def _parse_topk(topk: Any) -> tuple[int, ...]:
    if isinstance(topk, Integral) and not isinstance(topk, bool):
        ks = (topk,)
    elif isinstance(topk, Iterable) and not isinstance(topk, (str, bytes)):
        ks = tuple(topk)
    else:
        raise ValueError(f"topk must be a positive integer or a sequence of them, got {topk!r}")
    if not ks:
        raise ValueError("topk must contain at least one k")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, Integral) or k < 1:
            raise ValueError(f"topk entries must be positive integers, got {k!r}")
    return tuple(sorted({int(k) for k in ks}))


@dataclass
class _Problem:
    """Validated, normalised inputs and the per-class index of the gallery."""

    query: torch.Tensor
    gallery: torch.Tensor
    query_codes: torch.Tensor
    perm: torch.Tensor          # gallery indices sorted by class
    starts: torch.Tensor        # first position of each class in ``perm``
    counts: torch.Tensor        # gallery items per class
    valid: torch.Tensor         # indices of queries with >= 1 relevant item
    leave_one_out: bool
    chunk_size: int
    n_without_relevant: int = field(default=0)


def _prepare(query: Any, gallery: Any, query_labels: Any, gallery_labels: Any, leave_one_out: bool,
             chunk_size: int | None, max_k: int = 0) -> _Problem:
    q = as_float_tensor(query, "query", ndim=2)
    g = as_float_tensor(gallery, "gallery", ndim=2)
    if g.shape[0] == 0:
        raise ValueError("gallery is empty")
    if q.shape[0] == 0:
        raise ValueError("query is empty")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query and gallery must have the same feature dimension, got {q.shape[1]} and "
                         f"{g.shape[1]}")
    if q.device != g.device:
        raise ValueError(f"query and gallery must be on the same device, got {q.device} and {g.device}")
    if not isinstance(leave_one_out, (bool, np.bool_)):
        raise TypeError(f"leave_one_out must be a bool, got {type(leave_one_out).__name__}")
    n_q, n_g = q.shape[0], g.shape[0]
    if leave_one_out and n_q != n_g:
        raise ValueError(f"leave_one_out=True needs the query set to be the gallery (same length), got "
                         f"{n_q} queries and {n_g} gallery items")
    effective = n_g - int(bool(leave_one_out))
    if max_k > effective:
        raise ValueError(f"topk contains k={max_k}, larger than the gallery ({effective} items per query"
                         + (" with leave-one-out)" if leave_one_out else ")"))
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, Integral)
                                   or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    device = q.device
    ql = _as_labels(query_labels, "query_labels", n_q, device)
    gl = _as_labels(gallery_labels, "gallery_labels", n_g, device)

    dtype = torch.promote_types(q.dtype, g.dtype)
    if dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32
    q = _unit_rows(q.to(dtype))
    g = _unit_rows(g.to(dtype))

    qc, gc = _label_codes(ql, gl, device)
    n_classes = int(torch.cat([qc, gc]).max()) + 1
    counts = torch.bincount(gc, minlength=n_classes)
    perm = torch.argsort(gc, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    n_rel = counts[qc]
    if leave_one_out:
        n_rel = n_rel - (qc == gc).to(n_rel.dtype)
    valid = torch.nonzero(n_rel > 0).reshape(-1)
    n_without = n_q - int(valid.numel())
    if valid.numel() == 0:
        raise ValueError("no query has a relevant gallery item (no shared label"
                         + (" other than the query itself" if leave_one_out else "") + ")")
    if chunk_size is None:
        budget = _AUTO_CHUNK_ELEMENTS_GPU if device.type == "cuda" else _AUTO_CHUNK_ELEMENTS_CPU
        chunk_size = max(1, budget // n_g)
    return _Problem(q, g, qc, perm, starts, counts, valid, bool(leave_one_out), int(chunk_size), n_without)


# --------------------------------------------------------------------------------------------------- engine

#: Force the batched (``True``) or the row-wise filtered (``False``) counting of :func:`_count_at_least`;
#: ``None`` picks batched on accelerators and row-wise on CPU (used by the tests to cover both paths).
_BATCHED_COUNT: bool | None = None


def _count_at_least(sim: torch.Tensor, a: torch.Tensor, *, batched: bool) -> torch.Tensor:
    r"""``out[r, i] = #{j : sim[r, j] >= a[r, i]}`` for ``a`` sorted ascending per row (``+inf`` pads give 0).

    Each similarity falls in bucket :math:`b(s) = \#\{i : a_i \le s\}`; the items with :math:`s \ge a_i`
    are those in buckets :math:`\ge i`, so a histogram of buckets and a reversed cumulative sum give all
    counts. The row-wise path (CPU) first drops the similarities below the row's smallest threshold, which
    never count, and searches only the rest: for good features that is a small head of the gallery.
    """
    c, width = a.shape
    if batched:
        bucket = torch.searchsorted(a, sim, right=True)
        flat = bucket + (torch.arange(c, device=sim.device) * (width + 1))[:, None]
        hist = torch.bincount(flat.reshape(-1), minlength=c * (width + 1)).view(c, width + 1)
    else:
        hist = torch.zeros(c, width + 1, dtype=torch.int64, device=sim.device)
        keep = sim >= a[:, :1]
        for r in range(c):
            v = sim[r][keep[r]]
            hist[r] = torch.bincount(torch.searchsorted(a[r], v, right=True), minlength=width + 1)
    return hist.flip(1).cumsum(1).flip(1)[:, 1:]


def _evaluate(p: _Problem, ks: tuple[int, ...], want_map: bool) -> tuple[dict[int, float] | None, float | None]:
    device, n_g = p.gallery.device, p.gallery.shape[0]
    acc_dtype = torch.float64 if device.type != "mps" else torch.float32
    hits = torch.zeros(len(ks), dtype=torch.int64, device=device)
    ap_sum = torch.zeros((), dtype=acc_dtype, device=device)
    k_tensor = torch.tensor(ks, dtype=torch.int64, device=device)
    gT = p.gallery.T
    for start in range(0, p.valid.numel(), p.chunk_size):
        rows = p.valid[start:start + p.chunk_size]
        c = rows.numel()
        sim = p.query[rows] @ gT                                        # (c, n_g)
        codes = p.query_codes[rows]
        cnt = p.counts[codes]
        width = int(cnt.max())
        ar = torch.arange(width, device=device)
        pos = (p.starts[codes][:, None] + ar).clamp_max(n_g - 1)
        gidx = p.perm[pos]                                              # relevant gallery indices (padded)
        inblock = ar < cnt[:, None]
        if p.leave_one_out:
            sim[torch.arange(c, device=device), rows] = -math.inf
            inblock &= gidx != rows[:, None]
        n_rel = inblock.sum(1)                                          # R >= 1 for every valid row
        rel_sim = sim.gather(1, gidx)
        if want_map:
            a = torch.where(inblock, rel_sim, math.inf).sort(dim=1).values       # ascending, +inf pads last
            n_all_ge = _count_at_least(sim, a, batched=_BATCHED_COUNT if _BATCHED_COUNT is not None
                                       else device.type != "cpu")
            n_rel_ge = n_rel[:, None] - torch.searchsorted(a, a, right=False)
            n_irr_ge = n_all_ge - n_rel_ge
            i = torch.arange(1, width + 1, device=device)
            t = (n_rel[:, None] + 1 - i).to(acc_dtype)                  # rank among relevant, descending
            use = i <= n_rel[:, None]
            terms = torch.where(use, t / (t + n_irr_ge.to(acc_dtype)), 0.0)
            ap_sum += (terms.sum(1) / n_rel.to(acc_dtype)).sum()
            irr_best = n_irr_ge.gather(1, (n_rel - 1)[:, None]).squeeze(1)
        else:
            best = torch.where(inblock, rel_sim, -math.inf).amax(1, keepdim=True)
            n_all = (sim >= best).sum(1)
            n_rel_best = ((rel_sim >= best) & inblock).sum(1)
            irr_best = n_all - n_rel_best
        if ks:
            hits += (irr_best[None, :] < k_tensor[:, None]).sum(1)
    n_eval = p.valid.numel()
    cmc_out = {k: float(h) / n_eval for k, h in zip(ks, hits.tolist())} if ks else None
    map_out = float(ap_sum) / n_eval if want_map else None
    return cmc_out, map_out
