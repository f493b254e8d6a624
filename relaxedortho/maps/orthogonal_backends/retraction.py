r"""``method="retraction"``: a plain weight re-projected onto the manifold after each step.

The weight is an ordinary parameter that any optimizer may update. Its gradient is projected on the tangent space
of the Stiefel manifold before the optimizer sees it (``project_gradient``, two products: it keeps the normal
component out of Adam's moments), and after each step the weight is replaced by its orthogonal polar factor
(:func:`~relaxedortho.polar_projection.project_orthonormal`: one polynomial pass with a guaranteed error bound
at Adam's usual learning rates, the SVD after a step too large for it). This is a retraction in the sense of
Absil, Mahony & Sepulchre, *Optimization Algorithms on Matrix Manifolds* (2008), §4.1 and Example 4.1.3.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ...linalg import tall
from ..base import check_input_dtype
from .backend import Projected


def project_tangent(weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    r"""Projection of ``grad`` onto the tangent space of the Stiefel manifold at ``weight``:
    :math:`\xi - X\,\mathrm{sym}(X^\top\xi)` for orthonormal columns (tall or square), :math:`\xi -
    \mathrm{sym}(\xi X^\top)X` for orthonormal rows (wide). Computed in the weight's own orientation, so that the
    products read contiguous operands and the result is contiguous like the gradient (no transposing copies)."""
    if weight.ndim != 2:
        x, g = tall(weight), tall(grad)
        xtg = x.mT @ g
        p = g - x @ (0.5 * (xtg + xtg.mT))
        return p if weight.shape[-2] >= weight.shape[-1] else p.mT
    if weight.shape[0] >= weight.shape[1]:
        m = weight.mT @ grad
        return torch.addmm(grad, weight, m.add_(m.mT.clone()), alpha=-0.5)
    m = grad @ weight.mT
    return torch.addmm(grad, m.add_(m.mT.clone()), weight, alpha=-0.5)


class Retraction(Projected):
    """The weight is the parameter ``weight``; re-projected after each step or at the next forward."""

    name = "retraction"

    def build(self, host: nn.Module, w0: torch.Tensor) -> None:
        host.weight = nn.Parameter(w0.clone())
        self.add_gradient_hook(host)

    def add_gradient_hook(self, host: nn.Module) -> None:
        """The tangent projection of the gradient (tensor hooks are not copied with the map: added again)."""
        w = host._parameters["weight"]
        if host.project_gradient and not w._backward_hooks:
            w.register_hook(host._tangent_hook)

    def restored(self, host: nn.Module) -> None:
        super().restored(host)
        self.add_gradient_hook(host)

    def forward(self, host: nn.Module, x: torch.Tensor) -> torch.Tensor:
        w = host._parameters["weight"]
        check_input_dtype(x, w)
        return F.linear(x, w, host.bias)

    def stored_weight(self, host: nn.Module) -> torch.Tensor:
        return host._parameters["weight"]

    trainable = stored_weight

    def sync(self, host: nn.Module) -> None:
        if self.reproject_if_edited(host, after_step=False):
            self.mark_exact(host)

    def after_step(self, host: nn.Module) -> None:
        if self.reproject_if_edited(host, after_step=True):
            self.mark_exact(host)
