r"""Closed-form alignments: the Procrustes family, least squares, CCA and relaxed Procrustes, from in-memory
or streamed paired rows, on any device (``docs/math.md`` §5).

Entry point :func:`fit_closed_form` returns a map module; :class:`ClosedFormAlignment` is the scikit-learn
style estimator; :func:`accumulate_moments` streams the sufficient statistics; :func:`lambda_init` starts a
:class:`~relaxedortho.LambdaOrthoLinear` at the Frobenius-ball solution; :func:`generalized_procrustes` aligns
K views.
"""
from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "ClosedFormAlignment": ".estimators",
    **dict.fromkeys(["KINDS", "fit_closed_form", "solve_closed_form"], ".fitting"),
    **dict.fromkeys(["solve_affine", "solve_cca"], ".linear"),
    **dict.fromkeys(["generalized_procrustes", "polar_factor", "rotation_factor", "solve_anchored", "solve_centered",
                     "solve_orthogonal", "solve_orthogonal_lsq", "solve_rotation", "solve_similarity"], ".procrustes"),
    **dict.fromkeys(["band_from_epsilon", "frobenius_singular_values", "lambda_init", "penalty_singular_values",
                     "projected_gradient", "solve_relaxed_band", "solve_relaxed_frobenius", "solve_relaxed_penalty"],
                    ".relaxed"),
    **dict.fromkeys(["linear_assignment", "solve_permutation"], ".permutation"),
    "ClosedFormSolution": ".solution",
    **dict.fromkeys(["PairedMoments", "accumulate_moments"], ".streaming"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, ["distributed", "estimators", "fitting", "linear", "moments_file",
                                                         "pairwise_update", "permutation", "procrustes", "relaxed",
                                                         "solution", "streaming"])

if TYPE_CHECKING:
    from .estimators import ClosedFormAlignment
    from .fitting import KINDS, fit_closed_form, solve_closed_form
    from .linear import solve_affine, solve_cca
    from .permutation import linear_assignment, solve_permutation
    from .procrustes import (generalized_procrustes, polar_factor, rotation_factor, solve_anchored, solve_centered,
                             solve_orthogonal, solve_orthogonal_lsq, solve_rotation, solve_similarity)
    from .relaxed import (band_from_epsilon, frobenius_singular_values, lambda_init, penalty_singular_values,
                          projected_gradient, solve_relaxed_band, solve_relaxed_frobenius, solve_relaxed_penalty)
    from .solution import ClosedFormSolution
    from .streaming import PairedMoments, accumulate_moments

__all__ = ["fit_closed_form", "solve_closed_form", "KINDS", "ClosedFormAlignment", "ClosedFormSolution",
           "PairedMoments", "accumulate_moments", "lambda_init", "generalized_procrustes", "band_from_epsilon",
           "penalty_singular_values", "frobenius_singular_values", "projected_gradient", "polar_factor",
           "rotation_factor", "solve_orthogonal", "solve_rotation", "solve_orthogonal_lsq", "solve_centered",
           "solve_similarity", "solve_anchored", "solve_affine", "solve_cca", "solve_relaxed_penalty",
           "solve_relaxed_band", "solve_relaxed_frobenius", "solve_permutation", "linear_assignment"]
