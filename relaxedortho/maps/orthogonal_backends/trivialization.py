r"""``method="trivialization"`` (square maps): a skew generator folded into the weight after each step.

The trainable parameter is ``generator``, a skew ``n x n`` matrix that is zero between steps; ``weight`` is a
buffer. The backward pass gives ``generator`` the Riemannian gradient :math:`\mathrm{skew}(g^\top(y - b))` at the
cost of ``nn.Linear``'s weight gradient (:mod:`relaxedortho.maps._generator`); after each step the update
:math:`A` is folded into the weight, :math:`W \leftarrow R(A)W` (:func:`~relaxedortho.linalg.skew_retraction`:
quadratic or cubic, the Cayley transform for large steps), and ``generator`` is reset to zero, its optimizer state
kept. Any element-wise optimizer keeps a skew gradient skew bit for bit, so after a registered step the fold uses
the generator as it is; after any other change (an unregistered optimizer, an edit, a loaded state) it folds its
skew part. A re-projection every ``polish_every`` folds removes the rounding the folds accumulate (the count is
the buffer ``folds``, so a resumed run polishes at the same steps). Lezcano-Casado's dynamic trivialization
(NeurIPS 2019, arXiv 1909.09501).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ...linalg import SKEW_NORM_SAFETY, skew_retraction, skew_retraction_kind_for_norm, spectral_norm_estimate
from ...polar_projection import project_orthonormal, project_orthonormal_
from .._generator import GeneratorWeight, generator_linear, skew_part
from ..base import check_input_dtype
from .backend import Projected


class Trivialization(Projected):
    """Buffer ``weight``, parameter ``generator``, buffer ``folds`` (folds since the last polish)."""

    name = "trivialization"

    def build(self, host: nn.Module, w0: torch.Tensor) -> None:
        n = w0.shape[0]
        host.register_buffer("weight", w0.clone())
        host.generator = nn.Parameter(torch.zeros(n, n, dtype=w0.dtype, device=w0.device))
        host.register_buffer("folds", torch.zeros((), dtype=torch.int64, device=w0.device))
        host._folds = 0

    def forward(self, host: nn.Module, x: torch.Tensor) -> torch.Tensor:
        w = host._buffers["weight"]
        check_input_dtype(x, w)
        return generator_linear(x, w, host._parameters["generator"], host.bias)

    def read_weight(self, host: nn.Module) -> torch.Tensor:
        """``weight`` as code outside the forward sees it (brought onto the manifold first): while gradients are
        recorded, an alias whose backward reaches the generator
        (:class:`~relaxedortho.maps._generator.GeneratorWeight`), so that direct uses of the weight (a task-vector
        transfer) train the map."""
        host._sync()
        w, gen = host._buffers["weight"], host._parameters["generator"]
        return GeneratorWeight.apply(w, gen) if torch.is_grad_enabled() and gen.requires_grad else w

    def stored_weight(self, host: nn.Module) -> torch.Tensor:
        return host._buffers["weight"]

    def trainable(self, host: nn.Module) -> torch.Tensor:
        return host._parameters["generator"]

    def guarded(self, host: nn.Module) -> list[torch.Tensor]:
        return []  # a non-finite generator is discarded by the fold, before it reaches the weight

    def mark_exact(self, host: nn.Module, *, loaded: bool = False) -> None:
        super().mark_exact(host)
        host._generator_version = host._parameters["generator"]._version
        if loaded:
            host._folds = int(host.folds)

    @torch.no_grad()
    def restored(self, host: nn.Module) -> None:
        # the weight is exact; a non-zero generator is an update still to fold, never silently ignored
        self.mark_exact(host, loaded=True)
        if bool(host._parameters["generator"].detach().any()):
            host._generator_version = -1

    def load(self, host: nn.Module, w: torch.Tensor) -> None:
        self.stored_weight(host).copy_(w)
        host._parameters["generator"].zero_()
        self.mark_exact(host)

    def sync(self, host: nn.Module) -> None:
        self.bring_back(host, trusted=False, after_step=False)

    def after_step(self, host: nn.Module) -> None:
        self.bring_back(host, trusted=True, after_step=True)

    @torch.no_grad()
    def bring_back(self, host: nn.Module, *, trusted: bool, after_step: bool) -> None:
        """Re-project an edited weight (and drop the generator), or fold a changed generator."""
        gen = host._parameters["generator"]
        if self.reproject_if_edited(host, after_step=after_step):
            gen.zero_()
        elif gen._version != host._generator_version:
            w = self.stored_weight(host)
            with torch.autocast(device_type=w.device.type, enabled=False):
                self.fold(host, trusted)
        else:
            return
        self.mark_exact(host)

    @torch.no_grad()
    def fold(self, host: nn.Module, trusted: bool) -> None:
        """``W <- R(skew P) W``, ``P <- 0``; a re-projection every ``polish_every`` folds.

        ``trusted``: ``P`` was written by an optimizer step from a skew gradient, so it is skew already (every
        element-wise update keeps it so, bit for bit); otherwise its skew part is taken first. A ``P`` with NaN or
        Inf entries is discarded (the weight is kept) and raises :class:`FloatingPointError`; a large ``P`` takes
        the Cayley transform into a new tensor, re-projected before it replaces the weight."""
        gen, w = host._parameters["generator"], self.stored_weight(host)
        a = gen if trusted else skew_part(gen)
        sigma = SKEW_NORM_SAFETY * float(spectral_norm_estimate(a))
        if not math.isfinite(sigma) and not bool(torch.isfinite(a).all()):
            gen.zero_()
            raise FloatingPointError("OrthogonalLinear: the generator holds NaN or Inf (a non-finite gradient or "
                                     "edit); the update was discarded and the weight kept")
        kind = skew_retraction_kind_for_norm(sigma, w.dtype)
        if kind == "cayley":  # a large step: computed aside and checked, never written unchecked
            try:
                # I - A/2 is singular to working precision once the step's norm nears 1/eps (e.g. a plain SGD step
                # at lr 0.1 on data of size 1e5): no rotation can be read from it
                new = project_orthonormal(skew_retraction(w, a, kind=kind))
            except (FloatingPointError, torch.linalg.LinAlgError):
                gen.zero_()
                raise FloatingPointError(f"OrthogonalLinear: an update of spectral norm ~{sigma:.3g} overflowed "
                                         f"{w.dtype} (its Cayley transform is not finite, or I - A/2 is singular to "
                                         "working precision); the update was discarded and the weight kept (lower "
                                         "the learning rate)") from None
            w.copy_(new)
        else:
            skew_retraction(w, a, inplace=True, kind=kind)
        gen.zero_()
        host._folds += 1
        if host._folds >= host.polish_every:
            project_orthonormal_(w)
            host._folds = 0
        host.folds.fill_(host._folds)
