r"""The hard end of the spectrum through PyTorch: orthogonal maps kept exactly on their manifold.

:class:`OrthogonalLinear` keeps ``A`` (``out x in``) with orthonormal columns (square/expanding) or rows
(compressing) by one of five methods:

.. list-table::
   :header-rows: 1
   :widths: 16 50 34

   * - method
     - how
     - cost per training step
   * - ``"trivialization"``
     - square maps only (the default for them): the optimizer updates a skew ``generator``, folded into the
       weight after each step by :func:`~relaxedortho.linalg.skew_retraction` (dynamic trivialization)
     - two or three products (the quadratic or cubic fold; a solve for large steps, then checked) and the skew
       part of the gradient, whose product replaces ``nn.Linear``'s; one re-projection every ``polish_every``
       steps
   * - ``"retraction"``
     - plain parameter; after each optimizer step a tangent-projected update is re-projected onto the manifold
       (:func:`~relaxedortho.polar_projection.project_orthonormal`; the default for rectangular maps)
     - one polynomial pass with a guaranteed error bound (two ``n x k x k`` products and one to three
       ``k x k x k``; the SVD after a step too large for it) plus one tangent projection (two products)
   * - ``"cayley"``
     - :func:`torch.nn.utils.parametrizations.orthogonal`, Cayley map
     - ~3 n³, n×n solve; when a step leaves the argument's norm above
       :data:`~relaxedortho.maps.orthogonal_backends.parametrized.REBASE_NORM`, the weight is
       evaluated once more, checked, and the parametrization re-based on it
   * - ``"matrix_exp"``
     - same, matrix exponential of a skew matrix
     - ~10–20 n³ (+ slow backward); the weight is evaluated once more after each step, checked and the
       parametrization re-based on it
   * - ``"householder"``
     - same, product of Householder reflectors
     - sequential

``group="SO"`` (square maps only) keeps :math:`\det A = +1` (rotations); the default ``"O"`` admits
reflections, which also preserve every inner product and are what embedding alignment usually wants
(docs/math.md §4). All methods keep the sign of the determinant of their starting matrix.

Safety: the weight is orthonormal to rounding at every forward pass and every read of ``weight``, whatever the
learning rate, the data scale, an edit by hand or a loaded state. A matrix given to the map is checked
(:func:`~relaxedortho.maps.base.orthonormal_entry`: taken as it is at rounding level, replaced by its polar factor
with a warning when close, rejected otherwise); a re-projection never diverges (far from the manifold it uses the
SVD); a step of a registered optimizer that writes NaN or Inf is undone and raises
:class:`FloatingPointError` (:mod:`relaxedortho.maps.optimizer_hooks`).

:class:`OrthogonalLinear` is a façade: the constructor picks the backend of ``method`` once
(:mod:`relaxedortho.maps.orthogonal_backends`, one file each), and the map delegates every method-specific step
to it. No state is process-wide: a map is brought back after the steps of the optimizers it is registered with
(:meth:`OrthogonalLinear.register_optimizer`; :func:`~relaxedortho.training.make_optimizer` and the training
functions register theirs), and at its next forward pass after any other change.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._checks import check_choice, check_device, check_features, check_int
from ..linalg import random_orthogonal
from ..polar_projection import MAX_PASSES
from .base import AlignmentMap, check_dtype, entry_dtype, initial_weight, orthonormal_entry
from .optimizer_hooks import RegistersWithOptimizers
from .orthogonal_backends import BACKENDS, OrthogonalBackend
from .orthogonal_backends.parametrized import REBASE_NORM  # noqa: F401  (public constant, documented here before)
from .orthogonal_backends.retraction import project_tangent

METHODS = ("auto", "trivialization", "retraction", "cayley", "matrix_exp", "householder")


class OrthogonalLinear(RegistersWithOptimizers, AlignmentMap, nn.Module):
    r"""Hard orthogonal map :math:`y = xA^\top (+ b)` with :math:`G(A) = I` kept during training.

    Square maps live on :math:`O(d)` (or :math:`SO(d)` with ``group="SO"``), rectangular ones on the
    Stiefel manifold: orthonormal columns when expanding (``out > in``: an isometry, preserves all inner
    products), orthonormal rows when compressing (``out < in``: a co-isometry, preserves the geometry of the
    kept subspace only).

    Args:
        in_features, out_features: sizes (square or rectangular).
        bias: learn a translation (default ``False``; a translation keeps distances but not inner products).
        method: ``"auto"`` (default: ``"trivialization"`` for square maps, ``"retraction"`` for rectangular ones),
            ``"trivialization"``, ``"retraction"``, ``"cayley"``, ``"matrix_exp"`` or ``"householder"``; see the
            module documentation. The attribute ``method`` holds the resolved name.
        group: ``"O"`` (default) or ``"SO"`` (square only; not with ``"householder"``).
        init: ``"orthogonal"`` (default, Haar random), ``"identity"`` or an orthonormal ``out x in`` matrix.
        ns_steps: the most polynomial passes per re-projection (``"retraction"``, and the re-projection of a
            weight edited by hand) before the SVD takes over; default ``None``: 4
            (:data:`~relaxedortho.polar_projection.MAX_PASSES`). Each pass takes the cheapest Taylor degree whose
            guaranteed error bound is at the dtype's rounding level
            (:func:`~relaxedortho.polar_projection.default_tolerance`): one pass at Adam's usual learning rates in
            float32, one or two in float64. Every re-projection reads two scalars
            (one synchronisation on a GPU). (In 0.1.0 this fixed a number of Newton–Schulz iterations;
            the name is kept for saved configurations.)
        project_gradient: project the gradient on the tangent space before the optimizer sees it
            (``"retraction"`` only; default ``True``; two products). It keeps the normal component out of Adam's
            moment estimates: without it a 128-d map trained 10⁴ steps at lr 1e-3 reached a loss of 0.397
            instead of 0.308 (Procrustes optimum 0.307).
        polish_every: ``"trivialization"`` only: a re-projection after every this many folds removes the rounding
            the folds accumulate (default 32: with it ``||G - I||_F`` stayed
            below 3.2e-6 over 10⁴ float32 Adam steps at d = 128 and below 1.6e-5 over 10³ steps at d = 1024,
            ``benchmarks/bench_maps.py``).
        device, dtype: factory arguments.

    With ``method="trivialization"`` (square maps) the trainable parameter is ``generator``, a skew
    ``out x out`` matrix that is zero between steps, and ``weight`` is a buffer. The backward pass gives
    ``generator`` the Riemannian gradient :math:`\mathrm{skew}(g^\top(y - b))` at the cost of ``nn.Linear``'s
    weight gradient (:mod:`relaxedortho.maps._generator`); after each optimizer step the update :math:`A` is
    folded into the weight, :math:`W \leftarrow R(A)W` (:func:`~relaxedortho.linalg.skew_retraction`), and
    ``generator`` is reset to zero, its optimizer state kept. Any element-wise optimizer (SGD, Adam, AdamW, ...)
    keeps a skew gradient skew, bit for bit, so after a step of an optimizer that holds ``generator`` the fold
    uses it as it is; after any other change (an edit by hand, a loaded state) it folds its skew part. This is
    Lezcano-Casado's dynamic trivialization (NeurIPS 2019, arXiv 1909.09501) with a polynomial retraction
    (quadratic or cubic, the Cayley transform for large steps): Adam's moments live in :math:`\mathfrak{so}(n)`
    at a fixed frame, and training matches ``"retraction"`` (same loss to 4 digits in
    ``benchmarks/bench_maps.py``'s drift runs) at about half its cost.

    With ``method="retraction"`` the weight is a plain parameter that any optimizer may update.

    With either, every step of an optimizer registered with the map (:meth:`register_optimizer`; those of
    :func:`~relaxedortho.training.make_optimizer`, :func:`~relaxedortho.fit_alignment` and
    :class:`~relaxedortho.training.Trainer` are) folds or re-projects, and so does the next forward pass after any
    other change (an unregistered optimizer's step; a weight edited by hand is replaced by its polar factor). The
    parametrized methods are checked the same way.

    Example:
        >>> import torch
        >>> m = OrthogonalLinear(5, 3)
        >>> m.orthogonality_error() < 1e-5
        True
        >>> OrthogonalLinear(4, 4).method
        'trivialization'
    """

    is_orthogonal = True
    register_optimizer = RegistersWithOptimizers.register_optimizer  # documented with the class

    def __init__(self, in_features: int, out_features: int, bias: bool = False, *, method: str = "auto",
                 group: str = "O", init: Any = "orthogonal", ns_steps: int | None = None,
                 project_gradient: bool = True, polish_every: int = 32, device=None, dtype=None) -> None:
        check_features(in_features, "in_features")
        check_features(out_features, "out_features")
        check_dtype(dtype)
        device = None if device is None else check_device(device)
        check_choice(method, "method", METHODS)
        check_choice(group, "group", ("O", "SO"))
        square = in_features == out_features
        if method == "auto":
            method = "trivialization" if square else "retraction"
        if method == "trivialization" and not square:
            raise ValueError(f"method='trivialization' needs a square map, got {out_features} x {in_features}; "
                             "use method='retraction' (or 'auto') for rectangular maps")
        if group == "SO" and not square:
            raise ValueError("group='SO' needs a square map (in_features == out_features)")
        if group == "SO" and method == "householder":
            raise ValueError("group='SO' is not available with method='householder' (its determinant sign is "
                             "fixed by the reflector pattern); use 'trivialization', 'retraction', 'cayley' or "
                             "'matrix_exp'")
        ns_steps = check_int(ns_steps, "ns_steps", none_means=f"{MAX_PASSES} passes")
        polish_every = check_int(polish_every, "polish_every")
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.method, self.group, self.ns_steps = method, group, ns_steps
        self.project_gradient = bool(project_gradient)
        self.polish_every = polish_every
        dtype = dtype or torch.get_default_dtype()
        if isinstance(init, str) and init == "orthogonal":  # orthonormal to rounding by construction
            w0 = random_orthogonal(out_features, in_features, dtype=dtype, device=device, special=group == "SO")
        else:
            w0 = initial_weight(init, out_features, in_features, dtype=dtype, device=device)
            w0 = self._entry(w0, "init", source_dtype=entry_dtype(init))
        self._backend.build(self, w0)
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None
        self._backend.mark_exact(self)
        self.retract_()  # polish the starting matrix to rounding level (the self-projected backends)
        self.register_forward_pre_hook(_sync_before_forward)
        self._register_load_state_dict_pre_hook(_keep_state_before_load, with_module=True)
        self.register_load_state_dict_post_hook(_check_loaded_state)

    @property
    def _backend(self) -> OrthogonalBackend:
        """The backend of ``method`` (:mod:`relaxedortho.maps.orthogonal_backends`), looked up by name so that maps
        pickled by earlier versions load."""
        return BACKENDS[self.method]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x A^T + b`` for inputs of shape ``(..., in_features)``."""
        return self._backend.forward(self, x)

    def __getattr__(self, name: str):
        # the weight is read on the manifold: what an unregistered optimizer or an edit changed is brought back
        # first (a version comparison when nothing changed). "trivialization": the weight is a buffer; while
        # gradients are recorded, hand out an alias whose backward reaches the generator, so that direct uses of
        # the weight train the map
        # (the parametrized backends' weight is torch's property: never looked up here)
        if name == "weight" and "_version" in self.__dict__ and "method" in self.__dict__:
            return self._backend.read_weight(self)
        return super().__getattr__(name)

    def _sync(self, *, strict: bool = True) -> None:
        """Bring onto the manifold what changed outside a registered step (under ``torch.compile``, outside the
        graph). ``strict=False``: a NaN/Inf weight is left as it is, not raised."""
        try:
            _sync_before_forward(self, ())
        except FloatingPointError:
            if strict:
                raise

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        self._sync(strict=False)  # a saved state is on the manifold (a NaN one cannot be loaded back anyway)
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def __getstate__(self) -> dict:
        self._sync(strict=False)  # a copy starts on the manifold, and is marked so
        state = super().__getstate__()  # the step guard's and load check's copies are transient
        state.pop("_before_step", None)
        state.pop("_state_before_load", None)
        return state

    def __setstate__(self, state: dict) -> None:
        # copy.deepcopy and pickle rebuild the module without __init__: new tensors, new version counters; a
        # retraction copy gets its own tangent-projection hook (tensor hooks are not copied). A copy is registered
        # with no optimizer (the original's optimizer does not hold the copy's tensors).
        super().__setstate__(state)
        self._before_step = None
        if not any(h in _SYNC_HOOKS for h in self._forward_pre_hooks.values()):  # pickled by an earlier version
            self.register_forward_pre_hook(_sync_before_forward)
        self._backend.restored(self)

    # -- what an optimizer step touches (maps/optimizer_hooks.py) ----------------------------------------
    def _trainable_tensors(self) -> list[torch.Tensor]:
        return [self._backend.trainable(self)]

    def _guarded_tensors(self) -> list[torch.Tensor]:
        return self._backend.guarded(self)

    def _after_own_step(self, optimizer) -> None:
        self._backend.after_step(self)

    def _tangent_hook(self, grad: torch.Tensor) -> torch.Tensor:
        return project_tangent(self._parameters["weight"].detach(), grad)

    def _trainable_tensor(self) -> torch.Tensor:
        """The tensor an optimizer updates: ``generator`` (trivialization), ``weight`` (retraction) or the
        parametrization's ``original``."""
        return self._backend.trainable(self)

    def _weight_tensor(self) -> torch.Tensor:
        """The stored weight (the buffer, parameter or parametrization original; never a differentiable alias)."""
        return self._backend.stored_weight(self)

    @torch.no_grad()
    def retract_(self) -> "OrthogonalLinear":
        """Bring the weight onto the manifold now: fold a pending ``generator`` update (``"trivialization"``) or
        re-project the weight (``"retraction"``); a no-op for the parametrized methods."""
        self._backend.retract(self)
        return self

    # -- interface -------------------------------------------------------------------------------
    def _entry(self, w: torch.Tensor, name: str, source_dtype: torch.dtype | None = None) -> torch.Tensor:
        """The matrix the map holds for ``w`` given by a user (:func:`~relaxedortho.maps.base.orthonormal_entry`);
        a reflection given to a ``group="SO"`` map is rejected."""
        w = orthonormal_entry(w, name, source_dtype=source_dtype)
        if self.group == "SO" and float(torch.linalg.det(w.detach().double())) < 0:
            raise ValueError(f"{name} has determinant -1 but group='SO' needs a rotation (det +1)")
        return w

    @torch.no_grad()
    def load_matrix_(self, weight: Any, bias: Any = None) -> "OrthogonalLinear":
        w, b = self._validated(weight, bias)
        source = w.dtype
        w = self._entry(w.to(dtype=self._dtype, device=self._device), "weight", source_dtype=source)
        self._backend.load(self, w)  # exactly the given matrix, no re-projection
        if self.bias is not None:
            self.bias.copy_(b) if b is not None else self.bias.zero_()
        return self

    @property
    def _dtype(self) -> torch.dtype:
        return self._backend.trainable(self).dtype

    @property
    def _device(self) -> torch.device:
        return self._backend.trainable(self).device

    def config(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None,
                "method": self.method, "group": self.group, "ns_steps": self.ns_steps,
                "project_gradient": self.project_gradient, "polish_every": self.polish_every}

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"method={self.method!r}, group={self.group!r}")


def _keep_state_before_load(module: OrthogonalLinear, state_dict, prefix, *args) -> None:
    # a copy of this map's own tensors, restored if the loaded weight is rejected (see _check_loaded_state)
    module._state_before_load = {k: v.detach().clone() for k, v in module.state_dict().items()}


@torch.no_grad()
def _check_loaded_state(module: OrthogonalLinear, incompatible_keys) -> None:
    # a loaded weight enters the map like any other (orthonormal_entry): kept bit for bit when orthonormal to
    # rounding, projected with a warning when close, rejected otherwise, with the map's previous state restored
    saved = module.__dict__.pop("_state_before_load", None)
    backend = module._backend
    backend.restored(module)
    weight = backend.matrix(module)
    try:
        checked = module._entry(weight, "the loaded weight")
    except ValueError:
        if saved is not None:
            module.load_state_dict(saved)
        raise
    if checked is not weight:
        backend.load(module, checked)


def _mark_loaded_exact(module: OrthogonalLinear, incompatible_keys) -> None:
    # the post-hook of earlier versions, kept so that modules pickled by them still load
    _check_loaded_state(module, incompatible_keys)


def _sync_before_forward(module: OrthogonalLinear, args) -> None:
    # Under torch.compile the sync runs outside the graph (a graph break). torch.compiler.disable is applied
    # lazily (torch._disable_dynamo imports torch._dynamo at its first call): as a decorator here it would import
    # torch._dynamo (~2 s) with relaxedortho.
    if torch.compiler.is_compiling():
        _sync_outside_graph(module)
    else:
        module._backend.sync(module)


@torch._disable_dynamo
def _sync_outside_graph(module: OrthogonalLinear) -> None:
    module._backend.sync(module)


#: the forward pre-hook of earlier versions (registered in modules they pickled)
_retraction_pre_hook = _sync_before_forward
_SYNC_HOOKS = (_sync_before_forward,)
