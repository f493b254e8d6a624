r"""Hypothesis strategies for matrices, orthogonal matrices and maps of the spectrum.

Public and reusable: a user who builds on :mod:`relaxedortho` can property-test their own code with them::

    from hypothesis import given
    from relaxedortho.testing import strategies as ros

    @given(ros.orthogonal_matrices())
    def test_my_code(q):
        ...

Every strategy draws a *seed* and builds the tensor with a seeded :class:`torch.Generator` (in float64,
then cast), so examples are cheap, reproducible and shrink towards small sizes and seed 0. Matrices follow
the :class:`torch.nn.Linear` convention ``out_features x in_features``: *tall* means ``out > in`` (an
expanding map), *wide* means ``out < in`` (a compressing map).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from hypothesis import strategies as st

from ..linalg import random_orthogonal
from .maps import VARIANTS, variants

__all__ = ["SHAPE_KINDS", "seeds", "float_dtypes", "shapes", "leading_shapes", "matrices", "orthogonal_matrices",
           "signed_permutations", "MAP_VARIANTS", "SQUARE_ONLY", "map_kwargs", "maps", "dtype_tolerance"]

#: The three kinds of map shape: square, tall (``out > in``, expanding) and wide (``out < in``, compressing).
SHAPE_KINDS = ("square", "tall", "wide")


def seeds() -> st.SearchStrategy[int]:
    """Seeds for :class:`torch.Generator` (``0 <= seed < 2**32``), shrinking towards 0."""
    return st.integers(min_value=0, max_value=2**32 - 1)


def float_dtypes(*, half: bool = False) -> st.SearchStrategy[torch.dtype]:
    """``torch.float32`` or ``torch.float64`` (plus ``float16``/``bfloat16`` with ``half=True``)."""
    choices = [torch.float64, torch.float32] + ([torch.bfloat16, torch.float16] if half else [])
    return st.sampled_from(choices)


def dtype_tolerance(dtype: torch.dtype, size: int = 1, condition: float = 1.0) -> float:
    r"""A forward-error tolerance for a computation on ``size``-dimensional data in ``dtype``:

    .. math:: \tau = 100\,\varepsilon_{\text{dtype}}\,\sqrt{\text{size}}\;\kappa ,

    with :math:`\varepsilon` the machine epsilon and :math:`\kappa` the condition number (a standard backward-
    stable bound :math:`O(\varepsilon\sqrt n\,\kappa)` with a safety factor of 100; Higham 2002, §3).
    """
    return 100.0 * torch.finfo(dtype).eps * math.sqrt(max(size, 1)) * max(condition, 1.0)


@st.composite
def shapes(draw, kind: str | Sequence[str] | None = None, *, min_side: int = 1,
           max_side: int = 8) -> tuple[int, int]:
    """``(out_features, in_features)`` of the given ``kind`` (``"square"``, ``"tall"``, ``"wide"``, a list of
    them, or ``None`` for any) with sides in ``[min_side, max_side]``."""
    kinds = SHAPE_KINDS if kind is None else ((kind,) if isinstance(kind, str) else tuple(kind))
    for k in kinds:
        if k not in SHAPE_KINDS:
            raise ValueError(f"kind must be among {SHAPE_KINDS}, got {k!r}")
    if min_side < 1 or max_side < min_side:
        raise ValueError(f"need 1 <= min_side <= max_side, got {min_side}, {max_side}")
    if min_side == max_side:
        kinds = tuple(k for k in kinds if k == "square") or kinds
    k = draw(st.sampled_from(kinds))
    if k == "square":
        n = draw(st.integers(min_side, max_side))
        return n, n
    if max_side == min_side:
        raise ValueError("tall/wide shapes need max_side > min_side")
    small = draw(st.integers(min_side, max_side - 1))
    big = draw(st.integers(small + 1, max_side))
    return (big, small) if k == "tall" else (small, big)


def leading_shapes(*, max_dims: int = 3, max_side: int = 4) -> st.SearchStrategy[tuple[int, ...]]:
    """Leading (batch) shapes for inputs ``(..., in_features)``: 0 to ``max_dims`` sides in ``[1, max_side]``."""
    return st.lists(st.integers(1, max_side), min_size=0, max_size=max_dims).map(tuple)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


@st.composite
def matrices(draw, shape: tuple[int, int] | st.SearchStrategy | None = None,
             dtype: torch.dtype | st.SearchStrategy | None = None, *, max_condition: float = 100.0,
             scale: float | tuple[float, float] = 1.0) -> torch.Tensor:
    r"""A full-rank matrix :math:`A = U\,\mathrm{diag}(s)\,V^\top` with controlled condition number.

    :math:`U, V` are Haar-random with orthonormal columns; the singular values are
    :math:`s_i = c\,\kappa^{-t_i}` with :math:`t_1 = 0`, :math:`t_{\text{last}} = 1` (when there are at least
    two) and the others uniform in :math:`[0, 1]`, so the condition number is exactly :math:`\kappa` (drawn
    log-uniformly in ``[1, max_condition]``) and the largest singular value is :math:`c` (``scale``, or drawn in
    the given range).

    Args:
        shape: ``(out, in)`` or a strategy of shapes (default :func:`shapes`).
        dtype: a dtype or a strategy of dtypes (default :func:`float_dtypes`).
        max_condition: largest condition number :math:`\kappa \ge 1`.
        scale: the largest singular value, or a ``(low, high)`` range to draw it from.
    """
    shape = draw(shape if isinstance(shape, st.SearchStrategy) else st.just(shape) if shape else shapes())
    dtype = draw(dtype if isinstance(dtype, st.SearchStrategy) else st.just(dtype) if dtype else float_dtypes())
    if max_condition < 1:
        raise ValueError(f"max_condition must be >= 1, got {max_condition}")
    out_f, in_f = shape
    k = min(out_f, in_f)
    kappa = math.exp(draw(st.floats(0.0, math.log(max_condition)))) if max_condition > 1 else 1.0
    c = draw(st.floats(*scale)) if isinstance(scale, tuple) else float(scale)
    g = _generator(draw(seeds()))
    u = random_orthogonal(out_f, k, generator=g, dtype=torch.float64)
    v = random_orthogonal(in_f, k, generator=g, dtype=torch.float64)
    t = torch.rand(k, generator=g, dtype=torch.float64)
    t[0] = 0.0
    if k > 1:
        t[-1] = 1.0
    s = c * kappa ** (-t)
    return ((u * s) @ v.mT).to(dtype)


@st.composite
def orthogonal_matrices(draw, shape: tuple[int, int] | st.SearchStrategy | None = None,
                        dtype: torch.dtype | st.SearchStrategy | None = None, *,
                        special: bool = False) -> torch.Tensor:
    """A Haar-random matrix with orthonormal columns (square/tall) or rows (wide), built in float64 and cast.

    ``special=True`` draws square rotations (determinant +1) only; with ``shape=None`` the shape is then square.
    """
    default = shapes("square") if special else shapes()
    shape = draw(shape if isinstance(shape, st.SearchStrategy) else st.just(shape) if shape else default)
    dtype = draw(dtype if isinstance(dtype, st.SearchStrategy) else st.just(dtype) if dtype else float_dtypes())
    return random_orthogonal(*shape, generator=_generator(draw(seeds())), dtype=dtype, special=special)


@st.composite
def signed_permutations(draw, n: int | st.SearchStrategy | None = None,
                        dtype: torch.dtype | st.SearchStrategy | None = None) -> torch.Tensor:
    """An ``n x n`` signed permutation matrix: orthogonal with entries in {-1, 0, 1}, so :math:`A^\\top A = I` exactly
    in every floating dtype."""
    n = draw(n if isinstance(n, st.SearchStrategy) else st.just(n) if n else st.integers(1, 8))
    dtype = draw(dtype if isinstance(dtype, st.SearchStrategy) else st.just(dtype) if dtype else float_dtypes())
    perm = draw(st.permutations(range(n)))
    signs = draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=n, max_size=n))
    p = torch.zeros(n, n, dtype=dtype)
    p[torch.arange(n), torch.tensor(perm, dtype=torch.long)] = torch.tensor(signs, dtype=dtype)
    return p


#: Constructor options of every map variant :func:`maps` can draw, keyed by a readable name: the variants of the
#: registry :data:`relaxedortho.testing.maps.VARIANTS` tagged ``"basic"``.
MAP_VARIANTS: dict[str, tuple[str, dict]] = {n: (VARIANTS[n].class_name, dict(VARIANTS[n].options))
                                             for n in variants("basic")}


#: Variants of :data:`MAP_VARIANTS` that exist for square maps only.
SQUARE_ONLY: frozenset[str] = frozenset(variants("basic", "square-only"))


def _variant_names(variants: Sequence[str] | None) -> list[str]:
    names = list(MAP_VARIANTS) if variants is None else list(variants)
    for n in names:
        if n not in MAP_VARIANTS:
            raise ValueError(f"unknown map variant {n!r}; choose among {list(MAP_VARIANTS)}")
    return names


def map_kwargs(variants: Sequence[str] | None = None) -> st.SearchStrategy[tuple[str, dict]]:
    """``(class name, constructor kwargs)`` of the map variants in :data:`MAP_VARIANTS` (all by default; those
    of :data:`SQUARE_ONLY` need a square shape)."""
    return st.sampled_from([MAP_VARIANTS[n] for n in _variant_names(variants)])


@st.composite
def maps(draw, variants: Sequence[str] | None = None, shape: tuple[int, int] | st.SearchStrategy | None = None,
         dtype: torch.dtype | st.SearchStrategy | None = None, *, bias: bool | None = None) -> torch.nn.Module:
    """A map of the spectrum (any class of :data:`MAP_VARIANTS` by default) with a random orthogonal start,
    perturbed by a random bias when it has one.

    Args:
        variants: names from :data:`MAP_VARIANTS`; those of :data:`SQUARE_ONLY` are drawn only with square shapes
            (the default shape strategy draws square shapes when every variant asked for is square-only).
        shape, dtype: fixed values or strategies (default :func:`shapes` and :func:`float_dtypes`).
        bias: force a bias on/off (default: drawn).
    """
    import relaxedortho as ro

    names = _variant_names(variants)
    if shape is None:
        shape = shapes("square") if all(n in SQUARE_ONLY for n in names) else shapes()
    shape = draw(shape if isinstance(shape, st.SearchStrategy) else st.just(shape))
    compatible = [n for n in names if shape[0] == shape[1] or n not in SQUARE_ONLY]
    if not compatible:
        raise ValueError(f"map variants {names} need a square shape, got {tuple(shape)}")
    cls_name, kwargs = MAP_VARIANTS[draw(st.sampled_from(compatible))]
    dtype = draw(dtype if isinstance(dtype, st.SearchStrategy) else st.just(dtype) if dtype else float_dtypes())
    has_bias = draw(st.booleans()) if bias is None else bias
    g = _generator(draw(seeds()))
    w = random_orthogonal(*shape, generator=g, dtype=dtype)
    b = torch.randn(shape[0], generator=g, dtype=torch.float64).to(dtype) if has_bias else None
    return getattr(ro, cls_name).from_matrix(w, b if has_bias else None, **kwargs)
