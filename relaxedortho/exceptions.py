"""Warning and exception classes of relaxedortho (no dependencies: importing it costs nothing).

One class per kind of event, shared by every solver of the package, so that a user filters them once
(``warnings.simplefilter("error", relaxedortho.ConvergenceWarning)``).
"""
from __future__ import annotations

__all__ = ["ConvergenceWarning"]


class ConvergenceWarning(UserWarning):
    """An iterative solver stopped before reaching its tolerance (at ``max_iter``, or stalled without
    progress), or training ended with its loss still falling (:class:`~relaxedortho.training.Trainer`'s ``tol``);
    the result is the best point found, not the optimum. The message names the solver, the reason
    and what to change (``max_iter``, ``tol``); filter with ``warnings.simplefilter("error", ConvergenceWarning)``
    to make it an error.

    The counterpart of :class:`sklearn.exceptions.ConvergenceWarning`, defined here so that importing
    relaxedortho does not import scikit-learn.
    """
