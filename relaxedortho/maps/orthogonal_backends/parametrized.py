r"""``method="cayley"``, ``"matrix_exp"``, ``"householder"``: torch's orthogonal parametrization, checked.

The weight is :func:`torch.nn.utils.parametrizations.orthogonal` of the parameter
``parametrizations.weight.original`` (a Cayley map, a matrix exponential of a skew matrix, or a product of
Householder reflectors). torch's matrix functions lose orthogonality for large arguments (up to
:math:`2\cdot10^5\,\varepsilon k` for ``matrix_exp``, :math:`10^3\,\varepsilon k` for the Cayley map after large
steps, measured), so after a step (or at the next forward after an unregistered step) the weight is checked and
the parametrization re-based on it — on its polar factor when it is off — which resets the argument to zero: the
dynamic trivialization's re-basing (Lezcano-Casado, NeurIPS 2019, arXiv 1909.09501). ``"cayley"`` is re-based only
when the argument's norm passes :data:`REBASE_NORM`; ``"householder"`` never (its products are orthogonal to
rounding for any finite input).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrizations

from ...linalg import tall
from ...polar_projection import project_orthonormal
from ..optimizer_hooks import non_finite_step_message, restore_before_step
from .backend import OrthogonalBackend

#: ``"cayley"``: after a step that leaves the skew argument of the parametrization's Cayley map with a Frobenius norm
#: above this, the weight is checked and the parametrization re-based on it (argument reset to 0). ``"matrix_exp"``
#: is checked and re-based after every step (``torch.matrix_exp`` misses float64 rounding even for small arguments).
REBASE_NORM = 1.0


class Parametrized(OrthogonalBackend):
    """torch's parametrization with ``orthogonal_map=name`` and ``use_trivialization=True``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def build(self, host: nn.Module, w0: torch.Tensor) -> None:
        host.weight = nn.Parameter(w0.clone())
        parametrizations.orthogonal(host, "weight", orthogonal_map=self.name, use_trivialization=True)

    def stored_weight(self, host: nn.Module) -> torch.Tensor:
        return host.parametrizations.weight.original

    trainable = stored_weight

    def matrix(self, host: nn.Module) -> torch.Tensor:
        return host.weight.detach()

    def load(self, host: nn.Module, w: torch.Tensor) -> None:
        host.weight = w  # torch's right inverse: the parametrization re-based on w
        self.mark_exact(host)

    def sync(self, host: nn.Module) -> None:
        original = self.trainable(host)
        if original._version != host._version:
            with torch.autocast(device_type=original.device.type, enabled=False):  # in the map's own dtype
                self.check(host, after_step=False)

    def after_step(self, host: nn.Module) -> None:
        self.check(host, after_step=True)

    @torch.no_grad()
    def check(self, host: nn.Module, *, after_step: bool) -> None:
        """Raise on a non-finite argument (after a registered step: with the weight before it restored); re-base
        the parametrization when its argument grew large (module documentation)."""
        original = self.trainable(host).detach()
        # the argument of torch's matrix function is A = L - L^T, L the strictly lower part of the tall orientation
        lower = tall(original).tril(-1)
        finite, size = torch.stack([torch.isfinite(original).all().to(original.dtype),
                                    math.sqrt(2.0) * torch.linalg.vector_norm(lower)]).tolist()
        if not finite or not math.isfinite(size):
            self.fail(host, after_step, non_finite_step_message(f"OrthogonalLinear(method={self.name!r})"))
        if size == 0 or self.name == "householder" or (self.name == "cayley" and size <= REBASE_NORM):
            # a zero argument: the weight is the base, checked at the last re-basing (a copy, a loaded state)
            self.mark_exact(host)
            return
        w = host.weight
        if not bool(torch.isfinite(w).all()):
            self.fail(host, after_step, f"OrthogonalLinear(method={self.name!r}): the step was too large for the "
                      "parametrization, whose matrix function overflowed to NaN or Inf; the weight before the step "
                      "was restored. Lower the learning rate (or use method='trivialization' / 'retraction', which "
                      "take any finite step).")
        host.weight = project_orthonormal(w)
        self.mark_exact(host)

    def fail(self, host: nn.Module, after_step: bool, message: str) -> None:
        """Raise :class:`FloatingPointError` with ``message``, the weight before the step restored when possible."""
        if after_step and restore_before_step(host):
            self.mark_exact(host)
            raise FloatingPointError(message)
        raise FloatingPointError(message.replace("the weight before the step was restored",
                                                 "the map cannot be used until a finite weight is loaded"))
