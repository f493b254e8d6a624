"""relaxedortho: maps between representation spaces that are exactly, nearly or not orthogonal.

The spectrum, one interface (:class:`~relaxedortho.maps.AlignmentMap`):

- hard: :class:`OrthogonalLinear` (a dynamic trivialization, a retraction, or PyTorch parametrizations),
  :class:`StiefelLinear` (geoopt);
- relaxed: :class:`LambdaOrthoLinear` (λ-orthogonality, Ricci et al. NeurIPS 2025);
- free: :class:`AffineMap`.
"""
from . import linalg, losses, metrics, penalties, training
from . import closed_form, similarity
from .closed_form import ClosedFormAlignment, fit_closed_form, lambda_init
from .similarity import linear_cka, procrustes_distance
from .maps import AffineMap, AlignmentMap, LambdaOrthoLinear, OrthogonalLinear, StiefelLinear, riemannian_lr
from .serialization import load, save
from .training import Trainer, TrainHistory, fit_alignment, fit_pair, lambda_sweep, plot_tradeoff
from . import transfer
from .transfer import (TransferredLinear, apply_task_vector, merge_transferred, procrustes_weight,
                       run_transfer_demo, soft_orthogonal_map, task_vector, train_transfer_maps,
                       transfer_task_vector)

__version__ = "0.1.0"

__all__ = ["AffineMap", "AlignmentMap", "LambdaOrthoLinear", "OrthogonalLinear", "StiefelLinear",
           "riemannian_lr", "save", "load", "linalg", "penalties", "losses", "metrics", "__version__",
           "transfer", "task_vector", "apply_task_vector", "TransferredLinear", "transfer_task_vector",
           "merge_transferred", "soft_orthogonal_map", "procrustes_weight", "train_transfer_maps",
           "run_transfer_demo", "training", "fit_alignment", "Trainer", "TrainHistory", "fit_pair",
           "lambda_sweep", "plot_tradeoff", "closed_form", "similarity", "fit_closed_form",
           "ClosedFormAlignment", "lambda_init", "linear_cka", "procrustes_distance"]
