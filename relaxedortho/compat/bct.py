r"""Backward-compatible training (BCT): a new model trained with the old classifier's influence loss.

Shen, Xiong, Xia, Soatto, "Towards Backward-Compatible Representation Learning", CVPR 2020. The new embedding
:math:`\phi_\text{new}` (same width as the old one) is trained with its own classifier and, through the
*frozen* old classifier :math:`w_\text{old}`, with the influence loss
(:func:`relaxedortho.losses.influence_loss`):

.. math:: \mathcal L_\text{BCT} = \mathrm{CE}\big(w_\text{new}(\phi_\text{new}(x)), y\big)
          + \lambda\,\mathrm{CE}\big(w_\text{old}(\phi_\text{new}(x)), y\big), \qquad \lambda = 1 .

Classes the old model never saw have no row in :math:`w_\text{old}`; BCT (Sec. 3.3) *synthesises* them as the
centroid of the old model's features of that class (:func:`synthesized_classifier`), so every training image
contributes. New embeddings are then compared directly with the old gallery.

**Scale pitfall.** With an unnormalised linear old classifier the centroid rows need not have the trained rows'
scale: in relaxedortho's protocol they were 4× (digits) to 8–15× (Fashion-MNIST) longer, the influence loss was
dominated by the new classes, and the new model pointed *away* from the old features' common direction (new→old
top-1 0.007 on Fashion-MNIST, below chance). BCT's own experiments use normalised features; the BCT baseline of
the BT² code base uses the old class centroids for *all* classes as a cosine classifier on normalised features
(:func:`centroid_classifier`, influence weight 10), which keeps every row on one scale.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .._checks import as_float_tensor, check_nonnegative

__all__ = ["synthesized_classifier", "centroid_classifier", "class_means", "bct_loss"]


def class_means(features: Any, labels: Any, n_classes: int) -> torch.Tensor:
    """Mean row of ``features`` per class ``0..n_classes-1`` (a class without rows raises ``ValueError``).

    Example:
        >>> import torch
        >>> class_means(torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 5.0]]), torch.tensor([0, 0, 1]), 2)
        tensor([[2., 1.],
                [0., 5.]])
    """
    f = as_float_tensor(features, "features", ndim=2)
    y = torch.as_tensor(labels, device=f.device)
    if y.ndim != 1 or y.shape[0] != f.shape[0] or y.is_floating_point():
        raise ValueError(f"labels must be 1-D integers, one per row ({f.shape[0]})")
    if int(y.min()) < 0 or int(y.max()) >= n_classes:
        raise ValueError(f"labels must lie in 0..{n_classes - 1}")
    counts = torch.bincount(y, minlength=n_classes)
    if bool((counts == 0).any()):
        missing = torch.nonzero(counts == 0).reshape(-1).tolist()
        raise ValueError(f"no rows for class(es) {missing}: their mean is undefined")
    sums = torch.zeros(n_classes, f.shape[1], dtype=f.dtype, device=f.device).index_add_(0, y, f)
    return sums / counts.to(f.dtype)[:, None]


def synthesized_classifier(old_weight: Any, old_bias: Any, old_classes, old_features: Any, labels: Any,
                           n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The old classifier extended to all ``n_classes`` (BCT, Sec. 3.3): ``(weight, bias)``.

    Row ``c`` is the old classifier's row of class ``c`` when ``c`` is in ``old_classes`` (``old_weight[i]`` for
    ``c = old_classes[i]``, with its bias), else the centroid of the old model's features ``old_features`` of the
    images labelled ``c`` (bias 0).

    Example:
        >>> import torch
        >>> w, b = synthesized_classifier(torch.eye(2)[:1], torch.tensor([0.5]), [1],
        ...                               torch.tensor([[2.0, 0.0], [0.0, 4.0]]), torch.tensor([0, 1]), 2)
        >>> w.tolist(), b.tolist()
        ([[2.0, 0.0], [1.0, 0.0]], [0.0, 0.5])
    """
    W = as_float_tensor(old_weight, "old_weight", ndim=2)
    b = as_float_tensor(old_bias, "old_bias", ndim=1) if old_bias is not None else torch.zeros(W.shape[0])
    oc = [int(c) for c in old_classes]
    if len(oc) != W.shape[0] or b.shape[0] != W.shape[0]:
        raise ValueError(f"old_classes ({len(oc)}), old_weight rows ({W.shape[0]}) and old_bias ({b.shape[0]}) "
                         "must agree")
    means = class_means(old_features, labels, n_classes)
    if means.shape[1] != W.shape[1]:
        raise ValueError(f"old_features have {means.shape[1]} features but old_weight expects {W.shape[1]}")
    weight = means.to(W.dtype).clone()
    bias = torch.zeros(n_classes, dtype=W.dtype, device=W.device)
    for i, c in enumerate(oc):
        weight[c] = W[i]
        bias[c] = b[i]
    return weight, bias


def centroid_classifier(old_features: Any, labels: Any, n_classes: int) -> torch.Tensor:
    r"""The old model's class centroids as a classifier over all ``n_classes``: row :math:`c` is the mean of the
    L2-normalised old features of class :math:`c` (the "pseudo classifier" of the BT² code base's BCT baseline).
    Use it on normalised new features, ``influence_loss(normalize(phi), y, centroid_classifier(...))``.

    Example:
        >>> import torch
        >>> centroid_classifier(torch.tensor([[2.0, 0.0], [0.0, 3.0], [0.0, 1.0]]), torch.tensor([0, 0, 1]), 2)
        tensor([[0.5000, 0.5000],
                [0.0000, 1.0000]])
    """
    return class_means(F.normalize(as_float_tensor(old_features, "old_features", ndim=2), dim=1), labels, n_classes)


def bct_loss(logits: torch.Tensor, features: torch.Tensor, labels: torch.Tensor, old_classifier,
             influence_weight: float = 1.0) -> torch.Tensor:
    r"""BCT's objective :math:`\mathrm{CE}(\text{logits}, y) + \lambda\,\mathrm{CE}(w_\text{old}(\phi), y)`.

    ``logits``: the new classifier's output; ``features``: the new embedding :math:`\phi` as the old classifier
    expects it (raw for :func:`synthesized_classifier`, normalised for :func:`centroid_classifier`);
    ``old_classifier``: a module, a weight, or ``(weight, bias)`` as in :func:`~relaxedortho.losses.influence_loss`.
    """
    from ..losses import influence_loss

    lam = check_nonnegative(influence_weight, "influence_weight")
    loss = F.cross_entropy(logits, labels)
    if lam:
        loss = loss + lam * influence_loss(features, labels, old_classifier)
    return loss
