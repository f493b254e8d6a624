r"""Orthogonal-basis adapters (Po, Yang, Aberman & Wetzstein 2024, "Orthogonal adaptation for modular customization
of diffusion models", CVPR; ``docs/math.md`` §14).

A low-rank adapter changes a weight (``out x in``) by :math:`\Delta W_i = A_iB_i^\top` (:math:`A_i` out×r trained,
:math:`B_i` in×r). Orthogonal adaptation freezes each :math:`B_i` to a different slice of *one shared* orthonormal
basis of the input space, so :math:`B_i^\top B_j = 0` for i ≠ j and, whatever the trained :math:`A_i`,

.. math:: \Delta W_i\,\Delta W_j^\top = A_i B_i^\top B_j A_j^\top = 0 :

the adapters read disjoint input directions, and an input in adapter j's directions is untouched by adapter i
(:math:`\Delta W_i B_j = 0`), so independently trained adapters can be summed without crosstalk. In the row convention
of ``docs/math.md`` (:math:`W = \Delta W^\top`, p×q) the same quantity is :math:`W_i^\top W_j`. The output sides
(:math:`\Delta W_i^\top\Delta W_j = B_iA_i^\top A_jB_j^\top`) are not constrained. At most ``in // r`` adapters of
rank r fit; Po et al. use random Gaussian :math:`B_i` (nearly orthogonal in high dimension) beyond that.
"""
from __future__ import annotations

from numbers import Integral
from typing import Any, Sequence

import torch

from .._checks import as_float_tensor, check_bool, check_choice, check_device, check_features
from ..linalg import random_orthogonal
from ..maps.base import check_dtype

__all__ = ["orthogonal_adapter_bases", "adapter_interference"]


def orthogonal_adapter_bases(in_features: int, ranks: int | Sequence[int], num_adapters: int | None = None, *,
                             generator: torch.Generator | None = None, dtype: torch.dtype | None = None,
                             device: Any = None) -> list[torch.Tensor]:
    r"""Frozen bases :math:`B_i` (``in_features x r_i``) for orthogonal adapters: disjoint column slices of one
    Haar-random orthonormal basis (:func:`~relaxedortho.linalg.random_orthogonal`), so
    :math:`B_i^\top B_j = \delta_{ij}I` to rounding.

    Args:
        in_features: the input width of the adapted layer.
        ranks: one rank for every adapter (with ``num_adapters``) or a sequence of ranks, one per adapter.
        num_adapters: the number of adapters when ``ranks`` is a single number.
        generator, dtype, device: for the random basis (default dtype: torch's default).

    Raises :class:`ValueError` when the ranks add up to more than ``in_features`` (they cannot be orthogonal).

    Example:
        >>> B = orthogonal_adapter_bases(8, 2, num_adapters=3, generator=torch.Generator().manual_seed(0),
        ...                              dtype=torch.float64)
        >>> [tuple(b.shape) for b in B], float((B[0].T @ B[1]).abs().max()) < 1e-15
        ([(8, 2), (8, 2), (8, 2)], True)
    """
    in_features = check_features(in_features, "in_features")
    check_dtype(dtype)
    if device is not None:
        device = check_device(device)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if isinstance(ranks, Integral) and not isinstance(ranks, bool):
        if num_adapters is None:
            raise ValueError("num_adapters is needed when ranks is a single number")
        num_adapters = check_features(num_adapters, "num_adapters")
        ranks = [ranks] * num_adapters
    elif isinstance(ranks, (str, bytes)) or not isinstance(ranks, Sequence):
        raise TypeError(f"ranks must be a positive integer or a sequence of them, got {type(ranks).__name__}")
    else:
        ranks = list(ranks)
        if num_adapters is not None and num_adapters != len(ranks):
            raise ValueError(f"num_adapters={num_adapters} but {len(ranks)} ranks were given")
        if not ranks:
            raise ValueError("ranks must not be empty")
    ranks = [check_features(r, f"ranks[{i}]") for i, r in enumerate(ranks)]
    total = sum(ranks)
    if total > in_features:
        raise ValueError(f"the ranks add up to {total} > in_features = {in_features}: that many orthogonal "
                         "directions do not exist (use fewer or smaller adapters)")
    Q = random_orthogonal(in_features, total, generator=generator, dtype=dtype, device=device)
    out, start = [], 0
    for r in ranks:
        out.append(Q[:, start:start + r].contiguous())
        start += r
    return out


def adapter_interference(deltas: Any, *, side: str = "input", normalized: bool = False) -> torch.Tensor:
    r"""The T×T matrix of overlaps between weight changes :math:`\Delta W_i` (``out x in``, the
    :class:`torch.nn.Linear` layout):

    - ``side="input"``: :math:`\lVert\Delta W_i\,\Delta W_j^\top\rVert_F`, zero exactly when the adapters read
      orthogonal input directions (Po et al. 2024; :math:`\lVert W_i^\top W_j\rVert_F` in the row convention);
    - ``side="output"``: :math:`\lVert\Delta W_i^\top\Delta W_j\rVert_F`, the overlap of their output directions.

    With ``normalized=True`` each entry is divided by :math:`\lVert\Delta W_i\rVert_F\lVert\Delta W_j\rVert_F`
    (a number in [0, 1]; 0 for a zero change). Computed in float64.

    Example:
        >>> d1 = torch.tensor([[1.0, 0.0], [2.0, 0.0]]); d2 = torch.tensor([[0.0, 3.0], [0.0, 1.0]])
        >>> adapter_interference([d1, d2]).tolist()
        [[5.0, 0.0], [0.0, 10.0]]
    """
    check_choice(side, "side", ("input", "output"))
    normalized = check_bool(normalized, "normalized")
    if isinstance(deltas, torch.Tensor):
        if deltas.ndim != 3:
            raise ValueError(f"deltas given as one tensor must stack (out x in) matrices, shape (T, out, in), got "
                             f"{tuple(deltas.shape)}")
        deltas = list(deltas)
    if not isinstance(deltas, Sequence) or isinstance(deltas, (str, bytes)) or len(deltas) == 0:
        raise ValueError("deltas must be a non-empty sequence of (out x in) matrices")
    D = [as_float_tensor(d, f"deltas[{i}]", ndim=2).double() for i, d in enumerate(deltas)]
    for i, d in enumerate(D[1:], 1):
        if d.shape != D[0].shape:
            raise ValueError(f"deltas[{i}] has shape {tuple(d.shape)} but deltas[0] has {tuple(D[0].shape)}")
    S = torch.stack([d.to(D[0].device) for d in D])
    if side == "input":
        prods = S[:, None] @ S[None].mT          # (T, T, out, out): ΔW_i ΔW_j^T
    else:
        prods = S[:, None].mT @ S[None]          # (T, T, in, in): ΔW_i^T ΔW_j
    out = torch.linalg.matrix_norm(prods)
    if normalized:
        norms = torch.linalg.matrix_norm(S)
        denom = torch.outer(norms, norms)
        out = torch.where(denom > 0, out / torch.where(denom > 0, denom, torch.ones_like(denom)), torch.zeros_like(out))
    return out
