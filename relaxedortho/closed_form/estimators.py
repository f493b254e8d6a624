r"""A scikit-learn estimator over every closed form: NumPy in and out, usable in pipelines and grid searches.

:class:`ClosedFormAlignment` is a real scikit-learn estimator (``BaseEstimator`` with ``TransformerMixin`` and
``RegressorMixin``): :func:`sklearn.base.clone`, :class:`~sklearn.pipeline.Pipeline`,
:class:`~sklearn.model_selection.GridSearchCV` and :func:`~sklearn.model_selection.cross_val_score` work, and
``sklearn.utils.estimator_checks.check_estimator`` passes (the test suite runs it). This module imports
``sklearn.base`` (about 1.4 s), so it loads only when the class is first used, never at ``import relaxedortho``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin, TransformerMixin
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from .fitting import KINDS, fit_closed_form

#: The keyword options :meth:`ClosedFormAlignment.fit` passes on to :func:`fit_closed_form` (how the moments are
#: accumulated, not which map is fitted).
FIT_OPTIONS = ("chunk_size", "precision", "device")


def _renamed_target(y: Any, options: dict) -> Any:
    """``y``, or the deprecated keyword ``Y`` popped from ``options`` (with a FutureWarning)."""
    if "Y" not in options:
        return y
    import warnings

    if y is not None:
        raise TypeError("give the targets once: y (the name since version 0.2) or Y (its old name), not both")
    warnings.warn("the keyword Y of ClosedFormAlignment.fit/score is now y (scikit-learn's name); Y will be "
                  "removed in a later version", FutureWarning, stacklevel=3)
    return options.pop("Y")


def _plain(X: Any) -> Any:
    """Tensors as NumPy arrays on the CPU; anything else unchanged (scikit-learn validates it)."""
    return X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else X


class ClosedFormAlignment(TransformerMixin, RegressorMixin, BaseEstimator):
    r"""Closed-form alignment ``X → Y`` as a scikit-learn estimator (``fit``, ``transform``/``predict``, ``score``).

    Wraps :func:`~relaxedortho.closed_form.fit_closed_form` (same kinds and options, docs/math.md §1–§4): the
    map minimises :math:`\lVert XW^\top + \mathbf 1 b^\top - Y\rVert_F^2` over the kind's constraint set.

    Args:
        kind: one of :data:`~relaxedortho.closed_form.KINDS` (default ``"orthogonal"``: Procrustes, no bias).
        options: the kind's options as a dict, e.g. ``{"ridge": 0.5}`` (default none). For convenience they may
            also be given as keywords, ``ClosedFormAlignment("ridge", ridge=0.5)``, and set by name with
            :meth:`set_params` (``set_params(ridge=0.1)``, or ``ridge`` as a grid-search parameter); either way they
            are stored in ``options``, so :meth:`get_params` returns ``{"kind": ..., "options": {...}}``.
            Nothing is checked until :meth:`fit` (the scikit-learn convention).

    Fitted attributes (after :meth:`fit`): ``map_``, the fitted map module (:class:`~relaxedortho.OrthogonalLinear`
    or :class:`~relaxedortho.AffineMap`); ``coef_``, its weight as a NumPy array of shape
    ``(n_targets, n_features)`` as in scikit-learn; ``intercept_``, the bias ``(n_targets,)`` (zeros for maps
    without bias); ``n_features_in_``, the width of ``X``.

    A 1-D target ``y`` is fitted as one column and predicted as 1-D, as scikit-learn regressors do. Integer inputs
    are converted to float64; NaN, Inf, sparse matrices and complex numbers are refused with scikit-learn's errors.

    :meth:`score` is the coefficient of determination pooled over all outputs,

    .. math:: R^2 = 1 - \frac{\lVert Y - \hat Y\rVert_F^2}{\lVert Y - \bar Y\rVert_F^2},

    i.e. :func:`sklearn.metrics.r2_score` with ``multioutput="variance_weighted"``; 1 is a perfect fit.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> X = rng.standard_normal((200, 4)); Y = X @ np.linalg.qr(rng.standard_normal((4, 4)))[0] + 1.0
        >>> est = ClosedFormAlignment("centered").fit(X, Y)
        >>> round(est.score(X, Y), 6)
        1.0
        >>> ClosedFormAlignment("ridge", ridge=0.5).get_params()
        {'kind': 'ridge', 'options': {'ridge': 0.5}}
    """

    def __init__(self, kind: str = "orthogonal", options: dict | None = None, **kind_options: Any) -> None:
        self.kind = kind
        if kind_options:   # keywords join options (a non-dict options is kept under its name for fit to refuse)
            options = {**options, **kind_options} if isinstance(options, dict) else {
                **kind_options, **({} if options is None else {"options": options})}
        self.options = options

    def set_params(self, **params: Any) -> "ClosedFormAlignment":
        """Set ``kind``, ``options``, or a kind's option by its own name (stored in ``options``); returns ``self``."""
        extra = {k: params.pop(k) for k in list(params) if k not in ("kind", "options")}
        super().set_params(**params)
        if extra:   # as in __init__: a non-dict options is kept under its name for fit to refuse
            options = self.options
            self.options = {**options, **extra} if isinstance(options, dict) else {
                **extra, **({} if options is None else {"options": options})}
        return self

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True        # a map X → Y needs its target
        tags.target_tags.multi_output = True    # Y is a matrix: every column is an output
        # The default kind is Procrustes: an orthogonal map cannot scale, so on an arbitrary regression target
        # (what check_estimator uses) it is a poor regressor by design, not by a defect.
        tags.regressor_tags.poor_score = True
        return tags

    def fit(self, X: Any, y: Any = None, **fit_options: Any) -> "ClosedFormAlignment":
        """Fit on paired rows ``X`` (n, p) and ``y`` (n, q) or (n,); or, with ``y=None``, on a stream of
        ``(X_chunk, Y_chunk)`` pairs (an iterable, not an array), accumulated chunk by chunk.

        ``fit_options`` go to :func:`fit_closed_form`: only ``chunk_size``, ``precision`` and ``device`` (the
        kind's options belong to the constructor). Returns ``self``. (The target was called ``Y`` before
        version 0.2; ``fit(X, Y=...)`` still works and warns.)
        """
        Y = _renamed_target(y, fit_options)
        if not isinstance(self.kind, str) or self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}; got {self.kind!r}")
        if self.options is not None and not isinstance(self.options, dict):
            raise TypeError(f"options must be a dict of the kind's options or None, got {type(self.options).__name__}")
        unknown = sorted(set(fit_options) - set(FIT_OPTIONS))
        if unknown:
            raise TypeError(f"fit() takes only {', '.join(FIT_OPTIONS)} as keyword options, got "
                            f"{', '.join(map(repr, unknown))}; give the kind's options to the constructor "
                            f"(ClosedFormAlignment(kind, **options)) or to set_params")
        X, Y = _plain(X), _plain(Y)
        if Y is None:
            if isinstance(X, np.ndarray) or hasattr(X, "__array__") or hasattr(X, "shape"):
                raise ValueError("ClosedFormAlignment requires y to be passed, but the target y is None (give y, "
                                 "or an iterable of (X_chunk, Y_chunk) pairs as X)")
            one_d = False
            self.map_ = fit_closed_form(X, None, kind=self.kind, **fit_options, **(self.options or {}))
        else:
            X, Y = validate_data(self, X, Y, multi_output=True, y_numeric=True, dtype=(np.float64, np.float32))
            one_d = Y.ndim == 1
            Y = Y.reshape(-1, 1) if one_d else Y
            Y = Y.astype(X.dtype, copy=False)
            # read-only arrays (memmaps) are copied: torch refuses to share memory it could write to
            X, Y = (A if A.flags.writeable else A.copy() for A in (X, Y))
            self.map_ = fit_closed_form(X, Y, kind=self.kind, **fit_options, **(self.options or {}))
        self.coef_ = self.map_.weight.detach().cpu().numpy().copy()
        b = self.map_.bias
        self.intercept_ = (np.zeros(self.coef_.shape[0], dtype=self.coef_.dtype) if b is None
                           else b.detach().cpu().numpy().copy())
        if Y is None:   # a stream: the width comes from the fitted map
            self.n_features_in_ = self.coef_.shape[1]
        self._one_d = one_d
        return self

    def transform(self, X: Any) -> np.ndarray:
        """``X coef_ᵀ + intercept_`` as a NumPy array in ``X``'s floating dtype (tensors are moved to the CPU)."""
        check_is_fitted(self, "coef_")
        X = validate_data(self, _plain(X), reset=False, dtype=(np.float64, np.float32))
        out = X @ self.coef_.T.astype(X.dtype, copy=False) + self.intercept_.astype(X.dtype, copy=False)
        return out[:, 0] if self._one_d else out

    def predict(self, X: Any) -> np.ndarray:
        """The same as :meth:`transform` (a map is both a transformer and a multi-output regressor)."""
        return self.transform(X)

    def score(self, X: Any, y: Any = None, sample_weight: Any = None, **renamed: Any) -> float:
        r"""Pooled :math:`R^2 = 1 - \lVert Y - \hat Y\rVert_F^2 / \lVert Y - \bar Y\rVert_F^2` in float64 (the
        class documentation) of the targets ``y``; ``sample_weight`` weights the rows of both sums."""
        Y = _renamed_target(y, renamed)
        if renamed:
            raise TypeError(f"score() got unexpected keyword arguments {', '.join(map(repr, sorted(renamed)))}")
        if Y is None:
            raise ValueError("score(X, y) needs the targets y")
        pred = np.asarray(self.predict(X), dtype=np.float64)
        pred = pred.reshape(-1, 1) if pred.ndim == 1 else pred
        Y = check_array(_plain(Y), ensure_2d=False, dtype=np.float64, input_name="y")
        Y = Y.reshape(-1, 1) if Y.ndim == 1 else Y
        if Y.shape != pred.shape:
            raise ValueError(f"Y must have shape {pred.shape} (paired with the rows of X), got {Y.shape}")
        w = np.ones(len(Y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        if w.shape != (len(Y),):
            raise ValueError(f"sample_weight must have shape ({len(Y)},), got {w.shape}")
        mean = (w[:, None] * Y).sum(0) / w.sum()
        ss_tot = float((w[:, None] * (Y - mean) ** 2).sum())
        ss_res = float((w[:, None] * (Y - pred) ** 2).sum())
        if ss_tot == 0:
            return 1.0 if ss_res == 0 else float("-inf")
        return 1.0 - ss_res / ss_tot
