r"""A tagged registry of the map variants, from which test suites derive their variant lists.

One entry per variant: a readable name, the class, its constructor options and tags. A test asks for the variants
it covers by tag (``variants("hard")``, ``variants("hard", exclude=("square-only",))``) and builds them with
:meth:`MapVariant.build`, so a new map or method is covered by every cross-cutting test once it is registered
here (the model: geoopt's manifold test harness, ``tests/test_manifold_basic.py``).

Tags:

- ``"hard"``, ``"relaxed"``, ``"free"``: where the map sits on the spectrum (exactly one of them);
- ``"square-only"``: exists for square maps only (the trivialization, ``group="SO"``);
- ``"so"``: keeps :math:`\det A = +1`;
- ``"self-projected"``: this package re-projects a stored weight (a hand edit is brought back);
- ``"parametrized"``: torch's parametrization computes the weight;
- ``"geoopt"``: a geoopt manifold parameter (train with a Riemannian optimizer);
- ``"basic"``: the variants :data:`relaxedortho.testing.strategies.MAP_VARIANTS` draws from.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

TAGS = ("hard", "relaxed", "free", "square-only", "so", "self-projected", "parametrized", "geoopt", "basic")


@dataclass(frozen=True)
class MapVariant:
    """One map variant: ``class_name`` of :mod:`relaxedortho` with constructor ``options``, and its ``tags``."""

    name: str
    class_name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()  # in the order of TAGS (a tuple: the same repr in every run, unlike a set)

    def build(self, shape: tuple[int, int], **extra: Any) -> nn.Module:
        """The map for ``shape = (out_features, in_features)`` (made square, ``out x out``, for a square-only
        variant); ``extra`` constructor arguments (``dtype``, ``bias``, ``init``) join the variant's options."""
        import relaxedortho as ro

        out_features, in_features = shape
        if "square-only" in self.tags:
            in_features = out_features
        return getattr(ro, self.class_name)(in_features, out_features, **{**self.options, **extra})

    def shape_kinds(self) -> tuple[str, ...]:
        """The shape kinds it exists for: ``("square",)`` or all three."""
        return ("square",) if "square-only" in self.tags else ("square", "tall", "wide")

    def __str__(self) -> str:
        return self.name


def _variant(name: str, class_name: str, options: dict, *tags: str) -> MapVariant:
    unknown = set(tags) - set(TAGS)
    assert not unknown, unknown
    return MapVariant(name, class_name, options, tuple(t for t in TAGS if t in tags))


_HARD_SELF = ("hard", "self-projected")
_HARD_PARAM = ("hard", "parametrized")

#: Every variant by name.
VARIANTS: dict[str, MapVariant] = {v.name: v for v in [
    _variant("affine", "AffineMap", {}, "free", "basic"),
    _variant("lambda-exact", "LambdaOrthoLinear", {"lam": 0.5}, "relaxed", "basic"),
    _variant("lambda-randomized", "LambdaOrthoLinear", {"lam": 0.5, "estimator": "randomized", "num_probes": 4},
             "relaxed", "basic"),
    _variant("lambda-inf", "LambdaOrthoLinear", {"lam": math.inf}, "free", "basic"),
    _variant("lambda-heaviside", "LambdaOrthoLinear",
             {"lam": 2.0, "alpha": 3.0, "gate": "heaviside", "penalty_weight": 0.5}, "relaxed"),
    _variant("orthogonal-trivialization", "OrthogonalLinear", {"method": "trivialization"},
             *_HARD_SELF, "square-only", "basic"),
    _variant("orthogonal-retraction", "OrthogonalLinear", {"method": "retraction"}, *_HARD_SELF, "basic"),
    _variant("orthogonal-cayley", "OrthogonalLinear", {"method": "cayley"}, *_HARD_PARAM, "basic"),
    _variant("orthogonal-matrix_exp", "OrthogonalLinear", {"method": "matrix_exp"}, *_HARD_PARAM, "basic"),
    _variant("orthogonal-householder", "OrthogonalLinear", {"method": "householder"}, *_HARD_PARAM, "basic"),
    _variant("orthogonal-trivialization-SO", "OrthogonalLinear", {"method": "trivialization", "group": "SO"},
             *_HARD_SELF, "square-only", "so"),
    _variant("orthogonal-retraction-SO", "OrthogonalLinear", {"method": "retraction", "group": "SO"},
             *_HARD_SELF, "square-only", "so"),
    _variant("orthogonal-cayley-SO", "OrthogonalLinear", {"method": "cayley", "group": "SO"},
             *_HARD_PARAM, "square-only", "so"),
    _variant("stiefel", "StiefelLinear", {}, "hard", "geoopt", "basic"),
    _variant("stiefel-canonical", "StiefelLinear", {"canonical": True}, "hard", "geoopt", "basic"),
]}


def variants(*tags: str, exclude: tuple[str, ...] = ()) -> list[str]:
    """Names of the variants that carry every tag of ``tags`` and none of ``exclude``, in registry order.

    Example:
        >>> variants("hard", "parametrized", exclude=("so",))
        ['orthogonal-cayley', 'orthogonal-matrix_exp', 'orthogonal-householder']
    """
    for t in (*tags, *exclude):
        if t not in TAGS:
            raise ValueError(f"unknown tag {t!r}; choose among {TAGS}")
    return [n for n, v in VARIANTS.items() if set(tags) <= set(v.tags) and not set(v.tags) & set(exclude)]


def stored_weight(m: nn.Module) -> torch.Tensor:
    """The tensor a map stores its weight in (what an edit by hand changes): the Stiefel point, the buffer or
    parameter of :class:`~relaxedortho.OrthogonalLinear`, or the weight of the other maps."""
    if hasattr(m, "stiefel_weight"):
        return m.stiefel_weight
    if hasattr(m, "_weight_tensor"):
        return m._weight_tensor()
    return m.weight


def optimizer_for(m: nn.Module, kind: str, lr: float, *, register: bool = True) -> torch.optim.Optimizer:
    """A plain ``"adam"`` or ``"sgd"`` optimizer for ``m`` (geoopt's Riemannian one, at
    :func:`~relaxedortho.riemannian_lr`, for a geoopt map), registered with a hard map unless ``register=False``."""
    import relaxedortho as ro

    if kind not in ("adam", "sgd"):
        raise ValueError(f"kind must be 'adam' or 'sgd', got {kind!r}")
    if hasattr(m, "stiefel_weight"):
        from .._geoopt import geoopt

        lr = ro.riemannian_lr(lr, m.in_features, m.out_features)
        cls = geoopt.optim.RiemannianAdam if kind == "adam" else geoopt.optim.RiemannianSGD
    else:
        cls = torch.optim.Adam if kind == "adam" else torch.optim.SGD
    opt = cls(m.parameters(), lr=lr)
    return m.register_optimizer(opt) if register and hasattr(m, "register_optimizer") else opt
