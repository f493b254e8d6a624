r"""Losses of backward-compatible alignment (Ricci et al., arXiv 2509.16664, Sec. 3; docs/math.md §6).

Old features :math:`h_\text{old}`, new features :math:`h_\text{new}` (frozen backbones), a backward map
:math:`B` (new → old space) and a forward map :math:`F` (old → new-aligned space):

- :func:`backward_loss` :math:`L_B = \lVert B(h_\text{new}) - h_\text{old}\rVert^2`,
- :func:`forward_loss` :math:`L_F = \lVert F(h_\text{old}) - B(h_\text{new})\rVert^2`,
- :func:`supervised_contrastive` :math:`C(a, b)` on L2-normalised features (CLIP-style InfoNCE when unlabeled),
  used as :math:`L_C = C(F(h_\text{old}), B(h_\text{new})) + C(F(h_\text{old}), h_\text{old})`,
- :func:`influence_loss`, the BCT influence loss through a frozen old classifier (Shen et al., CVPR 2020).

The paper's total is :math:`w_1 L_F + w_2 L_B + w_3 L_C + L_\lambda`.

**Scale of the squared losses.** ``reduction="mean"`` (default) is the element-wise mean
:math:`\frac{1}{nd}\sum_{i,k}(\cdot)_{ik}^2` (:func:`torch.nn.functional.mse_loss`); ``"sample_mean"`` is the mean
over samples of the per-sample squared norm (``d`` times larger); ``"sum"`` the total. The choice matters
next to the bounded-slope λ-penalty (docs/math.md §2): a summed loss pulls ``n·d`` times harder.

**Distributed training.** The contrastive loss takes ``gather``: a callable applied to every per-sample
tensor (features and labels) before the similarities, e.g. :func:`gather_with_grad`. Each process then
computes the loss of the *global* batch; the backward of :func:`gather_with_grad` sums the gradients of all
processes, so DDP's gradient averaging yields exactly the gradient of the global-batch loss.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_choice, check_positive
from ._lazy import lazy_exports

# gather_with_grad is re-exported (one implementation, in training/distributed.py) and imported at first use:
# importing the losses does not import the training package.
__getattr__, __dir__ = lazy_exports(__name__, {"gather_with_grad": "relaxedortho.training.distributed"})
if TYPE_CHECKING:
    from .training.distributed import gather_with_grad

__all__ = ["backward_loss", "forward_loss", "supervised_contrastive", "influence_loss", "gather_with_grad"]

_REDUCTIONS = ("mean", "sample_mean", "sum")


def _squared_error(pred: torch.Tensor, target: torch.Tensor, reduction: str, names: tuple[str, str]) -> torch.Tensor:
    check_choice(reduction, "reduction", _REDUCTIONS)
    for name, t in zip(names, (pred, target)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            got = f"dtype {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise TypeError(f"{name} must be a floating-point torch.Tensor, got {got}")
    if pred.shape != target.shape:
        raise ValueError(f"{names[0]} and {names[1]} must have the same shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    if reduction == "mean":
        return F.mse_loss(pred, target, reduction="mean")
    total = F.mse_loss(pred, target, reduction="sum")
    if reduction == "sum":
        return total
    return total / (pred.shape[0] if pred.ndim > 1 else 1)


def backward_loss(mapped_new: torch.Tensor, old: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    r"""Backward alignment loss :math:`L_B = \lVert B(h_\text{new}) - h_\text{old}\rVert^2` (Ricci et al. 2025).

    ``mapped_new`` is :math:`B(h_\text{new})`, ``old`` is :math:`h_\text{old}`, both ``(n, d_old)``.
    ``reduction``: ``"mean"`` (element-wise mean, default), ``"sample_mean"`` (mean over rows of the squared
    row norm) or ``"sum"``.

    >>> import torch
    >>> backward_loss(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]]))
    tensor(2.5000)
    >>> backward_loss(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]]), reduction="sample_mean")
    tensor(5.)
    """
    return _squared_error(mapped_new, old, reduction, ("mapped_new", "old"))


def forward_loss(mapped_old: torch.Tensor, mapped_new: torch.Tensor, reduction: str = "mean", *,
                 detach_target: bool = False) -> torch.Tensor:
    r"""Forward alignment loss :math:`L_F = \lVert F(h_\text{old}) - B(h_\text{new})\rVert^2` (Ricci et al. 2025).

    ``mapped_old`` is :math:`F(h_\text{old})`, ``mapped_new`` is :math:`B(h_\text{new})`. By default the
    gradient reaches both maps (joint training, as in the paper); ``detach_target=True`` stops it at
    :math:`B(h_\text{new})`. ``reduction`` as in :func:`backward_loss`.

    >>> import torch
    >>> forward_loss(torch.ones(2, 3), torch.zeros(2, 3), reduction="sum")
    tensor(6.)
    """
    target = mapped_new.detach() if detach_target else mapped_new
    return _squared_error(mapped_old, target, reduction, ("mapped_old", "mapped_new"))


def _directional_ce(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Mean over rows with >= 1 positive of the cross-entropy against the uniform target over positives."""
    log_p = torch.log_softmax(logits, dim=1)
    pos = positives.to(log_p.dtype)
    n_pos = pos.sum(1)
    has = n_pos > 0
    per_row = -(log_p * pos).sum(1) / n_pos.clamp_min(1)
    return (per_row * has).sum() / has.sum().clamp_min(1)


def supervised_contrastive(a: torch.Tensor, b: torch.Tensor, labels_a: Any = None, labels_b: Any = None,
                           temperature: float = 0.07, *, symmetric: bool = True,
                           gather: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    r"""Supervised contrastive loss between two feature sets, or CLIP-style InfoNCE without labels.

    With :math:`\hat a_i, \hat b_j` the L2-normalised rows and logits :math:`z_{ij} = \langle \hat a_i,
    \hat b_j\rangle / \tau`, the target of row :math:`i` is uniform over its positives
    :math:`P(i) = \{j : y^b_j = y^a_i\}`:

    .. math:: C_{a\to b} = \frac{1}{|I|}\sum_{i\in I} -\frac{1}{|P(i)|}\sum_{j\in P(i)}
              \log\frac{e^{z_{ij}}}{\sum_k e^{z_{ik}}},

    :math:`I` the rows with at least one positive (others are left out; 0 if none). With
    ``symmetric=True`` (default) the loss is :math:`\tfrac12(C_{a\to b} + C_{b\to a})`, as CLIP
    (Radford et al. 2021); supervised form after Khosla et al. 2020, used in Ricci et al. 2025 (docs/math.md §6).

    Parameters
    ----------
    a, b
        ``(n, d)`` and ``(m, d)`` features (same ``d``). Half precision is computed in float32.
    labels_a, labels_b
        Integer class labels. ``labels_a=None``: unlabeled, row :math:`i` of ``a`` matches row :math:`i` of
        ``b`` (needs ``n = m``), the CLIP InfoNCE. ``labels_b=None`` with ``labels_a`` given: ``b`` is paired
        with ``a`` row by row and shares its labels.
    temperature
        :math:`\tau > 0` (default 0.07).
    gather
        Optional callable applied to ``a``, ``b`` and the labels before the similarities (e.g.
        :func:`gather_with_grad` under DDP), so every process sees the global batch.

    Examples
    --------
    >>> import torch
    >>> x = torch.eye(3)
    >>> bool(supervised_contrastive(x, x, temperature=0.1) < supervised_contrastive(x, x.roll(1, 0), temperature=0.1))
    True
    """
    t = check_positive(temperature, "temperature")
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"a and b must be 2-dimensional, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must have the same feature dimension, got {a.shape[1]} and {b.shape[1]}")
    if labels_a is None:
        if labels_b is not None:
            raise ValueError("labels_b given without labels_a")
        if a.shape[0] != b.shape[0]:
            raise ValueError(f"unlabeled (CLIP-style) loss needs paired rows, got {a.shape[0]} and {b.shape[0]}")
        ya = torch.arange(a.shape[0], device=a.device)
        yb = ya
    else:
        ya = torch.as_tensor(labels_a, device=a.device)
        if labels_b is None:
            if a.shape[0] != b.shape[0]:
                raise ValueError(f"labels_b=None means b is paired with a, but a has {a.shape[0]} rows and b "
                                 f"{b.shape[0]}")
            yb = ya
        else:
            yb = torch.as_tensor(labels_b, device=b.device)
        for y, x, name in ((ya, a, "labels_a"), (yb, b, "labels_b")):
            if y.is_floating_point() or y.ndim != 1 or y.shape[0] != x.shape[0]:
                raise ValueError(f"{name} must be 1-D integer labels with one entry per row ({x.shape[0]}), got "
                                 f"dtype {y.dtype} and shape {tuple(y.shape)}")
    if gather is not None:
        if labels_a is None:
            # positives stay the matching rows of the gathered (rank-ordered) a and b
            a, b = gather(a), gather(b)
            if a.shape[0] != b.shape[0]:
                raise ValueError("gather returned a and b with different numbers of rows")
            ya = yb = torch.arange(a.shape[0], device=a.device)
        else:
            a, b, ya, yb = gather(a), gather(b), gather(ya), gather(yb)
    compute = torch.float32 if a.dtype in (torch.float16, torch.bfloat16) else a.dtype
    positives = ya[:, None] == yb[None, :]
    with torch.autocast(device_type=a.device.type, enabled=False):   # similarities and softmax in >= float32
        an = F.normalize(a.to(compute), dim=1)
        bn = F.normalize(b.to(compute), dim=1)
        logits = an @ bn.T / t
        loss = _directional_ce(logits, positives)
        if symmetric:
            loss = 0.5 * (loss + _directional_ce(logits.T, positives.T))
    return loss


def influence_loss(new_features_mapped: torch.Tensor, labels: Any, old_classifier: Any,
                   reduction: str = "mean") -> torch.Tensor:
    r"""BCT influence loss: cross-entropy of the new (mapped) features through the frozen old classifier.

    .. math:: L_\text{influence} = \mathrm{CE}\big(w_\text{old}(\phi_\text{new}(x)),\, y\big)

    (Shen et al., "Towards Backward-Compatible Representation Learning", CVPR 2020). The old classifier is
    frozen: its parameters receive no gradient (they are detached here), only the features do.

    Parameters
    ----------
    new_features_mapped
        ``(n, d_old)`` new features already in the old classifier's input space.
    labels
        ``(n,)`` integer class indices.
    old_classifier
        An :class:`torch.nn.Module` (evaluated with detached parameters and buffers), a weight tensor
        ``(classes, d_old)``, or a ``(weight, bias)`` pair.
    reduction
        ``"mean"`` or ``"sum"`` over samples.

    Examples
    --------
    >>> import torch
    >>> w = torch.eye(2)
    >>> round(float(influence_loss(torch.tensor([[10.0, 0.0]]), torch.tensor([0]), w)), 6)
    4.5e-05
    """
    check_choice(reduction, "reduction", ("mean", "sum"))
    y = torch.as_tensor(labels, device=new_features_mapped.device)
    if y.is_floating_point() or y.ndim != 1 or y.shape[0] != new_features_mapped.shape[0]:
        raise ValueError(f"labels must be 1-D integer class indices, one per row ({new_features_mapped.shape[0]}), "
                         f"got dtype {y.dtype} and shape {tuple(y.shape)}")
    x = new_features_mapped
    if isinstance(old_classifier, nn.Module):
        n_in = getattr(old_classifier, "in_features", None)
        if isinstance(n_in, int) and n_in != x.shape[-1]:
            raise ValueError(f"old_classifier expects {n_in} features, got {x.shape[-1]}")
        state = {k: v.detach() for k, v in old_classifier.named_parameters()}
        state.update({k: v for k, v in old_classifier.named_buffers()})
        logits = torch.func.functional_call(old_classifier, state, (x,))
    else:
        if isinstance(old_classifier, (tuple, list)):
            if len(old_classifier) != 2:
                raise ValueError("old_classifier given as a sequence must be (weight, bias)")
            weight, bias = old_classifier
        else:
            weight, bias = old_classifier, None
        if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
            raise TypeError("old_classifier must be an nn.Module, a 2-D weight tensor or a (weight, bias) pair")
        if weight.shape[1] != x.shape[-1]:
            raise ValueError(f"old_classifier expects {weight.shape[1]} features, got {x.shape[-1]}")
        logits = F.linear(x, weight.detach(), None if bias is None else bias.detach())
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= logits.shape[-1]):
        raise ValueError(f"labels must be class indices in [0, {logits.shape[-1]}) of old_classifier's "
                         f"{logits.shape[-1]} classes, got values in [{int(y.min())}, {int(y.max())}]")
    return F.cross_entropy(logits, y.long(), reduction=reduction)
