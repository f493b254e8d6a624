"""Warnings of relaxedortho."""


class ConvergenceWarning(UserWarning):
    """An iterative computation stopped before its convergence criterion held: a solver at its iteration limit,
    or training that ended with the loss still falling (see :class:`~relaxedortho.training.Trainer`'s ``tol``).
    The result is returned but is not the optimum it aims at; the message says what to change."""
