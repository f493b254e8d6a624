r"""OCA: backward-compatible representations in an expanded space with an orthogonal transformation layer.

Ricci, Biondi, Pernici, Del Bimbo, "Backward-Compatible Aligned Representations via an Orthogonal
Transformation Layer", BEW workshop at ECCV 2024, arXiv 2408.08793. The new backbone outputs
:math:`d_\text{old} + k` dimensions :math:`z = \phi_\text{new}(x)`; a hard orthogonal layer
:math:`T \in O(d_\text{old}+k)` (:class:`~relaxedortho.OrthogonalLinear`, exactly orthogonal after every
optimizer step) sits between the embedding and the new classifier, and the first :math:`d_\text{old}`
coordinates :math:`z_{:d}` are the part compared with the old gallery. The objective

.. math:: \mathcal L_\text{OCA} = \mathrm{CE}\big(W_\text{new}\,T z,\ y\big)
          + \lambda_\text{BCT}\,\mathrm{CE}\big(w_\text{old}(z_{:d}),\ y\big)
          + \lambda_\text{p}\,\big(1 - \cos(z_{:d},\ p_y)\big)

adds to cross-entropy BCT's influence loss through the old classifier (extended to new classes,
:func:`~relaxedortho.compat.bct.synthesized_classifier`) and a cosine pull of :math:`z_{:d}` towards the fixed
old class prototype :math:`p_y` (the normalised mean old embedding of class :math:`y`). Retrieval uses
:math:`z` (new/new, all :math:`d_\text{old}+k` coordinates) and :math:`z_{:d}` against the old gallery
(new→old); :math:`T` preserves every inner product of :math:`z`, so the classifier sees the embedding's
geometry unchanged while the extra :math:`k` coordinates are free to hold what the old space cannot.

Reading note: this module follows the paper's abstract and the structure stated in relaxedortho's design notes
(layer placement, the three losses); the paper's full text was not available to us, so loss weights (1, 1, 1),
the prototype definition and the old classifier of the influence term are our choices (relaxedortho's benchmark
uses :func:`~relaxedortho.compat.bct.centroid_classifier` on :math:`\hat z_{:d}`, ``normalize_head=True``, which
avoids BCT's scale pitfall). With a trainable linear classifier :math:`W_\text{new}T` has the
same expressive power as :math:`W_\text{new}` alone: :math:`T` changes the parametrisation the optimizer
sees, not the set of classifiers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_features, check_nonnegative

__all__ = ["OCAModel", "oca_loss"]


class OCAModel(nn.Module):
    r"""A backbone with OCA's orthogonal layer and classifier.

    Args:
        backbone: a module with ``features(x) -> (n, old_dim + extra)`` (e.g.
            :class:`~relaxedortho.compat.protocol.SmallCNN`; its own ``head`` is not used).
        old_dim: :math:`d_\text{old}`, the leading coordinates compared with the old space.
        n_classes: classes of the new classifier.

    Attributes:
        orthogonal: :math:`T`, a square :class:`~relaxedortho.OrthogonalLinear` (no bias).
        classifier: :math:`W_\text{new}`, an :class:`torch.nn.Linear`.
    """

    def __init__(self, backbone: nn.Module, old_dim: int, n_classes: int) -> None:
        super().__init__()
        from ..maps import OrthogonalLinear

        check_features(old_dim, "old_dim")
        check_features(n_classes, "n_classes")
        width = getattr(backbone, "width", None)
        if width is None:
            raise ValueError("backbone must have a 'width' attribute (its embedding size)")
        if width <= old_dim:
            raise ValueError(f"the backbone's width ({width}) must exceed old_dim ({old_dim}): OCA adds k > 0 "
                             "dimensions")
        self.backbone, self.old_dim, self.width = backbone, old_dim, width
        self.orthogonal = OrthogonalLinear(width, width, bias=False)
        self.classifier = nn.Linear(width, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`z`, the raw embedding (``old_dim + k`` coordinates)."""
        return self.backbone.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits :math:`W_\\text{new} T z`."""
        return self.classifier(self.orthogonal(self.features(x)))

    @torch.no_grad()
    def embed(self, x: torch.Tensor, batch: int = 2048) -> torch.Tensor:
        """Normalised :math:`z` (the new/new retrieval feature)."""
        return F.normalize(torch.cat([self.features(x[i:i + batch]) for i in range(0, x.shape[0], batch)]), dim=1)

    @torch.no_grad()
    def embed_compatible(self, x: torch.Tensor, batch: int = 2048) -> torch.Tensor:
        """Normalised :math:`z_{:d}` (the feature compared with the old gallery)."""
        z = torch.cat([self.features(x[i:i + batch]) for i in range(0, x.shape[0], batch)])
        return F.normalize(z[:, :self.old_dim], dim=1)


def oca_loss(model: OCAModel, x: torch.Tensor, labels: torch.Tensor, old_classifier, prototypes: torch.Tensor, *,
             influence_weight: float = 1.0, prototype_weight: float = 1.0,
             normalize_head: bool = False) -> torch.Tensor:
    r""":math:`\mathcal L_\text{OCA}` on one mini-batch (module documentation).

    ``old_classifier``: the old classifier over all classes (module, weight, or ``(weight, bias)``);
    ``prototypes``: ``(n_classes, old_dim)`` old class prototypes (normalised here); ``normalize_head``: feed
    :math:`\hat z_{:d}` instead of :math:`z_{:d}` to the old classifier (for a cosine classifier such as
    :func:`~relaxedortho.compat.bct.centroid_classifier`, which relaxedortho's benchmark uses: see the scale
    pitfall in :mod:`relaxedortho.compat.bct`).
    """
    from ..losses import influence_loss

    check_nonnegative(influence_weight, "influence_weight")
    check_nonnegative(prototype_weight, "prototype_weight")
    z = model.features(x)
    loss = F.cross_entropy(model.classifier(model.orthogonal(z)), labels)
    head = z[:, :model.old_dim]
    if influence_weight:
        inp = F.normalize(head, dim=1) if normalize_head else head
        loss = loss + influence_weight * influence_loss(inp, labels, old_classifier)
    if prototype_weight:
        cos = F.cosine_similarity(head, F.normalize(prototypes, dim=1)[labels], dim=1)
        loss = loss + prototype_weight * (1 - cos).mean()
    return loss
