r"""The default learning rate of the trainers: a small angle per step, whatever the width.

Adam moves every entry of a weight by about ``lr`` per step, so a step changes a ``q x p`` weight by a matrix
of spectral norm about :math:`2\,\mathrm{lr}\sqrt{\max(p, q)}` (a random-sign matrix; Vershynin 2018, Thm 4.4.5).
For a hard map this is the angle of the rotation the step applies (for the trivialization, the generator's
step); for a λ-orthogonal or affine map near orthogonality, the relative change of the map. A fixed ``lr``
is therefore a larger step the wider the map: at 384 × 384 Adam at lr 1e-2 moves the map by about 0.4 rad per
step and destroys a good start (the text demo diverged this way). :func:`default_lr` keeps the angle fixed:

.. math:: \mathrm{lr} = \theta / \sqrt{\max(p, q)},\qquad \theta = 0.02,

i.e. lr ≈ 3.5e-3 at 32-d, 1e-3 at 384-d, 7e-4 at 768-d. θ was measured over lr 1e-4 … 1e-1 on the shipped
sentence embeddings (384-d, from the data-driven start, 10 epochs of batch 256) and on the digits demo's features
(32-d) (docs/training.md; ``benchmarks/bench_convergence.py --lr-grid`` reruns it): the held-out top-1 of hard,
λ and affine maps is within noise of its best at this lr, and falls at 10× larger. The scale of the data does not enter: a
hard map's step is an angle, and a map trained from the data-driven start (:mod:`~relaxedortho.training.initialization`)
starts with its scale and bias already fitted.
"""
from __future__ import annotations

import math

from torch import nn

#: θ of :func:`default_lr`: the spectral size of one Adam step relative to the map's, up to the factor 2.
DEFAULT_ANGLE = 0.02

#: The learning rate of a module without ``in_features`` / ``out_features`` (Adam's usual value).
FALLBACK_LR = 1e-3


def default_lr(module: nn.Module) -> float:
    r""":math:`\theta/\sqrt{\max(p, q)}` for the widest map in ``module`` (θ = :data:`DEFAULT_ANGLE`), or
    :data:`FALLBACK_LR` when no submodule has ``in_features`` and ``out_features``.

    Example:
        >>> import relaxedortho as ro
        >>> round(default_lr(ro.LambdaOrthoLinear(384, 384)), 6)
        0.001021
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    widths = [max(m.in_features, m.out_features) for m in module.modules()
              if isinstance(getattr(m, "in_features", None), int) and isinstance(getattr(m, "out_features", None), int)]
    return DEFAULT_ANGLE / math.sqrt(max(widths)) if widths else FALLBACK_LR
