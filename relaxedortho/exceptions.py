"""Warning classes of relaxedortho."""
from __future__ import annotations


class ConvergenceWarning(UserWarning):
    """An iterative solver stopped at its iteration limit before its convergence test passed: the result is the
    best point reached, possibly off the optimum. Raise the iteration limit (or the tolerance) and read the
    solver's ``info`` (``residual``, ``converged``)."""
