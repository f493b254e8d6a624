r"""The hard end of the spectrum through PyTorch: orthogonal maps kept exactly on their manifold.

:class:`OrthogonalLinear` keeps ``A`` (``out x in``) with orthonormal columns (square/expanding) or rows
(compressing) by one of four methods:

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
     - ~3 n³, n×n solve; when a step leaves the argument's norm above :data:`REBASE_NORM`, the weight is
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

Safety: the weight is orthonormal to rounding at every forward pass, whatever the learning rate, the data scale,
an edit by hand or a loaded state. A matrix given to the map is checked
(:func:`~relaxedortho.maps.base.orthonormal_entry`: taken as it is at rounding level, replaced by its polar factor
with a warning when close, rejected otherwise); a re-projection never diverges (far from the manifold it uses the
SVD); an optimizer step that writes NaN or Inf is undone and raises :class:`FloatingPointError`
(:mod:`relaxedortho.maps._step_guard`).
"""
from __future__ import annotations

import math
import weakref
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrizations, parametrize
from torch.optim.optimizer import register_optimizer_step_post_hook

from .._checks import check_choice, check_device, check_features, check_int
from ..linalg import (SKEW_NORM_SAFETY, random_orthogonal, skew_retraction, skew_retraction_kind_for_norm,
                      spectral_norm_estimate, tall)
from ..polar_projection import MAX_PASSES, project_orthonormal, project_orthonormal_
from ._generator import GeneratorWeight, generator_linear, skew_part
from ._step_guard import guard, non_finite_step_message, restore_before_step
from .base import AlignmentMap, check_dtype, check_input_dtype, entry_dtype, initial_weight, orthonormal_entry

METHODS = ("auto", "trivialization", "retraction", "cayley", "matrix_exp", "householder")
#: Methods whose weight is re-projected by this module after optimizer steps (not a torch parametrization).
_SELF_PROJECTED = ("trivialization", "retraction")

#: ``"cayley"``: after a step that leaves the skew argument of the parametrization's Cayley map with a Frobenius norm
#: above this, the weight is checked and the parametrization re-based on it (argument reset to 0). ``"matrix_exp"``
#: is checked and re-based after every step (``torch.matrix_exp`` misses float64 rounding even for small arguments).
REBASE_NORM = 1.0

_RETRACTED: "weakref.WeakSet[OrthogonalLinear]" = weakref.WeakSet()
_GLOBAL_HOOK = None


def _retract_all_after_step(optimizer, args, kwargs) -> None:
    modules = list(_RETRACTED)
    if not modules:
        return
    stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for module in modules:
        mine = id(module._trainable_tensor()) in stepped
        try:
            module._retract_if_stale(trusted=mine and module.method == "trivialization", after_step=mine)
        except FloatingPointError:
            if mine:
                raise
            # another optimizer's map, broken by an edit (NaN): it raises at its own next forward, not in this step


def _ensure_global_hook() -> None:
    global _GLOBAL_HOOK
    if _GLOBAL_HOOK is None:
        _GLOBAL_HOOK = register_optimizer_step_post_hook(_retract_all_after_step)


def _project_tangent(weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    r"""Projection of ``grad`` onto the tangent space of the Stiefel manifold at ``weight``:
    :math:`\xi - X\,\mathrm{sym}(X^\top\xi)` for orthonormal columns (tall or square), :math:`\xi -
    \mathrm{sym}(\xi X^\top)X` for orthonormal rows (wide). Computed in the weight's own orientation, so that the
    products read contiguous operands and the result is contiguous like the gradient (no transposing copies)."""
    if weight.ndim != 2:
        x, g = tall(weight), tall(grad)
        xtg = x.mT @ g
        p = g - x @ (0.5 * (xtg + xtg.mT))
        return p if weight.shape[-2] >= weight.shape[-1] else p.mT
    if weight.shape[0] >= weight.shape[1]:
        m = weight.mT @ grad
        return torch.addmm(grad, weight, m.add_(m.mT.clone()), alpha=-0.5)
    m = grad @ weight.mT
    return torch.addmm(grad, m.add_(m.mT.clone()), weight, alpha=-0.5)


class OrthogonalLinear(AlignmentMap, nn.Module):
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

    With either, every ``torch.optim`` optimizer step re-projects (a global step post-hook), and so does the
    next forward pass if the parameters were changed in any other way (a weight edited by hand is replaced by its
    polar factor). The parametrized methods are checked after each step the same way.

    Example:
        >>> import torch
        >>> m = OrthogonalLinear(5, 3)
        >>> m.orthogonality_error() < 1e-5
        True
        >>> OrthogonalLinear(4, 4).method
        'trivialization'
    """

    is_orthogonal = True

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
        if method == "trivialization":
            self.register_buffer("weight", w0.clone())
            self.generator = nn.Parameter(torch.zeros(out_features, out_features, dtype=dtype, device=device))
            # folds since the last polish, persisted so that a resumed run polishes at the same steps
            self.register_buffer("folds", torch.zeros((), dtype=torch.int64, device=device))
            self._folds = 0
        else:
            self.weight = nn.Parameter(w0.clone())
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None
        if method in _SELF_PROJECTED:
            self._mark_exact()
            self._version = -1  # polish the starting matrix to rounding level
            self._retract_if_stale()
            _RETRACTED.add(self)
            _ensure_global_hook()
            self.register_forward_pre_hook(_retraction_pre_hook)
            if method == "retraction" and self.project_gradient:
                self.weight.register_hook(self._tangent_hook)
        else:
            parametrizations.orthogonal(self, "weight", orthogonal_map=method, use_trivialization=True)
        self._register_load_state_dict_pre_hook(_keep_state_before_load, with_module=True)
        self.register_load_state_dict_post_hook(_check_loaded_state)
        guard(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x A^T + b`` for inputs of shape ``(..., in_features)``."""
        if self.method == "trivialization":
            w = self._buffers["weight"]
            check_input_dtype(x, w)
            return generator_linear(x, w, self.generator, self.bias)
        w = self.weight
        check_input_dtype(x, w)
        return F.linear(x, w, self.bias)

    def __getattr__(self, name: str):
        # "trivialization": the weight is a buffer; while gradients are recorded, hand out an alias whose
        # backward reaches the generator (GeneratorWeight), so that direct uses of the weight train the map
        if name == "weight" and self.__dict__.get("method") == "trivialization":
            w = self.__dict__["_buffers"].get("weight")
            gen = self.__dict__["_parameters"].get("generator")
            if w is not None and gen is not None:
                return GeneratorWeight.apply(w, gen) if torch.is_grad_enabled() and gen.requires_grad else w
        return super().__getattr__(name)

    def __getstate__(self) -> dict:
        state = super().__getstate__()  # the step guard's and load check's copies are transient
        state.pop("_before_step", None)
        state.pop("_state_before_load", None)
        return state

    def __setstate__(self, state: dict) -> None:
        # copy.deepcopy and pickle rebuild the module without __init__: register the copy for the optimizer
        # step post-hook, and give a retraction copy its own tangent-projection hook (tensor hooks are not copied)
        super().__setstate__(state)
        guard(self)
        self._before_step = None
        if self.__dict__.get("method") in _SELF_PROJECTED:
            self._mark_restored()  # new tensors, new version counters
            _RETRACTED.add(self)
            _ensure_global_hook()
            w = self._weight_tensor()
            if self.method == "retraction" and self.project_gradient and not w._backward_hooks:
                w.register_hook(self._tangent_hook)

    # -- the step guard (maps/_step_guard.py) --------------------------------------------------------
    def _guarded_tensors(self) -> list[torch.Tensor]:
        if self.method == "retraction":
            return [self.weight]
        if self.method == "trivialization":
            return []  # a non-finite generator is discarded by _fold
        return [self.parametrizations.weight.original]

    @torch.no_grad()
    def _check_after_step(self) -> None:
        if self.method in _SELF_PROJECTED:
            return  # checked by the re-projection (_retract_all_after_step)
        original = self.parametrizations.weight.original.detach()
        # the argument of torch's matrix function is A = L - L^T, L the strictly lower part of the tall orientation
        lower = tall(original).tril(-1)
        finite, size = torch.stack([torch.isfinite(original).all().to(original.dtype),
                                    math.sqrt(2.0) * torch.linalg.vector_norm(lower)]).tolist()
        if not finite or not math.isfinite(size):
            restore_before_step(self)
            raise FloatingPointError(non_finite_step_message(f"OrthogonalLinear(method={self.method!r})"))
        if self.method == "householder" or (self.method == "cayley" and size <= REBASE_NORM):
            return  # Householder products are orthogonal to rounding for any finite input, the Cayley map of a small
            # argument too; torch.matrix_exp is not (8e-13 in float64 after three Adam steps at lr 1e-2, 2 x 2)
        # torch's matrix functions lose orthogonality for large arguments (up to 2e5 eps k for matrix_exp, 1e3 eps k
        # for the Cayley map after large steps, measured): check the weight, and re-base the parametrization on it
        # (on its polar factor when it is off), which resets the argument to zero (the dynamic trivialization's
        # re-basing, Lezcano-Casado 2019)
        w = self.weight
        if not bool(torch.isfinite(w).all()):
            restore_before_step(self)
            raise FloatingPointError(f"OrthogonalLinear(method={self.method!r}): the step was too large for the "
                                     "parametrization, whose matrix function overflowed to NaN or Inf; the weight "
                                     "before the step was restored. Lower the learning rate (or use method="
                                     "'trivialization' / 'retraction', which take any finite step).")
        self.weight = project_orthonormal(w)

    # -- re-projection (trivialization and retraction) ---------------------------------------------
    def _tangent_hook(self, grad: torch.Tensor) -> torch.Tensor:
        return _project_tangent(self.weight.detach(), grad)

    def _trainable_tensor(self) -> torch.Tensor:
        """The tensor an optimizer updates: ``generator`` (trivialization) or ``weight`` (retraction)."""
        return self.generator if self.method == "trivialization" else self.weight

    def _weight_tensor(self) -> torch.Tensor:
        """The stored weight (the buffer or parameter itself, never a differentiable alias)."""
        return self._buffers["weight"] if self.method == "trivialization" else self.weight

    def _mark_exact(self, *, loaded: bool = False) -> None:
        """Record the current values as on the manifold (nothing to fold or re-project)."""
        self._version = self._weight_tensor()._version
        if self.method == "trivialization":
            self._generator_version = self.generator._version
            if loaded:
                self._folds = int(self.folds)

    @torch.no_grad()
    def _mark_restored(self) -> None:
        """After a copy or a loaded state: the weight is exact; a non-zero generator is an update still to fold
        (at the next forward or optimizer step), never silently ignored."""
        self._mark_exact(loaded=True)
        if self.method == "trivialization" and bool(self.generator.detach().any()):
            self._generator_version = -1

    @torch.no_grad()
    def _reproject(self) -> None:
        """Replace the weight by its orthogonal polar factor
        (:func:`~relaxedortho.polar_projection.project_orthonormal`: polynomial passes near the manifold, the SVD
        beyond); raises :class:`FloatingPointError` on NaN/Inf."""
        project_orthonormal_(self._weight_tensor(),
                             max_passes=self.ns_steps if self.ns_steps is not None else MAX_PASSES)

    @torch.no_grad()
    def _fold(self, trusted: bool) -> None:
        """``W <- R(skew P) W``, ``P <- 0``; a re-projection every ``polish_every`` folds.

        ``trusted``: ``P`` was written by an optimizer step from a skew gradient, so it is skew already (every
        element-wise update keeps it so, bit for bit); otherwise its skew part is taken first. A ``P`` with NaN or
        Inf entries is discarded (the weight is kept) and raises :class:`FloatingPointError`; a large ``P`` takes
        the Cayley transform into a new tensor, re-projected before it replaces the weight."""
        gen, w = self.generator, self._weight_tensor()
        a = gen if trusted else skew_part(gen)
        sigma = SKEW_NORM_SAFETY * float(spectral_norm_estimate(a))
        if not math.isfinite(sigma) and not bool(torch.isfinite(a).all()):
            gen.zero_()
            raise FloatingPointError("OrthogonalLinear: the generator holds NaN or Inf (a non-finite gradient or "
                                     "edit); the update was discarded and the weight kept")
        kind = skew_retraction_kind_for_norm(sigma, w.dtype)
        if kind == "cayley":  # a large step: computed aside and checked, never written unchecked
            new = skew_retraction(w, a, kind=kind)
            try:
                new = project_orthonormal(new)
            except FloatingPointError:
                gen.zero_()
                raise FloatingPointError(f"OrthogonalLinear: an update of spectral norm ~{sigma:.3g} overflowed "
                                         f"{w.dtype}; the update was discarded and the weight kept (lower the "
                                         "learning rate)") from None
            w.copy_(new)
        else:
            skew_retraction(w, a, inplace=True, kind=kind)
        gen.zero_()
        self._folds += 1
        if self._folds >= self.polish_every:
            project_orthonormal_(w)
            self._folds = 0
        self.folds.fill_(self._folds)

    @torch.no_grad()
    def _retract_if_stale(self, trusted: bool = False, after_step: bool = False) -> None:
        w = self._weight_tensor()
        with torch.autocast(device_type=w.device.type, enabled=False):
            if w._version != self._version:  # edited by hand or by an optimizer step: project back
                try:
                    self._reproject()
                except FloatingPointError:
                    if not (after_step and restore_before_step(self)):
                        raise
                    self._mark_exact()
                    raise FloatingPointError(non_finite_step_message("OrthogonalLinear")) from None
                if self.method == "trivialization":
                    self.generator.zero_()
                if self.group == "SO":
                    _make_rotation_(w)
            elif self.method == "trivialization" and self.generator._version != self._generator_version:
                self._fold(trusted)
            else:
                return
        self._mark_exact()

    @torch.no_grad()
    def retract_(self) -> "OrthogonalLinear":
        """Bring the weight onto the manifold now: fold a pending ``generator`` update (``"trivialization"``) or
        re-project the weight (``"retraction"``); a no-op for the parametrized methods."""
        if self.method == "retraction":
            self._version = -1
        if self.method in _SELF_PROJECTED:
            self._retract_if_stale()
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
        if self.method in _SELF_PROJECTED:
            self._weight_tensor().copy_(w)
            if self.method == "trivialization":
                self.generator.zero_()
            self._mark_exact()  # exactly the given matrix, no re-projection
        else:
            self.weight = w
        if self.bias is not None:
            self.bias.copy_(b) if b is not None else self.bias.zero_()
        return self

    @property
    def _dtype(self) -> torch.dtype:
        return self._raw().dtype

    @property
    def _device(self) -> torch.device:
        return self._raw().device

    def _raw(self) -> torch.Tensor:
        if parametrize.is_parametrized(self, "weight"):
            return self.parametrizations.weight.original
        return self._weight_tensor()

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
    if module.method in _SELF_PROJECTED:
        module._mark_restored()
    weight = module._weight_tensor() if module.method in _SELF_PROJECTED else module.weight.detach()
    try:
        checked = module._entry(weight, "the loaded weight")
    except ValueError:
        if saved is not None:
            module.load_state_dict(saved)
        raise
    if checked is not weight:
        if module.method in _SELF_PROJECTED:
            weight.copy_(checked)
            module._mark_exact()
        else:
            module.weight = checked


@torch.no_grad()
def _make_rotation_(w: torch.Tensor) -> None:
    """Turn an orthogonal ``w`` with determinant -1 into the nearest rotation (flip the direction of its smallest
    singular value, here any: all are 1); a no-op for a rotation."""
    if float(torch.linalg.det(w.double())) < 0:
        w[:, -1].neg_()


def _mark_loaded_exact(module: OrthogonalLinear, incompatible_keys) -> None:
    # the post-hook of earlier versions, kept so that modules pickled by them still load
    _check_loaded_state(module, incompatible_keys)


def _retraction_pre_hook(module: OrthogonalLinear, args) -> None:
    # Under torch.compile the retraction runs outside the graph (a graph break). torch.compiler.disable is applied
    # lazily (torch._disable_dynamo imports torch._dynamo at its first call): as a decorator here it would import
    # torch._dynamo (~2 s) with relaxedortho.
    if torch.compiler.is_compiling():
        _retract_outside_graph(module)
    else:
        module._retract_if_stale()


@torch._disable_dynamo
def _retract_outside_graph(module: OrthogonalLinear) -> None:
    module._retract_if_stale()
