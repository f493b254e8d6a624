r"""Forward-compatible transformations: FCT and FastFill.

**FCT** (Ramanujan, Vasu, Farhadi, Tuzel, Pouransari, "Forward Compatible Training for Large-Scale Embedding
Retrieval Systems", CVPR 2022, arXiv 2112.02805; code github.com/apple/ml-fct). The old and the new model stay
frozen; a transformation :math:`h` maps each *old* gallery embedding (optionally with side information
:math:`s(x)`, a third model's embedding of the same image) into the new space, trained by

.. math:: \mathcal L_\text{FCT} = \frac{1}{n}\sum_i \tfrac{1}{d}\lVert h(\phi_\text{old}(x_i), s(x_i))
          - \phi_\text{new}(x_i)\rVert^2 .

The gallery is *transformed* instead of re-embedded (cheap: no image is read again); queries come from the new
model. :class:`FCTTransformation` follows the reference architecture: an old-feature branch
(:math:`d_\text{old}\to 2d_\text{old}\to 2d_\text{new}`), a side-information branch (same shape), and a mixer
(:math:`\to` ``hidden`` :math:`\to` ``hidden`` :math:`\to d_\text{new}`), each layer Linear → BatchNorm → ReLU
except the last (the reference's 1×1 convolutions on 1×1 maps are linear layers). Without side
information the old-feature branch alone feeds the mixer (the reference then passes the old embedding as side
information, which duplicates the branch).

**FastFill** (Jaeckle, Faghri, Farhadi, Tuzel, Pouransari, "FastFill: Efficient Compatible Model Update", ICLR
2023; the same repository's later version). The transformation gets an uncertainty head, a linear map from the
transformed feature to :math:`s = \log\sigma^2` (one scalar per item), and is trained with the heteroscedastic
Gaussian negative log-likelihood (Kendall & Gal, NeurIPS 2017) over a point-to-point *and* a point-to-cluster
term:

.. math:: \ell_i = \tfrac{1}{d}\lVert h_i - \phi_\text{new}(x_i)\rVert^2
                   + \mu_\text{disc}\,\mathrm{CE}_\varepsilon\big(W_\text{new}\,h_i,\ y_i\big),\qquad
          \mathcal L_\text{FastFill} = \frac1n\sum_i \tfrac12 e^{-s_i}\,\ell_i + \mu_\sigma\, s_i ,

with :math:`W_\text{new}` the new model's frozen classifier, :math:`\mathrm{CE}_\varepsilon` cross-entropy with
label smoothing :math:`\varepsilon` (0.1) and :math:`\mu_\sigma = 0.5` (the reference configuration's values;
:math:`\mu_\text{disc} = 1`). At the optimum :math:`s_i = \log(\ell_i / (2\mu_\sigma))`: items whose
transformation is poor get a large :math:`\sigma`. **Partial backfilling** re-embeds the gallery with the new
model in decreasing order of :math:`s` (:func:`uncertainty_order`), which lifts the backfilling curve fastest;
:func:`relaxedortho.metrics.backfilling_curve` measures it.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import as_float_tensor, check_features, check_int, check_nonnegative

__all__ = ["FCTTransformation", "FastFillTransformation", "fct_loss", "fastfill_loss", "fit_fct", "fit_fastfill",
           "uncertainty_order"]


def _block(i: int, o: int, last: bool = False) -> list[nn.Module]:
    return [nn.Linear(i, o)] if last else [nn.Linear(i, o, bias=False), nn.BatchNorm1d(o), nn.ReLU()]


class FCTTransformation(nn.Module):
    """FCT's transformation :math:`h`: old embedding (and optional side information) → new space.

    Args:
        old_dim, new_dim: embedding widths of the old and the new model.
        side_dim: width of the side information (0: none).
        hidden: width of the mixer's two inner layers (2048 in the reference; scale it to your widths).

    ``forward(old, side=None)`` returns ``(n, new_dim)``. Train with :func:`fit_fct`.

    Example:
        >>> import torch
        >>> h = FCTTransformation(4, 6, hidden=8).eval()
        >>> h(torch.randn(3, 4)).shape
        torch.Size([3, 6])
    """

    def __init__(self, old_dim: int, new_dim: int, side_dim: int = 0, hidden: int = 2048) -> None:
        super().__init__()
        check_features(old_dim, "old_dim")
        check_features(new_dim, "new_dim")
        check_features(hidden, "hidden")
        side_dim = check_int(side_dim, "side_dim", minimum=0)
        self.old_dim, self.new_dim, self.side_dim = old_dim, new_dim, side_dim
        self.old_branch = nn.Sequential(*_block(old_dim, 2 * old_dim), *_block(2 * old_dim, 2 * new_dim))
        self.side_branch = (nn.Sequential(*_block(side_dim, 2 * side_dim), *_block(2 * side_dim, 2 * new_dim))
                            if side_dim else None)
        mix_in = 4 * new_dim if side_dim else 2 * new_dim
        self.mixer = nn.Sequential(*_block(mix_in, hidden), *_block(hidden, hidden), *_block(hidden, new_dim, True))

    def transformed(self, old: torch.Tensor, side: torch.Tensor | None = None) -> torch.Tensor:
        """The transformed feature (before any extra head)."""
        x = self.old_branch(old)
        if self.side_branch is not None:
            if side is None:
                raise ValueError(f"this transformation takes side information ({self.side_dim} features)")
            x = torch.cat([x, self.side_branch(side)], dim=1)
        elif side is not None:
            raise ValueError("this transformation was built without side information (side_dim=0)")
        return self.mixer(x)

    def forward(self, old: torch.Tensor, side: torch.Tensor | None = None) -> torch.Tensor:
        return self.transformed(old, side)


class FastFillTransformation(FCTTransformation):
    r"""FCT's transformation with FastFill's uncertainty head: ``forward`` returns ``(h, s)``, ``s`` the
    predicted :math:`\log\sigma^2` of each item (shape ``(n,)``). Same arguments as
    :class:`FCTTransformation`. Train with :func:`fit_fastfill`."""

    def __init__(self, old_dim: int, new_dim: int, side_dim: int = 0, hidden: int = 2048) -> None:
        super().__init__(old_dim, new_dim, side_dim, hidden)
        self.uncertainty_head = nn.Linear(new_dim, 1)

    def forward(self, old: torch.Tensor, side: torch.Tensor | None = None):  # type: ignore[override]
        h = self.transformed(old, side)
        return h, self.uncertainty_head(h).squeeze(1)


def fct_loss(transformed: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    r"""FCT's loss: the element-wise mean squared error :math:`\frac{1}{nd}\lVert h - \phi_\text{new}\rVert_F^2`."""
    if transformed.shape != new.shape:
        raise ValueError(f"transformed and new must have the same shape, got {tuple(transformed.shape)} and "
                         f"{tuple(new.shape)}")
    return F.mse_loss(transformed, new)


def fastfill_loss(transformed: torch.Tensor, log_var: torch.Tensor, new: torch.Tensor, *,
                  logits: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                  mu_disc: float = 1.0, mu_uncertainty: float = 0.5, label_smoothing: float = 0.1) -> torch.Tensor:
    r"""FastFill's loss :math:`\frac1n\sum_i \tfrac12 e^{-s_i}\ell_i + \mu_\sigma s_i` (module documentation).

    Args:
        transformed: :math:`h_i`, ``(n, d)``.
        log_var: :math:`s_i = \log\sigma_i^2`, ``(n,)``.
        new: :math:`\phi_\text{new}(x_i)`, ``(n, d)``.
        logits, labels: the new classifier's logits of :math:`h_i` and the class labels, for the
            point-to-cluster term (left out when ``logits`` is ``None``).
        mu_disc, mu_uncertainty, label_smoothing: :math:`\mu_\text{disc}`, :math:`\mu_\sigma`,
            :math:`\varepsilon`.

    Example:
        >>> import torch
        >>> h = torch.zeros(2, 3); t = torch.ones(2, 3)
        >>> float(fastfill_loss(h, torch.zeros(2), t))   # 0.5 * mean error 1 + 0.5 * 0
        0.5
    """
    if transformed.shape != new.shape:
        raise ValueError(f"transformed and new must have the same shape, got {tuple(transformed.shape)} and "
                         f"{tuple(new.shape)}")
    if log_var.shape != transformed.shape[:1]:
        raise ValueError(f"log_var must have shape ({transformed.shape[0]},), got {tuple(log_var.shape)}")
    check_nonnegative(mu_disc, "mu_disc")
    check_nonnegative(mu_uncertainty, "mu_uncertainty")
    per_item = ((transformed - new) ** 2).mean(1)
    if logits is not None:
        if labels is None:
            raise ValueError("labels are needed with logits (the point-to-cluster term)")
        per_item = per_item + mu_disc * F.cross_entropy(logits, labels, reduction="none",
                                                        label_smoothing=label_smoothing)
    return (0.5 * torch.exp(-log_var) * per_item + mu_uncertainty * log_var).mean()


def _checked_pair(old: Any, new: Any, side: Any):
    o = as_float_tensor(old, "old", ndim=2)
    n = as_float_tensor(new, "new", ndim=2)
    if o.shape[0] != n.shape[0]:
        raise ValueError(f"old and new must be paired rows, got {o.shape[0]} and {n.shape[0]}")
    s = None if side is None else as_float_tensor(side, "side", ndim=2)
    if s is not None and s.shape[0] != o.shape[0]:
        raise ValueError(f"side must have one row per item ({o.shape[0]}), got {s.shape[0]}")
    return o, n, s


def fit_fct(old: Any, new: Any, side: Any = None, *, hidden: int = 2048, epochs: int = 80, batch_size: int = 1024,
            lr: float = 5e-4, weight_decay: float = 3.0517578125e-05, seed: int = 0) -> FCTTransformation:
    """Train an :class:`FCTTransformation` from paired old/new embeddings (and side information) with
    :func:`fct_loss`; returns it in ``eval()`` mode. Defaults are the reference's CIFAR-100 configuration (Adam,
    lr 5e-4, weight decay 2⁻¹⁵, batch 1024, 80 epochs; its cosine schedule is left out)."""
    from ..training.minibatch import train_module

    o, n, s = _checked_pair(old, new, side)
    torch.manual_seed(seed)
    h = FCTTransformation(o.shape[1], n.shape[1], 0 if s is None else s.shape[1], hidden).to(o.device, o.dtype)
    tensors = [o, n] if s is None else [o, n, s]
    train_module(h, lambda m, a, b, *c: fct_loss(m(a, *c), b), tensors, epochs=epochs,
                 batch_size=min(batch_size, o.shape[0]), lr=lr, weight_decay=weight_decay, seed=seed)
    return h


def fit_fastfill(old: Any, new: Any, side: Any = None, *, labels: Any = None, classifier: nn.Module | None = None,
                 classifier_scale: float = 1.0, hidden: int = 2048, epochs: int = 80, batch_size: int = 1024,
                 lr: float = 5e-4, weight_decay: float = 3.0517578125e-05, mu_disc: float = 1.0,
                 mu_uncertainty: float = 0.5, label_smoothing: float = 0.1, seed: int = 0) -> FastFillTransformation:
    """Train a :class:`FastFillTransformation` with :func:`fastfill_loss`; returns it in ``eval()`` mode.

    ``classifier`` (the new model's frozen classifier, a module on new embeddings) and ``labels`` add the
    point-to-cluster term; the transformed features are multiplied by ``classifier_scale`` before it (e.g. the
    mean norm of the raw new embeddings when ``new`` is normalised). Other defaults as in :func:`fit_fct`.
    """
    from ..training.minibatch import train_module

    o, n, s = _checked_pair(old, new, side)
    y = None
    if classifier is not None:
        if labels is None:
            raise ValueError("labels are needed with a classifier (the point-to-cluster term)")
        y = torch.as_tensor(labels, device=o.device)
        if y.ndim != 1 or y.shape[0] != o.shape[0] or y.is_floating_point():
            raise ValueError(f"labels must be 1-D integers, one per row ({o.shape[0]})")
        for p in classifier.parameters():
            p.requires_grad_(False)
    torch.manual_seed(seed)
    h = FastFillTransformation(o.shape[1], n.shape[1], 0 if s is None else s.shape[1], hidden).to(o.device, o.dtype)

    def loss(m, a, b, *rest):
        side_b = rest[0] if s is not None else None
        yb = rest[-1] if y is not None else None
        t, log_var = m(a, side_b)
        logits = classifier(t * classifier_scale) if classifier is not None else None
        return fastfill_loss(t, log_var, b, logits=logits, labels=yb, mu_disc=mu_disc,
                             mu_uncertainty=mu_uncertainty, label_smoothing=label_smoothing)

    tensors = [o, n] + ([s] if s is not None else []) + ([y] if y is not None else [])
    train_module(h, loss, tensors, epochs=epochs, batch_size=min(batch_size, o.shape[0]), lr=lr,
                 weight_decay=weight_decay, seed=seed)
    return h


def uncertainty_order(log_var: Any) -> torch.Tensor:
    r"""FastFill's backfilling order: gallery indices by decreasing predicted uncertainty :math:`s` (ties keep
    index order); pass it as ``order`` to :func:`relaxedortho.metrics.backfilling_curve`.

    Example:
        >>> import torch
        >>> uncertainty_order(torch.tensor([0.1, 2.0, -1.0, 2.0])).tolist()
        [1, 3, 0, 2]
    """
    s = as_float_tensor(log_var, "log_var", ndim=1)
    return torch.argsort(-s, stable=True)
