r"""The exact combination of two :class:`~relaxedortho.closed_form.PairedMoments` accumulated separately
(``docs/math.md`` §15).

Two accumulations A and B of disjoint row sets hold, each about its own shift :math:`k`, the row count
:math:`n`, the shifted sums :math:`s = \sum (x - k)` and the shifted products :math:`S = \sum (x - k)^\top(y - k')`.
Moving an accumulation to another shift :math:`k^*` is exact algebra (:math:`d = k - k^*`):

.. math::

    s^* = s + n\,d,\qquad
    S^* = S + s_x^\top d_y + d_x^\top s_y + n\,d_x^\top d_y ,

and accumulations about the same shift add. With :math:`k^*` the mean of the union this is the pairwise
update of Chan, Golub & LeVeque (1979, 1983): the centred products of the union are
:math:`C_A + C_B + \tfrac{n_A n_B}{n}\,\delta_x^\top\delta_y` with :math:`\delta` the difference of the means.
Every term is of the size of the spread of the data (the shifts sit near the means), so no cancellation
between large uncentred terms occurs even when the mean dwarfs the spread; the result equals the moments
of all rows accumulated in one pass to float64 rounding, in any order and grouping.
"""
from __future__ import annotations

import torch

from .streaming import PairedMoments

_GRAMS = (("gram_x_shifted", "sum_x", "shift_x"), ("gram_y_shifted", "sum_y", "shift_y"))


def reshifted(m: PairedMoments, kx: torch.Tensor, ky: torch.Tensor) -> dict:
    r"""The moments of ``m`` about the shifts ``kx``, ``ky`` (float64, on ``m``'s device): a dict with
    ``sum_x``, ``sum_y``, ``cross_shifted`` and the Grams ``m`` holds (formulas in the module documentation).
    Needs the column sums (``m.has_sums``)."""
    if not m.has_sums:
        raise RuntimeError("moments without column sums (means=False) cannot move to another shift")
    dx, dy = m.shift_x - kx, m.shift_y - ky
    move_x, move_y = bool(dx.any()), bool(dy.any())
    out = {"sum_x": m.sum_x + m.n * dx if move_x else m.sum_x.clone(),
           "sum_y": m.sum_y + m.n * dy if move_y else m.sum_y.clone()}
    S = m.cross_shifted.clone()  # rank-one updates in place (addr_): one pass over the matrix each
    if move_y:
        S.addr_(m.sum_x, dy)
    if move_x:
        S.addr_(dx, m.sum_y + m.n * dy if move_y else m.sum_y)
    out["cross_shifted"] = S
    for (g, s, _), d, move in zip(_GRAMS, (dx, dy), (move_x, move_y)):
        G = getattr(m, g)
        if G is None:
            continue
        G = G.clone()
        if move:  # s dᵀ + d sᵀ + n d dᵀ = u dᵀ + d uᵀ with u = s + (n/2) d
            u = getattr(m, s) + (m.n / 2) * d
            G.addr_(u, d).addr_(d, u)
        out[g] = G
    return out


def uncentred(m: PairedMoments) -> dict:
    """The moments of ``m`` about the shift 0 without sums: ``cross_shifted`` and the Grams ``m`` holds."""
    out = {"cross_shifted": m.cross()}
    if m.gram_x_shifted is not None:
        out["gram_x_shifted"] = m.gram_x()
    if m.gram_y_shifted is not None:
        out["gram_y_shifted"] = m.gram_y()
    return out


def _weaker_gemm(a: dict, b: dict):
    """The less precise of the two chunk-product dtypes (a merge is as accurate as its worse part)."""
    ga, gb = a.get("gemm_dtype"), b.get("gemm_dtype")
    if ga is None or gb is None:
        return ga or gb
    return ga if torch.finfo(ga).eps >= torch.finfo(gb).eps else gb


def _merged_info(infos: list) -> dict:
    """The ``info`` of a merge: chunks and scaled chunks summed, the weaker GEMM dtype, parts counted."""
    out = {"chunks": 0, "scaled_chunks": 0, "parts": 0, "gemm_dtype": None}
    for info in infos:
        out["chunks"] += int(info.get("chunks", 0))
        out["scaled_chunks"] += int(info.get("scaled_chunks", 0))
        out["parts"] += int(info.get("parts", 1))
        out["gemm_dtype"] = _weaker_gemm(out, info)
    return out


def _check_mergeable(a: PairedMoments, b: PairedMoments) -> None:
    """Raise unless ``a`` and ``b`` are moments of paired rows of the same widths."""
    for m, name in ((a, "self"), (b, "other")):
        if not isinstance(m, PairedMoments):
            raise TypeError(f"{name} must be a PairedMoments, got {type(m).__name__}")
    if (a.in_features, a.out_features) != (b.in_features, b.out_features):
        raise ValueError(f"cannot merge moments of different widths: X {a.in_features}, Y {a.out_features} "
                         f"and X {b.in_features}, Y {b.out_features}")


def merge_moments(a: PairedMoments, b: PairedMoments) -> PairedMoments:
    r"""The moments of the union of the row sets of ``a`` and ``b`` (see :meth:`PairedMoments.merge
    <relaxedortho.closed_form.PairedMoments.merge>`)."""
    _check_mergeable(a, b)
    dev = a.device
    b_on = _to(b, dev)
    n = a.n + b.n
    grams = {g: getattr(a, g) is not None and getattr(b, g) is not None for g, _, _ in _GRAMS}
    dtype = torch.promote_types(a.dtype, b.dtype)
    info = _merged_info([a.info, b.info])
    if a.has_sums and b.has_sums:
        kx, ky = _union_shift(a, b_on, "x"), _union_shift(a, b_on, "y")
        pa, pb = reshifted(a, kx, ky), reshifted(b_on, kx, ky)
        parts = {key: pa[key].add_(pb[key]) for key in pa if key in pb}  # pa holds fresh tensors
        info["shifted"] = (bool(kx.any()), bool(ky.any()))
        return PairedMoments(n=n, shift_x=kx, shift_y=ky, sum_x=parts["sum_x"], sum_y=parts["sum_y"],
                             cross_shifted=parts["cross_shifted"],
                             gram_x_shifted=parts.get("gram_x_shifted") if grams["gram_x_shifted"] else None,
                             gram_y_shifted=parts.get("gram_y_shifted") if grams["gram_y_shifted"] else None,
                             dtype=dtype, info=info, has_sums=True)
    # one side has no column sums: the union has none either; its uncentred moments are exact
    pa, pb = uncentred(a), uncentred(b_on)
    zeros = dict(dtype=torch.float64, device=dev)
    info["shifted"] = (False, False)
    return PairedMoments(n=n, shift_x=torch.zeros(a.in_features, **zeros),
                         shift_y=torch.zeros(a.out_features, **zeros), sum_x=torch.zeros(a.in_features, **zeros),
                         sum_y=torch.zeros(a.out_features, **zeros),
                         cross_shifted=pa["cross_shifted"] + pb["cross_shifted"],
                         gram_x_shifted=pa["gram_x_shifted"] + pb["gram_x_shifted"] if grams["gram_x_shifted"] else None,
                         gram_y_shifted=pa["gram_y_shifted"] + pb["gram_y_shifted"] if grams["gram_y_shifted"] else None,
                         dtype=dtype, info=info, has_sums=False)


def _union_shift(a: PairedMoments, b: PairedMoments, side: str) -> torch.Tensor:
    """The shift of the union: the common shift when both have it (the sums then simply add), else the mean of
    the union, :math:`\\mu_A + \\tfrac{n_B}{n}(\\mu_B - \\mu_A)` (Chan et al.'s update of the mean)."""
    ka, kb = getattr(a, "shift_" + side), getattr(b, "shift_" + side)
    if torch.equal(ka, kb):
        return ka.clone()
    mean_a = ka + getattr(a, "sum_" + side) / a.n
    mean_b = kb + getattr(b, "sum_" + side) / b.n
    return mean_a + (b.n / (a.n + b.n)) * (mean_b - mean_a)


def _to(m: PairedMoments, device: torch.device) -> PairedMoments:
    """``m`` with its tensors on ``device`` (itself when already there)."""
    if m.device == device:
        return m
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    return PairedMoments(n=m.n, shift_x=move(m.shift_x), shift_y=move(m.shift_y), sum_x=move(m.sum_x),
                         sum_y=move(m.sum_y), cross_shifted=move(m.cross_shifted),
                         gram_x_shifted=move(m.gram_x_shifted), gram_y_shifted=move(m.gram_y_shifted),
                         dtype=m.dtype, info=dict(m.info), has_sums=m.has_sums)
