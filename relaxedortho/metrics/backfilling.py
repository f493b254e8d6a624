r"""Backfilling: the retrieval metric while the gallery is re-embedded item by item with the new model, in a
chosen order (random, or the most uncertain items first)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral
from typing import Any

import numpy as np
import torch

from .._checks import as_float_tensor
from ._ranking import _as_labels, _label_codes, _unit_rows
from .compatibility import _call_metric, _metric_function


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
