r"""Metrics of (compatible) retrieval: CMC, mAP, compatibility matrices, AC/AM and backfilling curves.

Every retrieval metric ranks a labelled gallery for each labelled query by **cosine similarity** of the
L2-normalised features, :math:`s_{qg} = \langle \hat q, \hat g\rangle`, :math:`\hat x = x/\lVert x\rVert_2`
(a zero vector stays zero and has similarity 0 with everything). Each row is first divided by its largest
absolute entry, :math:`\hat x = \tilde x/\lVert\tilde x\rVert_2` with :math:`\tilde x = x/\lVert x\rVert_\infty`, so the
norm never overflows or underflows: every metric is invariant to a positive scale of any row, for every finite
input (float32 features of size 1e30 or 1e-30 rank exactly as at size 1). A gallery item is *relevant* to a query
when both carry the same label.

Conventions (stated once, used by every function here):

- **Leave-one-out.** With ``leave_one_out=True`` the query set *is* the gallery (same length required) and
  query :math:`i` never retrieves gallery item :math:`i`.
- **Queries without a relevant item** (their label is absent from the gallery, or with leave-one-out the
  only item of their class is themselves) are left out of every average; their number is reported in
  :class:`RetrievalReport` (``n_without_relevant``). If no query has a relevant item a ``ValueError`` is
  raised before any similarity is computed.
- **Ties are broken pessimistically**: among gallery items with exactly equal similarity, the non-relevant
  ones are ranked before the relevant ones. The result is therefore independent of the gallery's order,
  and a constant feature (all similarities equal) gets the worst score, never a lucky one. (Among tied
  relevant items the order does not change any metric.)
- **Chunked computation.** Queries are processed in chunks of ``chunk_size`` rows on the features' device;
  memory is :math:`O(\text{chunk} \times n_\text{gallery})`, so a :math:`10^5 \times 10^5` similarity
  matrix never materialises (besides it, one normalised copy of the features is made). No full sort is
  needed: CMC counts, per query, the non-relevant items scoring at least the best relevant one; AP buckets
  the similarities between the sorted relevant similarities (``searchsorted``), at most
  :math:`O(n_\text{gallery}\log R)` per query for :math:`R` relevant items; on CPU only the similarities
  above the worst relevant one are searched, so for good features mAP costs about as much as CMC.

Definitions (docs/math.md §7). With :math:`u_1 \ge \dots \ge u_R` the similarities of the :math:`R` relevant
items of a query and :math:`N(u)` the number of non-relevant items with similarity :math:`\ge u`, the
(pessimistic) rank of the :math:`t`-th relevant item is :math:`t + N(u_t)`, so

.. math::

    \text{CMC@}k = \frac{1}{|Q|}\sum_{q\in Q} \mathbb 1[1 + N(u_1) \le k], \qquad
    \text{AP} = \frac1R \sum_{k} P@k\,\mathrm{rel}(k) = \frac1R\sum_{t=1}^R \frac{t}{t + N(u_t)},
    \qquad \text{mAP} = \frac{1}{|Q|}\sum_{q\in Q}\text{AP}_q .

Sources: CMC and mAP as in person re-identification (Zheng et al., ICCV 2015); the compatibility criterion
from Shen et al., "Towards Backward-Compatible Representation Learning", CVPR 2020; AC and AM from Biondi
et al., "CoReS: Compatible Representations via Stationarity", TPAMI 2023; the evaluation protocol of
Ricci et al., arXiv 2509.16664 (2025).

>>> import torch
>>> q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
>>> g = torch.tensor([[1.0, 0.1], [0.0, 1.0], [1.0, 1.0]])
>>> cmc(q, g, [0, 1], [1, 1, 0], topk=(1, 2))
{1: 0.5, 2: 1.0}
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from ._checks import as_float_tensor, check_bool

__all__ = [
    "RetrievalReport", "retrieval_report", "cmc", "mean_average_precision",
    "compatibility_matrix", "compatibility_matrix_from_models", "empirical_compatibility",
    "average_compatibility", "average_multimodel_accuracy",
    "BackfillingCurve", "backfilling_order", "backfilling_curve",
]

#: Target number of similarity entries per chunk when ``chunk_size`` is not given.
_AUTO_CHUNK_ELEMENTS_CPU = 1 << 23
_AUTO_CHUNK_ELEMENTS_GPU = 1 << 26


@dataclass(frozen=True)
class RetrievalReport:
    """Result of :func:`retrieval_report`.

    ``cmc`` maps k to the top-k accuracy in [0, 1] (``None`` if not computed), ``map`` is the mean average
    precision (``None`` if not computed). Both average over the ``n_evaluated`` queries that have at least one
    relevant gallery item; ``n_without_relevant`` queries were left out.
    """

    cmc: dict[int, float] | None
    map: float | None
    n_queries: int
    n_without_relevant: int

    @property
    def n_evaluated(self) -> int:
        """Number of queries that entered the averages."""
        return self.n_queries - self.n_without_relevant


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


# ------------------------------------------------------------------------------------------------ retrieval

def retrieval_report(query: Any, gallery: Any, query_labels: Any, gallery_labels: Any, topk: Any = (1, 5),
                     leave_one_out: bool = False, *, chunk_size: int | None = None,
                     compute_map: bool = True) -> RetrievalReport:
    r"""CMC top-k and mAP in one pass over the gallery, with the count of queries left out.

    Parameters
    ----------
    query, gallery
        Features, ``(n_query, d)`` and ``(n_gallery, d)``, tensors or NumPy arrays (same device). Half
        precision is computed in float32; float64 stays float64.
    query_labels, gallery_labels
        1-D integer (or string) class labels.
    topk
        An int or iterable of ints; every k must not exceed the gallery size (minus one with leave-one-out).
        ``()`` computes no CMC.
    leave_one_out
        Query set = gallery: query :math:`i` does not retrieve gallery item :math:`i`.
    chunk_size
        Queries per chunk (memory :math:`O(\text{chunk} \times n_\text{gallery})`); ``None`` picks about
        :math:`2^{23}` (CPU) or :math:`2^{26}` (GPU) similarity entries per chunk. Results do not depend on it
        (up to the floating-point summation order of the matrix product).
    compute_map
        Also compute mAP (one ``searchsorted`` per chunk more).

    Notes
    -----
    See the module docstring for the formulas and the pessimistic tie rule.

    Examples
    --------
    >>> r = retrieval_report([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]], [[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]],
    ...                      [0, 0, 1], [0, 0, 1], topk=1, leave_one_out=True)
    >>> (r.cmc, r.map, r.n_evaluated, r.n_without_relevant)
    ({1: 1.0}, 1.0, 2, 1)
    """
    ks = _parse_topk(topk) if not (isinstance(topk, (tuple, list)) and len(topk) == 0) else ()
    compute_map = check_bool(compute_map, "compute_map")
    p = _prepare(query, gallery, query_labels, gallery_labels, leave_one_out, chunk_size, max(ks, default=0))
    cmc_out, map_out = _evaluate(p, ks, compute_map)
    return RetrievalReport(cmc_out, map_out, int(p.query.shape[0]), p.n_without_relevant)


def cmc(query: Any, gallery: Any, query_labels: Any, gallery_labels: Any, topk: Any = (1, 5),
        leave_one_out: bool = False, *, chunk_size: int | None = None,
        return_details: bool = False) -> dict[int, float] | RetrievalReport:
    r"""Cumulative matching characteristic: share of queries whose first relevant match ranks :math:`\le k`.

    .. math:: \text{CMC@}k = \frac{1}{|Q|}\sum_{q\in Q}\mathbb 1[\operatorname{rank}_q \le k],
              \quad \operatorname{rank}_q = 1 + \#\{g \text{ non-relevant}: s_{qg} \ge \max_{g' \text{ relevant}} s_{qg'}\}

    over the queries :math:`Q` with at least one relevant gallery item (ties pessimistic; Zheng et al. 2015;
    docs/math.md §7). Returns ``{k: accuracy}``; with ``return_details=True`` the :class:`RetrievalReport`
    (``map`` is ``None``), which also gives the number of queries left out. Arguments as in
    :func:`retrieval_report`.

    >>> cmc([[1.0, 0.0]], [[0.0, 1.0], [1.0, 0.0]], [3], [3, 4], topk=(1, 2))
    {1: 0.0, 2: 1.0}
    """
    ks = _parse_topk(topk)
    report = retrieval_report(query, gallery, query_labels, gallery_labels, ks, leave_one_out,
                              chunk_size=chunk_size, compute_map=False)
    return report if return_details else report.cmc


def mean_average_precision(query: Any, gallery: Any, query_labels: Any, gallery_labels: Any,
                           leave_one_out: bool = False, *, chunk_size: int | None = None,
                           return_details: bool = False) -> float | RetrievalReport:
    r"""Mean average precision over the queries with at least one relevant gallery item.

    .. math:: \text{AP}_q = \frac{1}{R_q}\sum_{k=1}^{n} P@k\,\mathrm{rel}(k)
              = \frac{1}{R_q}\sum_{t=1}^{R_q}\frac{t}{t + N_q(u_t)}

    with :math:`u_1 \ge \dots \ge u_{R_q}` the similarities of the relevant items and :math:`N_q(u)` the
    number of non-relevant items with similarity :math:`\ge u` (ties pessimistic; docs/math.md §7). Returns a float;
    with ``return_details=True`` the :class:`RetrievalReport` (``cmc`` is ``None``).

    >>> mean_average_precision([[1.0, 0.0]], [[0.0, 1.0], [1.0, 0.0], [1.0, 0.1]], [3], [3, 4, 3])
    0.5833333333333333
    """
    report = retrieval_report(query, gallery, query_labels, gallery_labels, (), leave_one_out,
                              chunk_size=chunk_size, compute_map=True)
    return report if return_details else report.map


# ------------------------------------------------------------------------------------------- compatibility

def _metric_function(metric: Any) -> Callable[..., float]:
    if callable(metric):
        return metric
    if isinstance(metric, str):
        m = metric.lower().replace("-", "").replace("_", "")
        if m == "map":
            return lambda q, g, ql, gl, loo, chunk: mean_average_precision(q, g, ql, gl, loo, chunk_size=chunk)
        if m.startswith("top") and m[3:].isdigit() and int(m[3:]) >= 1:
            k = int(m[3:])
            return lambda q, g, ql, gl, loo, chunk: cmc(q, g, ql, gl, (k,), loo, chunk_size=chunk)[k]
    raise ValueError(f"metric must be 'map', 'top<k>' (e.g. 'top1') or a callable, got {metric!r}")


def _call_metric(fn: Callable[..., float], metric: Any, q, g, ql, gl, loo: bool, chunk: int | None) -> float:
    if callable(metric):
        return float(fn(q, g, ql, gl, loo))
    return float(fn(q, g, ql, gl, loo, chunk))


def compatibility_matrix(query_features: Sequence[Any], gallery_features: Sequence[Any], query_labels: Any,
                         gallery_labels: Any, *, metric: Any = "top1", leave_one_out: bool = False,
                         chunk_size: int | None = None, lower_only: bool = False) -> np.ndarray:
    r"""Cross-model retrieval matrix :math:`M_{ij} = M(\phi_i^Q, \phi_j^G)` over :math:`T` model versions.

    Row :math:`i` is the model that embeds the queries, column :math:`j` the model that embedded the gallery
    (Shen et al. 2020; Biondi et al. 2023). The diagonal holds each model's self-test.

    Parameters
    ----------
    query_features, gallery_features
        Sequences of length :math:`T`: the query (gallery) features of version :math:`t`, all with the same
        rows. Versions whose feature dimensions differ cannot be compared: their entry is ``nan``.
    metric
        ``"top1"``, ``"top<k>"`` (CMC top-k), ``"map"``, or a callable
        ``f(query, gallery, query_labels, gallery_labels, leave_one_out) -> float``.
    lower_only
        Compute only :math:`i \ge j` (new queries against older galleries); the rest is ``nan``.

    Returns
    -------
    numpy.ndarray
        A ``(T, T)`` float64 array.

    Examples
    --------
    >>> import numpy as np
    >>> f = np.eye(3)
    >>> compatibility_matrix([f, f], [f, -f], [0, 1, 2], [0, 1, 2])
    array([[1., 0.],
           [1., 0.]])
    """
    fn = _metric_function(metric)
    T = len(query_features)
    if T == 0 or len(gallery_features) != T:
        raise ValueError(f"query_features and gallery_features must hold the same number (>= 1) of model "
                         f"versions, got {T} and {len(gallery_features)}")
    qs = [as_float_tensor(x, f"query_features[{t}]", ndim=2) for t, x in enumerate(query_features)]
    gs = [as_float_tensor(x, f"gallery_features[{t}]", ndim=2) for t, x in enumerate(gallery_features)]
    for name, xs in (("query_features", qs), ("gallery_features", gs)):
        if any(x.shape[0] != xs[0].shape[0] for x in xs):
            raise ValueError(f"every entry of {name} must have the same number of rows, got "
                             f"{[x.shape[0] for x in xs]}")
    M = np.full((T, T), np.nan)
    for i in range(T):
        for j in range(T):
            if (lower_only and i < j) or qs[i].shape[1] != gs[j].shape[1]:
                continue
            M[i, j] = _call_metric(fn, metric, qs[i], gs[j], query_labels, gallery_labels, leave_one_out,
                                   chunk_size)
    return M


def _embed(model: Callable[[Any], Any], inputs: Any, batch_size: int, name: str) -> torch.Tensor:
    n = len(inputs)
    parts = []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            out = model(inputs[start:start + batch_size])
            parts.append(as_float_tensor(out, name, ndim=2, finite=False).detach())
    if not parts:
        raise ValueError(f"{name}: no inputs to embed")
    return torch.cat(parts)


def compatibility_matrix_from_models(models: Sequence[Callable[[Any], Any]], query_inputs: Any,
                                     gallery_inputs: Any, query_labels: Any, gallery_labels: Any, *,
                                     metric: Any = "top1", leave_one_out: bool = False, batch_size: int = 1024,
                                     chunk_size: int | None = None, lower_only: bool = False) -> np.ndarray:
    r""":func:`compatibility_matrix` with the features computed by ``models[t](inputs[batch])``.

    Each model is a callable (e.g. a frozen backbone followed by its alignment map) evaluated under
    :func:`torch.no_grad` on slices of ``batch_size`` inputs; outputs must be ``(batch, d_t)`` float features.

    >>> import torch
    >>> x = torch.eye(3)
    >>> compatibility_matrix_from_models([lambda b: b, lambda b: 2 * b], x, x, [0, 1, 2], [0, 1, 2])
    array([[1., 1.],
           [1., 1.]])
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if len(models) == 0:
        raise ValueError("models must contain at least one model version")
    for t, model in enumerate(models):
        if not callable(model):
            raise TypeError(f"models[{t}] must be a callable (a module or function mapping inputs to features), "
                            f"got {type(model).__name__}")
    qf = [_embed(m, query_inputs, batch_size, f"models[{t}](query_inputs)") for t, m in enumerate(models)]
    gf = [_embed(m, gallery_inputs, batch_size, f"models[{t}](gallery_inputs)") for t, m in enumerate(models)]
    return compatibility_matrix(qf, gf, query_labels, gallery_labels, metric=metric, leave_one_out=leave_one_out,
                                chunk_size=chunk_size, lower_only=lower_only)


def _square(M: Any) -> np.ndarray:
    A = np.asarray(M.detach().cpu().numpy() if isinstance(M, torch.Tensor) else M, dtype=np.float64)
    if A.ndim != 2 or A.shape[0] != A.shape[1] or A.shape[0] == 0:
        raise ValueError(f"the compatibility matrix must be square and non-empty, got shape {A.shape}")
    return A


def empirical_compatibility(M: Any) -> np.ndarray:
    r"""Empirical compatibility criterion (Shen et al., CVPR 2020) for every pair of versions.

    Query model :math:`i` is compatible with gallery model :math:`j < i` when the cross test beats the old
    self test: :math:`M(\phi_i^Q, \phi_j^G) > M(\phi_j^Q, \phi_j^G)`, i.e. ``M[i, j] > M[j, j]`` (strict; a
    ``nan`` entry is not compatible). Returns a boolean ``(T, T)`` array, ``True`` only below the diagonal.

    >>> empirical_compatibility([[0.5, 0.0], [0.6, 0.7]])
    array([[False, False],
           [ True, False]])
    """
    A = _square(M)
    C = A > np.diag(A)[None, :]
    return np.tril(C, k=-1)


def average_compatibility(M: Any) -> float:
    r"""AC: share of version pairs :math:`i > j` satisfying the empirical compatibility criterion.

    .. math:: AC = \frac{2}{T(T-1)}\sum_{i=2}^{T}\sum_{j=1}^{i-1}
              \mathbb 1\big[M(\phi_i^Q,\phi_j^G) > M(\phi_j^Q,\phi_j^G)\big]

    (Biondi et al., TPAMI 2023). Needs :math:`T \ge 2`.

    >>> average_compatibility([[0.5, 0.0, 0.0], [0.6, 0.7, 0.0], [0.4, 0.8, 0.9]])
    0.6666666666666666
    """
    A = _square(M)
    T = A.shape[0]
    if T < 2:
        raise ValueError("average_compatibility needs at least 2 model versions")
    return float(empirical_compatibility(A).sum()) * 2.0 / (T * (T - 1))


def average_multimodel_accuracy(M: Any) -> float:
    r"""AM: mean of the lower triangle of :math:`M`, diagonal included (Biondi et al., TPAMI 2023).

    .. math:: AM = \frac{2}{T(T+1)}\sum_{i=1}^{T}\sum_{j=1}^{i} M(\phi_i^Q,\phi_j^G)

    A ``nan`` entry (incomparable versions) makes AM ``nan``.

    >>> average_multimodel_accuracy([[0.5, 9.0], [0.6, 0.7]])
    0.6
    """
    A = _square(M)
    T = A.shape[0]
    return float(A[np.tril_indices(T)].sum()) * 2.0 / (T * (T + 1))


# ---------------------------------------------------------------------------------------------- backfilling

@dataclass(frozen=True)
class BackfillingCurve:
    """Result of :func:`backfilling_curve`: metric value at each backfilled fraction, and the area."""

    fractions: np.ndarray
    values: np.ndarray
    area: float
    order: np.ndarray


def backfilling_order(gallery: Any, gallery_labels: Any, order: Any = "random", *, seed: int = 0) -> np.ndarray:
    r"""Permutation of the gallery in which items are re-embedded (backfilled).

    - ``"random"``: a uniform random permutation (NumPy ``default_rng(seed)``);
    - ``"distance"``: farthest from its class mean first, measured on the L2-normalised ``gallery`` features
      (pass the *old* gallery: the order is decided before re-embedding), :math:`d_g = \lVert\hat g -
      \mu_{y_g}\rVert_2`, :math:`\mu_c` the mean of the normalised features of class :math:`c`; equal distances
      keep index order;
    - a permutation of ``range(n_gallery)`` (array-like of ints): used as given.

    >>> backfilling_order([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [0, 0, 0], "distance").tolist()
    [2, 0, 1]
    """
    g = as_float_tensor(gallery, "gallery", ndim=2)
    n = g.shape[0]
    if n == 0:
        raise ValueError("gallery is empty")
    if isinstance(order, str):
        if order == "random":
            return np.random.default_rng(seed).permutation(n)
        if order == "distance":
            labels = _as_labels(gallery_labels, "gallery_labels", n, g.device)
            codes, _ = _label_codes(labels, labels, g.device)
            x = _unit_rows(g.to(torch.float64))
            n_classes = int(codes.max()) + 1
            sums = torch.zeros(n_classes, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, codes, x)
            means = sums / torch.bincount(codes, minlength=n_classes).to(x.dtype)[:, None]
            dist = torch.linalg.vector_norm(x - means[codes], dim=1)
            return torch.argsort(-dist, stable=True).cpu().numpy()
        raise ValueError(f"order must be 'random', 'distance' or a permutation, got {order!r}")
    perm = np.asarray(order.detach().cpu().numpy() if isinstance(order, torch.Tensor) else order)
    if perm.ndim != 1 or perm.dtype.kind not in "iu" or perm.shape[0] != n or not np.array_equal(
            np.sort(perm), np.arange(n)):
        raise ValueError(f"order must be a permutation of range({n}) (integers, each index once)")
    return perm.astype(np.int64)


def backfilling_curve(query: Any, old_gallery: Any, new_gallery: Any, query_labels: Any, gallery_labels: Any,
                      *, order: Any = "random", fractions: Any = None, num_points: int = 11,
                      metric: Any = "top1", leave_one_out: bool = False, seed: int = 0,
                      chunk_size: int | None = None) -> BackfillingCurve:
    r"""Retrieval quality while the gallery is re-embedded with the new model, and the area under it.

    At fraction :math:`f` the first :math:`\lfloor f\,n + \tfrac12\rfloor` gallery items of ``order`` use
    ``new_gallery`` features, the others ``old_gallery`` features (both in the space of the new queries,
    e.g. old features already passed through the forward map, or a backward-compatible model). So
    :math:`f = 0` gives the cross test :math:`M(\phi_\text{new}^Q, \phi_\text{old}^G)` and :math:`f = 1`
    the new self test :math:`M(\phi_\text{new}^Q, \phi_\text{new}^G)`. The area is the trapezoidal integral
    of the curve over ``fractions`` (for the default :math:`0, 0.1, \dots, 1` it is the mean quality over a
    full backfill; Ricci et al. 2025, docs/math.md §7).

    Parameters
    ----------
    order
        ``"random"``, ``"distance"`` (farthest from class mean first, on ``old_gallery``) or a permutation;
        see :func:`backfilling_order`.
    fractions
        Increasing values in [0, 1]; default ``numpy.linspace(0, 1, num_points)``.
    metric
        As in :func:`compatibility_matrix`.

    Examples
    --------
    >>> import numpy as np
    >>> q = np.eye(2)
    >>> c = backfilling_curve(q, -q, q, [0, 1], [0, 1], order=[0, 1], fractions=[0, 0.5, 1])
    >>> c.values.tolist(), c.area
    ([0.0, 0.5, 1.0], 0.5)
    """
    fn = _metric_function(metric)
    old = as_float_tensor(old_gallery, "old_gallery", ndim=2)
    new = as_float_tensor(new_gallery, "new_gallery", ndim=2)
    if old.shape != new.shape:
        raise ValueError(f"old_gallery and new_gallery must have the same shape, got {tuple(old.shape)} and "
                         f"{tuple(new.shape)}")
    if old.device != new.device:
        raise ValueError("old_gallery and new_gallery must be on the same device")
    if fractions is None:
        if isinstance(num_points, bool) or not isinstance(num_points, Integral) or num_points < 2:
            raise ValueError(f"num_points must be an integer >= 2, got {num_points!r}")
        fr = np.linspace(0.0, 1.0, int(num_points))
    else:
        fr = np.asarray(fractions, dtype=np.float64).reshape(-1)
        if fr.size == 0 or not np.all(np.isfinite(fr)) or fr.min() < 0 or fr.max() > 1 or np.any(np.diff(fr) <= 0):
            raise ValueError("fractions must be strictly increasing values in [0, 1]")
    perm = backfilling_order(old, gallery_labels, order, seed=seed)
    # validate everything once on the end points before the loop (raises on bad labels, k, NaN, ...)
    n = old.shape[0]
    dtype = torch.promote_types(old.dtype, new.dtype)
    old_c, new_c = old.to(dtype), new.to(dtype)
    perm_t = torch.from_numpy(perm).to(old.device)
    values = []
    for f in fr:
        m = int(math.floor(f * n + 0.5))
        mixed = old_c.clone()
        idx = perm_t[:m]
        mixed[idx] = new_c[idx]
        values.append(_call_metric(fn, metric, query, mixed, query_labels, gallery_labels, leave_one_out,
                                   chunk_size))
    vals = np.asarray(values, dtype=np.float64)
    area = float(np.sum((vals[1:] + vals[:-1]) * np.diff(fr)) / 2.0) if fr.size > 1 else 0.0
    return BackfillingCurve(fr, vals, area, perm)
