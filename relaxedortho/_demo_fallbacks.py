r"""PRIVATE, TEMPORARY stand-ins used by :mod:`relaxedortho.demo` and :mod:`relaxedortho.cli` only while the
real modules (:mod:`relaxedortho.closed_form`, :mod:`relaxedortho.metrics`, :mod:`relaxedortho.training`) are
missing. Each function mirrors the signature of the real entry point it stands in for. Delete this module
once those modules are merged.

- :func:`fit_closed_form`: orthogonal Procrustes :math:`W = UV^\top` of :math:`M = X^\top Y = U\Sigma V^\top`
  (Schönemann 1966) and affine least squares on centred data (``kind="orthogonal"`` / ``"affine"``).
- :func:`fit_alignment`: a plain Adam loop on :math:`\tfrac1n\sum_i\lVert B(x_i) - y_i\rVert^2 + R(B)`.
- :func:`cmc` / :func:`mean_average_precision`: brute-force cosine retrieval (Wang et al. 2007 CMC;
  AP = :math:`\tfrac1R\sum_k P@k\,\mathrm{rel}(k)`).
"""
from __future__ import annotations

import numpy as np
import torch


def _t(x, dtype=torch.float64) -> torch.Tensor:
    return (x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))).to(dtype)


def fit_closed_form(X, Y, kind: str = "orthogonal", *, bias: bool | None = None, **options):
    """Closed-form backward map; returns a map module with weight ``A = W^T`` (``y = x A^T + b``)."""
    from .maps import AffineMap, OrthogonalLinear

    Xt, Yt = _t(X), _t(Y)
    dtype = X.dtype if isinstance(X, torch.Tensor) else torch.float32
    if kind == "orthogonal":
        U, _, Vh = torch.linalg.svd(Xt.mT @ Yt, full_matrices=False)
        W = U @ Vh                                       # p x q
        return OrthogonalLinear.from_matrix(W.mT.to(dtype), bias=None)
    if kind == "affine":
        mx, my = Xt.mean(0), Yt.mean(0)
        W = torch.linalg.lstsq(Xt - mx, Yt - my).solution  # p x q
        b = my - mx @ W
        return AffineMap.from_matrix(W.mT.to(dtype), b.to(dtype))
    raise ValueError(f"fallback fit_closed_form has no kind {kind!r}")


def fit_alignment(module, source, target, *, epochs: int = 50, batch_size: int = 256, lr: float = 1e-2,
                  progress: bool = False, generator: torch.Generator | None = None, **_ignored):
    """Adam on the mean per-sample squared error plus ``module.regularizer()``; returns ``module``."""
    X = source if isinstance(source, torch.Tensor) else torch.as_tensor(np.asarray(source))
    Y = target if isinstance(target, torch.Tensor) else torch.as_tensor(np.asarray(target))
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    n = X.shape[0]
    for _ in range(epochs):
        perm = torch.randperm(n, generator=generator, device="cpu").to(X.device)
        for start in range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = ((module(X[idx]) - Y[idx]) ** 2).sum(1).mean() + module.regularizer()
            loss.backward()
            opt.step()
    return module


def _ranking(query, gallery, leave_one_out=False):
    q = torch.nn.functional.normalize(_t(query, torch.float32), dim=1)
    g = torch.nn.functional.normalize(_t(gallery, torch.float32), dim=1)
    sim = q @ g.mT
    if leave_one_out:  # query i and gallery item i are the same item: rank it last and drop it
        sim.fill_diagonal_(-torch.inf)
        return torch.argsort(sim, dim=1, descending=True, stable=True)[:, :-1]
    return torch.argsort(sim, dim=1, descending=True, stable=True)


def _relevance(query, gallery, query_labels, gallery_labels, leave_one_out):
    order = _ranking(query, gallery, leave_one_out).cpu()
    ql = torch.as_tensor(np.asarray(query_labels))
    gl = torch.as_tensor(np.asarray(gallery_labels))
    return gl[order] == ql[:, None]


def cmc(query, gallery, query_labels, gallery_labels, topk=(1, 5), leave_one_out: bool = False) -> dict:
    """CMC top-k accuracies (cosine similarity), brute force."""
    hits = _relevance(query, gallery, query_labels, gallery_labels, leave_one_out)
    return {k: float(hits[:, :k].any(1).float().mean()) for k in topk}


def mean_average_precision(query, gallery, query_labels, gallery_labels, leave_one_out: bool = False) -> float:
    """mAP over queries with at least one relevant gallery item (cosine similarity), brute force."""
    rel = _relevance(query, gallery, query_labels, gallery_labels, leave_one_out).double()
    R = rel.sum(1)
    prec = rel.cumsum(1) / torch.arange(1, rel.shape[1] + 1, dtype=torch.float64)
    ap = (prec * rel).sum(1) / R.clamp_min(1)
    return float(ap[R > 0].mean())
