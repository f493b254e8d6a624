r"""Constrain the weight of an existing module: :func:`orthogonal` (hard) and :func:`lambda_orthogonal` (relaxed).

The functional counterparts of :class:`~relaxedortho.OrthogonalLinear` and :class:`~relaxedortho.LambdaOrthoLinear`
for a layer that exists already (an ``nn.Linear`` of a pretrained model, any module with a 2-D weight), in the
manner of :func:`torch.nn.utils.parametrizations.orthogonal` and geotorch's ``constraints.orthogonal``:

- :func:`orthogonal` makes ``module.<name>`` orthonormal (square or rectangular) and keeps it so with the backends
  of :class:`~relaxedortho.OrthogonalLinear` (trivialization, retraction, torch's parametrizations);
- :func:`lambda_orthogonal` leaves the weight free and attaches the λ-orthogonality penalty (docs/math.md §2) as
  ``module.regularizer()``, which :func:`~relaxedortho.fit_alignment` and :class:`~relaxedortho.training.Trainer`
  add to their loss; in a loop of one's own, add it by hand: ``loss = task_loss + module.regularizer()``.

Both store what they need in ``module.constraints`` (an :class:`torch.nn.ModuleDict` keyed by the weight's name),
so ``state_dict`` holds it under ``constraints.<name>.…`` and a module constrained the same way loads it back. Like
torch's parametrizations, they give the module a class of its own (``Constrained<Class>``, which defines the
constrained weight as a property and ``regularizer``): such a module pickles with ``torch.save(module.state_dict())``
rather than as a whole object.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ._checks import as_float_tensor, check_choice, check_nonnegative, check_positive
from .linalg import polar
from .maps.lambda_ortho import resolved_alpha
from .maps.orthogonal import METHODS, OrthogonalLinear
from .penalties import frobenius_deviation, lambda_orthogonality

#: What :func:`orthogonal` starts from: the orthogonal polar factor of the current weight (its nearest orthonormal
#: matrix), a Haar random orthogonal matrix, or the semi-identity.
ORTHOGONAL_INITS = ("polar", "orthogonal", "identity")


def orthogonal(module: nn.Module, name: str = "weight", *, method: str = "auto", group: str = "O",
               init: Any = "polar") -> nn.Module:
    r"""Make the 2-D weight ``module.<name>`` (``out x in``) orthonormal, and keep it so during training; returns
    ``module``.

    The weight gets orthonormal columns (:math:`W^\top W = I`, square and tall weights) or rows
    (:math:`WW^\top = I`, wide ones), held by an :class:`~relaxedortho.OrthogonalLinear` without bias in
    ``module.constraints[name]``; ``module.<name>`` becomes a property that returns that map's weight, so the
    module's own ``forward`` (``F.linear(x, self.weight, self.bias)`` for :class:`torch.nn.Linear`) uses it and
    its gradient reaches the map's trainable tensor. The weight is orthonormal to rounding at every read, and
    after every step of an optimizer registered with the map (:func:`~relaxedortho.training.make_optimizer`,
    :func:`~relaxedortho.fit_alignment` and the trainers register theirs; for another optimizer call
    ``relaxedortho.maps.optimizer_hooks.register_hard_maps(module, optimizer)``). Assigning
    ``module.<name> = matrix`` loads an orthonormal matrix (checked like every matrix given to a hard map).

    Build the optimizer after this call: the original parameter is replaced (as with torch's parametrizations).
    The map's parameters are in the ``"orthogonal"`` group of :func:`~relaxedortho.training.parameter_groups`
    (no weight decay).

    Args:
        module: any :class:`torch.nn.Module` with a 2-D floating parameter ``name``.
        name: the parameter's name (default ``"weight"``).
        method: the :class:`~relaxedortho.OrthogonalLinear` backend: ``"auto"`` (default:
            ``"trivialization"`` for a square weight, ``"retraction"`` otherwise), ``"trivialization"``,
            ``"retraction"``, ``"cayley"``, ``"matrix_exp"`` or ``"householder"``.
        group: ``"O"`` (default) or ``"SO"`` (square only: rotations, :math:`\det W = +1`).
        init: ``"polar"`` (default: the orthogonal polar factor :math:`UV^\top` of the current weight
            :math:`U\Sigma V^\top`, its nearest orthonormal matrix in Frobenius norm; Higham, *Functions of
            Matrices*, 2008, Thm. 8.4; with ``group="SO"`` and :math:`\det < 0` its last column negated),
            ``"orthogonal"`` (Haar random), ``"identity"``, or an orthonormal ``out x in`` matrix.

    Example:
        >>> import torch, relaxedortho as ro
        >>> layer = ro.orthogonal(torch.nn.Linear(6, 4))
        >>> torch.allclose(layer.weight @ layer.weight.T, torch.eye(4), atol=1e-5)
        True
        >>> sorted(layer.state_dict())
        ['bias', 'constraints.weight.weight']
    """
    weight = _constrainable(module, name)
    check_choice(method, "method", METHODS)
    check_choice(group, "group", ("O", "SO"))
    start = _start(weight.detach(), init, group)
    out_features, in_features = weight.shape
    hard = OrthogonalLinear(in_features, out_features, bias=False, method=method, group=group, init=start,
                            dtype=weight.dtype, device=weight.device)
    del module._parameters[name]
    _constraints(module)[name] = hard
    _add_weight_property(type(module), name)
    return module


def lambda_orthogonal(module: nn.Module, name: str = "weight", *, lam: float = 1.0, alpha: Any = "auto",
                      gate: str = "sigmoid", penalty_weight: float = 1.0) -> nn.Module:
    r"""Attach the λ-orthogonality penalty of the 2-D weight ``module.<name>`` as ``module.regularizer()``;
    returns ``module``.

    .. math::

        R(W) = w \cdot \sigma\big(\alpha(\lVert G(W) - I\rVert_F - \lambda)\big)\,\lVert G(W) - I\rVert_F

    (Ricci et al., "λ-Orthogonality Regularization for Compatible Representation Learning", NeurIPS 2025,
    arXiv 2509.16664, Eq. 6; docs/math.md §2), with :math:`G` the small Gram and the unsquared Frobenius norm: the
    penalty of :class:`~relaxedortho.LambdaOrthoLinear`, for a weight that exists already. The weight stays a
    free parameter; :func:`~relaxedortho.fit_alignment` and :class:`~relaxedortho.training.Trainer` add
    ``module.regularizer()`` to their loss; in a loop of one's own add it by hand::

        loss = F.mse_loss(module(x), y) + module.regularizer()

    The penalties of several weights of one module add up in ``module.regularizer()`` (that of a submodule
    constrained on its own is its own ``regularizer()``). The options live in ``module.constraints[name]``
    (``lam``, ``alpha``, ``gate``, ``penalty_weight``; settable).

    Args:
        module: any :class:`torch.nn.Module` with a 2-D floating parameter ``name``.
        name: the parameter's name (default ``"weight"``).
        lam: tolerance λ >= 0 on :math:`\lVert G - I\rVert_F` (``math.inf``: no penalty). Default 1.0.
        alpha: sigmoid steepness α > 0, or ``"auto"`` (default; :math:`\max(10, 100/\lambda)`; see
            :class:`~relaxedortho.LambdaOrthoLinear`).
        gate: ``"sigmoid"`` (Eq. 6, default) or ``"heaviside"`` (Eq. 5).
        penalty_weight: multiplier :math:`w` >= 0 (default 1).

    Example:
        >>> import torch, relaxedortho as ro
        >>> layer = ro.lambda_orthogonal(torch.nn.Linear(4, 4), lam=0.5)
        >>> with torch.no_grad():
        ...     _ = layer.weight.copy_(2 * torch.eye(4))
        >>> round(float(layer.regularizer().detach()), 4)  # ||4 I - I||_F = 6, far above lam: the gate is open
        6.0
    """
    _constrainable(module, name)
    _constraints(module)[name] = LambdaPenalty(lam=lam, alpha=alpha, gate=gate, penalty_weight=penalty_weight)
    return module


class LambdaPenalty(nn.Module):
    r"""The options of :func:`lambda_orthogonal` for one weight, and its penalty :math:`R(W)` (a module without
    parameters, kept in ``module.constraints``)."""

    def __init__(self, *, lam: float = 1.0, alpha: Any = "auto", gate: str = "sigmoid",
                 penalty_weight: float = 1.0) -> None:
        super().__init__()
        self.lam = check_nonnegative(lam, "lam", allow_inf=True)
        self.alpha = alpha if isinstance(alpha, str) and alpha == "auto" else check_positive(alpha, "alpha")
        self.gate = check_choice(gate, "gate", ("sigmoid", "heaviside"))
        self.penalty_weight = check_nonnegative(penalty_weight, "penalty_weight")

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """:math:`R(W)`, a differentiable scalar (float32, or float64 for a float64 weight)."""
        if math.isinf(self.lam) or self.penalty_weight == 0:
            return torch.zeros((), dtype=torch.promote_types(weight.dtype, torch.float32), device=weight.device)
        pen = lambda_orthogonality(weight, self.lam, resolved_alpha(self.alpha, self.lam), gate=self.gate,
                                   deviation=frobenius_deviation(weight))
        return pen * self.penalty_weight if self.penalty_weight != 1.0 else pen

    def extra_repr(self) -> str:
        return f"lam={self.lam}, alpha={self.alpha}, gate={self.gate!r}, penalty_weight={self.penalty_weight}"


def _constrainable(module: Any, name: Any) -> nn.Parameter:
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(name, str):
        raise TypeError(f"name must be a str (a parameter of module), got {type(name).__name__}")
    constraints = module._modules.get("constraints")
    if isinstance(constraints, nn.ModuleDict) and name in constraints:
        raise ValueError(f"name {name!r}: module.{name} is constrained already ({type(constraints[name]).__name__})")
    weight = module._parameters.get(name)
    if weight is None:
        raise ValueError(f"name {name!r} is not a parameter of {type(module).__name__} (its parameters: "
                         f"{sorted(module._parameters)})")
    as_float_tensor(weight.detach(), f"module.{name}", ndim=2, allow_half=False)
    return weight


def _start(w: torch.Tensor, init: Any, group: str) -> Any:
    """The matrix :func:`orthogonal` starts from (see its ``init``)."""
    if not (isinstance(init, str) and init == "polar"):
        if isinstance(init, str):
            check_choice(init, "init", ORTHOGONAL_INITS)
        return init
    q = polar(w.double())
    if group == "SO" and q.shape[0] == q.shape[1] and float(torch.linalg.det(q)) < 0:
        q[:, -1].neg_()
    return q.to(w.dtype)


def _constraints(module: nn.Module) -> nn.ModuleDict:
    """``module.constraints``, created at the first constraint together with the module's own class."""
    found = module._modules.get("constraints")
    if isinstance(found, nn.ModuleDict):
        return found
    if "constraints" in module._modules or hasattr(module, "constraints"):
        raise ValueError(f"module has an attribute 'constraints' of its own ({type(module).__name__}); "
                         "constrain a module without one")
    cls = type(module)
    module.__class__ = type(f"Constrained{cls.__name__}", (cls,), {"regularizer": _regularizer,
                                                                     "__module__": cls.__module__})
    module.constraints = nn.ModuleDict()
    return module.constraints


def _regularizer(self) -> torch.Tensor:
    r"""The sum of the λ-orthogonality penalties :math:`R(W)` of this module's weights constrained by
    :func:`lambda_orthogonal` (0 for hard ones: :func:`orthogonal`)."""
    terms = [c(getattr(self, name)) for name, c in self.constraints.items() if isinstance(c, LambdaPenalty)]
    if not terms:
        p = next(iter(self.parameters()), None)
        return torch.zeros((), dtype=torch.float64 if p is not None and p.dtype == torch.float64 else torch.float32,
                           device=None if p is None else p.device)
    return terms[0] if len(terms) == 1 else torch.stack(terms).sum()


def _add_weight_property(cls: type, name: str) -> None:
    """``cls.<name>``: the weight of ``constraints[name]`` (read: brought onto the manifold; set: loaded)."""

    def get(self) -> torch.Tensor:
        hard = self.constraints[name]
        hard._sync()  # what an unregistered optimizer changed (a version comparison when nothing did)
        return hard.weight

    def set_(self, value: Any) -> None:
        with torch.no_grad():
            self.constraints[name].load_matrix_(value)

    setattr(cls, name, property(get, set_, doc=f"``{name}``, orthonormal (relaxedortho.orthogonal)."))
