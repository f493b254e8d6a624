r"""The right optimizer for each map of the spectrum.

- geoopt :class:`~geoopt.ManifoldParameter` s (:class:`~relaxedortho.StiefelLinear`) need a Riemannian
  optimizer: :class:`geoopt.optim.RiemannianAdam` at the learning rate :func:`relaxedortho.riemannian_lr`
  (:math:`\mathrm{lr}\sqrt{pq}` for a :math:`q \times p` matrix; geoopt keeps one second moment per manifold
  matrix, docs/math.md §4). Plain parameters in the same optimizer are treated as Euclidean, i.e. exactly Adam.
- Every other map trains with :class:`torch.optim.Adam` (the paper's choice, arXiv 2509.16664 §4).
  :class:`~relaxedortho.OrthogonalLinear` works with it: :func:`make_optimizer` registers every hard map with the
  optimizer it builds (:func:`~relaxedortho.maps.optimizer_hooks.register_hard_maps`), whose step hooks then fold,
  re-project or check the weight after every step and undo a step that wrote NaN or Inf.
- Weight decay (if any) never applies to orthogonal factors: it pulls them off the manifold (Endo et al.,
  arXiv 2505.12021; docs/math.md §8). Their biases are decayed like other parameters.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .._checks import check_nonnegative, check_positive
from .._geoopt import is_manifold_parameter as _is_manifold  # geoopt is imported only for a manifold parameter
from ..maps.optimizer_hooks import register_hard_maps

__all__ = ["make_optimizer", "parameter_groups", "register_hard_maps"]


def parameter_groups(module: nn.Module, lr: float, weight_decay: float = 0.0) -> list[dict]:
    """Split ``module``'s trainable parameters into optimizer groups.

    Returns up to three groups, empty ones left out: ``"manifold"`` (geoopt manifold parameters,
    ``lr = riemannian_lr``, no decay), ``"orthogonal"`` (the weights of maps with ``is_orthogonal = True``
    and their parametrization originals, no decay) and ``"free"`` (everything else, ``weight_decay``).
    Each group carries its name under the key ``"name"``.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    lr = check_positive(lr, "lr")
    weight_decay = check_nonnegative(weight_decay, "weight_decay")
    orthogonal_ids = set()
    for m in module.modules():
        if getattr(m, "is_orthogonal", False):
            for pname, p in m.named_parameters():
                if not pname.endswith("bias"):
                    orthogonal_ids.add(id(p))
    manifold, orthogonal, free = [], [], []
    manifold_lrs = []
    for p in module.parameters():
        if not p.requires_grad:
            continue
        if _is_manifold(p):
            manifold.append(p)
            rows, cols = (p.shape[-2], p.shape[-1]) if p.ndim >= 2 else (p.numel(), 1)
            manifold_lrs.append(lr * math.sqrt(rows * cols))
        elif id(p) in orthogonal_ids:
            orthogonal.append(p)
        else:
            free.append(p)
    groups = [{"name": "manifold", "params": [p], "lr": plr, "weight_decay": 0.0}
              for p, plr in zip(manifold, manifold_lrs)]
    if orthogonal:
        groups.append({"name": "orthogonal", "params": orthogonal, "lr": lr, "weight_decay": 0.0})
    if free:
        groups.append({"name": "free", "params": free, "lr": lr, "weight_decay": weight_decay})
    if not groups:
        raise ValueError("module has no trainable parameters")
    return groups


def make_optimizer(module: nn.Module, lr: float, *, weight_decay: float = 0.0,
                   betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.Optimizer:
    r"""Adam for ``module``, Riemannian where it must be (see the module documentation).

    Returns :class:`geoopt.optim.RiemannianAdam` when ``module`` holds a manifold parameter, else
    :class:`torch.optim.Adam`; the groups come from :func:`parameter_groups`. Every hard map of ``module`` is
    registered with it (:func:`~relaxedortho.maps.optimizer_hooks.register_hard_maps`): after each step its weight
    is orthonormal to rounding, and a step that wrote NaN or Inf into it is undone and raises
    :class:`FloatingPointError`.

    Example:
        >>> import relaxedortho as ro
        >>> type(make_optimizer(ro.StiefelLinear(4, 6), 1e-3)).__name__
        'RiemannianAdam'
        >>> type(make_optimizer(ro.LambdaOrthoLinear(4, 6), 1e-3)).__name__
        'Adam'
    """
    groups = parameter_groups(module, lr, weight_decay)
    if any(g["name"] == "manifold" for g in groups):
        from .._geoopt import geoopt
        optimizer = geoopt.optim.RiemannianAdam(groups, lr=lr, betas=betas, eps=eps)
    else:
        optimizer = torch.optim.Adam(groups, lr=lr, betas=betas, eps=eps)
    return register_hard_maps(module, optimizer)
