r"""``method="cayley"``, ``"matrix_exp"``, ``"householder"``: torch's orthogonal parametrization, checked.

The weight is :func:`torch.nn.utils.parametrizations.orthogonal` of the parameter
``parametrizations.weight.original`` (a Cayley map, a matrix exponential of a skew matrix, or a product of
Householder reflectors). torch's matrix functions lose orthogonality for large arguments (up to
:math:`2\cdot10^5\,\varepsilon k` for ``matrix_exp``, :math:`10^3\,\varepsilon k` for the Cayley map after large
steps, measured), so after a step (or at the next forward after an unregistered step) the weight is checked and
the parametrization re-based on it — on its polar factor when it is off — which resets the argument to zero: the
dynamic trivialization's re-basing (Lezcano-Casado, NeurIPS 2019, arXiv 1909.09501). ``"cayley"`` is re-based only
when the argument's norm passes :data:`REBASE_NORM`, ``"matrix_exp"`` then or when its weight is off by more than
rounding; ``"householder"`` never (its products are orthogonal to
rounding for any finite input).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrizations

from ...linalg import tall
from ...polar_projection import default_tolerance, project_orthonormal
from ..optimizer_hooks import non_finite_step_message, restore_before_step
from .backend import OrthogonalBackend

#: After a step that leaves the skew argument of the parametrization's matrix function with a Frobenius norm above
#: this, the weight is checked and the parametrization re-based on it (argument reset to 0). ``"matrix_exp"`` is also
#: re-based at a smaller argument when its weight is off the manifold by more than rounding
#: (:func:`~relaxedortho.polar_projection.default_tolerance`; ``torch.matrix_exp`` can miss float64 rounding).
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
        try:
            w = host.weight
        except torch.linalg.LinAlgError:  # torch's Cayley map: I - A/2 singular to working precision
            w = torch.full((), math.nan)
        if not bool(torch.isfinite(w).all()):
            self.fail(host, after_step, f"OrthogonalLinear(method={self.name!r}): the step was too large for the "
                      "parametrization, whose matrix function overflowed (NaN, Inf or a singular solve); the weight "
                      "before the step was restored. Lower the learning rate (or use method='trivialization' / 'retraction', which "
                      "take any finite step).")
        if self.name == "matrix_exp" and size <= REBASE_NORM:
            # re-base only when the weight is measurably off the manifold: every re-basing resets the argument
            # (and, for a rectangular map, torch completes the base with a random orthonormal block), which throws
            # away what Adam's moments know of the argument's coordinates — re-based after every step, a 3 x 2 map
            # hardly learned (loss 1.47 -> 1.38 in 300 steps at lr 1e-2, against 0.004 without)
            t = tall(w)
            gram = t.mT @ t
            gram.diagonal().sub_(1.0)
            if float(torch.linalg.matrix_norm(gram)) <= default_tolerance(t.shape[-1], t.dtype):
                return
        self.rebase(host)
        self.mark_exact(host)

    @torch.no_grad()
    def rebase(self, host: nn.Module) -> None:
        """Fold the argument into the base: ``base ← polar(base · f(A))`` for the whole ``n × n`` orthogonal matrix
        (f the Cayley map or the exponential), argument reset to 0. Unlike torch's right inverse (``host.weight =
        w``), which completes a rectangular weight with a *random* orthonormal block, the completion moves
        continuously, so the argument's coordinates keep their meaning for the optimizer across re-basings."""
        if self.name == "householder":
            host.weight = project_orthonormal(host.weight)
            return
        orth = host.parametrizations.weight[0]
        original = self.trainable(host)
        x = tall(original.detach())
        n, k = x.shape[-2], x.shape[-1]
        x = x.tril()
        if n != k:
            x = torch.cat([x, x.new_zeros(n, n - k)], dim=-1)
        a = x - x.mT
        if self.name == "matrix_exp":
            f = torch.matrix_exp(a)
        else:
            eye = torch.eye(n, dtype=a.dtype, device=a.device)
            f = torch.linalg.solve(eye - 0.5 * a, eye + 0.5 * a)
        orth.base.copy_(project_orthonormal(orth.base @ f))
        zero = torch.zeros_like(original)
        zero.diagonal().fill_(-1.0)   # what torch's right inverse stores (the diagonal is unused here)
        original.copy_(zero)

    def fail(self, host: nn.Module, after_step: bool, message: str) -> None:
        """Raise :class:`FloatingPointError` with ``message``, the weight before the step restored when possible."""
        if after_step and restore_before_step(host):
            self.mark_exact(host)
            raise FloatingPointError(message)
        raise FloatingPointError(message.replace("the weight before the step was restored",
                                                 "the map cannot be used until a finite weight is loaded"))
