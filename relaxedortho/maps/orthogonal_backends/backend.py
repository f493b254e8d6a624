r"""What a backend of :class:`~relaxedortho.OrthogonalLinear` provides, and the re-projection two of them share.

A backend is stateless: each method takes the map (``host``), whose tensors and counters it reads and writes.
The map calls :meth:`~OrthogonalBackend.sync` before every forward pass (a version-counter comparison when nothing
changed) and :meth:`~OrthogonalBackend.after_step` after each step of a registered optimizer
(:mod:`relaxedortho.maps.optimizer_hooks`) that updated it.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ...polar_projection import MAX_PASSES, project_orthonormal_
from ..base import check_input_dtype
from ..optimizer_hooks import non_finite_step_message, restore_before_step


class OrthogonalBackend:
    """One way of keeping an ``out x in`` weight orthonormal; subclasses implement the methods below."""

    #: the ``method`` name(s) this backend serves
    name: str = ""

    def build(self, host: nn.Module, w0: torch.Tensor) -> None:
        """Create the map's tensors from the orthonormal ``w0`` and hooks (at construction)."""
        raise NotImplementedError

    def forward(self, host: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``x A^T + b``."""
        w = host.weight
        check_input_dtype(x, w)
        return F.linear(x, w, host.bias)

    def stored_weight(self, host: nn.Module) -> torch.Tensor:
        """The stored tensor behind ``weight`` (a buffer, parameter or parametrization original; never an alias)."""
        raise NotImplementedError

    def trainable(self, host: nn.Module) -> torch.Tensor:
        """The tensor an optimizer updates."""
        raise NotImplementedError

    def guarded(self, host: nn.Module) -> list[torch.Tensor]:
        """The tensors a step may write that must be put back when it writes NaN/Inf (default: the trainable)."""
        return [self.trainable(host)]

    def read_weight(self, host: nn.Module) -> torch.Tensor:
        """``host.weight`` read outside the forward: brought onto the manifold first (``host._sync``)."""
        host._sync()
        return self.stored_weight(host)

    def matrix(self, host: nn.Module) -> torch.Tensor:
        """The ``out x in`` matrix as it is now, detached (what a loaded state is checked on)."""
        return self.stored_weight(host)

    def sync(self, host: nn.Module) -> None:
        """Before a forward pass: bring onto the manifold what changed outside a registered step."""
        raise NotImplementedError

    def after_step(self, host: nn.Module) -> None:
        """After a registered optimizer's step that updated the map."""
        raise NotImplementedError

    def load(self, host: nn.Module, w: torch.Tensor) -> None:
        """Hold exactly the checked orthonormal ``w`` (``load_matrix_``, a projected loaded state)."""
        raise NotImplementedError

    def mark_exact(self, host: nn.Module, *, loaded: bool = False) -> None:
        """Record the current values as on the manifold (nothing to do before the next forward)."""
        host._version = self.trainable(host)._version

    def restored(self, host: nn.Module) -> None:
        """After a loaded state, a copy or an unpickled map: new tensors, new version counters."""
        self.mark_exact(host, loaded=True)

    def retract(self, host: nn.Module) -> None:
        """Bring the weight onto the manifold now (``retract_``)."""


class Projected(OrthogonalBackend):
    """A stored weight that this package re-projects (:func:`~relaxedortho.polar_projection.project_orthonormal`)
    when it changed outside a checked step: an edit by hand, an unregistered optimizer's step."""

    def mark_exact(self, host: nn.Module, *, loaded: bool = False) -> None:
        host._version = self.stored_weight(host)._version

    def load(self, host: nn.Module, w: torch.Tensor) -> None:
        self.stored_weight(host).copy_(w)
        self.mark_exact(host)

    @torch.no_grad()
    def reproject(self, host: nn.Module) -> None:
        """Replace the weight by its orthogonal polar factor (polynomial passes near the manifold, the SVD beyond;
        ``ns_steps`` passes at most); raises :class:`FloatingPointError` on NaN/Inf."""
        project_orthonormal_(self.stored_weight(host),
                             max_passes=host.ns_steps if host.ns_steps is not None else MAX_PASSES)

    @torch.no_grad()
    def reproject_if_edited(self, host: nn.Module, *, after_step: bool) -> bool:
        """Re-project a weight whose version changed since it was last checked; ``False`` if it had not.

        After a registered step (``after_step``) a NaN/Inf weight is replaced by the copy kept before the step;
        otherwise it raises as it is (nothing to restore)."""
        w = self.stored_weight(host)
        if w._version == host._version:
            return False
        with torch.autocast(device_type=w.device.type, enabled=False):
            try:
                self.reproject(host)
            except FloatingPointError:
                if not (after_step and restore_before_step(host)):
                    raise
                self.mark_exact(host)
                raise FloatingPointError(non_finite_step_message("OrthogonalLinear")) from None
            if host.group == "SO":
                make_rotation_(w)
        return True

    def retract(self, host: nn.Module) -> None:
        host._version = -1
        self.sync(host)


@torch.no_grad()
def make_rotation_(w: torch.Tensor) -> None:
    """Turn an orthogonal ``w`` with determinant -1 into the nearest rotation (flip the direction of its smallest
    singular value, here any: all are 1); a no-op for a rotation."""
    if float(torch.linalg.det(w.double())) < 0:
        w[:, -1].neg_()
