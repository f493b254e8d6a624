r"""Compatibility of models: the cross-model matrix of a retrieval metric, the empirical compatibility criterion
(Shen et al., CVPR 2020), AC and AM (Biondi et al., TPAMI 2023)."""
from __future__ import annotations

from numbers import Integral
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .._checks import as_float_tensor
from .retrieval import cmc, mean_average_precision


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
