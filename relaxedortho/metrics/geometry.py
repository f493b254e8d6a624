r"""How much a map preserves the geometry of its source: nearest-neighbour agreement and Gram distortion.

Both compare the rows of the source features :math:`X` with the mapped rows :math:`f(X)`; both are computed in
float64. An isometry (an orthogonal map plus any translation, docs/math.md §1) keeps every distance: it scores
a neighbour agreement of 1 (up to ties); a bias-free orthogonal map also has a Gram distortion of 0 (to
rounding). The λ trade-off (Ricci et al., NeurIPS 2025, arXiv 2509.16664, Appendix E) reads the loss of
geometry off these numbers as λ grows.
"""
from __future__ import annotations

import math

import torch

from .._checks import as_float_tensor, check_int


def _paired_rows(source, mapped) -> tuple[torch.Tensor, torch.Tensor]:
    source = as_float_tensor(source, "source", ndim=2)
    mapped = as_float_tensor(mapped, "mapped", ndim=2)
    if source.shape[0] < 2 or source.shape[0] != mapped.shape[0]:
        raise ValueError(f"source and mapped must have the same number (>= 2) of rows, got {source.shape[0]} and "
                         f"{mapped.shape[0]}")
    return source, mapped


def neighbour_agreement(source: torch.Tensor, mapped: torch.Tensor, chunk: int = 2048) -> float:
    r"""Share of rows whose nearest other row (Euclidean) is the same in ``source`` and in ``mapped``.

    .. math:: \frac1n \sum_i \mathbb 1\big[\arg\min_{j\ne i} \lVert x_i - x_j\rVert
              = \arg\min_{j\ne i}\lVert f(x_i) - f(x_j)\rVert\big]

    Computed in float64, in chunks of rows (memory :math:`O(\text{chunk}\cdot n)`). A measure of preserved
    geometry: an isometry (orthogonal map plus any translation) keeps every distance and scores 1 (up to
    ties); a map that distorts the geometry scores less.

    Example:
        >>> import torch
        >>> x = torch.randn(50, 6, dtype=torch.float64)
        >>> neighbour_agreement(x, 3.0 * x + 1.0)
        1.0
    """
    def nn_index(z: torch.Tensor) -> torch.Tensor:
        z = z.double()
        sq = (z * z).sum(dim=1)
        out = []
        for lo in range(0, z.shape[0], chunk):
            d = sq[lo:lo + chunk, None] + sq[None, :] - 2.0 * (z[lo:lo + chunk] @ z.T)
            rows = torch.arange(lo, min(lo + chunk, z.shape[0]), device=z.device)
            d[rows - lo, rows] = math.inf
            out.append(d.argmin(dim=1))
        return torch.cat(out)

    source, mapped = _paired_rows(source, mapped)
    chunk = check_int(chunk, "chunk")
    return float((nn_index(source) == nn_index(mapped)).double().mean())


def gram_distortion(source: torch.Tensor, mapped: torch.Tensor) -> float:
    r"""Relative change of the Gram matrix of the rows,
    :math:`\lVert f(X)f(X)^\top - XX^\top\rVert_F / \lVert XX^\top\rVert_F` (float64).

    0 for a bias-free orthogonal map with orthonormal columns (every inner product kept); a translation or a
    scale changes it. An all-zero ``source`` has no geometry to keep: the denominator is floored at 1e-300.

    Example:
        >>> import torch
        >>> x = torch.randn(20, 4, dtype=torch.float64)
        >>> round(gram_distortion(x, 2.0 * x), 12)  # every inner product times 4
        3.0
    """
    source, mapped = _paired_rows(source, mapped)
    A, B = source.double(), mapped.double()
    Ga, Gb = A @ A.mT, B @ B.mT
    return float((Gb - Ga).norm() / Ga.norm().clamp_min(1e-300))
