r"""Model merging: task arithmetic, TIES and OrthoMerge, on tensors and on whole models (``docs/math.md`` §12).

Experts :math:`W_i` (i = 1..T) fine-tuned from one base :math:`W_0`; task vectors :math:`\tau_i = W_i - W_0`.

- **Task arithmetic** (Ilharco et al. 2023, "Editing models with task arithmetic", ICLR):
  :math:`W_0 + \lambda\sum_i\tau_i`. Default :math:`\lambda = 1/T` (the plain average of the experts); the paper
  tunes λ on validation data.
- **TIES** (Yadav et al. 2023, "TIES-Merging: resolving interference when merging models", NeurIPS): *trim* each
  :math:`\tau_i` to its largest-magnitude entries (a fraction ``density``, per tensor here), *elect* a sign per entry
  :math:`\gamma = \operatorname{sgn}\sum_i\hat\tau_i`, and take the *disjoint mean* of the kept entries that agree
  with γ; :math:`W_0 + \lambda\,\tau_m`, default λ = 1. Entries whose kept values cancel exactly (γ = 0) get 0.
- **OrthoMerge** (Yang, Shi & Liu 2026, "Orthogonal model merging", arXiv:2602.05943; code Sphere-AI-Lab/OrthoMerge)
  with its orthogonal–residual decoupling, per ``out x in`` weight:

  1. :math:`R_i = \arg\min_{R\in SO(d)}\lVert W_0R - W_i\rVert_F` (input side, d = in; ``side="output"`` fits
     :math:`RW_0` instead), the Kabsch/Procrustes rotation;
  2. Cayley coordinates :math:`A_i = (R_i + I)^{-1}(R_i - I)` (:func:`~relaxedortho.riemannian.cayley_inverse`);
  3. norm-corrected average (:func:`norm_corrected_average`): direction
     :math:`u = \sum_i\omega_i A_i/\lVert A_i\rVert`, :math:`\omega_i = \lVert A_i\rVert_F` (``"norm"``) or 1
     (``"uniform"``), normalised; magnitude the mean, median or max of :math:`\lVert A_i\rVert_F`;
     :math:`\bar A = \text{magnitude}\cdot u/\lVert u\rVert`;
  4. back to the group, :math:`\bar R = (I - \bar A)^{-1}(I + \bar A)`;
  5. residuals :math:`W_i - W_0R_i` merged by task arithmetic or TIES and added:
     :math:`W = W_0\bar R + \mathrm{merge}(W_i - W_0R_i)`.

  Averaging the directions and keeping the typical magnitude stops the rotation from shrinking when experts rotate
  in different directions (a plain average of the :math:`A_i` would). Differences from the reference code, all
  deliberate: the rotation is fitted in SO(d) (the code's polar factor may have det −1, where the Cayley coordinate
  does not exist; both agree whenever the polar factor is a rotation, as for experts near the base); the median of
  an even count is the mean of the two middle values (``torch.median`` returns the lower); TIES trims per tensor
  (the code trims the flattened model); the residual scale defaults to 1/T for task arithmetic (the code uses 0.2
  for five experts) and 1 for TIES. The code's "C" variant fits :math:`R_i` only to the rows of :math:`\tau_i` that
  point against the mean task vector (cosine < 0): ``rotation_fit="conflicts"``.

:func:`merge_models` applies these to every ``nn.Linear`` weight of a model (OrthoMerge) and merges every other
floating-point entry of the state_dict (biases, other layers, buffers) with the residual method.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any, Sequence

import torch
from torch import nn

from .._checks import as_float_tensor, as_state_dict, check_choice, check_nonnegative
from .cayley_chart import cayley, cayley_inverse
from .group import _special_polar

__all__ = ["task_arithmetic", "ties_merge", "norm_corrected_average", "decouple_orthogonal", "orthomerge",
           "merge_models", "MERGE_METHODS", "RESIDUAL_MERGES", "MAGNITUDES", "DIRECTION_WEIGHTS"]

#: The methods of :func:`merge_models`.
MERGE_METHODS = ("orthomerge", "task_arithmetic", "ties")
#: How OrthoMerge merges the residuals :math:`W_i - W_0R_i`.
RESIDUAL_MERGES = ("task_arithmetic", "ties")
#: The magnitude of the norm-corrected average.
MAGNITUDES = ("mean", "median", "max")
#: The weights of the directions in the norm-corrected average.
DIRECTION_WEIGHTS = ("norm", "uniform")
_SIDES = ("input", "output")
_ROTATION_FITS = ("expert", "conflicts")


def _tensors(base: Any, experts: Any, name: str = "experts") -> tuple[torch.Tensor, list[torch.Tensor]]:
    b = as_float_tensor(base, "base", allow_half=True)
    if isinstance(experts, torch.Tensor):
        if experts.ndim == 0 or experts.shape[1:] != b.shape:
            raise ValueError(f"experts given as one tensor must stack them along dim 0, shape (T, *base.shape) = "
                             f"{('T',) + tuple(b.shape)}, got {tuple(experts.shape)}".replace("'T'", "T"))
        experts = list(experts)
    if not isinstance(experts, Sequence) or isinstance(experts, (str, bytes)) or len(experts) == 0:
        raise ValueError(f"{name} must be a non-empty sequence of tensors")
    out = []
    for i, e in enumerate(experts):
        t = as_float_tensor(e, f"{name}[{i}]", allow_half=True)
        if t.shape != b.shape:
            raise ValueError(f"{name}[{i}] has shape {tuple(t.shape)} but base has {tuple(b.shape)}")
        out.append(t.to(device=b.device))
    return b, out


def _scale(scale: Any, T: int) -> float:
    return 1.0 / T if scale is None else check_nonnegative(scale, "scale")


def _density(density: Any) -> float:
    d = check_nonnegative(density, "density")
    if not 0 < d <= 1:
        raise ValueError(f"density must be in (0, 1], got {density!r}")
    return d


def _finite(merged: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``merged`` (float64) in ``dtype``, or a one-line error when it does not fit (an overflow, never silent inf)."""
    out = merged.to(dtype)
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"the merged tensor overflows {str(dtype).replace('torch.', '')} (entries up to "
                         f"{float(merged.abs().max()):.3g}); lower scale or merge in float64")
    return out


def task_arithmetic(base: Any, experts: Any, *, scale: float | None = None) -> torch.Tensor:
    r"""Task arithmetic :math:`W_0 + \lambda\sum_i (W_i - W_0)` (Ilharco et al. 2023).

    Args:
        base: the pre-trained tensor :math:`W_0` (any shape).
        experts: a non-empty sequence of tensors of the same shape (or a stacked tensor).
        scale: λ ≥ 0; default :math:`1/T`, the average of the experts (identical experts are returned unchanged).

    Returns the merged tensor in ``base``'s dtype (sums in float64); a :class:`ValueError` when it overflows that
    dtype (never a silent ``inf``).

    Example:
        >>> task_arithmetic(torch.zeros(2), [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 3.0])]).tolist()
        [0.5, 1.5]
    """
    b, ex = _tensors(base, experts)
    lam = _scale(scale, len(ex))
    b64 = b.double()
    total = sum(e.double() - b64 for e in ex)
    return _finite(b64 + lam * total, b.dtype)


def ties_merge(base: Any, experts: Any, *, density: float = 0.2, scale: float = 1.0) -> torch.Tensor:
    r"""TIES merging (Yadav et al. 2023): trim, elect sign, disjoint mean (module documentation).

    Args:
        base: :math:`W_0` (any shape).
        experts: a non-empty sequence of tensors of the same shape.
        density: the fraction of entries of each task vector kept (the largest magnitudes; ties at the threshold are
            all kept), in (0, 1]; the paper's default is 0.2. With 1 nothing is trimmed.
        scale: λ ≥ 0 applied to the merged task vector (default 1).

    Returns the merged tensor in ``base``'s dtype; a :class:`ValueError` when it overflows that dtype.

    Example:
        >>> ties_merge(torch.zeros(3), [torch.tensor([1.0, -2.0, 0.5]), torch.tensor([3.0, 1.0, -0.5])],
        ...            density=1.0).tolist()
        [2.0, -2.0, 0.0]
    """
    b, ex = _tensors(base, experts)
    d = _density(density)
    lam = check_nonnegative(scale, "scale")
    b64 = b.double()
    taus = torch.stack([e.double() - b64 for e in ex])                  # (T, ...)
    flat = taus.reshape(len(ex), -1)
    numel = flat.shape[1]
    if numel == 0:
        return b.clone()
    k = min(numel, max(1, int(math.ceil(d * numel - 1e-9))))
    if k < numel:
        threshold = flat.abs().kthvalue(numel - k + 1, dim=1, keepdim=True).values
        flat = torch.where(flat.abs() >= threshold, flat, torch.zeros_like(flat))
    sign = torch.sign(flat.sum(0))
    agree = (torch.sign(flat) == sign) & (flat != 0)
    count = agree.sum(0)
    merged = torch.where(agree, flat, torch.zeros_like(flat)).sum(0) / count.clamp_min(1)
    return _finite(b64 + lam * merged.reshape(b.shape), b.dtype)


def norm_corrected_average(generators: Any, *, magnitude: str = "mean", direction_weight: str = "norm") -> torch.Tensor:
    r"""OrthoMerge's norm-corrected average of tensors :math:`A_i` (e.g. Cayley coordinates):

    .. math:: \bar A = m\,\frac{v}{\lVert v\rVert_F},\qquad v = \sum_i \omega_i\frac{A_i}{\lVert A_i\rVert_F},

    :math:`\omega_i = \lVert A_i\rVert_F` (``direction_weight="norm"``, so :math:`v = \sum_i A_i`) or 1
    (``"uniform"``), and :math:`m` the ``"mean"``, ``"median"`` or ``"max"`` of the norms :math:`\lVert A_i\rVert_F`
    (Yang, Shi & Liu 2026). Zero tensors add no direction; when :math:`v` vanishes (to
    :math:`10^{-12}` of the largest norm) the result is zero. Identical inputs are returned unchanged.
    Computed in float64, returned in the inputs' dtype.

    Example:
        >>> a = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
        >>> norm_corrected_average([a, -a + 0.0 * a, 2 * a], magnitude="max").tolist()
        [[0.0, -2.0], [2.0, 0.0]]
    """
    check_choice(magnitude, "magnitude", MAGNITUDES)
    check_choice(direction_weight, "direction_weight", DIRECTION_WEIGHTS)
    if isinstance(generators, torch.Tensor):
        generators = list(generators)
    if not isinstance(generators, Sequence) or isinstance(generators, (str, bytes)) or len(generators) == 0:
        raise ValueError("generators must be a non-empty sequence of tensors")
    ts = [as_float_tensor(g, f"generators[{i}]") for i, g in enumerate(generators)]
    for i, t in enumerate(ts[1:], 1):
        if t.shape != ts[0].shape:
            raise ValueError(f"generators[{i}] has shape {tuple(t.shape)} but generators[0] has {tuple(ts[0].shape)}")
    stack = torch.stack([t.double().to(ts[0].device) for t in ts])
    norms = torch.linalg.vector_norm(stack.reshape(len(ts), -1), dim=1)
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    units = stack / safe.reshape((-1,) + (1,) * (stack.ndim - 1))
    omega = norms if direction_weight == "norm" else (norms > 0).to(norms.dtype)
    v = (omega.reshape((-1,) + (1,) * (stack.ndim - 1)) * units).sum(0)
    vn = torch.linalg.vector_norm(v)
    if magnitude == "mean":
        m = norms.mean()
    elif magnitude == "max":
        m = norms.max()
    else:
        m = norms.quantile(0.5)
    if float(vn) <= 1e-12 * max(float(norms.max()), 1e-300):
        return torch.zeros_like(ts[0])
    return (m * v / vn).to(ts[0].dtype)


def _rotation_target(W0: torch.Tensor, experts: list[torch.Tensor], i: int, rotation_fit: str,
                     side: str) -> torch.Tensor:
    """The matrix R_i is fitted to: the expert, or (OrthoMerge "C") the base plus its conflicting rows."""
    if rotation_fit == "expert":
        return experts[i]
    deltas = [e - W0 for e in experts]
    mean = sum(deltas) / len(deltas)
    dim = 1 if side == "input" else 0
    cos = torch.nn.functional.cosine_similarity(deltas[i], mean, dim=dim, eps=1e-12)
    mask = (cos < 0).to(W0.dtype).unsqueeze(dim)
    return W0 + deltas[i] * mask


def _kabsch_nearest_identity(M: torch.Tensor) -> torch.Tensor:
    r"""The rotation R maximising tr(RᵀM) (Kabsch), and among the maximisers the one closest to the identity.

    With :math:`M = U\Sigma V^\top` of rank r < d, every :math:`R = U_rV_r^\top + U_\perp QV_\perp^\top`
    (Q orthogonal) is optimal; :math:`Q = \operatorname{polar}(U_\perp^\top V_\perp)` (with the determinant fixed so
    that det R = +1) maximises tr R. A plain SVD would complete the null space arbitrarily, i.e. add rotations by
    arbitrary angles (up to π) in directions W₀ never sees, which then dominate OrthoMerge's average.
    """
    d = M.shape[-1]
    u, sv, vh = torch.linalg.svd(M)
    tol = d * torch.finfo(torch.float64).eps * float(sv[0]) if d else 0.0
    r = int((sv > tol).sum())
    if r >= d - 1:   # unique up to the determinant fix of the smallest direction (or a one-dimensional null space)
        return _special_polar(M, 1.0)
    v = vh.mT
    Q = _special_polar(u[:, r:].mT @ v[:, r:], torch.linalg.det(u).sign() * torch.linalg.det(v).sign())
    return u[:, :r] @ v[:, :r].mT + u[:, r:] @ Q @ v[:, r:].mT


def decouple_orthogonal(base: Any, expert: Any, *, side: str = "input", target: Any = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Orthogonal–residual decoupling of one expert (Yang, Shi & Liu 2026): the rotation
    :math:`R = \arg\min_{R\in SO(d)}\lVert W_0R - W\rVert_F` and the residual :math:`W - W_0R`.

    Args:
        base, expert: ``out x in`` weights :math:`W_0`, :math:`W` (the :class:`torch.nn.Linear` layout).
        side: ``"input"`` (``R`` is ``in x in``, :math:`W \approx W_0R`, as the reference code) or ``"output"``
            (``R`` is ``out x out``, :math:`W \approx RW_0`).
        target: fit ``R`` to this matrix instead of ``expert`` (the residual is still taken from ``expert``).

    Returns ``(R, residual)`` in float64. ``R`` is the Kabsch solution
    :math:`U\,\mathrm{diag}(1,\dots,1,\det UV^\top)V^\top` of :math:`W_0^\top W = U\Sigma V^\top`
    (:func:`~relaxedortho.riemannian.group.special_polar`). When :math:`W_0^\top W` is rank-deficient (always for
    ``side="input"`` on a layer with fewer outputs than inputs) the optimal rotation is not unique: on the null
    space, where it does not change :math:`W_0R`, the rotation closest to the identity is taken (an SVD alone would
    rotate those directions by arbitrary angles, up to π).

    Example:
        >>> W0 = torch.eye(2, dtype=torch.float64)
        >>> R, res = decouple_orthogonal(W0, torch.tensor([[0.0, -2.0], [2.0, 0.0]], dtype=torch.float64))
        >>> R.tolist(), res.tolist()
        ([[0.0, -1.0], [1.0, 0.0]], [[0.0, -1.0], [1.0, 0.0]])
    """
    check_choice(side, "side", _SIDES)
    W0 = as_float_tensor(base, "base", ndim=2).double()
    W = as_float_tensor(expert, "expert", ndim=2).double().to(W0.device)
    if W.shape != W0.shape:
        raise ValueError(f"expert has shape {tuple(W.shape)} but base has {tuple(W0.shape)}")
    T = W if target is None else as_float_tensor(target, "target", ndim=2).double().to(W0.device)
    if T.shape != W0.shape:
        raise ValueError(f"target has shape {tuple(T.shape)} but base has {tuple(W0.shape)}")
    if side == "input":
        R = _kabsch_nearest_identity(W0.mT @ T)
        return R, W - W0 @ R
    R = _kabsch_nearest_identity(T @ W0.mT)
    return R, W - R @ W0


def orthomerge(base: Any, experts: Any, *, magnitude: str = "mean", direction_weight: str = "norm",
               residual: str = "task_arithmetic", scale: float | None = None, density: float = 0.2,
               side: str = "input", rotation_fit: str = "expert") -> torch.Tensor:
    r"""OrthoMerge of one ``out x in`` weight (Yang, Shi & Liu 2026; the five steps are in the module documentation).

    Args:
        base: the pre-trained weight :math:`W_0` (``out x in``).
        experts: a non-empty sequence of fine-tuned weights of the same shape.
        magnitude, direction_weight: of the norm-corrected average (:func:`norm_corrected_average`).
        residual: how the residuals :math:`W_i - W_0R_i` are merged: ``"task_arithmetic"`` or ``"ties"``.
        scale: the residual scale λ (default :math:`1/T` for task arithmetic, 1 for TIES).
        density: TIES's kept fraction (used only with ``residual="ties"``, checked to lie in (0, 1] always).
        side: ``"input"`` (:math:`W_0R`, ``R`` ``in x in``; the reference code) or ``"output"`` (:math:`RW_0`).
        rotation_fit: ``"expert"`` (fit :math:`R_i` to the expert) or ``"conflicts"`` (to the base plus the rows of
            :math:`\tau_i` whose cosine with the mean task vector is negative: the reference code's "C" variant).

    Returns the merged weight in ``base``'s dtype (algebra in float64). Merging identical experts returns them
    (with the default ``scale``, or TIES at ``density=1``).

    Raises:
        ValueError: an expert's rotation has an angle near π (outside the Cayley chart), bad options, or a result that
            overflows ``base``'s dtype.

    Example:
        >>> W0 = torch.eye(3, dtype=torch.float64)
        >>> W1 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.8, -0.6], [0.0, 0.6, 0.8]], dtype=torch.float64)
        >>> torch.allclose(orthomerge(W0, [W1, W1]), W1)
        True
    """
    check_choice(magnitude, "magnitude", MAGNITUDES)
    check_choice(direction_weight, "direction_weight", DIRECTION_WEIGHTS)
    check_choice(residual, "residual", RESIDUAL_MERGES)
    check_choice(side, "side", _SIDES)
    check_choice(rotation_fit, "rotation_fit", _ROTATION_FITS)
    _density(density)                                   # checked even when unused (residual="task_arithmetic")
    b, ex = _tensors(base, experts)
    if b.ndim != 2:
        raise ValueError(f"base must be a 2-d (out x in) weight, got shape {tuple(b.shape)}")
    W0 = b.double()
    ex64 = [e.double() for e in ex]
    rotations, residuals = [], []
    for i, W in enumerate(ex64):
        target = _rotation_target(W0, ex64, i, rotation_fit, side)
        R, res = decouple_orthogonal(W0, W, side=side, target=target)
        rotations.append(R)
        residuals.append(res)
    try:
        coords = [cayley_inverse(R) for R in rotations]
    except ValueError as err:
        raise ValueError("an expert's rotation has an angle near pi and no Cayley coordinate; OrthoMerge needs "
                         "experts fine-tuned from (near) the base") from err
    R_bar = cayley(norm_corrected_average(coords, magnitude=magnitude, direction_weight=direction_weight))
    rotated = W0 @ R_bar if side == "input" else R_bar @ W0
    zero = torch.zeros_like(W0)
    if residual == "task_arithmetic":
        merged_res = task_arithmetic(zero, residuals, scale=scale)
    else:
        merged_res = ties_merge(zero, residuals, density=density, scale=1.0 if scale is None else scale)
    return _finite(rotated + merged_res, b.dtype)


def _check_entries(base_state: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], name: str) -> None:
    """Every floating-point entry of the base has a finite floating-point counterpart in ``state``."""
    for key, value in base_state.items():
        if not value.is_floating_point():
            continue
        other = state[key]
        if not other.is_floating_point():
            raise TypeError(f"{name}[{key!r}] must be floating-point like the base's, got {other.dtype}")
        if not bool(torch.isfinite(other).all()):
            raise ValueError(f"{name}[{key!r}] contains NaN or Inf values")


def merge_models(base: nn.Module, experts: Sequence[Any], method: str = "orthomerge", **options: Any) -> nn.Module:
    r"""Merge fine-tuned copies of ``base`` into one model (a deep copy of ``base``; the inputs are not modified).

    Args:
        base: the pre-trained :class:`torch.nn.Module`.
        experts: modules (or state_dicts) with exactly the keys and shapes of ``base.state_dict()``, with finite
            floating-point values wherever the base's entry is floating-point (else a one-line error naming the
            expert and the key).
        method: one of :data:`MERGE_METHODS`:

            - ``"orthomerge"``: every ``nn.Linear`` weight by :func:`orthomerge`; every other floating-point entry
              (biases, other layers' parameters, float buffers) by the residual method (task arithmetic or TIES)
              — the reference code does the same;
            - ``"task_arithmetic"`` / ``"ties"``: every floating-point entry by :func:`task_arithmetic` /
              :func:`ties_merge` (TIES trims per tensor).

            Integer buffers (e.g. BatchNorm's ``num_batches_tracked``) keep the base's values.
        options: the chosen function's keywords: ``scale`` (all methods), ``density`` (TIES, or OrthoMerge with
            ``residual="ties"``), and for OrthoMerge ``magnitude``, ``direction_weight``, ``residual``, ``side``,
            ``rotation_fit``.

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> base = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> merged = merge_models(base, [base, base])
        >>> all(torch.allclose(a, b) for a, b in zip(merged.state_dict().values(), base.state_dict().values()))
        True
    """
    from ..transfer.task_vectors import check_same_layout

    check_choice(method, "method", MERGE_METHODS)
    if not isinstance(base, nn.Module):
        raise TypeError(f"base must be an nn.Module, got {type(base).__name__}")
    if isinstance(experts, (nn.Module, Mapping)) or not isinstance(experts, Sequence) or len(experts) == 0:
        raise ValueError("experts must be a non-empty sequence of modules or state_dicts")
    allowed = {"orthomerge": {"magnitude", "direction_weight", "residual", "scale", "density", "side",
                              "rotation_fit"},
               "task_arithmetic": {"scale"}, "ties": {"scale", "density"}}[method]
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(f"method={method!r} got unexpected options {unknown}; its options are {sorted(allowed)}")
    base_state = base.state_dict()
    states = [as_state_dict(e, f"experts[{i}]") for i, e in enumerate(experts)]
    for i, st in enumerate(states):
        check_same_layout(base_state, st, ("base", f"experts[{i}]"))
    _check_entries(base_state, base_state, "base")
    for i, st in enumerate(states):
        _check_entries(base_state, st, f"experts[{i}]")
    linear_weights = {f"{name}.weight" if name else "weight" for name, m in base.named_modules()
                      if isinstance(m, nn.Linear)}
    if method == "orthomerge":
        res_method = options.get("residual", "task_arithmetic")
        check_choice(res_method, "residual", RESIDUAL_MERGES)
        res_opts = {"scale": options.get("scale")}
        if res_method == "ties":
            res_opts = {"scale": 1.0 if options.get("scale") is None else options["scale"],
                        "density": options.get("density", 0.2)}
    merged = copy.deepcopy(base)
    new_state = {}
    for key, value in base_state.items():
        if not value.is_floating_point():
            new_state[key] = value.clone()
            continue
        ex = [st[key] for st in states]
        if method == "task_arithmetic":
            new_state[key] = task_arithmetic(value, ex, **options)
        elif method == "ties":
            new_state[key] = ties_merge(value, ex, **options)
        elif key in linear_weights:
            new_state[key] = orthomerge(value, ex, **options)
        elif res_method == "task_arithmetic":
            new_state[key] = task_arithmetic(value, ex, scale=res_opts["scale"])
        else:
            new_state[key] = ties_merge(value, ex, **res_opts)
    merged.load_state_dict(new_state)
    return merged
