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
     - two or three products (the quadratic or cubic fold; a solve for large steps) and the skew part of the
       gradient, whose product replaces ``nn.Linear``'s; one Newton–Schulz step (two products) every
       ``polish_every`` steps
   * - ``"retraction"``
     - plain parameter; after each optimizer step a tangent-projected update is re-projected by
       Newton–Schulz (the default for rectangular maps)
     - third-order Newton–Schulz iterations (three products each; one or two in float32, adaptive) plus
       one tangent projection (two products)
   * - ``"cayley"``
     - :func:`torch.nn.utils.parametrizations.orthogonal`, Cayley map
     - ~3 n³, n×n solve
   * - ``"matrix_exp"``
     - same, matrix exponential of a skew matrix
     - ~10–20 n³ (+ slow backward)
   * - ``"householder"``
     - same, product of Householder reflectors
     - sequential

``group="SO"`` (square maps only) keeps :math:`\det A = +1` (rotations); the default ``"O"`` admits
reflections, which also preserve every inner product and are what embedding alignment usually wants
(docs/math.md §4). All methods keep the sign of the determinant of their starting matrix.
"""
from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrizations, parametrize
from torch.optim.optimizer import register_optimizer_step_post_hook

from .._checks import check_choice, check_features
from ..linalg import newton_schulz_polar, random_orthogonal, skew_retraction, tall
from ._generator import GeneratorWeight, generator_linear, skew_part
from .base import AlignmentMap, check_dtype, check_orthonormal, initial_weight

METHODS = ("auto", "trivialization", "retraction", "cayley", "matrix_exp", "householder")
#: Methods whose weight is re-projected by this module after optimizer steps (not a torch parametrization).
_SELF_PROJECTED = ("trivialization", "retraction")

_RETRACTED: "weakref.WeakSet[OrthogonalLinear]" = weakref.WeakSet()
_GLOBAL_HOOK = None


def _retract_all_after_step(optimizer, args, kwargs) -> None:
    modules = list(_RETRACTED)
    if not modules:
        return
    stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for module in modules:
        module._retract_if_stale(trusted=id(getattr(module, "generator", None)) in stepped)


def _ensure_global_hook() -> None:
    global _GLOBAL_HOOK
    if _GLOBAL_HOOK is None:
        _GLOBAL_HOOK = register_optimizer_step_post_hook(_retract_all_after_step)


def _project_tangent(weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    r"""Projection of ``grad`` onto the tangent space of the Stiefel manifold at ``weight`` (tall orientation):
    :math:`\xi - X\,\mathrm{sym}(X^\top\xi)`."""
    x, g = tall(weight), tall(grad)
    xtg = x.mT @ g
    sym = 0.5 * (xtg + xtg.mT)
    p = torch.addmm(g, x, sym, alpha=-1.0) if x.ndim == 2 else g - x @ sym
    return p if weight.shape[-2] >= weight.shape[-1] else p.mT


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
        ns_steps: third-order Newton–Schulz iterations per re-projection (``"retraction"``, and the
            re-projection of a weight edited by hand under ``"trivialization"``;
            :func:`~relaxedortho.linalg.newton_schulz_polar` with ``order=2``, three products each). Default
            ``None``: adaptive — stop after the first iteration whose predicted error
            :math:`\tfrac{5}{16}\lVert E\rVert_2^2\lVert E\rVert_F` is at the dtype's rounding level
            (:math:`2\varepsilon\sqrt{k}`): one iteration at Adam's usual learning rates in float32, two or three
            in float64. This reads one scalar per step (a synchronisation on a GPU); an integer fixes the count.
        project_gradient: project the gradient on the tangent space before the optimizer sees it
            (``"retraction"`` only; default ``True``; two products). It keeps the normal component out of Adam's
            moment estimates: without it a 128-d map trained 10⁴ steps at lr 1e-3 reached a loss of 0.397
            instead of 0.308 (Procrustes optimum 0.307).
        polish_every: ``"trivialization"`` only: one quadratic Newton–Schulz step (two products) after every
            this many folds removes the rounding the folds accumulate (default 32: with it ``||G - I||_F`` stayed
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
    next forward pass if the parameters were changed in any other way (a weight edited by hand is projected
    back by Newton–Schulz). Use Adam's usual learning rates.

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
        if ns_steps is not None and (isinstance(ns_steps, bool) or not isinstance(ns_steps, int) or ns_steps < 1):
            raise ValueError(f"ns_steps must be a positive integer, got {ns_steps!r}")
        if isinstance(polish_every, bool) or not isinstance(polish_every, int) or polish_every < 1:
            raise ValueError(f"polish_every must be a positive integer, got {polish_every!r}")
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.method, self.group, self.ns_steps = method, group, ns_steps
        self.project_gradient = bool(project_gradient)
        self.polish_every = polish_every
        dtype = dtype or torch.get_default_dtype()
        if isinstance(init, str) and init == "orthogonal":
            w0 = random_orthogonal(out_features, in_features, dtype=dtype, device=device, special=group == "SO")
        else:
            w0 = initial_weight(init, out_features, in_features, dtype=dtype, device=device)
        self._check_orthonormal(w0, "init")
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
            self.register_load_state_dict_post_hook(_mark_loaded_exact)
            if method == "retraction" and self.project_gradient:
                self.weight.register_hook(self._tangent_hook)
        else:
            parametrizations.orthogonal(self, "weight", orthogonal_map=method, use_trivialization=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x A^T + b`` for inputs of shape ``(..., in_features)``."""
        if self.method == "trivialization":
            return generator_linear(x, self._buffers["weight"], self.generator, self.bias)
        return F.linear(x, self.weight, self.bias)

    def __getattr__(self, name: str):
        # "trivialization": the weight is a buffer; while gradients are recorded, hand out an alias whose
        # backward reaches the generator (GeneratorWeight), so that direct uses of the weight train the map
        if name == "weight" and self.__dict__.get("method") == "trivialization":
            w = self.__dict__["_buffers"].get("weight")
            gen = self.__dict__["_parameters"].get("generator")
            if w is not None and gen is not None:
                return GeneratorWeight.apply(w, gen) if torch.is_grad_enabled() and gen.requires_grad else w
        return super().__getattr__(name)

    def __setstate__(self, state: dict) -> None:
        # copy.deepcopy and pickle rebuild the module without __init__: register the copy for the optimizer
        # step post-hook, and give a retraction copy its own tangent-projection hook (tensor hooks are not copied)
        super().__setstate__(state)
        if self.__dict__.get("method") in _SELF_PROJECTED:
            self._mark_restored()  # new tensors, new version counters
            _RETRACTED.add(self)
            _ensure_global_hook()
            w = self._weight_tensor()
            if self.method == "retraction" and self.project_gradient and not w._backward_hooks:
                w.register_hook(self._tangent_hook)

    # -- re-projection (trivialization and retraction) ---------------------------------------------
    def _tangent_hook(self, grad: torch.Tensor) -> torch.Tensor:
        return _project_tangent(self.weight.detach(), grad)

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
        p = self._weight_tensor()
        if self.ns_steps is None:  # adaptive: stop once the predicted error is at rounding level
            eps = torch.finfo(torch.float64 if p.dtype == torch.float64 else torch.float32).eps
            tol = 2.0 * eps * min(p.shape) ** 0.5
            p.copy_(newton_schulz_polar(p, 8, order=2, tol=tol))
        else:
            p.copy_(newton_schulz_polar(p, self.ns_steps, order=2))

    @torch.no_grad()
    def _fold(self, trusted: bool) -> None:
        """``W <- R(skew P) W``, ``P <- 0``; one Newton–Schulz polish every ``polish_every`` folds.

        ``trusted``: ``P`` was written by an optimizer step from a skew gradient, so it is skew already (every
        element-wise update keeps it so, bit for bit); otherwise its skew part is taken first."""
        gen, w = self.generator, self._weight_tensor()
        a = gen if trusted else skew_part(gen)
        skew_retraction(w, a, inplace=True)
        gen.zero_()
        self._folds += 1
        if self._folds >= self.polish_every:
            w.copy_(newton_schulz_polar(w, 1, order=1))
            self._folds = 0
        self.folds.fill_(self._folds)

    @torch.no_grad()
    def _retract_if_stale(self, trusted: bool = False) -> None:
        w = self._weight_tensor()
        with torch.autocast(device_type=w.device.type, enabled=False):
            if w._version != self._version:  # edited by hand: project back
                self._reproject()
                if self.method == "trivialization":
                    self.generator.zero_()
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
    def _check_orthonormal(self, w: torch.Tensor, name: str) -> None:
        check_orthonormal(w, name)
        if self.group == "SO" and float(torch.linalg.det(w.detach().double())) < 0:
            raise ValueError(f"{name} has determinant -1 but group='SO' needs a rotation (det +1)")

    @torch.no_grad()
    def load_matrix_(self, weight: Any, bias: Any = None) -> "OrthogonalLinear":
        w, b = self._validated(weight, bias)
        w = w.to(dtype=self._dtype, device=self._device)
        self._check_orthonormal(w, "weight")
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


def _mark_loaded_exact(module: OrthogonalLinear, incompatible_keys) -> None:
    # a loaded state is exactly a saved point of the manifold: do not re-project it (that would change bits)
    module._mark_restored()


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
