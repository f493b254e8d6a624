r"""Training-free backward compatibility by spherical interpolation (SLERP) of the query.

Ricci, Biondi, Pernici, "Spherical Interpolation for Backward-Compatible Multimodal Representations"
(NeurIPS 2026; code: github.com/miccunifi/SLERP_backward_compatibility). Nothing is trained and the old
gallery is never touched:

1. **Align.** On a support set of paired, L2-normalised embeddings (new :math:`V`, old :math:`U`), the
   closed-form orthogonal Procrustes map :math:`R = PQ^\top` from the SVD :math:`V^\top U = P\Sigma Q^\top`
   (Schönemann 1966; no centring, as in the paper). When :math:`d_\text{new} > d_\text{old}` the paper pads the
   old space with zeros so that :math:`R` is square and the aligned query :math:`v = \hat n R` stays on the unit
   sphere; its first :math:`d_\text{old}` coordinates are :math:`\hat n W` with :math:`W` the rectangular
   Procrustes solution (:func:`relaxedortho.fit_closed_form`, ``kind="orthogonal"``), and only inner products
   with the zero-padded old vectors matter. This module therefore represents the aligned query exactly by
   :math:`v = [\hat n W,\ \sqrt{1 - \lVert \hat n W\rVert^2}]` and the old query by :math:`u = [\hat o, 0]`: the
   same angle, the same interpolant in the old coordinates, without a :math:`d_\text{new}\times d_\text{new}` SVD.
2. **Interpolate.** For each query, along the great circle from the old query :math:`u` to the aligned new
   query :math:`v` (Shoemake 1985),

   .. math:: q_\alpha = \frac{\sin((1-\alpha)\theta)}{\sin\theta}\,u + \frac{\sin(\alpha\theta)}{\sin\theta}\,v,
             \qquad \cos\theta = \langle u, v\rangle,

   so :math:`q_0 = u` (the old model), :math:`q_1 = v` (Procrustes alone), and :math:`q_\alpha` is at angle
   :math:`\alpha\theta` from :math:`u`.
3. **Retrieve** in the unchanged old gallery with the old-space coordinates of :math:`q_{\hat\alpha}`;
   :math:`\hat\alpha` is chosen on the support set from :math:`\{0, 0.1, \dots, 1\}` by CMC top-1 (recall@1 in
   the paper), the first of equal maxima.

The price: every query is embedded by **both** models. The paper reports compatibility in 85 of 90 model
pairs with SLERP against 45 with Procrustes alone (CLIP/SigLIP upgrades, Flickr30k, COCO, NoCaps).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .._checks import as_float_tensor

__all__ = ["slerp", "SlerpCompatibility", "fit_slerp", "DEFAULT_ALPHAS"]

#: The interpolation weights searched by :func:`fit_slerp` (the paper's grid).
DEFAULT_ALPHAS = tuple(i / 10 for i in range(11))


def slerp(u: torch.Tensor, v: torch.Tensor, alpha: float) -> torch.Tensor:
    r"""Spherical linear interpolation between the rows of ``u`` and ``v`` at weight ``alpha``.

    Both are L2-normalised first. Returns unit rows
    :math:`\big(\sin((1-\alpha)\theta)\,\hat u + \sin(\alpha\theta)\,\hat v\big)/\sin\theta`; ``alpha = 0`` gives
    :math:`\hat u` and ``alpha = 1`` gives :math:`\hat v` (to rounding). Where the angle is below
    :math:`10^{-4}` the normalised linear interpolation is used (it agrees to :math:`O(\theta^2)`). An antipodal
    pair (:math:`\theta \approx \pi`) has no unique geodesic: a :class:`RuntimeWarning` is raised and its row
    is the normalised linear interpolation (zero at ``alpha = 0.5``). Computed in float64, returned in the dtype
    of ``u``.

    Example:
        >>> import torch
        >>> u, v = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
        >>> slerp(u, v, 0.5)
        tensor([[0.7071, 0.7071]])
    """
    u = as_float_tensor(u, "u")
    v = as_float_tensor(v, "v")
    if u.shape != v.shape or u.ndim != 2:
        raise ValueError(f"u and v must be 2-D with the same shape, got {tuple(u.shape)} and {tuple(v.shape)}")
    a = float(alpha)
    if not (0.0 <= a <= 1.0):
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    u64, v64 = F.normalize(u.double(), dim=1), F.normalize(v.double(), dim=1)
    cos = (u64 * v64).sum(1, keepdim=True).clamp(-1.0, 1.0)
    theta = torch.acos(cos)
    sin = torch.sin(theta)
    antipodal = theta > math.pi - 1e-6
    if bool(antipodal.any()):
        warnings.warn(f"{int(antipodal.sum())} query pair(s) are antipodal (angle ~ pi): no unique geodesic; "
                      "their interpolant is the normalised chord", RuntimeWarning, stacklevel=2)
    small = (theta < 1e-4) | antipodal
    safe = torch.where(small, torch.ones_like(sin), sin)
    geo = (torch.sin((1 - a) * theta) * u64 + torch.sin(a * theta) * v64) / safe
    lin = F.normalize((1 - a) * u64 + a * v64, dim=1)
    out = torch.where(small, lin, geo)
    return out.to(u.dtype)


def _aligned(new: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """``[n̂ W, sqrt(1 - |n̂ W|²)]``: the zero-padded Procrustes image of the normalised new rows (module doc)."""
    mapped = F.normalize(new.double(), dim=1) @ W
    rest = (1.0 - (mapped * mapped).sum(1, keepdim=True)).clamp_min(0.0).sqrt()
    return torch.cat([mapped, rest], dim=1)


def _padded(old: torch.Tensor) -> torch.Tensor:
    o = F.normalize(old.double(), dim=1)
    return torch.cat([o, torch.zeros_like(o[:, :1])], dim=1)


@dataclass
class SlerpCompatibility:
    r"""A fitted SLERP backward-compatibility rule (from :func:`fit_slerp`).

    Attributes:
        weight: the Procrustes map :math:`W` (``d_new × d_old``, float64; rows act on normalised new rows).
        alpha: the interpolation weight :math:`\hat\alpha` used by :meth:`query`.
        support_scores: ``{alpha: CMC top-1 on the support set}`` for every weight tried (empty if ``alpha``
            was given).
    """

    weight: torch.Tensor
    alpha: float
    support_scores: dict = field(default_factory=dict)

    def aligned(self, new: Any) -> torch.Tensor:
        """The aligned new queries :math:`v` in the old space (``d_old`` coordinates, norm ≤ 1)."""
        return _aligned(self._rows(new, "new", self.weight.shape[0]), self.weight)[:, :-1]

    def query(self, old: Any, new: Any, alpha: float | None = None) -> torch.Tensor:
        r"""The interpolated queries :math:`q_\alpha` in the old space (``d_old`` coordinates, float64), to be
        searched in the unchanged old gallery. ``old``: the queries embedded by the old model; ``new``: the same
        queries embedded by the new model; ``alpha`` defaults to :attr:`alpha`."""
        o = self._rows(old, "old", self.weight.shape[1])
        n = self._rows(new, "new", self.weight.shape[0])
        if o.shape[0] != n.shape[0]:
            raise ValueError(f"old and new must hold the same queries, got {o.shape[0]} and {n.shape[0]} rows")
        q = slerp(_padded(o), _aligned(n, self.weight), self.alpha if alpha is None else alpha)
        return q[:, :-1]

    def _rows(self, x: Any, name: str, dim: int) -> torch.Tensor:
        t = as_float_tensor(x, name, ndim=2).to(self.weight.device)
        if t.shape[1] != dim:
            raise ValueError(f"{name} must have {dim} features, got {t.shape[1]}")
        return t


def fit_slerp(support_new: Any, support_old: Any, labels: Any = None, *, alpha: float | None = None,
              alphas=DEFAULT_ALPHAS) -> SlerpCompatibility:
    r"""Fit the Procrustes map on a support set and pick the interpolation weight (module documentation).

    Args:
        support_new, support_old: paired embeddings of the support items by the new (``n × d_new``) and the old
            (``n × d_old``) model; normalised here.
        labels: class labels of the support items; with them :math:`\hat\alpha` maximises leave-one-out CMC
            top-1 of the interpolated support queries against the old support embeddings (first of equal
            maxima). Needed unless ``alpha`` is given.
        alpha: a fixed weight in [0, 1] instead of the search.
        alphas: the weights searched (default :data:`DEFAULT_ALPHAS`).

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> old = torch.randn(60, 4, generator=g); new = old @ torch.linalg.qr(torch.randn(4, 4, generator=g))[0]
        >>> rule = fit_slerp(new, old, alpha=1.0)
        >>> q = rule.query(old, new)   # alpha = 1: the aligned new query, here the old one
        >>> bool(torch.allclose(q, torch.nn.functional.normalize(old.double(), dim=1), atol=1e-6))
        True
    """
    from ..closed_form import fit_closed_form
    from ..metrics import cmc

    V = as_float_tensor(support_new, "support_new", ndim=2)
    U = as_float_tensor(support_old, "support_old", ndim=2)
    if V.shape[0] != U.shape[0]:
        raise ValueError(f"support_new and support_old must be paired rows, got {V.shape[0]} and {U.shape[0]}")
    Vn, Un = F.normalize(V.double(), dim=1), F.normalize(U.double(), dim=1)
    W = fit_closed_form(Vn, Un, kind="orthogonal").weight.detach().double().mT.contiguous()  # d_new x d_old
    if alpha is not None:
        a = float(alpha)
        if not 0.0 <= a <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
        return SlerpCompatibility(W, a)
    if labels is None:
        raise ValueError("labels are needed to choose alpha on the support set (or pass alpha)")
    grid = [float(a) for a in alphas]
    if not grid or any(not 0.0 <= a <= 1.0 for a in grid):
        raise ValueError(f"alphas must be a non-empty sequence of values in [0, 1], got {alphas!r}")
    rule = SlerpCompatibility(W, grid[0])
    lab = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    scores = {}
    for a in grid:
        q = rule.query(Un, Vn, a)
        # leave-one-out: the support item itself is never its own match (query i vs gallery minus i)
        scores[a] = _loo_top1(q, Un, lab, cmc)
    best = max(scores.values())
    rule.alpha = next(a for a in grid if scores[a] == best)
    rule.support_scores = scores
    return rule


def _loo_top1(q: torch.Tensor, g: torch.Tensor, labels: np.ndarray, cmc) -> float:
    return float(cmc(q, g, labels, labels, topk=(1,), leave_one_out=True)[1])
