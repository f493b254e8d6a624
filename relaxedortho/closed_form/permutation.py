r"""The permutation end of the spectrum: matching units of two representations (``docs/math.md`` §13).

Among (signed) permutation matrices — the orthogonal matrices with entries in {0, ±1} — the one closest to the
data, :math:`\arg\min_P\lVert XP - Y\rVert_F^2 = \arg\max_P\operatorname{tr}(P^\top X^\top Y)` for square P, is a
maximum-weight matching of the units of X to the units of Y on the score :math:`M = X^\top Y` (Li et al. 2016,
"Convergent learning: do different neural networks learn the same representations?", ICLR; Ainsworth, Hayase &
Srinivasa 2023, "Git Re-Basin", ICLR, activation matching). It is solved exactly by the Hungarian algorithm
(:func:`scipy.optimize.linear_sum_assignment`, imported when first used). Signed permutations (a unit may also flip
sign, e.g. for odd activations) maximise :math:`\sum|M_{i\pi(i)}|` and take the sign of each matched score.

Matching on the raw cross product is the exact Procrustes problem restricted to permutations, but it weighs units by
their norms: units with a large scale or mean dominate. A common offset adds the same rank-one term to every score,
which cancels in a complete matching (every permutation gains the same total) but not in a partial one (p ≠ q),
where the cross score then prefers the unmatched units with the largest second moments. The default score is
therefore the Pearson correlation of the units (centred, divided by both standard deviations), as in Li et al.;
units with zero variance score 0.

For p ≠ q the matching pairs min(p, q) units (a partial permutation, or semi-permutation): with p < q every unit of X
is sent to a distinct unit of Y (orthonormal rows, :math:`WW^\top = I_p`); with p > q, p − q units of X are dropped
(orthonormal columns).
"""
from __future__ import annotations

from typing import Any

import torch

from .._checks import as_float_tensor, check_bool, check_choice
from .solution import ClosedFormSolution
from .streaming import PairedMoments

__all__ = ["linear_assignment", "solve_permutation", "PERMUTATION_SCORES"]

#: The scores :func:`solve_permutation` can match on.
PERMUTATION_SCORES = ("correlation", "cross")


def linear_assignment(scores: Any, *, signed: bool = False) -> torch.Tensor:
    r"""The (signed, partial) permutation matrix :math:`W` (p×q, float64) maximising :math:`\sum_{ij}W_{ij}S_{ij}`.

    Unsigned: a maximum-weight matching of rows to columns on ``scores`` (min(p, q) pairs, entries 1). Signed: the
    matching on :math:`|S|`, each matched entry set to the sign of its score (+1 for a zero score). Solved exactly
    by :func:`scipy.optimize.linear_sum_assignment` on the CPU; the result is on ``scores``' device. ``scores`` is a
    finite floating-point p×q tensor or NumPy array (else :class:`TypeError` / :class:`ValueError`).

    Example:
        >>> linear_assignment(torch.tensor([[0.1, 2.0], [3.0, 0.2]])).tolist()
        [[0.0, 1.0], [1.0, 0.0]]
        >>> linear_assignment(torch.tensor([[0.1, -2.0], [3.0, 0.2]]), signed=True).tolist()
        [[0.0, -1.0], [1.0, 0.0]]
    """
    from scipy.optimize import linear_sum_assignment

    signed = check_bool(signed, "signed")
    scores = as_float_tensor(scores, "scores", ndim=2)
    s = scores.detach().to(device="cpu", dtype=torch.float64)
    gain = s.abs() if signed else s
    rows, cols = linear_sum_assignment(gain.numpy(), maximize=True)
    rows, cols = torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)
    W = torch.zeros_like(s)
    if signed:
        W[rows, cols] = torch.where(s[rows, cols] < 0, -1.0, 1.0).to(s.dtype)
    else:
        W[rows, cols] = 1.0
    return W.to(scores.device)


def solve_permutation(m: PairedMoments, *, signed: bool = False, score: str = "correlation") -> ClosedFormSolution:
    r"""The (signed) permutation matching units of X to units of Y (module documentation).

    Args:
        m: moments with the means and both Grams accumulated (as :func:`~relaxedortho.closed_form.fit_closed_form`
            does for ``kind="permutation"``).
        signed: allow sign flips (the signed-permutation group).
        score: ``"correlation"`` (default; Pearson correlation of the units, robust to offsets and unit scales) or
            ``"cross"`` (:math:`X^\top Y`, the Procrustes objective restricted to permutations).

    Returns a :class:`~relaxedortho.closed_form.ClosedFormSolution` with the p×q matrix W (entries 0, ±1; orthonormal
    rows or columns) and ``info`` holding the matched score total.
    """
    if not isinstance(m, PairedMoments):
        raise TypeError(f"m must be the PairedMoments of accumulate_moments, got {type(m).__name__}")
    signed = check_bool(signed, "signed")
    check_choice(score, "score", PERMUTATION_SCORES)
    if score == "correlation":
        missing = [name for name, g in (("x", m.gram_x_shifted), ("y", m.gram_y_shifted)) if g is None]
        if missing or not m.has_sums:
            what = f"the Gram of {' and '.join(missing)}" if missing else "the column sums (means=False)"
            raise ValueError(f"m lacks {what}, which score='correlation' needs; accumulate with "
                             "second_moments=('x', 'y') and means=True, or use score='cross'")
    if score == "correlation":
        C = m.cross(center=True)
        vx = torch.diagonal(m.gram_x(center=True)).clamp_min(0)
        vy = torch.diagonal(m.gram_y(center=True)).clamp_min(0)
        denom = torch.sqrt(torch.outer(vx, vy))
        C = torch.where(denom > 0, C / torch.where(denom > 0, denom, torch.ones_like(denom)), torch.zeros_like(C))
    else:
        C = m.cross()
    if not bool(torch.isfinite(C).all()) or not bool((C != 0).any()):
        what = "NaN or Inf" if not bool(torch.isfinite(C).all()) else "all zero"
        raise ValueError(f"the matching scores are {what}: constant units, or the accumulated moments over- or "
                         "underflowed (float32 products of values beyond about 1e±19); pass precision='float64'")
    W = linear_assignment(C, signed=signed)
    return ClosedFormSolution(W, orthogonal=True, info={"score": score, "matched_score": float((W * C).sum())})
