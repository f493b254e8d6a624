r"""The hard end of the spectrum through geoopt: a Stiefel :class:`geoopt.ManifoldParameter`.

geoopt's :class:`geoopt.Stiefel` manifold holds tall matrices only (``shape[-1] <= shape[-2]``). A wide
(compressing) map stores its transpose and exposes ``weight`` as a view, so every shape works.
Train it with :class:`geoopt.optim.RiemannianAdam` or :class:`geoopt.optim.RiemannianSGD`; see
:func:`riemannian_lr` for the learning rate.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .._checks import check_device, check_features, check_positive
from .._geoopt import geoopt
from ..linalg import random_orthogonal
from ..polar_projection import project_orthonormal_
from .base import AlignmentMap, check_dtype, entry_dtype, initial_weight, orthonormal_entry
from .optimizer_hooks import RegistersWithOptimizers, non_finite_step_message, restore_before_step


#: With ``canonical=True`` the weight is re-projected (:func:`~relaxedortho.polar_projection.project_orthonormal`, one
#: polynomial pass) after every this many optimizer steps: geoopt's Cayley retraction drifts off the manifold by about
#: 9e-7 per float32 step at d = 128 (1.7e-3 after 2000 steps); with the re-projection ``||G - I||_F`` stayed below
#: 4.3e-6 over 10^4 steps (``benchmarks/bench_maps.py``).
CANONICAL_POLISH_EVERY = 4
#: ... or as soon as the steps since the last re-projection moved the weight by more than this (Frobenius norm; a
#: step of Adam at lr 1e-3 moves a 128 x 128 map by about 0.13).
CANONICAL_POLISH_DISTANCE = 0.5


def riemannian_lr(lr: float, in_features: int, out_features: int) -> float:
    r"""Learning rate for :class:`geoopt.optim.RiemannianAdam` that moves like Adam at ``lr``: :math:`lr\sqrt{pq}`.

    geoopt's RiemannianAdam keeps one scalar second moment per manifold matrix, so each step moves about
    ``lr`` in Frobenius norm, while Adam moves about ``lr`` per *entry*, i.e. :math:`lr\sqrt{pq}` in
    Frobenius norm (docs/math.md §4).
    """
    lr = check_positive(lr, "lr")
    in_features, out_features = check_features(in_features, "in_features"), check_features(out_features, "out_features")
    return lr * math.sqrt(in_features * out_features)


class StiefelLinear(RegistersWithOptimizers, AlignmentMap, nn.Module):
    r"""Hard orthogonal map :math:`y = xA^\top (+ b)` whose weight is a geoopt Stiefel ``ManifoldParameter``.

    Args:
        in_features, out_features: sizes (square, tall or wide).
        bias: learn a translation (default ``False``).
        canonical: use geoopt's canonical metric with the Cayley retraction (an n×n solve) instead of the
            Euclidean metric with the QR retraction (default ``False``).
        init: ``"orthogonal"`` (default), ``"identity"`` or an orthonormal ``out x in`` matrix.
        device, dtype: factory arguments.

    Train with a geoopt Riemannian optimizer (plain ``torch.optim`` optimizers leave the manifold), at a
    learning rate scaled by :func:`riemannian_lr`; ``relaxedortho.fit_alignment`` does both.

    After every step of an optimizer registered with the map (:meth:`register_optimizer`; the one that
    :func:`~relaxedortho.training.make_optimizer` and ``fit_alignment`` build is) that updates the weight: a step that
    wrote NaN or Inf is undone and raises :class:`FloatingPointError`; with ``canonical=True`` the weight is
    re-projected every :data:`CANONICAL_POLISH_EVERY` steps, which keeps it orthonormal to float32 rounding (the
    steps since the last re-projection are counted in the buffers ``polish_steps`` and ``polish_moved``, saved
    with the map, so that a reloaded map re-projects at the same steps). After the step of an optimizer it is not
    registered with, and after an edit by hand, the weight is projected back (:meth:`project_`) at the next forward
    pass. A weight given by ``init``, :meth:`load_matrix_` or a loaded state is checked like every hard map's
    (:func:`~relaxedortho.maps.base.orthonormal_entry`).

    Example:
        >>> import torch
        >>> m = StiefelLinear(3, 5)
        >>> tuple(m.weight.shape), tuple(m.stiefel_weight.shape)
        ((5, 3), (5, 3))
        >>> tuple(StiefelLinear(5, 3).stiefel_weight.shape)  # wide maps store the transpose
        (5, 3)
    """

    is_orthogonal = True
    register_optimizer = RegistersWithOptimizers.register_optimizer  # documented with the class

    def __init__(self, in_features: int, out_features: int, bias: bool = False, *, canonical: bool = False,
                 init: Any = "orthogonal", device=None, dtype=None) -> None:
        check_features(in_features, "in_features")
        check_features(out_features, "out_features")
        check_dtype(dtype)
        device = None if device is None else check_device(device)
        super().__init__()
        self.in_features, self.out_features, self.canonical = in_features, out_features, bool(canonical)
        dtype = dtype or torch.get_default_dtype()
        if isinstance(init, str) and init == "orthogonal":  # orthonormal to rounding by construction
            w0 = random_orthogonal(out_features, in_features, dtype=dtype, device=device)
        else:
            w0 = initial_weight(init, out_features, in_features, dtype=dtype, device=device)
            w0 = orthonormal_entry(w0, "init", source_dtype=entry_dtype(init))
        manifold = geoopt.Stiefel(canonical=self.canonical)
        self.stiefel_weight = geoopt.ManifoldParameter(self._to_stored(w0).clone(), manifold=manifold)
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None
        if self.canonical:
            _add_polish_buffers(self)
        self._register_load_state_dict_pre_hook(_keep_state_before_load, with_module=True)
        self.register_load_state_dict_post_hook(_check_loaded_state)
        self.register_forward_pre_hook(_stiefel_pre_hook)
        self._mark_exact()

    def __getstate__(self) -> dict:
        state = super().__getstate__()  # the step guard's and load check's copies are transient
        state.pop("_before_step", None)
        state.pop("_state_before_load", None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)  # a deep copy or an unpickled map: new tensors, registered with no optimizer
        self._before_step = None
        if self.canonical and "polish_steps" not in self._buffers:  # pickled by an earlier version
            _add_polish_buffers(self)
        self._mark_exact()

    # -- what an optimizer step touches (maps/optimizer_hooks.py) ----------------------------------------
    def _guarded_tensors(self) -> list[torch.Tensor]:
        return [self.stiefel_weight]

    _trainable_tensors = _guarded_tensors

    @torch.no_grad()
    def _after_own_step(self, optimizer) -> None:
        """After an optimizer step that updated the weight: restore it and raise if the step wrote NaN/Inf; after
        the step of an optimizer that is not Riemannian (not a geoopt optimizer: its step leaves the manifold),
        re-project it; with ``canonical=True``, re-project it every :data:`CANONICAL_POLISH_EVERY` steps, or at once when the steps
        since the last re-projection moved it by more than :data:`CANONICAL_POLISH_DISTANCE` (Frobenius norm):
        the Cayley retraction's rounding grows with the step."""
        w = self.stiefel_weight.as_subclass(torch.Tensor)
        before = self._before_step[0][1]
        finite, moved = torch.stack([torch.isfinite(w).all().to(w.dtype),
                                     torch.linalg.vector_norm(w - before)]).tolist()
        if not finite or not math.isfinite(moved):
            if restore_before_step(self):
                self._mark_exact()  # the weight before the step, accepted then: not an edit to re-project
            raise FloatingPointError(non_finite_step_message("StiefelLinear"))
        if not isinstance(optimizer, geoopt.optim.mixin.OptimMixin):
            project_orthonormal_(w)
        elif self.canonical:  # the counters are buffers: a saved and reloaded map polishes at the same steps
            steps, total = int(self.polish_steps) + 1, float(self.polish_moved) + moved
            if steps >= CANONICAL_POLISH_EVERY or total > CANONICAL_POLISH_DISTANCE:
                steps, total = 0, 0.0
                project_orthonormal_(w)
            self.polish_steps.fill_(steps)
            self.polish_moved.fill_(total)
        self._mark_exact()

    def _mark_exact(self) -> None:
        """Record the weight's version as checked (a later change that is no step is an edit by hand)."""
        self._exact_version = self.stiefel_weight._version

    @property
    def wide(self) -> bool:
        return self.out_features < self.in_features

    def _to_stored(self, w: torch.Tensor) -> torch.Tensor:
        return w.mT.contiguous() if self.wide else w

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        """The ``out x in`` matrix (a view of the stored tall Stiefel point), projected back first when an edit or
        an unregistered optimizer's step changed it (a version comparison when nothing did)."""
        if "_exact_version" in self.__dict__ and not torch.compiler.is_compiling():
            _project_if_edited(self)
        w = self.stiefel_weight.as_subclass(torch.Tensor)
        return w.mT if self.wide else w

    @torch.no_grad()
    def load_matrix_(self, weight: Any, bias: Any = None) -> "StiefelLinear":
        w, b = self._validated(weight, bias)
        source = w.dtype
        w = orthonormal_entry(w.to(dtype=self.stiefel_weight.dtype, device=self.stiefel_weight.device), "weight",
                              source_dtype=source)
        self.stiefel_weight.copy_(self._to_stored(w))
        self._mark_exact()
        if self.bias is not None:
            self.bias.copy_(b) if b is not None else self.bias.zero_()
        return self

    @torch.no_grad()
    def project_(self) -> "StiefelLinear":
        """Project the stored point back onto the manifold (its orthogonal polar factor,
        :func:`~relaxedortho.polar_projection.project_orthonormal`: one polynomial pass after float32 drift, the SVD
        far from it); unchanged when orthonormal to rounding already."""
        project_orthonormal_(self.stiefel_weight.as_subclass(torch.Tensor))
        self._mark_exact()
        return self

    def config(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None,
                "canonical": self.canonical}

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"canonical={self.canonical}")


def _add_polish_buffers(module: StiefelLinear) -> None:
    """``canonical=True``: the optimizer steps since the last re-projection and the distance they moved the weight
    (buffers, so that a saved and reloaded map, or a resumed run, re-projects at the same steps)."""
    w = module.stiefel_weight
    module.register_buffer("polish_steps", torch.zeros((), dtype=torch.int64, device=w.device))
    module.register_buffer("polish_moved", torch.zeros((), dtype=w.dtype, device=w.device))


def _keep_state_before_load(module: StiefelLinear, state_dict, prefix, *args) -> None:
    # a copy of the map's own tensors, restored if the loaded weight is rejected (see _check_loaded_state)
    module._state_before_load = {k: v.detach().clone() for k, v in module.state_dict().items()}
    if module.canonical:  # a state saved before the polish counters were buffers: start counting afresh
        for name in ("polish_steps", "polish_moved"):
            state_dict.setdefault(prefix + name, torch.zeros_like(getattr(module, name)))


@torch.no_grad()
def _check_loaded_state(module: StiefelLinear, incompatible_keys) -> None:
    # a loaded weight enters the map like any other (orthonormal_entry): kept bit for bit when orthonormal to
    # rounding, projected with a warning when close, rejected otherwise, with the previous state restored
    saved = module.__dict__.pop("_state_before_load", None)
    stored = module.stiefel_weight.as_subclass(torch.Tensor)
    try:
        checked = orthonormal_entry(stored, "the loaded weight")
    except ValueError:
        if saved is not None:
            module.load_state_dict(saved)
        raise
    if checked is not stored:
        stored.copy_(checked)
    module._mark_exact()


def _stiefel_pre_hook(module: StiefelLinear, args) -> None:
    # an edit by hand (the weight changed outside a checked optimizer step) is projected back before use; under
    # torch.compile this runs outside the graph (see OrthogonalLinear's pre-hook)
    if torch.compiler.is_compiling():
        _project_outside_graph(module)
    else:
        _project_if_edited(module)


@torch._disable_dynamo
def _project_outside_graph(module: StiefelLinear) -> None:
    _project_if_edited(module)


def _project_if_edited(module: StiefelLinear) -> None:
    w = module.stiefel_weight
    if w._version != module.__dict__.get("_exact_version"):
        with torch.autocast(device_type=w.device.type, enabled=False):  # in the map's own dtype, never bf16
            module.project_()
