r"""BT²: backward-compatible training with basis transformations.

Zhou, Li, Shrivastava, Zhao, Torralba, Tian, Lim, "BT²: Backward-compatible Training with Basis
Transformation", ICCV 2023, arXiv 2211.03989 (code: github.com/YifeiZhou02/BT-2). A *basis transformation* is
a learnable orthonormal map: it keeps all the information of its input. BT² adds :math:`k` extra dimensions to
the new embedding and joins them to it through two such maps, so the first :math:`d_\text{old}` coordinates can
be made compatible with the old model while the whole embedding still carries the new model's information.

With :math:`h` the new backbone's embedding (width :math:`d_\text{new}`), :math:`a` the :math:`k` extra
coordinates (a linear head on :math:`\mathrm{ReLU}(h)`, normalised), :math:`P \in O(d_\text{new})`,
:math:`Q \in O(d_\text{old})` and a scale :math:`C` (3 in the reference):

.. math:: z = \big[a,\ P\,(C\,\hat h)\big] \in \mathbb R^{k + d_\text{new}},\qquad
          c = Q\,z_{:d_\text{old}},\quad e = z_{d_\text{old}:},\qquad \text{embedding} = [c,\ e],

i.e. :math:`[c, e] = \mathrm{diag}(Q, I)\,\mathrm{diag}(I_k, P)\,[a, C\hat h]` — an orthogonal change of basis
(:meth:`BasisTransformation.basis_matrix`). :math:`c` (the compatible part) is compared with the old gallery,
:math:`[c, e]` is the new model's embedding. Training (the reference's ``TransferTrainer``):

.. math:: \mathcal L = \mathrm{CE}(W\,h, y) + w_o\,(1 - \cos(c, \phi_\text{old}))
          + w_n\,(1 - \cos(h, \phi_\text{new}^\star)) + w_i\,\mathrm{CE}(\hat c\,\Pi^\top, y),

with :math:`\phi_\text{old}` the frozen old embedding, :math:`\phi_\text{new}^\star` the independently trained
(frozen) new model's embedding, :math:`\Pi` the old model's normalised class means over all classes (the
reference's "pseudo classifier") and :math:`(w_o, w_n, w_i) = (10, 1, 10)` as in the reference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_features, check_nonnegative, check_positive

__all__ = ["BasisTransformation", "BT2Model", "bt2_loss"]


class BasisTransformation(nn.Module):
    r"""BT²'s extra dimensions and the two basis transformations (module documentation).

    Args:
        new_dim: :math:`d_\text{new}`, width of the backbone's embedding :math:`h`.
        old_dim: :math:`d_\text{old}`, width of the compatible part :math:`c`.
        extra: :math:`k \ge 1`, the added dimensions (``extra + new_dim >= old_dim`` needed).
        scale: :math:`C`.

    ``forward(h)`` returns ``(c, e)``.

    Example:
        >>> import torch
        >>> bt = BasisTransformation(6, 4, 2)
        >>> c, e = bt(torch.randn(3, 6))
        >>> c.shape, e.shape
        (torch.Size([3, 4]), torch.Size([3, 4]))
    """

    def __init__(self, new_dim: int, old_dim: int, extra: int, scale: float = 3.0) -> None:
        super().__init__()
        from ..maps import OrthogonalLinear

        check_features(new_dim, "new_dim")
        check_features(old_dim, "old_dim")
        check_features(extra, "extra")
        if extra + new_dim < old_dim:
            raise ValueError(f"extra + new_dim ({extra + new_dim}) must be at least old_dim ({old_dim})")
        self.new_dim, self.old_dim, self.extra = new_dim, old_dim, extra
        self.scale = check_positive(scale, "scale")
        self.extra_head = nn.Linear(new_dim, extra)
        self.P = OrthogonalLinear(new_dim, new_dim)
        self.Q = OrthogonalLinear(old_dim, old_dim)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = F.normalize(self.extra_head(F.relu(h)), dim=1)
        z = torch.cat([a, self.P(self.scale * F.normalize(h, dim=1))], dim=1)
        return self.Q(z[:, :self.old_dim]), z[:, self.old_dim:]

    @torch.no_grad()
    def basis_matrix(self) -> torch.Tensor:
        r"""The orthogonal matrix :math:`M = \mathrm{diag}(Q, I)\,\mathrm{diag}(I_k, P)` with
        :math:`[c, e] = M\,[a, C\hat h]` (float64, :math:`(k + d_\text{new})^2`)."""
        D = self.extra + self.new_dim
        A = torch.eye(D, dtype=torch.float64)
        A[self.extra:, self.extra:] = self.P.weight.detach().double().cpu()
        B = torch.eye(D, dtype=torch.float64)
        B[:self.old_dim, :self.old_dim] = self.Q.weight.detach().double().cpu()
        return B @ A


class BT2Model(nn.Module):
    """A new backbone with BT²'s basis transformation.

    Args:
        backbone: a module with ``features(x) -> (n, new_dim)`` and a classifier ``head`` on them (e.g.
            :class:`~relaxedortho.compat.protocol.SmallCNN` over all classes).
        old_dim, extra, scale: as in :class:`BasisTransformation`.
    """

    def __init__(self, backbone: nn.Module, old_dim: int, extra: int, scale: float = 3.0) -> None:
        super().__init__()
        width = getattr(backbone, "width", None)
        if width is None:
            raise ValueError("backbone must have a 'width' attribute (its embedding size)")
        self.backbone = backbone
        self.basis = BasisTransformation(width, old_dim, extra, scale)

    def forward(self, x: torch.Tensor):
        """``(logits, h, c, e)``: the backbone's class logits, its embedding, and BT²'s two parts."""
        h = self.backbone.features(x)
        c, e = self.basis(h)
        return self.backbone.head(h), h, c, e

    @torch.no_grad()
    def _parts(self, x: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        cs, es = [], []
        for i in range(0, x.shape[0], batch):
            _, _, c, e = self(x[i:i + batch])
            cs.append(c)
            es.append(e)
        return torch.cat(cs), torch.cat(es)

    @torch.no_grad()
    def embed(self, x: torch.Tensor, batch: int = 2048) -> torch.Tensor:
        """Normalised :math:`[c, e]` (the new/new retrieval feature)."""
        c, e = self._parts(x, batch)
        return F.normalize(torch.cat([c, e], dim=1), dim=1)

    @torch.no_grad()
    def embed_compatible(self, x: torch.Tensor, batch: int = 2048) -> torch.Tensor:
        """Normalised :math:`c` (compared with the old gallery)."""
        return F.normalize(self._parts(x, batch)[0], dim=1)


def bt2_loss(model: BT2Model, x: torch.Tensor, labels: torch.Tensor, old: torch.Tensor, new: torch.Tensor,
             prototypes: torch.Tensor, *, old_weight: float = 10.0, new_weight: float = 1.0,
             influence_weight: float = 10.0) -> torch.Tensor:
    r"""BT²'s objective on one mini-batch (module documentation): ``old`` and ``new`` are the frozen old and
    new models' embeddings of ``x``; ``prototypes`` the old class means (``n_classes × d_old``)."""
    for w, name in ((old_weight, "old_weight"), (new_weight, "new_weight"), (influence_weight, "influence_weight")):
        check_nonnegative(w, name)
    logits, h, c, _ = model(x)
    loss = F.cross_entropy(logits, labels)
    loss = loss + old_weight * (1 - F.cosine_similarity(c, old, dim=1)).mean()
    loss = loss + new_weight * (1 - F.cosine_similarity(h, new, dim=1)).mean()
    if influence_weight:
        pseudo = F.normalize(c, dim=1) @ F.normalize(prototypes, dim=1).T
        loss = loss + influence_weight * F.cross_entropy(pseudo, labels)
    return loss
