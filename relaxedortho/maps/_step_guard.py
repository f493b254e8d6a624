r"""A hard map never keeps a non-finite weight after an optimizer step.

A NaN or Inf gradient (an overflowed loss, data at ``1e30`` in float32) makes Adam or SGD write NaN/Inf into the
parameters it updates, and no projection can recover an orthonormal matrix from that. The maps registered here
(:class:`~relaxedortho.OrthogonalLinear` whose weight the optimizer writes — ``"retraction"`` and the
parametrizations — and :class:`~relaxedortho.StiefelLinear`) keep a copy of those parameters before every
``torch.optim`` step that updates them (one copy of the weight per step: memory traffic, no product) and, after
the step, put it back and raise :class:`FloatingPointError` when the step wrote a non-finite value. The map then
holds the last orthonormal weight; the optimizer's moments hold the non-finite gradient, so training must restart
its optimizer (lower the learning rate, rescale the data). ``"trivialization"`` needs no copy: its optimizer writes
the generator, whose non-finite update is discarded before it reaches the weight.

The check after the step reads one boolean per map (a synchronisation on a GPU); ``"retraction"`` reads it as
part of its re-projection.
"""
from __future__ import annotations

import weakref

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

_GUARDED: "weakref.WeakSet" = weakref.WeakSet()
_HOOKS: list = []


def guard(module) -> None:
    """Register ``module``: it provides ``_guarded_tensors()`` (the tensors an optimizer step may write) and
    ``_check_after_step()`` (called after a step that updated them; :func:`restore_before_step` puts them back)."""
    _GUARDED.add(module)
    if not _HOOKS:
        _HOOKS.append(register_optimizer_step_pre_hook(_keep_before_step))
        _HOOKS.append(register_optimizer_step_post_hook(_check_after_step))


def non_finite_step_message(name: str) -> str:
    """The one message for a step that wrote NaN/Inf into the map ``name`` and was undone."""
    return (f"{name}: the optimizer step wrote NaN or Inf into the weight (a non-finite gradient, or one whose square "
            "overflowed in the optimizer's moments: an overflowed loss, data too large for the dtype); the weight "
            "before the step was restored. Rescale the data or lower the learning rate, and restart the optimizer "
            "(its moments hold the non-finite values).")


def _stepped(optimizer) -> set[int]:
    return {id(p) for group in optimizer.param_groups for p in group["params"]}


@torch.no_grad()
def _keep_before_step(optimizer, args, kwargs) -> None:
    modules = list(_GUARDED)
    if not modules:
        return
    stepped = _stepped(optimizer)
    for module in modules:
        tensors = [t for t in module._guarded_tensors() if id(t) in stepped]
        module._before_step = [(t, t.detach().clone()) for t in tensors] or None


@torch.no_grad()
def _check_after_step(optimizer, args, kwargs) -> None:  # the copies stay until the next step's pre-hook
    for module in list(_GUARDED):
        if module.__dict__.get("_before_step"):
            module._check_after_step()


@torch.no_grad()
def restore_before_step(module) -> bool:
    """Put back the copies taken before the last step that updated ``module``; ``False`` if there were none."""
    saved = module.__dict__.get("_before_step")
    if not saved:
        return False
    for tensor, copy in saved:
        tensor.detach().copy_(copy)
    module._before_step = None
    return True
