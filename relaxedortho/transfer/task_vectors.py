r"""Task vectors: the weight change of a fine-tuning, as a dictionary of tensors.

A task vector (Ilharco et al., "Editing models with task arithmetic", ICLR 2023) is

.. math:: \tau = \theta_\text{finetuned} - \theta_\text{pretrained},

taken entry by entry over the floating-point tensors of two state_dicts with the same keys and shapes.
Adding :math:`s\,\tau` to the *same* pre-trained model applies the task with strength :math:`s`; adding it
to an independently pre-trained model needs the alignment of :mod:`relaxedortho.transfer.aligned_update`
(Endo, Kera, Kawamoto 2025, arXiv 2505.12021).
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .._checks import as_state_dict, check_nonnegative


def check_module(obj: Any, name: str) -> nn.Module:
    """``obj`` itself when it is an :class:`torch.nn.Module`, else a :class:`TypeError` naming ``name``."""
    if not isinstance(obj, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(obj).__name__}")
    return obj


def check_same_layout(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor],
                      names: tuple[str, str] = ("a", "b")) -> None:
    """Raise :class:`ValueError` listing every key missing on either side and every key whose shapes differ.

    Example:
        >>> import torch
        >>> check_same_layout({"w": torch.zeros(2)}, {"w": torch.zeros(3), "v": torch.zeros(1)}, ("src", "tgt"))
        Traceback (most recent call last):
        ...
        ValueError: src and tgt do not match: keys only in tgt: ['v']; shape mismatch: w: (2,) in src vs (3,) in tgt
    """
    only_b = sorted(set(b) - set(a))
    problems = _layout_problems(a, b, names, f"keys only in {names[0]}")
    if only_b:
        problems.insert(1 if set(a) - set(b) else 0, f"keys only in {names[1]}: {only_b}")
    if problems:
        raise ValueError(f"{names[0]} and {names[1]} do not match: " + "; ".join(problems))


def task_vector(finetuned: Any, pretrained: Any) -> dict[str, torch.Tensor]:
    r"""The task vector :math:`\tau = \theta_\text{ft} - \theta_\text{pre}` of two models or state_dicts.

    Both must have exactly the same keys and shapes; otherwise a :class:`ValueError` lists the offending
    keys. Only floating-point entries are differenced (integer buffers such as BatchNorm's
    ``num_batches_tracked`` are skipped). The result is detached and computed in the finetuned dtype.

    Args:
        finetuned: the fine-tuned model (:class:`torch.nn.Module`) or its state_dict.
        pretrained: the model it was fine-tuned from, or its state_dict.

    Example:
        >>> import torch
        >>> tv = task_vector({"w": torch.tensor([3.0, 1.0])}, {"w": torch.tensor([1.0, 1.0])})
        >>> tv["w"].tolist()
        [2.0, 0.0]
    """
    ft = as_state_dict(finetuned, "finetuned")
    pre = as_state_dict(pretrained, "pretrained")
    check_same_layout(ft, pre, ("finetuned", "pretrained"))
    return {k: (v.detach() - pre[k].detach().to(v.dtype)).clone()
            for k, v in ft.items() if v.is_floating_point()}


def apply_task_vector(model: nn.Module, tau: Mapping[str, torch.Tensor], scale: float = 1.0) -> nn.Module:
    r"""A copy of ``model`` with :math:`\theta + s\,\tau` ("direct" application, no alignment).

    ``tau`` must hold a subset of the model's floating-point state_dict keys with the same shapes (a
    :class:`ValueError` lists the offending keys otherwise); keys absent from ``tau`` are left unchanged.

    Args:
        model: the model to edit (not modified; a deep copy is returned).
        tau: a task vector, e.g. from :func:`task_vector`.
        scale: the task-vector scale :math:`s \ge 0` (default 1).
    """
    s = check_nonnegative(scale, "scale")
    check_module(model, "model")
    out = copy.deepcopy(model)
    state = out.state_dict()
    tau = as_state_dict(tau, "tau")
    check_subset(tau, state, ("tau", "model"))
    with torch.no_grad():
        for k, v in tau.items():
            state[k].add_(v.to(dtype=state[k].dtype, device=state[k].device), alpha=s)
    return out


def check_subset(part: Mapping[str, torch.Tensor], whole: Mapping[str, torch.Tensor],
                 names: tuple[str, str]) -> None:
    """Raise :class:`ValueError` listing keys of ``part`` missing from ``whole`` and keys whose shapes differ."""
    problems = _layout_problems(part, whole, names, f"keys of {names[0]} missing from {names[1]}")
    if problems:
        raise ValueError(f"{names[0]} does not fit {names[1]}: " + "; ".join(problems))


def _layout_problems(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], names: tuple[str, str],
                     missing_label: str) -> list[str]:
    """Messages for keys of ``a`` absent from ``b`` and for shared keys whose shapes differ."""
    missing = sorted(set(a) - set(b))
    shapes = [f"{k}: {tuple(a[k].shape)} in {names[0]} vs {tuple(b[k].shape)} in {names[1]}"
              for k in sorted(set(a) & set(b)) if a[k].shape != b[k].shape]
    problems = [f"{missing_label}: {missing}"] if missing else []
    if shapes:
        problems.append("shape mismatch: " + "; ".join(shapes))
    return problems
