r"""The data-driven start of a trained map: the closed-form solution of its own constraint.

A map trained from a random start may never reach the optimum: a path of nearly orthogonal matrices is a long
walk on :math:`O(d)` and cannot change the sign of :math:`\det A`, so at small λ Adam stays near its start
(held-out top-1 0.000 at λ = 0 and 0.5 on real sentence embeddings, against 0.95 for Procrustes, before this start
existed).
:func:`initialize_map` sets the map to the closed-form minimiser of the training objective's data term
:math:`\tfrac1n\lVert XA^\top + \mathbf 1 b^\top - Y\rVert_F^2` over the map's own set, computed from the first and
second moments of the training pairs (:func:`~relaxedortho.closed_form.accumulate_moments`: one streamed pass,
float64 sums, memory :math:`O(p^2 + pq)` whatever n; memory maps are read a chunk at a time).

The start of ``init="auto"`` (the default of the trainers), per map:

- :class:`~relaxedortho.OrthogonalLinear` and :class:`~relaxedortho.StiefelLinear`, square or rectangular:
  Procrustes :math:`UV^\top` of :math:`X^\top Y` (Schönemann 1966), both signs of det allowed; ``group="SO"``:
  the best rotation (Kabsch 1976); ``method="householder"``: the best matrix of the weight's current det sign (its
  reachable component); compressing maps (p > q) up to :data:`RELAXED_START_MAX_ENTRIES` weight entries: the
  majorization solver (:func:`~relaxedortho.closed_form.solve_orthogonal_lsq`), never worse than
  :math:`UV^\top`. With a bias: on
  centred data, :math:`b = \mu_y - \mu_x W`.
- :class:`~relaxedortho.LambdaOrthoLinear` with a finite λ: the relaxed closed form at radius λ,
  :math:`\min \lVert XW - Y\rVert_F` s.t. :math:`\lVert G(W) - I\rVert_F\le\lambda`
  (:func:`~relaxedortho.closed_form.solve_relaxed_frobenius`, centred with a bias); above
  :data:`RELAXED_START_MAX_ENTRIES` weight entries the (centred) Procrustes map instead (the relaxed solver is
  iterative; see below), and the record says so.
- :class:`~relaxedortho.AffineMap`, and ``LambdaOrthoLinear`` with λ = ∞: affine least squares
  (:func:`~relaxedortho.closed_form.solve_affine`; minimum-norm when :math:`X^\top X` is singular; through the
  origin without a bias).
- any other module: its own weight (recorded as ``"module"``).

For a compressing hard map (p > q) :math:`UV^\top` maximises :math:`\operatorname{tr}(W^\top X^\top Y)` only, which
is why the majorization solver refines it; ``init="procrustes"`` stops at :math:`UV^\top`. Cost: the moments (one
pass, :math:`O(n p (p + q))` flops; :math:`O(npq)` for square and expanding hard maps, which need no Gram) plus one
SVD of a p×q matrix;
the relaxed closed form adds its projected-gradient iterations (each an SVD of p×q and products with the p×p
Gram; up to 500 iterations, seconds at p = q = 64 and about 30 s at 384 on a 2-core CPU before the faster
solver of the speed issue). ``init="module"`` keeps the module's weight (the behaviour before this start
existed), ``init="procrustes"`` uses the (centred) Procrustes map for every map, the cheap start.

The start is the optimum of the data term; training then minimises data term plus regularizer from there (a
λ map moves to the equilibrium of its penalty, docs/math.md §2).
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from typing import Any

import torch
from torch import nn

#: The ``init`` values of :func:`initialize_map` (and of :class:`~relaxedortho.training.Trainer`).
INITS = ("auto", "procrustes", "module")

#: ``init="auto"`` uses an iterative closed form only when the weight has at most this many entries (p·q): the
#: relaxed closed form of a :class:`~relaxedortho.LambdaOrthoLinear`, and the least-squares solver of a compressing
#: hard map (:func:`~relaxedortho.closed_form.solve_orthogonal_lsq`). Above, the (centred) Procrustes map, and the
#: returned record says so. Each solver costs up to hundreds of SVDs of the p×q map: the relaxed one about 4 s at
#: 128 × 128 on a shared 2-core CPU, the compressing one minutes at 2048 → 1024.
RELAXED_START_MAX_ENTRIES = 128 * 128


def check_init(init: Any) -> str:
    """Return ``init`` when it is one of :data:`INITS`; raise a one-line error otherwise."""
    if not isinstance(init, str) or init not in INITS:
        raise ValueError(f"init must be one of {', '.join(map(repr, INITS))}; got {init!r}")
    return init


def _signed_polar(M: torch.Tensor, sign: float) -> torch.Tensor:
    """The maximiser of tr(WᵀM) over square orthogonal W with det W = ``sign`` (Kabsch 1976)."""
    u, _, vh = torch.linalg.svd(M)
    d = float(torch.linalg.det(u @ vh))
    if d * sign < 0:
        u = u.clone()
        u[:, -1] = -u[:, -1]
    return u @ vh


def _hard_kind(module: nn.Module) -> str | None:
    """``"O"``, ``"SO"`` or ``"householder"`` (det sign fixed by the module) for a hard map, else ``None``."""
    from ..maps.orthogonal import OrthogonalLinear

    if isinstance(module, OrthogonalLinear):
        if module.group == "SO":
            return "SO"
        return "householder" if module.method == "householder" and module.in_features == module.out_features \
            else "O"
    stiefel = sys.modules.get("relaxedortho.maps.stiefel")  # not imported: no StiefelLinear exists (nor geoopt)
    if stiefel is not None and isinstance(module, stiefel.StiefelLinear):
        return "O"
    return None


def _procrustes(m, center: bool, kind: str, current: torch.Tensor | None) -> tuple[torch.Tensor, str]:
    from ..closed_form import polar_factor

    M = m.cross(center=center)
    name = "centred_procrustes" if center else "procrustes"
    if kind == "SO":
        return _signed_polar(M, 1.0), name + "_rotation"
    if kind == "householder":
        sign = 1.0 if float(torch.linalg.det(current.detach().double())) >= 0 else -1.0
        return _signed_polar(M, sign), name + ("_rotation" if sign > 0 else "_reflection")
    return polar_factor(M), name


def _centred(m):
    """The moments of the centred rows (X - mu_x, Y - mu_y) as a :class:`PairedMoments`: zero shifts and sums, the
    centred products as the shifted ones, so that the solvers' uncentred products are the centred ones."""
    zx, zy = torch.zeros_like(m.sum_x), torch.zeros_like(m.sum_y)
    return dataclasses.replace(
        m, shift_x=zx, shift_y=zy, sum_x=zx.clone(), sum_y=zy.clone(), cross_shifted=m.cross(center=True),
        gram_x_shifted=m.gram_x(center=True) if m.gram_x_shifted is not None else None,
        gram_y_shifted=m.gram_y(center=True) if m.gram_y_shifted is not None else None, info=dict(m.info))


def _moments(source: Any, target: Any, second_x: bool, chunk_size: int | None):
    from ..closed_form import accumulate_moments

    return accumulate_moments(source, target, second_moments=("x",) if second_x else (), chunk_size=chunk_size)


@torch.no_grad()
def initialize_map(module: nn.Module, source: Any, target: Any, *, init: str = "auto",
                   chunk_size: int | None = None) -> dict:
    r"""Set ``module`` in place to the closed-form start of its kind (module documentation); return a record.

    Args:
        module: the map to start (its dtype and device are kept).
        source, target: the training pairs ``n x in_features`` and ``n x out_features`` (tensors, NumPy arrays
            or memory maps, streamed in chunks), or ``target=None`` and ``source`` an iterable of
            ``(X_chunk, Y_chunk)`` pairs or a :class:`~relaxedortho.closed_form.PairedMoments`.
        init: ``"auto"`` (the start of the table), ``"procrustes"`` (the (centred) Procrustes map for every map
            of the spectrum) or ``"module"`` (leave the module as it is).
        chunk_size: rows per chunk of the moment pass (default: about 4 Mi entries).

    Returns:
        ``{"init": name, "seconds": s}`` plus ``"reason"`` when ``"auto"`` fell back to Procrustes. ``name`` is
        ``"module"``, ``"procrustes"``, ``"centred_procrustes"`` (with ``_rotation`` / ``_reflection`` when the
        det sign is fixed), ``"relaxed_closed_form"`` or ``"least_squares"``.

    Example:
        >>> import torch, relaxedortho as ro
        >>> x = torch.randn(200, 3, dtype=torch.float64)
        >>> q = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))[0]
        >>> m = ro.OrthogonalLinear(3, 3, dtype=torch.float64)
        >>> initialize_map(m, x, x @ q.T)["init"]
        'procrustes'
        >>> bool(torch.allclose(m.weight, q))
        True
    """
    from ..maps.affine import AffineMap
    from ..maps.lambda_ortho import LambdaOrthoLinear

    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module (a map of the spectrum), got {type(module).__name__}")
    check_init(init)
    t0 = time.perf_counter()
    record: dict = {"init": "module"}
    if init == "module":
        record["seconds"] = time.perf_counter() - t0
        return record
    hard = _hard_kind(module)
    is_lambda = isinstance(module, LambdaOrthoLinear)
    affine = isinstance(module, AffineMap) and (not is_lambda or math.isinf(module.lam))
    if init == "module" or not (hard or isinstance(module, AffineMap)):
        record["seconds"] = time.perf_counter() - t0
        return record
    bias = getattr(module, "bias", None)
    center = bias is not None
    p, q = module.in_features, module.out_features
    solve_with = "procrustes"
    if init == "auto" and affine:
        solve_with = "least_squares"
    elif init == "auto" and is_lambda:
        if p * q <= RELAXED_START_MAX_ENTRIES:
            solve_with = "relaxed"
        else:
            record["reason"] = (f"the weight has {p * q} entries, above RELAXED_START_MAX_ENTRIES = "
                                f"{RELAXED_START_MAX_ENTRIES}: the relaxed closed form would be slow")
    compressing_hard = bool(hard) and p > q and init == "auto" and p * q <= RELAXED_START_MAX_ENTRIES
    if hard and p > q and init == "auto" and not compressing_hard:
        record["reason"] = (f"the weight has {p * q} entries, above RELAXED_START_MAX_ENTRIES = "
                            f"{RELAXED_START_MAX_ENTRIES}: the compressing least-squares solver would be slow")
    m = _moments(source, target, solve_with != "procrustes" or compressing_hard, chunk_size)
    for have, want, name in ((m.in_features, p, "source"), (m.out_features, q, "target")):
        if have != want:
            side = "in_features" if name == "source" else "out_features"
            raise ValueError(f"{name} has {have} features but the map has {side}={want}")
    if center and m.n < 2:
        raise ValueError("a data-driven start of a map with a bias needs at least 2 training rows; pass init='module'")
    if solve_with == "least_squares":
        if center:
            from ..closed_form import solve_affine

            sol = solve_affine(m)
            W, b = sol.W, sol.bias
        else:  # no bias to absorb the offset: least squares through the origin
            from ..closed_form.linear import psd_solve

            W, b = psd_solve(m.gram_x(), m.cross()), None
        name = "least_squares"
    elif solve_with == "relaxed":
        from ..closed_form.relaxed import solve_relaxed_frobenius

        sol = solve_relaxed_frobenius(m, radius=module.lam, center=center)
        W, b, name = sol.W, sol.bias, "relaxed_closed_form"
    elif compressing_hard:
        from ..closed_form import solve_orthogonal_lsq

        sol = solve_orthogonal_lsq(_centred(m) if center else m)
        W, name = sol.W, "centred_orthogonal_lsq" if center else "orthogonal_lsq"
        b = m.mean_y() - m.mean_x() @ W if center else None
    else:
        current = module.weight if hard == "householder" else None
        W, name = _procrustes(m, center, hard or "O", current)
        b = m.mean_y() - m.mean_x() @ W if center else None
    weight = W.mT.to(dtype=_param_dtype(module), device=_param_device(module)).contiguous()
    module.load_matrix_(weight, None if b is None else b.to(dtype=weight.dtype, device=weight.device))
    record.update(init=name, seconds=time.perf_counter() - t0)
    return record


def _param_dtype(module: nn.Module) -> torch.dtype:
    return next((t.dtype for t in list(module.parameters()) + list(module.buffers()) if t.is_floating_point()),
                torch.float32)


def _param_device(module: nn.Module) -> torch.device:
    return next((t.device for t in list(module.parameters()) + list(module.buffers())), torch.device("cpu"))
