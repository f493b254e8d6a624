"""Training of the maps of the spectrum: one map or a backward/forward pair, on one or many processes.

- :func:`fit_alignment` / :class:`Trainer`: one map, MSE + its regularizer (``trainer.py``);
- :func:`fit_pair` / :class:`PairTrainer`: the B/F objective of arXiv 2509.16664 (``pair.py``);
- :func:`make_optimizer`: the right Adam per map (``optimizers.py``);
- :func:`save_checkpoint` / :func:`load_checkpoint`: exact resume (``checkpoint.py``);
- :func:`gather_with_grad`, :func:`launch`: DDP helpers (``distributed.py``);
- :func:`lambda_sweep`, :func:`plot_tradeoff`: the λ trade-off (``sweep.py``).
"""
from .checkpoint import load_checkpoint, save_checkpoint
from .distributed import gather_with_grad, launch
from .history import TrainHistory
from .optimizers import make_optimizer, parameter_groups
from .pair import PairMaps, PairTrainer, fit_pair
from .sweep import SweepTable, lambda_sweep, neighbour_agreement, plot_tradeoff
from .trainer import NonFiniteLossError, Trainer, TrainingDivergedError, default_retrieval_metric, fit_alignment

__all__ = ["fit_alignment", "Trainer", "TrainHistory", "NonFiniteLossError", "TrainingDivergedError",
           "default_retrieval_metric",
           "fit_pair", "PairTrainer", "PairMaps", "make_optimizer", "parameter_groups", "save_checkpoint",
           "load_checkpoint", "gather_with_grad", "launch", "lambda_sweep", "SweepTable", "plot_tradeoff",
           "neighbour_agreement"]
