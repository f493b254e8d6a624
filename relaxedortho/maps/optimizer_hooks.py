r"""Hard maps registered with an optimizer: kept orthonormal after each of its steps, a non-finite step undone.

Nothing here is process-wide: a map joins one optimizer *instance* through
:meth:`~relaxedortho.OrthogonalLinear.register_optimizer` (or every hard map of a module through
:func:`register_hard_maps`, which :func:`~relaxedortho.training.make_optimizer`, :func:`~relaxedortho.fit_alignment`,
:class:`~relaxedortho.training.Trainer`, :func:`~relaxedortho.fit_pair` and the transfer's few-shot trainer call for
the optimizer they use). The optimizer then carries two step hooks of its own
(:meth:`torch.optim.Optimizer.register_step_pre_hook` / ``register_step_post_hook``), added once per optimizer:

- before a step, each registered map that the step updates keeps a copy of the tensors the step may write
  (its ``_guarded_tensors``: one copy of the weight per step, memory traffic, no product);
- after the step, each such map brings its weight back onto the manifold (a fold, a re-projection or a check,
  :mod:`relaxedortho.maps.orthogonal_backends`); a step that wrote NaN or Inf is undone (the copy put back) and
  raises :class:`FloatingPointError`. The map then holds the last orthonormal weight; the optimizer's moments hold
  the non-finite gradient, so training must restart its optimizer (lower the learning rate, rescale the data).

A map updated by an optimizer it was not registered with is brought back at its next forward pass (a hard map
compares the version counter of its parameter, ``tensor._version``, with the one it last checked: a forward after
nothing changed pays one integer comparison). A non-finite weight written by such an optimizer cannot be undone
(no copy was kept): that forward raises :class:`FloatingPointError` and so does every later one, never computing
with it.
"""
from __future__ import annotations

import weakref

import torch
from torch import nn

#: The attribute of an optimizer instance that holds its registered maps (weak references).
_REGISTRY = "_relaxedortho_hard_maps"


def non_finite_step_message(name: str) -> str:
    """The one message for a step that wrote NaN/Inf into the map ``name`` and was undone."""
    return (f"{name}: the optimizer step wrote NaN or Inf into the weight (a non-finite gradient, or one whose square "
            "overflowed in the optimizer's moments: an overflowed loss, data too large for the dtype); the weight "
            "before the step was restored. Rescale the data or lower the learning rate, and restart the optimizer "
            "(its moments hold the non-finite values).")


def is_hard_map(module: nn.Module) -> bool:
    """Whether ``module`` is a map that an optimizer step must be followed by (it has ``register_optimizer``)."""
    return callable(getattr(module, "_after_own_step", None))


def register_hard_maps(module: nn.Module, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Register every hard map among ``module``'s submodules (``module`` included) with ``optimizer``; returns it.

    After each step of ``optimizer`` that updates such a map its weight is orthonormal to rounding, and a step that
    wrote NaN or Inf into it is undone and raises :class:`FloatingPointError` (module documentation). Registering a
    map twice with the same optimizer does nothing more; maps that need nothing after a step (the relaxed and free
    maps) are skipped.

    Example:
        >>> import torch, relaxedortho as ro
        >>> model = torch.nn.Sequential(ro.OrthogonalLinear(4, 4), torch.nn.ReLU())
        >>> opt = register_hard_maps(model, torch.optim.SGD(model.parameters(), lr=0.1))
        >>> model(torch.randn(2, 4)).sum().backward(); opt.step()
        >>> model[0].orthogonality_error() < 1e-5  # folded by the optimizer's own hook, before any forward
        True
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    check_optimizer(optimizer)
    for m in module.modules():
        if is_hard_map(m):
            attach(optimizer, m)
    return optimizer


def check_optimizer(optimizer) -> None:
    """Raise :class:`TypeError` unless ``optimizer`` is a :class:`torch.optim.Optimizer`."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")


def attach(optimizer: torch.optim.Optimizer, hard_map: nn.Module) -> None:
    """Add ``hard_map`` to ``optimizer``'s registered maps (the step hooks are added at its first map)."""
    maps = optimizer.__dict__.get(_REGISTRY)
    if maps is None:
        maps = []
        setattr(optimizer, _REGISTRY, maps)
        optimizer.register_step_pre_hook(_before_step)
        optimizer.register_step_post_hook(_after_step)
    maps[:] = [r for r in maps if r() is not None]
    if not any(r() is hard_map for r in maps):
        maps.append(weakref.ref(hard_map))


def _registered(optimizer) -> list[nn.Module]:
    return [m for m in (r() for r in optimizer.__dict__.get(_REGISTRY, ())) if m is not None]


def _stepped(optimizer) -> set[int]:
    return {id(p) for group in optimizer.param_groups for p in group["params"]}


@torch.no_grad()
def _before_step(optimizer, args, kwargs) -> None:
    stepped = _stepped(optimizer)
    for m in _registered(optimizer):
        tensors = [t for t in m._guarded_tensors() if id(t) in stepped]
        m._before_step = [(t, t.detach().clone()) for t in tensors] or None


@torch.no_grad()
def _after_step(optimizer, args, kwargs) -> None:
    stepped = _stepped(optimizer)
    error = None
    for m in _registered(optimizer):  # every map is brought back, the first error raised after
        if not any(id(t) in stepped for t in m._trainable_tensors()):
            continue
        try:
            m._after_own_step(optimizer)
        except FloatingPointError as e:
            error = error or e
    if error is not None:
        raise error


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


class RegistersWithOptimizers:
    """Mixin of the hard maps: :meth:`register_optimizer`. Subclasses define ``_trainable_tensors()`` (what an
    optimizer step updates), ``_guarded_tensors()`` (what a step may write that must be put back if it is not
    finite) and ``_after_own_step(optimizer)`` (run after a step of a registered optimizer that updated the map)."""

    def register_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Keep this map's weight orthonormal after every step of ``optimizer`` (an instance of any
        :class:`torch.optim.Optimizer`, geoopt's included); returns ``optimizer``.

        A step that updates the map is followed by its fold, re-projection or check, and a step that wrote NaN or
        Inf into it is undone and raises :class:`FloatingPointError`
        (:mod:`relaxedortho.maps.optimizer_hooks`). Optimizers built by
        :func:`~relaxedortho.training.make_optimizer` and the training functions are registered already; an
        optimizer that is not is caught up at the next forward pass instead.

        Example:
            >>> import torch, relaxedortho as ro
            >>> m = ro.OrthogonalLinear(5, 3)
            >>> opt = m.register_optimizer(torch.optim.Adam(m.parameters(), lr=1e-2))
            >>> m(torch.randn(4, 5)).sum().backward(); opt.step()
            >>> m.orthogonality_error() < 1e-5
            True
        """
        check_optimizer(optimizer)
        attach(optimizer, self)
        return optimizer
