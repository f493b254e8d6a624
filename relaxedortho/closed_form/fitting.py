r"""One entry point for every closed form: :func:`fit_closed_form`."""
from __future__ import annotations

import inspect
from typing import Any

import torch

from . import linear, permutation, procrustes, relaxed
from .._checks import check_device, check_int, check_nonnegative
from .distributed import solve_once
from .solution import ClosedFormSolution
from .streaming import PairedMoments, accumulate_moments, check_moments

#: kind -> (solver, Grams to accumulate, needs a mean (>= 2 rows)).
_KINDS = {
    "orthogonal": (procrustes.solve_orthogonal, (), False),
    "rotation": (procrustes.solve_rotation, (), False),
    "orthogonal_lsq": (procrustes.solve_orthogonal_lsq, ("x",), False),
    "centered": (procrustes.solve_centered, (), True),
    "similarity": (procrustes.solve_similarity, ("x",), True),
    "anchored": (procrustes.solve_anchored, (), False),
    "affine": (linear.solve_affine, ("x",), True),
    "ridge": (linear.solve_affine, ("x",), True),
    "cca": (linear.solve_cca, ("x", "y"), True),
    "relaxed_penalty": (relaxed.solve_relaxed_penalty, ("x",), False),
    "relaxed_band": (relaxed.solve_relaxed_band, ("x",), False),
    "relaxed_frobenius": (relaxed.solve_relaxed_frobenius, ("x",), False),
    "permutation": (permutation.solve_permutation, ("x", "y"), True),
}

#: The kinds :func:`fit_closed_form` knows.
KINDS = tuple(_KINDS)

_DEFAULTS = {"ridge": {"ridge": 1.0}}
_ALIASES = {"relaxed_band": {"a": "lower", "b": "upper"}}
_REQUIRED = {"relaxed_penalty": ("mu",), "relaxed_frobenius": ("radius",), "anchored": ("prior", "gamma")}


def _check_kind(kind: Any) -> None:
    if not isinstance(kind, str) or kind not in _KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}; got {kind!r}")


def _options(kind: str, options: dict) -> dict:
    solver = _KINDS[kind][0]
    opts = {**_DEFAULTS.get(kind, {}), **options}
    for alias, name in _ALIASES.get(kind, {}).items():
        if alias in opts:
            if name in opts:
                raise TypeError(f"give either {alias!r} or {name!r}, not both")
            opts[name] = opts.pop(alias)
    if kind == "relaxed_band" and "epsilon" in opts:
        if "lower" in opts or "upper" in opts:
            raise TypeError("give either epsilon or the band (lower, upper), not both")
        opts["lower"], opts["upper"] = relaxed.band_from_epsilon(opts.pop("epsilon"))
    allowed = [p for p in inspect.signature(solver).parameters if p != "m"]
    for key in opts:
        if key not in allowed:
            extra = " (plus 'epsilon', 'a', 'b')" if kind == "relaxed_band" else ""
            raise TypeError(f"kind={kind!r} got an unexpected option {key!r}; its options are "
                            f"{', '.join(allowed) or 'none'}{extra}")
    for key in _REQUIRED.get(kind, ()):
        if key not in opts:
            raise TypeError(f"kind={kind!r} needs the option {key}=")
    return opts


def solve_closed_form(moments: PairedMoments, kind: str = "orthogonal", **options: Any) -> ClosedFormSolution:
    """The float64 row-convention solution (``W`` p×q, bias) of ``kind`` from accumulated moments."""
    _check_kind(kind)
    opts = _options(kind, options)
    solver, _, needs_mean = _KINDS[kind]
    check_moments(moments, "moments")
    for name, width in (("X", moments.in_features), ("Y", moments.out_features)):
        if width == 0:
            raise ValueError(f"{name} has no columns: a map needs at least one feature on each side")
    if (needs_mean or opts.get("center")) and moments.n < 2:
        raise ValueError(f"kind={kind!r} centres the data and needs at least 2 rows in X and Y, got {moments.n}")
    _check_finite(moments)
    return solver(moments, **opts)


def _check_finite(m: PairedMoments) -> None:
    """An :class:`OverflowError` when an accumulated moment is not finite.

    ``accumulate_moments`` has checked that the data are finite and that float64 holds their moments, so a
    NaN/Inf moment comes from sums beyond the float range (merged or hand-built moments), never from bad data;
    say so and how to avoid it instead of letting an SVD or Cholesky fail on it."""
    parts = (("X^T Y", m.cross_shifted), ("X^T X", m.gram_x_shifted), ("Y^T Y", m.gram_y_shifted),
             ("the column sums of X", m.sum_x), ("the column sums of Y", m.sum_y))
    bad = [name for name, t in parts if t is not None and not bool(torch.isfinite(t).all())]
    if bad:
        raise OverflowError(f"the accumulated moments ({', '.join(bad)}) overflowed the float range although the "
                            "data are finite: divide X and Y by a common factor (orthogonal kinds do not change)")


def fit_closed_form(X: Any, Y: Any = None, kind: str = "orthogonal", *, chunk_size: int | None = None,
                    precision: str = "auto", device: torch.device | str | None = None, group: Any = None,
                    distributed: bool = False, **options: Any):
    r"""Fit a closed-form alignment ``X → Y`` and return it as a map module (``m(X) ≈ Y``).

    Args:
        X, Y: paired rows (n×p and n×q): NumPy arrays (memory-mapped too) or tensors on any device; or ``X``
            an iterable of ``(X_chunk, Y_chunk)`` pairs with ``Y=None`` (streamed, memory O(d² + chunk)); or
            ``X`` a :class:`~relaxedortho.closed_form.PairedMoments` from
            :func:`~relaxedortho.closed_form.accumulate_moments`.
        kind: one of :data:`KINDS` (below).
        chunk_size, precision, device: passed to :func:`~relaxedortho.closed_form.accumulate_moments`.
        group, distributed: fit on the shards of every process of a :mod:`torch.distributed` process group
            (``group=``, or ``distributed=True`` for the default group; never implied): ``X, Y`` are this
            process's shard, the moments are summed over the group, rank 0 solves and every process gets
            the same map, bit for bit (:mod:`relaxedortho.closed_form.distributed`). Every process must
            make the same call.
        options: the kind's knobs (below). Unknown options raise ``TypeError``.

    Kinds (row convention, :math:`M = X^\top Y = U\Sigma V^\top`) and their options:

    - ``"orthogonal"``: :math:`UV^\top`, semi-orthogonal when p ≠ q (Schönemann 1966).
    - ``"rotation"``: :math:`U\,\mathrm{diag}(1,…,\det UV^\top)\,V^\top`, det +1, p = q (Kabsch 1976).
    - ``"orthogonal_lsq"``: least squares over orthonormal W for compressing maps (p > q) by Riemannian
      trust-region Newton, never worse than UVᵀ, a global-optimality certificate in ``info``; options
      ``max_iter``, ``tol``, ``restarts`` (warns with :class:`~relaxedortho.exceptions.ConvergenceWarning` when
      it stops at ``max_iter``).
    - ``"centered"``: UVᵀ of the centred data, bias :math:`\mu_y - \mu_xW` (Gupta et al. 2026).
    - ``"similarity"``: scale, orthogonal W and translation (Umeyama 1991); option ``rotation`` (det +1).
    - ``"anchored"``: :math:`\operatorname{polar}(M + \gamma W_0)`; options ``prior`` (out×in), ``gamma`` ≥ 0.
    - ``"affine"`` / ``"ridge"``: :math:`(C_{xx} + \rho I)^{-1}C_{xy}` and bias; option ``ridge``
      (0 for affine, 1.0 for ridge).
    - ``"cca"``: whiten, Procrustes, recolour; option ``shrinkage`` α ∈ [0, 1], netrep's partial whitening
      :math:`\alpha I + (1-\alpha)C_{xx}^{-1/2}` (0 = CCA, 1 = centred Procrustes; Williams et al. 2021), and
      ``eigval_tol`` (``1e-7`` reproduces netrep's eigenvalue floor).
    - ``"relaxed_penalty"``: cubic-root shrinkage of the singular values; option ``mu`` ≥ 0.
    - ``"relaxed_band"``: singular values clipped to [``lower``, ``upper``] (aliases ``a``, ``b``) or the band
      of a spectral ``epsilon``.
    - ``"relaxed_frobenius"``: :math:`\lVert G(W) - I\rVert_F \le` ``radius`` (bisection on the multiplier).
    - ``"permutation"``: the (signed) permutation matching units by :func:`scipy.optimize.linear_sum_assignment`;
      options ``signed`` (sign flips), ``score`` (``"correlation"`` or ``"cross"``); a partial permutation when
      p ≠ q (:mod:`relaxedortho.closed_form.permutation`).

    The relaxed kinds also take ``center`` (fit a bias), ``solver`` (``"auto"``: closed form when X is whitened,
    else projected gradient), ``whitened_tol``, ``max_iter``, ``tol`` (see
    :mod:`relaxedortho.closed_form.relaxed`). Orthonormal solutions (orthogonal, rotation, orthogonal_lsq,
    centered, anchored) are returned as :class:`~relaxedortho.OrthogonalLinear` (``group="SO"`` for
    rotation), the others as :class:`~relaxedortho.AffineMap`; the module's weight is :math:`W^\top` (out×in)
    in the dtype of the inputs (float64 in, float64 out; half precision gives float32). All algebra runs in
    float64 on the device of the data.

    Example:
        >>> import torch
        >>> X = torch.randn(100, 5, dtype=torch.float64)
        >>> R = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))[0]
        >>> m = fit_closed_form(X, X @ R, kind="orthogonal")
        >>> bool(torch.allclose(m(X), X @ R))
        True
    """
    _check_kind(kind)
    if device is not None:
        device = check_device(device)
    _options(kind, options)  # validate option names before the pass over the data
    own = ("tol", "eigval_tol") if kind == "orthogonal_lsq" or kind == "cca" else ()
    for key in ("gamma", "ridge", "mu", "radius", "shrinkage", "lower", "upper", "a", "b", "epsilon") + own:
        if options.get(key) is not None:  # numeric knobs: fail before reading the data
            check_nonnegative(options[key], key, allow_inf=key in ("gamma", "mu", "radius", "upper", "b", "epsilon"))
    if kind == "orthogonal_lsq":
        check_int(options.get("max_iter", 1), "max_iter")
        check_int(options.get("restarts", 0), "restarts", minimum=0)
    lower, upper = options.get("lower", options.get("a")), options.get("upper", options.get("b"))
    if lower is not None and upper is not None and lower > upper:
        name_l = "lower" if "lower" in options else "a"
        name_u = "upper" if "upper" in options else "b"
        raise ValueError(f"the band needs {name_l} <= {name_u}, got {name_l}={lower!r} > {name_u}={upper!r}")
    means = _KINDS[kind][2] or bool(options.get("center", False))
    moments = accumulate_moments(X, Y, second_moments=_KINDS[kind][1], means=means, chunk_size=chunk_size,
                                 precision=precision, device=device, group=group, distributed=distributed)
    solution = solve_once(lambda: solve_closed_form(moments, kind, **options), device=moments.device,
                          group=group, distributed=distributed)
    return solution.to_module(moments.dtype)
