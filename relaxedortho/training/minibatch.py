r"""The one mini-batch loop for modules trained on a loss the caller writes: the demo's and the transfer
experiment's classifiers and every trained method of :mod:`relaxedortho.compat`.

:func:`train_module` runs ``epochs`` passes of shuffled mini-batches over paired tensors and minimises a
loss the caller writes, ``loss_fn(module, *batch) -> scalar``. The optimizer is
:func:`relaxedortho.training.make_optimizer` (Adam; hard orthogonal layers such as
:class:`~relaxedortho.OrthogonalLinear` stay exactly orthogonal through its step hook, and get no weight
decay). The module is left in ``eval()`` mode. Deterministic for a given ``seed`` on a given machine.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .._checks import check_int, check_nonnegative, check_positive

__all__ = ["train_module", "train_classifier"]


def train_module(module: nn.Module, loss_fn: Callable[..., torch.Tensor], tensors: Sequence[torch.Tensor], *,
                 epochs: int, batch_size: int, lr: float, seed: int = 0, weight_decay: float = 0.0,
                 freeze: bool = False) -> list[float]:
    """Minimise ``loss_fn(module, *batch)`` over mini-batches of ``tensors`` (rows paired); returns the mean
    loss of each epoch.

    Args:
        module: the module to train (all parameters with ``requires_grad``).
        loss_fn: called with the module and one mini-batch slice of every tensor, in order.
        tensors: tensors with the same number of rows (inputs, labels, targets, ...), on one device.
        epochs, batch_size, lr: the schedule (Adam at a constant learning rate).
        seed: seeds the shuffling (a CPU generator; the order does not depend on the device).
        weight_decay: Adam's L2 decay (never applied to orthogonal factors, see
            :func:`~relaxedortho.training.parameter_groups`).
        freeze: after training, set ``requires_grad=False`` on every parameter (a frozen model).

    Raises:
        ValueError: for mismatched rows, no rows, or a non-finite loss (the epoch and step are named).

    Example:
        >>> import torch
        >>> m = torch.nn.Linear(2, 1)
        >>> x = torch.randn(64, 2); y = x @ torch.tensor([[1.0], [-2.0]])
        >>> losses = train_module(m, lambda mod, a, b: ((mod(a) - b) ** 2).mean(), [x, y],
        ...                       epochs=200, batch_size=32, lr=5e-2)
        >>> losses[-1] < 1e-3
        True
    """
    from .optimizers import make_optimizer

    check_int(epochs, "epochs")
    check_int(batch_size, "batch_size")
    check_positive(lr, "lr")
    check_nonnegative(weight_decay, "weight_decay")
    if not tensors:
        raise ValueError("tensors must hold at least one tensor")
    n = tensors[0].shape[0]
    if n == 0:
        raise ValueError("tensors have no rows")
    for i, t in enumerate(tensors):
        if t.shape[0] != n:
            raise ValueError(f"tensors[{i}] has {t.shape[0]} rows but tensors[0] has {n}")
    opt = make_optimizer(module, lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(int(seed))
    history = []
    module.train()
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen).to(tensors[0].device)
        total, steps = 0.0, 0
        for start in range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(module, *(t[idx] for t in tensors))
            if not torch.isfinite(loss.detach()):
                raise ValueError(f"the loss became {float(loss.detach())} at epoch {epoch + 1}, step {steps + 1}; "
                                 f"lower lr (now {lr:g})")
            loss.backward()
            opt.step()
            total += float(loss.detach())
            steps += 1
        history.append(total / steps)
    module.eval()
    if freeze:
        for p in module.parameters():
            p.requires_grad_(False)
    return history


def train_classifier(model: nn.Module, X: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float,
                     batch_size: int, seed: int, freeze: bool = True) -> nn.Module:
    """Train ``model`` on cross-entropy of its logits against the class indices ``y`` with :func:`train_module`
    (Adam, shuffled mini-batches from ``seed``); returns it in ``eval()`` mode, frozen unless ``freeze=False``."""
    train_module(model, lambda m, xb, yb: nn.functional.cross_entropy(m(xb), yb), [X, y], epochs=epochs,
                 batch_size=batch_size, lr=lr, seed=seed, freeze=freeze)
    return model
