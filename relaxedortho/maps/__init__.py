"""The maps of the spectrum, from hard orthogonal to λ-orthogonal to free affine.

The classes are imported at first use (PEP 562): :class:`StiefelLinear` needs geoopt, which the other maps do
not load.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {"AffineMap": ".affine", "AlignmentMap": ".base", "LambdaOrthoLinear": ".lambda_ortho",
            "DEFAULT_ALPHA": ".lambda_ortho", "OrthogonalLinear": ".orthogonal", "StiefelLinear": ".stiefel",
            "riemannian_lr": ".stiefel"}
_CLASS_NAMES = ("AffineMap", "LambdaOrthoLinear", "OrthogonalLinear", "StiefelLinear")

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS,
                                    ["affine", "base", "lambda_ortho", "orthogonal", "stiefel"])


class _MapClasses(Mapping):
    """Read-only mapping class name → map class; a class is imported at its first look-up, so a name test
    (``in``) or loading one kind of map does not import the others (nor geoopt)."""

    def __getitem__(self, name: str) -> type:
        if name not in _CLASS_NAMES:
            raise KeyError(name)
        return getattr(sys.modules[__name__], name)

    def __contains__(self, name: object) -> bool:
        return name in _CLASS_NAMES

    def __iter__(self) -> Iterator[str]:
        return iter(_CLASS_NAMES)

    def __len__(self) -> int:
        return len(_CLASS_NAMES)

    def __repr__(self) -> str:
        return f"MAP_CLASSES({', '.join(_CLASS_NAMES)})"


#: Every map class by name, for :func:`relaxedortho.save` / :func:`relaxedortho.load` (a read-only mapping
#: that imports a class at its first look-up).
MAP_CLASSES: Mapping[str, type] = _MapClasses()

if TYPE_CHECKING:
    from .affine import AffineMap
    from .base import AlignmentMap
    from .lambda_ortho import DEFAULT_ALPHA, LambdaOrthoLinear
    from .orthogonal import OrthogonalLinear
    from .stiefel import StiefelLinear, riemannian_lr

__all__ = ["AlignmentMap", "AffineMap", "LambdaOrthoLinear", "OrthogonalLinear", "StiefelLinear",
           "DEFAULT_ALPHA", "riemannian_lr", "MAP_CLASSES"]
