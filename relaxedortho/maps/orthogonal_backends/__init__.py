r"""The ways :class:`~relaxedortho.OrthogonalLinear` keeps its weight orthonormal, one backend per file.

:class:`~relaxedortho.OrthogonalLinear` is a façade: its constructor picks one backend from ``method`` and every
method-specific step (which tensors exist, what the optimizer trains, what runs after a step, at a forward pass
and after a load) is the backend's:

- :class:`~.trivialization.Trivialization` (``"trivialization"``, square maps): a skew generator folded into the
  weight after each step (Lezcano-Casado's dynamic trivialization);
- :class:`~.retraction.Retraction` (``"retraction"``): a plain weight, its gradient projected on the tangent space,
  re-projected onto the manifold after each step;
- :class:`~.parametrized.Parametrized` (``"cayley"``, ``"matrix_exp"``, ``"householder"``): torch's
  :func:`torch.nn.utils.parametrizations.orthogonal`, checked and re-based after large steps.

A backend holds no state of its own (one instance per method): the tensors and counters live on the map, so
``state_dict`` keys, pickles and copies are those of the map.
"""
from __future__ import annotations

from .backend import OrthogonalBackend
from .parametrized import Parametrized
from .retraction import Retraction
from .trivialization import Trivialization

#: The backend of each ``method`` of :class:`~relaxedortho.OrthogonalLinear`.
BACKENDS: dict[str, OrthogonalBackend] = {
    "trivialization": Trivialization(), "retraction": Retraction(),
    **{name: Parametrized(name) for name in ("cayley", "matrix_exp", "householder")},
}

__all__ = ["BACKENDS", "OrthogonalBackend", "Parametrized", "Retraction", "Trivialization"]
