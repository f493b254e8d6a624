r"""``y = x W^T + b`` whose gradient goes to a skew generator instead of ``W`` (the dynamic trivialization).

For a square map trained as :math:`W(P) = R(\mathrm{skew}\,P)\,W_0` around :math:`P = 0`
(:func:`~relaxedortho.linalg.skew_retraction`; :math:`R(A) = I + A + O(A^2)`), the chain rule gives

.. math::

    \frac{\partial L}{\partial P}\Big|_{P=0} = \mathrm{skew}\big(G\,W_0^\top\big)
    = \mathrm{skew}\big(g^\top (x W_0^\top)\big) = \mathrm{skew}\big(g^\top (y - b)\big),

with :math:`G = g^\top x` the Euclidean gradient of ``W``, :math:`g = \partial L/\partial y` and
:math:`\mathrm{skew}\,M = (M - M^\top)/2`. That is the Riemannian gradient of :math:`O(n)` in left-trivialized
coordinates (Lezcano-Casado, NeurIPS 2019, arXiv 1909.09501), and it costs the one product :math:`g^\top y_0`
that :class:`torch.nn.Linear` spends on :math:`g^\top x`: the forward output replaces the input in the weight
gradient. The tangent projection :math:`G - W\mathrm{sym}(W^\top G)` of a plain parameter costs two more.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F


#: Tile size of :func:`skew_part` on CPU: a 256 x 256 float32 tile (256 KiB) and its mirror fit in L2.
_TILE = 256


def skew_part(m: torch.Tensor) -> torch.Tensor:
    r""":math:`(M - M^\top)/2` of a square matrix, as a new tensor.

    On CPU, large matrices are done tile by tile: reading :math:`M^\top` with whole-matrix strides misses the
    cache on every element (3.6 ms at n = 1024 on 2 cores, against 1–2 ms tiled).

    Example:
        >>> m = torch.arange(9.0).reshape(3, 3)
        >>> skew_part(m)
        tensor([[ 0., -1., -2.],
                [ 1.,  0., -1.],
                [ 2.,  1.,  0.]])
    """
    n = m.shape[-1]
    if m.device.type != "cpu" or m.ndim != 2 or n <= _TILE:
        return torch.sub(m, m.mT).mul_(0.5)
    out = torch.empty_like(m)
    for i in range(0, n, _TILE):
        for j in range(0, n, _TILE):
            torch.sub(m[i:i + _TILE, j:j + _TILE], m[j:j + _TILE, i:i + _TILE].mT, out=out[i:i + _TILE, j:j + _TILE])
    return out.mul_(0.5)


class GeneratorLinear(torch.autograd.Function):
    """``GeneratorLinear.apply(x, weight, generator, bias)`` returns ``x weight^T + bias``; its backward
    returns ``skew(g^T (y - b))`` for ``generator`` (the derivative at ``generator = 0``), nothing for ``weight``,
    and the usual gradients for ``x`` and ``bias``.

    The caller guarantees ``generator == 0`` when this runs (:class:`~relaxedortho.OrthogonalLinear` folds it
    into ``weight`` before every forward). The output is a new tensor, distinct from the saved product
    ``x weight^T``, so in-place operations on it (``relu_``) are safe, as after :class:`torch.nn.Linear`.
    """

    @staticmethod
    def forward(ctx, x, weight, generator, bias):
        y0 = F.linear(x, weight)
        ctx.save_for_backward(y0, weight)
        ctx.generator_dtype = generator.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y0.clone() if bias is None else y0 + bias.to(y0.dtype)

    @staticmethod
    def backward(ctx, grad):
        y0, weight = ctx.saved_tensors
        n = y0.shape[-1]
        g2 = grad.reshape(-1, n)
        grad_x = grad_generator = grad_bias = None
        if ctx.needs_input_grad[2]:
            m = g2.mT @ y0.reshape(-1, n).to(g2.dtype)
            grad_generator = skew_part(m).to(ctx.generator_dtype)
        if ctx.needs_input_grad[0]:
            grad_x = grad @ weight.to(grad.dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[3]:
            grad_bias = g2.sum(0).to(ctx.bias_dtype)
        return grad_x, None, grad_generator, grad_bias


class GeneratorWeight(torch.autograd.Function):
    r"""``GeneratorWeight.apply(weight, generator)`` returns ``weight`` itself; its backward gives ``generator``
    :math:`\mathrm{skew}(G W^\top)` (one product), the derivative of :math:`R(\mathrm{skew}\,P)W` at ``P = 0``.

    This is what :class:`~relaxedortho.OrthogonalLinear` (``method="trivialization"``) returns for ``weight``
    while gradients are recorded, so that code using the weight matrix directly (a task-vector transfer
    :math:`U^\top\tau U`, a loss on the weights) trains the map too.
    """

    @staticmethod
    def forward(ctx, weight, generator):
        ctx.save_for_backward(weight)
        ctx.generator_dtype = generator.dtype
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        grad_generator = None
        if ctx.needs_input_grad[1]:
            grad_generator = skew_part(grad @ weight.mT.to(grad.dtype)).to(ctx.generator_dtype)
        return None, grad_generator


def generator_linear(x: torch.Tensor, weight: torch.Tensor, generator: torch.Tensor,
                     bias: torch.Tensor | None) -> torch.Tensor:
    """Functional form of :class:`GeneratorLinear`."""
    return GeneratorLinear.apply(x, weight, generator, bias)
