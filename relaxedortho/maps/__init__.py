"""The maps of the spectrum, from hard orthogonal to λ-orthogonal to free affine."""
from .affine import AffineMap
from .base import AlignmentMap
from .lambda_ortho import DEFAULT_ALPHA, LambdaOrthoLinear
from .orthogonal import OrthogonalLinear
from .stiefel import StiefelLinear, riemannian_lr

#: Every map class by name, for :func:`relaxedortho.save` / :func:`relaxedortho.load`.
MAP_CLASSES = {cls.__name__: cls for cls in (AffineMap, LambdaOrthoLinear, OrthogonalLinear, StiefelLinear)}

__all__ = ["AlignmentMap", "AffineMap", "LambdaOrthoLinear", "OrthogonalLinear", "StiefelLinear",
           "DEFAULT_ALPHA", "riemannian_lr", "MAP_CLASSES"]
