"""relaxedortho: maps between representation spaces that are exactly, nearly or not orthogonal.

The spectrum, one interface (:class:`~relaxedortho.maps.AlignmentMap`):

- hard: :class:`OrthogonalLinear` (a dynamic trivialization, a retraction, or PyTorch parametrizations),
  :class:`StiefelLinear` (geoopt);
- relaxed: :class:`LambdaOrthoLinear` (λ-orthogonality, Ricci et al. NeurIPS 2025);
- free: :class:`AffineMap`.

The names below are imported from their submodules at first use (PEP 562), so ``import relaxedortho`` is
cheap and geoopt, SciPy's optimizers, scikit-learn and matplotlib load only with the code that needs them.
"""
from typing import TYPE_CHECKING

from ._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    **dict.fromkeys(["AffineMap", "AlignmentMap", "LambdaOrthoLinear", "OrthogonalLinear", "StiefelLinear",
                     "riemannian_lr"], ".maps"),
    **dict.fromkeys(["save", "load"], ".serialization"),
    **dict.fromkeys(["ClosedFormAlignment", "fit_closed_form", "lambda_init"], ".closed_form"),
    **dict.fromkeys(["linear_cka", "procrustes_distance"], ".similarity"),
    **dict.fromkeys(["Trainer", "TrainHistory", "fit_alignment", "fit_pair", "lambda_sweep", "plot_tradeoff"],
                    ".training"),
    **dict.fromkeys(["TransferredLinear", "apply_task_vector", "merge_transferred", "procrustes_weight",
                     "run_transfer_demo", "soft_orthogonal_map", "task_vector", "train_transfer_maps",
                     "transfer_task_vector"], ".transfer"),
    **dict.fromkeys(["karcher_mean", "chordal_mean", "geodesic", "merge_models", "weight_matching"], ".riemannian"),
    "ConvergenceWarning": ".exceptions",
    **dict.fromkeys(["orthogonal", "lambda_orthogonal"], ".constraints"),
}
_SUBMODULES = ["linalg", "penalties", "losses", "metrics", "similarity", "serialization", "maps", "closed_form",
               "training", "transfer", "riemannian", "compat", "data", "demo", "cli", "testing", "exceptions",
               "constraints", "_checks", "_geoopt"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _SUBMODULES)

if TYPE_CHECKING:  # what static analysers and IDEs see: the eager imports that __getattr__ performs on demand
    from . import closed_form, linalg, losses, metrics, penalties, riemannian, similarity, training, transfer
    from .closed_form import ClosedFormAlignment, fit_closed_form, lambda_init
    from .constraints import lambda_orthogonal, orthogonal
    from .exceptions import ConvergenceWarning
    from .maps import AffineMap, AlignmentMap, LambdaOrthoLinear, OrthogonalLinear, StiefelLinear, riemannian_lr
    from .riemannian import chordal_mean, geodesic, karcher_mean, merge_models, weight_matching
    from .serialization import load, save
    from .similarity import linear_cka, procrustes_distance
    from .training import Trainer, TrainHistory, fit_alignment, fit_pair, lambda_sweep, plot_tradeoff
    from .transfer import (TransferredLinear, apply_task_vector, merge_transferred, procrustes_weight,
                           run_transfer_demo, soft_orthogonal_map, task_vector, train_transfer_maps,
                           transfer_task_vector)

__all__ = ["AffineMap", "AlignmentMap", "LambdaOrthoLinear", "OrthogonalLinear", "StiefelLinear",
           "riemannian_lr", "save", "load", "linalg", "penalties", "losses", "metrics", "__version__",
           "transfer", "task_vector", "apply_task_vector", "TransferredLinear", "transfer_task_vector",
           "merge_transferred", "soft_orthogonal_map", "procrustes_weight", "train_transfer_maps",
           "run_transfer_demo", "training", "fit_alignment", "Trainer", "TrainHistory", "fit_pair",
           "lambda_sweep", "plot_tradeoff", "closed_form", "similarity", "fit_closed_form",
           "ClosedFormAlignment", "lambda_init", "linear_cka", "procrustes_distance", "riemannian", "karcher_mean",
           "chordal_mean", "geodesic", "merge_models", "weight_matching", "ConvergenceWarning",
           "constraints", "orthogonal", "lambda_orthogonal"]
