r"""Weight matching of two MLPs (Ainsworth, Hayase & Srinivasa 2023, "Git Re-Basin: merging models modulo permutation
symmetries", ICLR) and hidden-unit permutations (``docs/math.md`` §13).

Permuting the hidden units of an MLP — the rows of one layer's weight and bias, the columns of the next layer's
weight, and any per-unit parameters in between — leaves the function unchanged when everything between the two
linear layers acts unit by unit (elementwise activations, dropout, LayerNorm, BatchNorm1d). Two independently
trained networks are related by such a permutation only approximately; weight matching finds the permutations
:math:`P_\ell` of B's hidden layers that bring its weights closest to A's:

.. math:: \max_{P_1,\dots,P_{L-1}}\ \sum_\ell \langle W^A_\ell,\ P_\ell W^B_\ell P_{\ell-1}^\top\rangle_F
          + \langle b^A_\ell, P_\ell b^B_\ell\rangle \qquad (P_0 = P_L = I),

by coordinate descent: for one layer at a time (in a random order each sweep) the objective is linear in
:math:`P_\ell`, with score :math:`W^A_\ell P_{\ell-1}(W^B_\ell)^\top + (W^A_{\ell+1})^\top P_{\ell+1}W^B_{\ell+1}
+ b^A_\ell (b^B_\ell)^\top` (+ per-unit parameters), and is solved exactly as a linear assignment
(:func:`~relaxedortho.closed_form.permutation.linear_assignment`, SciPy). Each update cannot decrease the objective;
the sweeps stop when no permutation changes. The start is the identity or, if it scores higher, a forward pass that
matches each layer on its incoming weights only (given the previous layer's permutation) — an addition to the
paper's algorithm (which starts at the identity) that makes the recovery of an exact permutation certain when no
two hidden units have identical incoming weights. The result is a local optimum (the problem is NP-hard in general);
for B a permutation of A it recovers the permutation. After matching, averaging or interpolating the weights of A
and the permuted B (or their task vectors) compares like with like.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .._checks import check_int

__all__ = ["weight_matching", "permute_hidden_units", "WeightMatching", "UNITWISE_MODULES"]

#: Modules allowed between two linear layers: they act on each hidden unit separately (no parameters per unit).
UNITWISE_MODULES = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.CELU, nn.SELU,
                    nn.Softplus, nn.Mish, nn.Hardtanh, nn.ReLU6, nn.Identity, nn.Dropout)
#: Modules with one parameter (or buffer) entry per hidden unit, permuted with the units.
_PER_UNIT = (nn.LayerNorm, nn.BatchNorm1d)


def _leaves(model: nn.Module) -> list[nn.Module]:
    if isinstance(model, nn.Sequential):
        out = []
        for m in model:
            out.extend(_leaves(m))
        return out
    return [model]


def _structure(model: nn.Module, name: str) -> tuple[list[nn.Linear], list[list[nn.Module]]]:
    """The linear layers of an MLP and, for each hidden layer, the per-unit modules between it and the next."""
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"{name} must be an nn.Sequential MLP (Linear layers with unit-wise modules between them), "
                        f"got {type(model).__name__}")
    leaves = _leaves(model)
    idx = [i for i, m in enumerate(leaves) if isinstance(m, nn.Linear)]
    if len(idx) < 2:
        raise ValueError(f"{name} needs at least two nn.Linear layers (one hidden layer) to permute, found {len(idx)}")
    linears = [leaves[i] for i in idx]
    between: list[list[nn.Module]] = []
    for a, b in zip(idx[:-1], idx[1:]):
        mods = []
        width = leaves[a].out_features
        if leaves[b].in_features != width:
            raise ValueError(f"{name}: layer {leaves[b]} does not take the {width} outputs of {leaves[a]}")
        for m in leaves[a + 1:b]:
            if isinstance(m, _PER_UNIT):
                shape = m.normalized_shape if isinstance(m, nn.LayerNorm) else (m.num_features,)
                if tuple(shape) != (width,):
                    raise ValueError(f"{name}: {m} does not act on the {width} hidden units")
                mods.append(m)
            elif not isinstance(m, UNITWISE_MODULES):
                raise TypeError(f"{name}: {type(m).__name__} between linear layers is not known to act unit by unit; "
                                "permuting the hidden units could change the function")
        between.append(mods)
    return linears, between


@dataclass
class WeightMatching:
    """The result of :func:`weight_matching`.

    Attributes:
        model: a copy of model B with its hidden units permuted to match model A (same function as B).
        permutations: one index tensor per hidden layer: unit ``i`` of the result is unit ``permutations[l][i]``
            of B.
        sweeps: coordinate-descent sweeps over the layers.
        converged: the last sweep changed no permutation.
        objective: :math:`\\sum_\\ell\\langle W^A_\\ell, P_\\ell W^B_\\ell P_{\\ell-1}^\\top\\rangle +
            \\langle b^A_\\ell, P_\\ell b^B_\\ell\\rangle` (+ per-unit parameters) after each sweep, the first entry
            at the start.
    """

    model: nn.Module
    permutations: list
    sweeps: int
    converged: bool
    objective: list = field(default_factory=list)


def _params(m: nn.Module) -> list[torch.Tensor]:
    return [p for p in (getattr(m, "weight", None), getattr(m, "bias", None)) if p is not None]


def permute_hidden_units(model: nn.Module, permutations: Sequence[Any]) -> nn.Module:
    r"""A copy of the MLP ``model`` with hidden layer :math:`\ell`'s units reordered by ``permutations[l]``: unit
    ``i`` of the copy is unit ``permutations[l][i]`` of ``model``. ``permutations`` is a list with one integer index
    tensor (or list, or NumPy array) per hidden layer; float or boolean indices are refused (:class:`TypeError`)
    rather than truncated.

    Rows of the layer's weight and bias, the per-unit parameters and buffers of LayerNorm/BatchNorm1d between the
    layers, and the columns of the next layer's weight are permuted together, so the copy computes the same function
    (to rounding: the next layer sums in another order).

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> mlp = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> x = torch.randn(5, 3)
        >>> torch.allclose(permute_hidden_units(mlp, [torch.tensor([2, 0, 3, 1])])(x), mlp(x))
        True
    """
    linears, between = _structure(model, "model")
    if isinstance(permutations, (torch.Tensor, np.ndarray, str, bytes)) or not isinstance(permutations, Sequence):
        raise TypeError(f"permutations must be a list of index tensors, one per hidden layer ({len(between)}), got "
                        f"{type(permutations).__name__}")
    if len(permutations) != len(between):
        raise ValueError(f"permutations must hold one index tensor per hidden layer ({len(between)}), "
                         f"got {len(permutations)}")
    out = copy.deepcopy(model)
    out_linears, out_between = _structure(out, "model")
    with torch.no_grad():
        for l, perm in enumerate(permutations):
            width = linears[l].out_features
            p = _indices(perm, f"permutations[{l}]").to(linears[l].weight.device)
            if p.shape != (width,) or not torch.equal(torch.sort(p).values, torch.arange(width, device=p.device)):
                shown = p.tolist() if p.numel() <= 16 else f"a tensor of shape {tuple(p.shape)}"
                raise ValueError(f"permutations[{l}] must be a permutation of range({width}), got {shown}")
            # all in place on the copy, so that layer l + 1 keeps the column permutation made for layer l
            lin, nxt = out_linears[l], out_linears[l + 1]
            lin.weight.copy_(lin.weight[p])
            if lin.bias is not None:
                lin.bias.copy_(lin.bias[p])
            for m in out_between[l]:
                for t in _params(m):
                    t.copy_(t[p])
                for buf in ("running_mean", "running_var"):
                    if getattr(m, buf, None) is not None:
                        getattr(m, buf).copy_(getattr(m, buf)[p])
            nxt.weight.copy_(nxt.weight[:, p])
    return out


def _indices(perm: Any, name: str) -> torch.Tensor:
    """``perm`` as a long tensor; integer data only (a float or boolean index would be silently truncated)."""
    if isinstance(perm, torch.Tensor):
        t = perm
    elif isinstance(perm, (np.ndarray, list, tuple, range)):
        arr = np.asarray(perm)
        if arr.dtype.kind not in "iu" and arr.size:
            raise TypeError(f"{name} must hold integer indices, got NumPy dtype {arr.dtype}")
        t = torch.as_tensor(arr.astype(np.int64))
    else:
        raise TypeError(f"{name} must be a tensor or list of integer indices, got {type(perm).__name__}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer indices, got {t.dtype}")
    return t.long()


def _unit_features(lin: nn.Linear, mods: list[nn.Module]) -> list[torch.Tensor]:
    """Per-unit vectors besides the weight rows: the bias and per-unit parameters (float64)."""
    vecs = [] if lin.bias is None else [lin.bias.detach().double()]
    for m in mods:
        vecs.extend(p.detach().double() for p in _params(m))
    return vecs


def _describe(m: nn.Module) -> str:
    """A per-unit module as weight matching sees it: its type and which of weight/bias it has."""
    params = [n for n in ("weight", "bias") if getattr(m, n, None) is not None]
    return f"{type(m).__name__}({', '.join(params) or 'no parameters'})"


def _same_architecture(lin_a: list[nn.Linear], between_a: list[list[nn.Module]], lin_b: list[nn.Linear],
                       between_b: list[list[nn.Module]]) -> None:
    """Raise a one-line :class:`ValueError` at the first difference weight matching would stumble on: the number
    and weight shapes of the linear layers, which of them have a bias, and the per-unit modules between them."""
    def fail(what: str) -> None:
        raise ValueError(f"model_a and model_b must have the same architecture: {what}")

    if len(lin_a) != len(lin_b):
        fail(f"{len(lin_a)} linear layers in model_a vs {len(lin_b)} in model_b")
    for l, (a, b) in enumerate(zip(lin_a, lin_b)):
        if a.weight.shape != b.weight.shape:
            fail(f"linear layer {l} has weight shape {tuple(a.weight.shape)} in model_a vs {tuple(b.weight.shape)} "
                 "in model_b")
        if (a.bias is None) != (b.bias is None):
            fail(f"linear layer {l} has a bias only in {'model_a' if b.bias is None else 'model_b'}")
    for l, (ma, mb) in enumerate(zip(between_a, between_b)):
        da, db = [_describe(m) for m in ma], [_describe(m) for m in mb]
        if da != db:
            fail(f"the per-unit modules after linear layer {l} are {', '.join(da) or 'none'} in model_a vs "
                 f"{', '.join(db) or 'none'} in model_b")


def weight_matching(model_a: nn.Module, model_b: nn.Module, *, max_sweeps: int = 100, seed: int = 0
                    ) -> WeightMatching:
    r"""Permute the hidden units of ``model_b`` to match ``model_a`` by weight matching (Ainsworth et al. 2023;
    module documentation).

    Args:
        model_a, model_b: MLPs (:class:`torch.nn.Sequential`, possibly nested) of the same architecture: linear
            layers with unit-wise modules (:data:`UNITWISE_MODULES`, LayerNorm, BatchNorm1d) between them. The same
            linear weight shapes, biases on the same layers and the same per-unit modules with the same affine
            parameters are required (else a :class:`ValueError` names the first difference: matching a bias or a
            LayerNorm weight against nothing would silently drop it from the objective); finite parameters.
        max_sweeps: cap on the coordinate-descent sweeps over the layers.
        seed: an integer; seeds the random layer order of each sweep.

    Returns:
        A :class:`WeightMatching`: the permuted copy of B (the same function as B), the permutations, the number
        of sweeps, whether it converged and the objective after each sweep.

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> a = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
        >>> b = permute_hidden_units(a, [torch.randperm(16), torch.randperm(16)])
        >>> res = weight_matching(a, b)
        >>> all(torch.equal(p, q) for p, q in zip(res.model.parameters(), a.parameters()))
        True
    """
    max_sweeps = check_int(max_sweeps, "max_sweeps")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    lin_a, between_a = _structure(model_a, "model_a")
    lin_b, between_b = _structure(model_b, "model_b")
    _same_architecture(lin_a, between_a, lin_b, between_b)
    for name, model in (("model_a", model_a), ("model_b", model_b)):
        for key, value in model.state_dict().items():
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise ValueError(f"{name} has NaN or Inf values in {key}")
    from ..closed_form.permutation import linear_assignment

    Wa = [l.weight.detach().double() for l in lin_a]
    Wb = [l.weight.detach().double().to(Wa[0].device) for l in lin_b]
    Fa = [_unit_features(l, m) for l, m in zip(lin_a, between_a)]
    Fb = [[v.to(Wa[0].device) for v in _unit_features(l, m)] for l, m in zip(lin_b, between_b)]
    L = len(between_a)
    perms = [torch.arange(w.shape[0], device=Wa[0].device) for w in Wa[:-1]]

    def objective() -> float:
        total = 0.0
        for l in range(L + 1):
            rows = perms[l] if l < L else slice(None)
            cols = perms[l - 1] if l > 0 else slice(None)
            total += float((Wa[l] * Wb[l][rows][:, cols]).sum())
            if l < L:
                total += sum(float((fa * fb[perms[l]]).sum()) for fa, fb in zip(Fa[l], Fb[l]))
        return total

    def incoming_score(l: int) -> torch.Tensor:
        prev_cols = perms[l - 1] if l > 0 else slice(None)
        score = Wa[l] @ Wb[l][:, prev_cols].mT
        for fa, fb in zip(Fa[l], Fb[l]):
            score = score + torch.outer(fa, fb)
        return score

    # Start: the identity, or a forward pass matching each layer on its incoming weights (and per-unit parameters)
    # given the previous layer's permutation, whichever scores higher. For B a permutation of A with distinct units
    # the forward pass is already exact: sum_i <w_i, w_pi(i)> <= sum_i ||w_i||^2 with equality only at the truth.
    start = objective()
    identity = [p.clone() for p in perms]
    for l in range(L):
        perms[l] = linear_assignment(incoming_score(l)).argmax(dim=1).to(perms[l].device)
    forward = objective()
    if forward < start:
        perms, forward = identity, start
    history = [forward]
    gen = torch.Generator().manual_seed(int(seed))
    converged, sweeps = False, 0
    for sweeps in range(1, max_sweeps + 1):
        changed = False
        for l in torch.randperm(L, generator=gen).tolist():
            next_rows = perms[l + 1] if l + 1 < L else slice(None)
            score = incoming_score(l) + Wa[l + 1].mT @ Wb[l + 1][next_rows]
            P = linear_assignment(score)
            new = P.argmax(dim=1).to(perms[l].device)
            if not torch.equal(new, perms[l]):
                rows = torch.arange(len(new), device=score.device)
                gain = float((P * score).sum()) - float(score[rows, perms[l]].sum())
                if gain > 1e-12 * max(1.0, abs(history[-1])):
                    perms[l] = new
                    changed = True
        history.append(objective())
        if not changed:
            converged = True
            break
    model = permute_hidden_units(model_b, [p.cpu() for p in perms])
    return WeightMatching(model=model, permutations=[p.cpu() for p in perms], sweeps=sweeps, converged=converged,
                          objective=history)
