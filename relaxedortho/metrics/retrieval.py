r"""Retrieval metrics of one query set against one gallery: CMC top-k, mAP and the report of both (the
conventions and definitions of :mod:`relaxedortho.metrics`, docs/math.md §7)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._checks import check_bool
from ._ranking import _evaluate, _parse_topk, _prepare

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
