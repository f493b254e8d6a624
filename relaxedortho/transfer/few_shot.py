r"""A small few-shot training loop: learn only the alignment maps of a transferred model.

The objective of Endo, Kera, Kawamoto (2025, arXiv 2505.12021) for the maps :math:`U_1,\dots,U_L`:

.. math:: \mathcal L = \mathrm{CE}\big(f_{U}(x), y\big) + \frac1L\sum_{l=1}^{L} R(U_l),

with :math:`R` each map's :meth:`~relaxedortho.AlignmentMap.regularizer` (the paper's
:math:`\beta\lVert U^\top U - I\rVert_F` for :func:`~relaxedortho.transfer.soft_orthogonal_map`, the
λ-orthogonality penalty for :class:`~relaxedortho.LambdaOrthoLinear`, 0 for hard and free maps). Adam
without weight decay (decay pulls :math:`U` towards 0, away from orthogonality); geoopt's
``RiemannianAdam`` at :func:`~relaxedortho.riemannian_lr` when a map holds a Stiefel manifold parameter.
Hard :class:`~relaxedortho.OrthogonalLinear` maps stay orthogonal through their own mechanism.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .._checks import check_int, check_positive
from ..training.trainer import NonFiniteLossError
from ..training.history import TrainHistory
from ..training.optimizers import make_optimizer
from .aligned_update import transfer_maps
from .task_vectors import check_module


def _check_data(inputs, labels, model, batch_size, generator):
    check_module(model, "model")
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
        got = f"{type(inputs).__name__}" + (f" of dtype {inputs.dtype}" if isinstance(inputs, torch.Tensor) else "")
        raise TypeError(f"inputs must be a floating-point torch.Tensor, got {got}")
    if not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.int64, torch.int32):
        got = f"{type(labels).__name__}" + (f" of dtype {labels.dtype}" if isinstance(labels, torch.Tensor) else "")
        raise TypeError(f"labels must be an integer torch.Tensor of class indices (int64), got {got}")
    if inputs.ndim == 0 or labels.ndim != 1 or inputs.shape[0] != labels.shape[0]:
        raise ValueError(f"inputs (shape {tuple(inputs.shape)}) and labels (shape {tuple(labels.shape)}) must be "
                         f"paired: one label per input row")
    if inputs.shape[0] == 0:
        raise ValueError("inputs and labels are empty (0 rows)")
    if not bool(torch.isfinite(inputs).all()):
        raise ValueError("inputs contain NaN or Inf values")
    if int(labels.min()) < 0:
        raise ValueError(f"labels must be class indices >= 0, got {int(labels.min())}")
    check_int(batch_size, "batch_size", none_means="full batch")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def _steps(steps) -> int:
    return check_int(steps, "steps")


def train_transfer_maps(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, *, steps: int = 200,
                        lr: float = 1e-2, batch_size: int | None = None,
                        generator: torch.Generator | None = None) -> list[float]:
    r"""Train only the alignment maps of ``model`` (from :func:`~relaxedortho.transfer.transfer_task_vector`).

    Minimises cross-entropy plus the mean of the maps' regularizers (module documentation) with Adam (no
    weight decay). Every other parameter of ``model`` is frozen during the call and restored afterwards.

    Args:
        model: a model with :class:`~relaxedortho.transfer.TransferredLinear` layers, returning logits.
        inputs: few-shot inputs (``n x ...``, float tensor).
        labels: their class indices (``n``, int64).
        steps: optimizer steps (default 200).
        lr: Adam learning rate (default 1e-2; Stiefel maps get :func:`~relaxedortho.riemannian_lr`).
        batch_size: minibatch size, ``None`` (default) for full batch.
        generator: random generator for the minibatch order.

    Returns:
        the training loss at each step.
    """
    _check_data(inputs, labels, model, batch_size, generator)
    steps = _steps(steps)
    lr = check_positive(lr, "lr")
    maps = transfer_maps(model)
    if not maps:
        raise ValueError("model has no alignment maps to train (no TransferredLinear layer with a map)")
    map_params = {id(p): p for u in maps for p in u.parameters()}
    frozen = [(p, p.requires_grad) for p in model.parameters() if id(p) not in map_params]
    for p, _ in frozen:
        p.requires_grad_(False)
    opt = make_optimizer(nn.ModuleList(maps), lr)   # Adam; RiemannianAdam at riemannian_lr for Stiefel maps
    try:
        return _cross_entropy_steps(model, opt, inputs, labels, steps, batch_size, generator,
                                    extra=lambda: sum(u.regularizer() for u in maps) / len(maps))
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)


def _cross_entropy_steps(model, opt, inputs, labels, steps, batch_size, generator, extra=None) -> list[float]:
    """``steps`` optimizer steps on cross-entropy (plus ``extra()``), model in training mode; the losses.

    Raises :class:`ValueError` when a label is not below the number of logits (checked at the first step) and
    :class:`~relaxedortho.training.NonFiniteLossError` when the loss becomes NaN or Inf.
    """
    was_training = model.training
    model.train()
    history = []
    try:
        for step in range(1, steps + 1):
            xb, yb = _batch(inputs, labels, batch_size, generator)
            opt.zero_grad(set_to_none=True)
            logits = model(xb)
            if step == 1 and (logits.ndim != 2 or int(labels.max()) >= logits.shape[-1]):
                raise ValueError(f"labels must be below the number of classes: the model returns logits of shape "
                                 f"{tuple(logits.shape)}, the largest label is {int(labels.max())}")
            loss = F.cross_entropy(logits, yb)
            if extra is not None:
                loss = loss + extra()
            value = float(loss.detach())
            if not math.isfinite(value):  # before the step: the weights stay those of the last finite loss
                raise NonFiniteLossError(f"training loss became NaN or Inf at step {step}; training stopped with the "
                                         f"weights of step {step - 1}. Try a smaller lr", step,
                                         TrainHistory(steps=step - 1))
            loss.backward()
            opt.step()
            history.append(value)
    finally:
        model.train(was_training)
    return history


def _batch(inputs, labels, batch_size, generator):
    if batch_size is None or batch_size >= inputs.shape[0]:
        return inputs, labels
    idx = torch.randperm(inputs.shape[0], generator=generator)[:batch_size]
    return inputs[idx], labels[idx]


def finetune_few_shot(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, *, steps: int = 200,
                      lr: float = 1e-3, batch_size: int | None = None,
                      generator: torch.Generator | None = None) -> list[float]:
    """Fine-tune every parameter of ``model`` in place with Adam on cross-entropy (the few-shot baseline).

    Returns the training loss at each step.
    """
    _check_data(inputs, labels, model, batch_size, generator)
    steps = _steps(steps)
    opt = torch.optim.Adam(model.parameters(), lr=check_positive(lr, "lr"))
    return _cross_entropy_steps(model, opt, inputs, labels, steps, batch_size, generator)
