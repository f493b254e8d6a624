"""Warning and exception classes of relaxedortho (no dependencies: importing it costs nothing)."""
from __future__ import annotations

__all__ = ["ConvergenceWarning"]


class ConvergenceWarning(UserWarning):
    """An iterative solver stopped at ``max_iter`` before reaching its tolerance; the result is the best point
    found, not the optimum. Raise ``max_iter`` (or ``tol``), or filter with
    ``warnings.simplefilter("error", ConvergenceWarning)`` to make it an error.

    The counterpart of :class:`sklearn.exceptions.ConvergenceWarning`, defined here so that importing
    relaxedortho does not import scikit-learn.
    """
