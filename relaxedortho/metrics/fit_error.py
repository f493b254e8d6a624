r"""The fit of a map to its targets, by one definition used everywhere (the demo, the CLI, the λ sweep).

``fit_mse`` is the **mean over rows of the squared row error** (docs/math.md §6),

.. math:: \mathrm{fit\_mse}(f; X, Y) = \frac1n\sum_{i=1}^n \lVert f(x_i) - y_i\rVert_2^2
          = \frac1n\lVert f(X) - Y\rVert_F^2 ,

the squared error per pair, the quantity the backward-compatibility objective :math:`L_B` averages. It is q
times the element-wise mean :math:`\frac{1}{nq}\lVert f(X) - Y\rVert_F^2` (``torch.nn.functional.mse_loss``,
the data term of the training loss of :func:`~relaxedortho.fit_alignment`) for q target columns.
"""
from __future__ import annotations

import torch

from .._checks import as_float_tensor


def fit_mse(prediction: torch.Tensor, target: torch.Tensor) -> float:
    r"""Mean over rows of the squared row error :math:`\frac1n\lVert P - Y\rVert_F^2` of ``prediction``
    (n×q, e.g. a map's output ``f(X)``) against ``target`` (n×q), in float64 (module documentation).

    Example:
        >>> import torch
        >>> fit_mse(torch.zeros(4, 3), torch.ones(4, 3))  # 3 per row, not 1 per element
        3.0
    """
    prediction = as_float_tensor(prediction, "prediction", ndim=2)
    target = as_float_tensor(target, "target", ndim=2)
    if prediction.shape != target.shape:
        raise ValueError(f"prediction and target must have the same shape, got {tuple(prediction.shape)} and "
                         f"{tuple(target.shape)}")
    if prediction.shape[0] < 1:
        raise ValueError("prediction and target need at least one row")
    return float(((prediction.double() - target.double()) ** 2).sum(dim=1).mean())
