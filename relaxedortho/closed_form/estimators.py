r"""A scikit-learn style estimator over every closed form, NumPy in and out."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .fitting import KINDS, fit_closed_form


class ClosedFormAlignment:
    r"""Closed-form alignment ``X → Y`` with the scikit-learn estimator API (``fit``, ``transform``, ``score``).

    ``ClosedFormAlignment(kind, **options)`` wraps :func:`~relaxedortho.closed_form.fit_closed_form` (same
    kinds and options). After :meth:`fit`:

    - ``map_``: the fitted map module (:class:`~relaxedortho.OrthogonalLinear` or :class:`~relaxedortho.AffineMap`);
    - ``coef_``: its weight as a NumPy array, shape (q, p) = (n_targets, n_features) as in scikit-learn;
    - ``intercept_``: the bias (q,), zeros for maps without bias;
    - ``n_features_in_``.

    :meth:`score` is the coefficient of determination pooled over all outputs,

    .. math:: R^2 = 1 - \frac{\lVert Y - \hat Y\rVert_F^2}{\lVert Y - \bar Y\rVert_F^2},

    i.e. :func:`sklearn.metrics.r2_score` with ``multioutput="variance_weighted"``; 1 is a perfect fit.
    ``get_params``/``set_params`` follow scikit-learn, so :func:`sklearn.base.clone` and grid search work.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> X = rng.standard_normal((200, 4)); Y = X @ np.linalg.qr(rng.standard_normal((4, 4)))[0] + 1.0
        >>> est = ClosedFormAlignment("centered").fit(X, Y)
        >>> round(est.score(X, Y), 6)
        1.0
    """

    def __init__(self, kind: str = "orthogonal", **options: Any) -> None:
        self.kind = kind
        self.options = dict(options)

    def get_params(self, deep: bool = True) -> dict:
        """The constructor arguments (``kind`` and the kind's options)."""
        return {"kind": self.kind, **self.options}

    def set_params(self, **params: Any) -> "ClosedFormAlignment":
        """Set ``kind`` and options; returns ``self``."""
        if "kind" in params:
            self.kind = params.pop("kind")
        self.options.update(params)
        return self

    def fit(self, X: Any, Y: Any = None, **fit_options: Any) -> "ClosedFormAlignment":
        """Fit on paired rows (or a chunk stream with ``Y=None``); ``fit_options`` go to ``fit_closed_form``
        (``chunk_size``, ``precision``, ``device``)."""
        if not isinstance(self.kind, str) or self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}; got {self.kind!r}")
        unknown = sorted(set(fit_options) - {"chunk_size", "precision", "device"})
        if unknown:
            raise TypeError(f"fit() takes only chunk_size, precision and device as keyword options, got "
                            f"{', '.join(map(repr, unknown))}; give the kind's options to the constructor "
                            f"(ClosedFormAlignment(kind, **options)) or set_params")
        self.map_ = fit_closed_form(X, Y, kind=self.kind, **fit_options, **self.options)
        self.coef_ = self.map_.weight.detach().cpu().numpy().copy()
        b = self.map_.bias
        self.intercept_ = (np.zeros(self.coef_.shape[0], dtype=self.coef_.dtype) if b is None
                           else b.detach().cpu().numpy().copy())
        self.n_features_in_ = self.coef_.shape[1]
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "map_"):
            raise RuntimeError("this ClosedFormAlignment is not fitted yet; call fit(X, Y) first")

    def transform(self, X: Any) -> np.ndarray:
        """``X coef_ᵀ + intercept_`` as a NumPy array (tensors are moved to the CPU)."""
        self._check_fitted()
        X = _as_array(X, "X", self.n_features_in_)
        return X @ self.coef_.T.astype(X.dtype, copy=False) + self.intercept_.astype(X.dtype, copy=False)

    predict = transform

    def score(self, X: Any, Y: Any) -> float:
        r"""Pooled :math:`R^2 = 1 - \lVert Y - \hat Y\rVert_F^2 / \lVert Y - \bar Y\rVert_F^2` (float64)."""
        pred = self.transform(X).astype(np.float64)
        Y = _as_array(Y, "Y", pred.shape[1]).astype(np.float64)
        if Y.shape != pred.shape:
            raise ValueError(f"Y must have shape {pred.shape} (paired with the rows of X), got {Y.shape}")
        ss_tot = float(((Y - Y.mean(0)) ** 2).sum())
        ss_res = float(((Y - pred) ** 2).sum())
        if ss_tot == 0:
            return 1.0 if ss_res == 0 else float("-inf")
        return 1.0 - ss_res / ss_tot

    def __repr__(self) -> str:
        args = ", ".join([repr(self.kind)] + [f"{k}={v!r}" for k, v in self.options.items()])
        return f"ClosedFormAlignment({args})"


def _as_array(X: Any, name: str, width: int) -> np.ndarray:
    """``X`` as a finite 2-D floating NumPy array with ``width`` columns (tensors are moved to the CPU)."""
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    try:
        X = np.asarray(X)
    except ValueError as exc:  # ragged nested lists
        raise ValueError(f"{name} must be a 2-D array of floats ({exc})") from None
    if X.dtype.kind != "f":
        raise TypeError(f"{name} must hold floating-point numbers, got NumPy dtype {X.dtype}")
    if X.ndim != 2 or X.shape[1] != width:
        raise ValueError(f"{name} must have shape (n, {width}) ({width} features, as in fit), got {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError(f"{name} contains NaN or Inf values")
    return X
