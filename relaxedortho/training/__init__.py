"""Training of the maps of the spectrum: one map or a backward/forward pair, on one or many processes.

- :func:`fit_alignment` / :class:`Trainer`: one map, MSE + its regularizer (``trainer.py``);
- :func:`fit_pair` / :class:`PairTrainer`: the B/F objective of arXiv 2509.16664 (``pair.py``);
- :func:`make_optimizer`: the right Adam per map, its hard maps registered with it (``optimizers.py``);
  :func:`register_hard_maps` registers them with an optimizer of one's own;
- :func:`save_checkpoint` / :func:`load_checkpoint`: exact resume (``checkpoint.py``);
- :func:`gather_with_grad`, :func:`launch`: DDP helpers (``distributed.py``);
- :func:`lambda_sweep`, :func:`plot_tradeoff`: the λ trade-off (``sweep.py``);
- :func:`initialize_map`: the data-driven start of a trained map (``initialization.py``);
- :func:`default_lr`: the default learning rate, a fixed angle per step (``learning_rate.py``).

The names are imported from their modules at first use (PEP 562): the distributed helpers do not load the
trainer, and geoopt loads only with a Riemannian optimizer.
"""
from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["load_checkpoint", "save_checkpoint"], ".checkpoint"),
    **dict.fromkeys(["gather_with_grad", "launch"], ".distributed"),
    "TrainHistory": ".history",
    "initialize_map": ".initialization",
    **dict.fromkeys(["train_classifier", "train_module"], ".minibatch"),
    "default_lr": ".learning_rate",
    **dict.fromkeys(["make_optimizer", "parameter_groups", "register_hard_maps"], ".optimizers"),
    **dict.fromkeys(["PairMaps", "PairTrainer", "fit_pair"], ".pair"),
    **dict.fromkeys(["SweepTable", "lambda_sweep", "neighbour_agreement", "plot_tradeoff"], ".sweep"),
    **dict.fromkeys(["NonFiniteLossError", "Trainer", "TrainingDivergedError", "default_retrieval_metric",
                     "fit_alignment"], ".trainer"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, ["checkpoint", "data", "distributed", "history", "initialization",
                                                         "learning_rate", "minibatch", "optimizers",
                                                         "pair", "precision", "sweep", "trainer"])

if TYPE_CHECKING:
    from .checkpoint import load_checkpoint, save_checkpoint
    from .distributed import gather_with_grad, launch
    from .history import TrainHistory
    from .initialization import initialize_map
    from .learning_rate import default_lr
    from .minibatch import train_classifier, train_module
    from .optimizers import make_optimizer, parameter_groups, register_hard_maps
    from .pair import PairMaps, PairTrainer, fit_pair
    from .sweep import SweepTable, lambda_sweep, neighbour_agreement, plot_tradeoff
    from .trainer import NonFiniteLossError, Trainer, TrainingDivergedError, default_retrieval_metric, fit_alignment

__all__ = ["fit_alignment", "Trainer", "TrainHistory", "NonFiniteLossError", "TrainingDivergedError",
           "default_retrieval_metric",
           "fit_pair", "PairTrainer", "PairMaps", "make_optimizer", "parameter_groups", "register_hard_maps",
           "save_checkpoint",
           "load_checkpoint", "gather_with_grad", "launch", "lambda_sweep", "SweepTable", "plot_tradeoff",
           "neighbour_agreement", "initialize_map", "default_lr", "train_module", "train_classifier"]
