r"""Aligned transfer of a task vector into an independently pre-trained model.

Endo, Kera, Kawamoto (2025, arXiv 2505.12021) transfer a task vector :math:`\tau` of a source model into a
target model pre-trained independently by learning, per linear layer, a matrix :math:`U` and applying
:math:`W_\text{target} + s\,U^\top\tau U`. Here every weight is stored like :class:`torch.nn.Linear`
(``out x in``, :math:`y = xW^\top + b`) and the update of a layer is two-sided,

.. math::

    W = W_\text{target} + s\,U_\text{out}^\top\,\tau\,U_\text{in}, \qquad
    b = b_\text{target} + s\,U_\text{out}^\top\,\tau_b,

where :math:`U_\text{in}` and :math:`U_\text{out}` are the weights of two alignment maps **from the target's
feature space to the source's**, at the layer's input and output:

- :math:`U_\text{in}` (``in_source x in_target``) maps a target input :math:`x_t` to :math:`x_s = x_t U_\text{in}^\top`;
- :math:`U_\text{out}` (``out_source x out_target``) maps a target output :math:`y_t` to :math:`y_s = y_t U_\text{out}^\top`.

So the update reads a target input in the source basis, applies the source's change :math:`\tau`, and
brings the result back with the adjoint :math:`U_\text{out}^\top` (the inverse when orthogonal). If the target
is exactly the source with its spaces rotated, :math:`x_t = x_s U_\text{in}` and :math:`y_t = y_s U_\text{out}`
for orthogonal :math:`U`, then :math:`W_t = U_\text{out}^\top W_s U_\text{in}` and the transferred update is
exactly the target-side image of :math:`\tau`. For a square layer with :math:`U_\text{in} = U_\text{out} = U`
this is the paper's :math:`U^\top\tau U`. With square orthogonal :math:`U` s the update keeps the Frobenius
norm, singular values and rank of :math:`\tau`; so it does when the target is wider than the source and both
maps have orthonormal rows (:math:`U U^\top = I`).

The maps may be any of the spectrum (:class:`~relaxedortho.OrthogonalLinear`,
:class:`~relaxedortho.StiefelLinear`, :class:`~relaxedortho.LambdaOrthoLinear`,
:class:`~relaxedortho.AffineMap`), without bias. The paper's soft :math:`U` (a free matrix trained with
:math:`\beta\,\mathrm{mean}\lVert U^\top U - I\rVert_F`, :math:`\beta = 1`) is exactly
``LambdaOrthoLinear(d, d, bias=False, lam=0.0, gate="heaviside", penalty_weight=beta, init="identity")``
(see :func:`soft_orthogonal_map`). ``None`` for a side means the identity (the space is shared, e.g. the
pixels of the input layer or the logits of the output layer).
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .._checks import as_float_tensor, as_state_dict, check_nonnegative, check_paired
from ..linalg import polar
from ..maps import LambdaOrthoLinear
from ..maps.base import linear_copy
from .task_vectors import check_module


def soft_orthogonal_map(features: int, *, beta: float = 1.0, init: Any = "identity", dtype=None,
                        device=None) -> LambdaOrthoLinear:
    r"""The paper's soft :math:`U`: a free square matrix whose regularizer is :math:`\beta\lVert U^\top U - I\rVert_F`.

    Endo et al. 2025 (arXiv 2505.12021) train :math:`U` with cross-entropy plus
    :math:`\beta\,\mathrm{mean}_\text{layers}\lVert U^\top U - I\rVert_F` (unsquared, :math:`\beta = 1`);
    :func:`~relaxedortho.transfer.train_transfer_maps` averages the maps' regularizers, so this map
    reproduces it. It is a :class:`~relaxedortho.LambdaOrthoLinear` with :math:`\lambda = 0` and the
    Heaviside gate, :math:`H(n - 0)\,n = n`.

    Example:
        >>> import torch
        >>> u = soft_orthogonal_map(3)
        >>> float(u.regularizer().detach())
        0.0
    """
    if dtype is None and isinstance(init, torch.Tensor):
        dtype = init.dtype
    return LambdaOrthoLinear(features, features, bias=False, lam=0.0, gate="heaviside",
                             penalty_weight=check_nonnegative(beta, "beta"), init=init, dtype=dtype, device=device)


def _check_map(u: Any, name: str, target_dim: int, source_dim: int) -> None:
    if u is None:
        if target_dim != source_dim:
            raise ValueError(f"{name} is None (identity) but the target has {target_dim} features there and the "
                             f"task vector {source_dim}; give a map from {target_dim} to {source_dim} features")
        return
    if not isinstance(u, nn.Module) or not hasattr(u, "weight"):
        raise TypeError(f"{name} must be an alignment map (an nn.Module with a weight) or None, "
                        f"got {type(u).__name__}")
    if getattr(u, "bias", None) is not None:
        raise ValueError(f"{name} must have no bias (bias=False): a weight update has no translation")
    if tuple(u.weight.shape) != (source_dim, target_dim):
        raise ValueError(f"{name} must map the target's {target_dim} features to the source's {source_dim} "
                         f"(weight {source_dim} x {target_dim}), got weight of shape {tuple(u.weight.shape)}")


class TransferredLinear(nn.Module):
    r"""A frozen :class:`torch.nn.Linear` plus an aligned task-vector update (Endo et al. 2025, arXiv 2505.12021).

    .. math::

        y = x\,\big(W + s\,U_\text{out}^\top \tau\, U_\text{in}\big)^\top + b + s\,U_\text{out}^\top \tau_b

    (module documentation: :mod:`relaxedortho.transfer.aligned_update`). Only the maps' parameters
    train; ``W``, ``b`` and :math:`\tau` are frozen (``W``, ``b`` stay in :attr:`base` with
    ``requires_grad=False``, :math:`\tau` is a buffer).

    Args:
        base: the target's layer (kept, with its parameters frozen).
        tau_weight: task vector of the layer's weight, ``out_source x in_source`` (tensor or NumPy array).
        tau_bias: task vector of the bias (``out_source``) or ``None``.
        u_in: map from the target's input features to the source's (weight ``in_source x in_target``), or
            ``None`` for the identity.
        u_out: map from the target's output features to the source's (weight ``out_source x out_target``),
            or ``None``. Pass the same module as ``u_in`` for the paper's tied :math:`U^\top\tau U`, and the same
            module to several layers to share one alignment per feature space.
        scale: task-vector scale :math:`s \ge 0` (default 1).

    Example:
        >>> import torch, relaxedortho as ro
        >>> lin = torch.nn.Linear(3, 3)
        >>> u = ro.OrthogonalLinear(3, 3, init="identity")
        >>> t = TransferredLinear(lin, torch.ones(3, 3), u_in=u, u_out=u, scale=0.5)
        >>> torch.equal(t.effective_weight(), lin.weight + 0.5)
        True
    """

    def __init__(self, base: nn.Linear, tau_weight: Any, tau_bias: Any = None, *, u_in: nn.Module | None = None,
                 u_out: nn.Module | None = None, scale: float = 1.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"base must be an nn.Linear, got {type(base).__name__}")
        tw = as_float_tensor(tau_weight, "tau_weight", ndim=2)
        _check_map(u_in, "u_in", base.in_features, tw.shape[1])
        _check_map(u_out, "u_out", base.out_features, tw.shape[0])
        if tau_bias is not None:
            if base.bias is None:
                raise ValueError("tau_bias given but the base layer has no bias")
            tb = as_float_tensor(tau_bias, "tau_bias", ndim=1)
            if tb.shape[0] != tw.shape[0]:
                raise ValueError(f"tau_bias must have {tw.shape[0]} entries (rows of tau_weight), got {tb.shape[0]}")
        else:
            tb = None
        self.scale = check_nonnegative(scale, "scale")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        dt, dev = base.weight.dtype, base.weight.device
        self.register_buffer("tau_weight", tw.detach().to(dtype=dt, device=dev).clone())
        self.register_buffer("tau_bias", None if tb is None else tb.detach().to(dtype=dt, device=dev).clone())
        self.u_in, self.u_out = u_in, u_out

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def delta_weight(self) -> torch.Tensor:
        r"""The aligned update :math:`U_\text{out}^\top\tau U_\text{in}` (``out x in`` of the target), before scaling."""
        d = self.tau_weight
        if self.u_in is not None:
            d = d @ self.u_in.weight
        if self.u_out is not None:
            d = self.u_out.weight.mT @ d
        return d

    def delta_bias(self) -> torch.Tensor | None:
        r""":math:`U_\text{out}^\top\tau_b`, or ``None`` without a bias task vector."""
        if self.tau_bias is None:
            return None
        return self.tau_bias if self.u_out is None else self.u_out.weight.mT @ self.tau_bias

    def effective_weight(self) -> torch.Tensor:
        r""":math:`W + s\,U_\text{out}^\top\tau U_\text{in}` (differentiable in the maps)."""
        return self.base.weight + self.scale * self.delta_weight()

    def effective_bias(self) -> torch.Tensor | None:
        r""":math:`b + s\,U_\text{out}^\top\tau_b` (or ``b``)."""
        db = self.delta_bias()
        if db is None:
            return self.base.bias
        return self.base.bias + self.scale * db

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.effective_bias())

    @torch.no_grad()
    def to_linear(self) -> nn.Linear:
        """A plain :class:`torch.nn.Linear` holding the effective weight and bias (the same outputs)."""
        return linear_copy(self.effective_weight(), self.effective_bias())

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scale={self.scale}"


def _get_submodule(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"model has no submodule named {name!r}") from None


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def transfer_task_vector(target: nn.Module, tau: Mapping[str, torch.Tensor],
                         maps: Mapping[str, Any], *, scale: float = 1.0, strict: bool = True) -> nn.Module:
    r"""A copy of ``target`` whose chosen linear layers apply the aligned update of ``tau``.

    Each named layer ``L`` (an :class:`torch.nn.Linear` of ``target``) becomes a :class:`TransferredLinear`
    with weight :math:`W_L + s\,U_\text{out}^\top\tau[L.\text{weight}]U_\text{in}` (and bias update from
    ``tau[L.bias]`` when present).

    Args:
        target: the independently pre-trained model (not modified; a deep copy is returned, the maps are
            *not* copied, so training the returned model trains the given maps).
        tau: the source's task vector (:func:`~relaxedortho.transfer.task_vector`).
        maps: ``{layer_name: (u_in, u_out)}``; each side a map from target to source features or ``None``
            (identity). A single map instead of a pair means the tied square form :math:`U^\top\tau U`.
        scale: task-vector scale :math:`s \ge 0` (default 1).
        strict: raise a :class:`ValueError` listing the entries of ``tau`` not covered by a layer of
            ``maps`` (default ``True``); with ``False`` they are ignored.

    Raises:
        ValueError: unknown layer names, missing ``tau`` entries, shapes that do not fit, uncovered keys.
    """
    check_module(target, "target")
    tau = as_state_dict(tau, "tau")
    if not isinstance(maps, Mapping) or not maps:
        raise TypeError(f"maps must be a non-empty mapping {{layer_name: (u_in, u_out)}}, got "
                        f"{type(maps).__name__ if not isinstance(maps, Mapping) else 'an empty mapping'}")
    check_nonnegative(scale, "scale")
    missing = sorted(f"{name}.weight" for name in maps if f"{name}.weight" not in tau)
    if missing:
        raise ValueError(f"tau has no entry for the layers {missing}; its keys are {sorted(tau)}")
    covered = {f"{n}.{p}" for n in maps for p in ("weight", "bias")}
    uncovered = sorted(set(tau) - covered)
    if strict and uncovered:
        raise ValueError(f"entries of tau not covered by any layer in maps: {uncovered} (list their layers in maps, "
                         "with None for an identity side, or pass strict=False to ignore them)")
    out = copy.deepcopy(target, memo={id(m): m for pair in maps.values()
                                      for m in (pair if isinstance(pair, (tuple, list)) else (pair,))
                                      if m is not None})
    for name, pair in maps.items():
        layer = _get_submodule(out, name)
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"layer {name!r} must be an nn.Linear, got {type(layer).__name__}")
        if isinstance(pair, (tuple, list)):
            if len(pair) != 2:
                raise ValueError(f"maps[{name!r}] must be a pair (u_in, u_out) or a single map")
            u_in, u_out = pair
        else:
            u_in = u_out = pair
        _set_submodule(out, name, TransferredLinear(layer, tau[f"{name}.weight"], tau.get(f"{name}.bias"),
                                                    u_in=u_in, u_out=u_out, scale=scale))
    return out


def transfer_maps(model: nn.Module) -> list[nn.Module]:
    """The distinct alignment maps used by the :class:`TransferredLinear` layers of ``model``, in order."""
    seen: dict[int, nn.Module] = {}
    for m in check_module(model, "model").modules():
        if isinstance(m, TransferredLinear):
            for u in (m.u_in, m.u_out):
                if u is not None:
                    seen.setdefault(id(u), u)
    return list(seen.values())


def merge_transferred(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every :class:`TransferredLinear` replaced by a plain :class:`torch.nn.Linear`.

    The merged layer holds :meth:`TransferredLinear.effective_weight` and ``effective_bias``, so outputs are
    unchanged (bit for bit: the forward pass computes the same ``F.linear``). No maps or task vectors remain;
    all parameters of the copy are trainable again.
    """
    if isinstance(model, TransferredLinear):
        return model.to_linear()
    check_module(model, "model")
    layers = {n: m.to_linear() for n, m in model.named_modules() if isinstance(m, TransferredLinear)}
    # the maps and the replaced layers are dropped: do not copy them (memo entries map them to None)
    memo: dict[int, Any] = {id(u): None for u in transfer_maps(model)}
    memo.update({id(model.get_submodule(n)): None for n in layers})
    out = copy.deepcopy(model, memo=memo)
    for n, lin in layers.items():
        _set_submodule(out, n, lin)
    return out


def layer_inputs(model: nn.Module, inputs: torch.Tensor, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """The inputs the named submodules of ``model`` receive on ``inputs`` (one forward pass, no gradients).

    Useful for :func:`procrustes_weight`: the input of layer ``l+1`` is the hidden representation that
    layer ``l`` writes.
    """
    check_module(model, "model")
    if isinstance(names, str) or not isinstance(names, Iterable):
        raise TypeError(f"names must be a list of submodule names, got {type(names).__name__}"
                        + (f" {names!r} (wrap one name in a list)" if isinstance(names, str) else ""))
    names = list(names)
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    store: dict[str, torch.Tensor] = {}
    handles = []
    for n in names:
        mod = _get_submodule(model, n)
        handles.append(mod.register_forward_pre_hook(lambda m, args, n=n: store.__setitem__(n, args[0].detach())))
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for h in handles:
            h.remove()
    return store


def procrustes_weight(target_features: Any, source_features: Any) -> torch.Tensor:
    r"""Orthogonal Procrustes fit of a map from target to source features, as an ``nn.Linear`` weight.

    With paired rows :math:`X_t` (``n x d_t``) and :math:`X_s` (``n x d_s``) of the two models on the same
    inputs, :math:`\arg\min_{W^\top W = I}\lVert X_t W - X_s\rVert_F = \mathrm{polar}(X_t^\top X_s)`
    (Schönemann 1966; docs/math.md §5, row convention). The returned weight is its transpose, ``d_s x d_t``, ready
    for ``OrthogonalLinear.from_matrix`` or any map's ``load_matrix_`` as :math:`U` of
    :class:`TransferredLinear`. With few shots (``n < d``) :math:`X_t^\top X_s` is rank deficient and the fit is
    not unique on the unseen directions. Computed in float64, returned in the dtype of ``target_features``.

    Example:
        >>> import torch
        >>> from relaxedortho.linalg import random_orthogonal
        >>> q = random_orthogonal(4, 4, dtype=torch.float64)
        >>> xs = torch.randn(20, 4, dtype=torch.float64)
        >>> torch.allclose(procrustes_weight(xs @ q, xs), q)  # x_t = x_s Q  =>  U = Q
        True
    """
    xt = as_float_tensor(target_features, "target_features", ndim=2)
    xs = as_float_tensor(source_features, "source_features", ndim=2)
    check_paired(xt, xs, ("target_features", "source_features"))
    return polar(xt.double().mT @ xs.double()).mT.to(xt.dtype).contiguous()
