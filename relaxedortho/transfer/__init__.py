r"""Cross-model transfer of task vectors with (relaxed) orthogonal alignment.

Endo, Kera, Kawamoto (2025, arXiv 2505.12021): a task vector :math:`\tau` of a source model is applied to an
independently pre-trained target as :math:`W + s\,U_\text{out}^\top\tau U_\text{in}`, with alignment maps
:math:`U` trained on a few labelled examples. Here :math:`U` may be any map of the spectrum, initialised at
the identity or from a Procrustes fit of paired activations.
"""
from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["TransferredLinear", "layer_inputs", "merge_transferred", "procrustes_weight",
                     "soft_orthogonal_map", "transfer_maps", "transfer_task_vector"], ".aligned_update"),
    "run_transfer_demo": ".experiment",
    **dict.fromkeys(["finetune_few_shot", "train_transfer_maps"], ".few_shot"),
    **dict.fromkeys(["apply_task_vector", "task_vector"], ".task_vectors"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, ["aligned_update", "experiment", "few_shot", "task_vectors"])

if TYPE_CHECKING:
    from .aligned_update import (TransferredLinear, layer_inputs, merge_transferred, procrustes_weight,
                                 soft_orthogonal_map, transfer_maps, transfer_task_vector)
    from .experiment import run_transfer_demo
    from .few_shot import finetune_few_shot, train_transfer_maps
    from .task_vectors import apply_task_vector, task_vector

__all__ = ["task_vector", "apply_task_vector", "TransferredLinear", "transfer_task_vector", "transfer_maps",
           "merge_transferred", "soft_orthogonal_map", "procrustes_weight", "layer_inputs",
           "train_transfer_maps", "finetune_few_shot", "run_transfer_demo"]
