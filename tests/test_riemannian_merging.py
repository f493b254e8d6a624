"""Model merging (task arithmetic, TIES, OrthoMerge) and orthogonal-basis adapters, against loop implementations."""
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from relaxedortho.linalg import random_orthogonal
from relaxedortho.riemannian import (adapter_interference, cayley, cayley_inverse, decouple_orthogonal, merge_models,
                                     norm_corrected_average, orthogonal_adapter_bases, orthomerge, task_arithmetic,
                                     ties_merge)
from relaxedortho.riemannian.geodesics import _expm64

seeds = st.integers(0, 2**31 - 1)


def ties_reference(base, experts, density, scale):
    """TIES, entry by entry, in NumPy (trim per tensor keeping values >= the k-th largest magnitude)."""
    b = base.numpy().ravel()
    taus = [e.numpy().ravel() - b for e in experts]
    k = min(b.size, max(1, math.ceil(density * b.size - 1e-9)))
    trimmed = []
    for t in taus:
        thr = np.sort(np.abs(t))[::-1][k - 1]
        trimmed.append(np.where(np.abs(t) >= thr, t, 0.0))
    out = np.zeros_like(b)
    for j in range(b.size):
        vals = [t[j] for t in trimmed]
        s = np.sign(sum(vals))
        agree = [v for v in vals if v != 0 and np.sign(v) == s]
        out[j] = sum(agree) / len(agree) if agree else 0.0
    return (b + scale * out).reshape(base.shape)


@st.composite
def expert_sets(draw, max_side=6, max_experts=4):
    shape = (draw(st.integers(1, max_side)), draw(st.integers(1, max_side)))
    T = draw(st.integers(1, max_experts))
    g = torch.Generator().manual_seed(draw(seeds))
    base = torch.randn(shape, generator=g, dtype=torch.float64) * 3.0 + 1.0
    experts = [base + torch.randn(shape, generator=g, dtype=torch.float64) * draw(st.floats(0.01, 1.0))
               for _ in range(T)]
    return base, experts


@given(expert_sets(), st.floats(0.05, 1.0), st.floats(0.0, 2.0))
def test_ties_matches_the_entrywise_definition(case, density, scale):
    base, experts = case
    np.testing.assert_allclose(ties_merge(base, experts, density=density, scale=scale).numpy(),
                               ties_reference(base, experts, density, scale), atol=1e-12)


@given(expert_sets(), st.one_of(st.none(), st.floats(0.0, 2.0)))
def test_task_arithmetic_matches_its_formula(case, scale):
    base, experts = case
    lam = 1.0 / len(experts) if scale is None else scale
    expected = base.numpy() + lam * sum(e.numpy() - base.numpy() for e in experts)
    np.testing.assert_allclose(task_arithmetic(base, experts, scale=scale).numpy(), expected, atol=1e-12)


@given(expert_sets(), st.sampled_from(["mean", "median", "max"]), st.sampled_from(["norm", "uniform"]))
def test_norm_corrected_average_matches_its_formula(case, magnitude, direction_weight):
    _, gens = case
    A = [g.numpy() for g in gens]
    norms = np.array([np.linalg.norm(a) for a in A])
    w = norms if direction_weight == "norm" else np.ones_like(norms)
    v = sum(wi * a / n for wi, a, n in zip(w, A, norms))
    m = {"mean": np.mean, "median": np.median, "max": np.max}[magnitude](norms)
    np.testing.assert_allclose(norm_corrected_average(gens, magnitude=magnitude, direction_weight=direction_weight)
                               .numpy(), m * v / np.linalg.norm(v), atol=1e-12)


@given(expert_sets(max_experts=1), st.integers(1, 4))
def test_merging_identical_experts_returns_them(case, T):
    base, (expert,) = case
    experts = [expert] * T
    for merged in (task_arithmetic(base, experts), ties_merge(base, experts, density=1.0),
                   orthomerge(base, experts), orthomerge(base, experts, residual="ties", density=1.0),
                   orthomerge(base, experts, side="output"), orthomerge(base, experts, rotation_fit="conflicts"),
                   orthomerge(base, experts, magnitude="median", direction_weight="uniform")):
        torch.testing.assert_close(merged, expert, atol=1e-10, rtol=0)


@given(st.integers(1, 6), st.integers(1, 6), seeds)
def test_decoupling_is_kabsch_procrustes(out_f, in_f, seed):
    g = torch.Generator().manual_seed(seed)
    W0 = torch.randn(out_f, in_f, generator=g, dtype=torch.float64)
    W = torch.randn(out_f, in_f, generator=g, dtype=torch.float64)
    R, res = decouple_orthogonal(W0, W)
    torch.testing.assert_close(res, W - W0 @ R)
    assert float(torch.linalg.det(R)) == pytest.approx(1.0)
    ref, _ = scipy.linalg.orthogonal_procrustes(W0.numpy(), W.numpy())
    if np.linalg.det(ref) > 0 and np.linalg.svd(W0.numpy().T @ W.numpy(), compute_uv=False).min() > 1e-6:
        np.testing.assert_allclose(R.numpy(), ref, atol=1e-9)
    # the rotation is optimal among rotations: no nearby rotation fits better
    best = float(torch.linalg.matrix_norm(res))
    for _ in range(5):
        M = torch.randn(in_f, in_f, generator=g, dtype=torch.float64)
        other = R @ _expm64(0.05 * (M - M.T))
        assert best <= float(torch.linalg.matrix_norm(W - W0 @ other)) + 1e-12
    # side="output" is the transposed problem
    Ro, reso = decouple_orthogonal(W0, W, side="output")
    Rt, rest = decouple_orthogonal(W0.T, W.T)
    sv = torch.linalg.svdvals(W @ W0.T)   # the rotation is unique when the singular values are nonzero and simple
    if float(sv.min()) > 1e-3 and (len(sv) < 2 or float((sv[:-1] - sv[1:]).min()) > 1e-3):
        torch.testing.assert_close(Ro, Rt.T)
        torch.testing.assert_close(reso, rest.T)


@given(st.integers(1, 4), st.integers(3, 9), seeds)
def test_decoupling_of_a_wide_layer_takes_the_optimal_rotation_closest_to_the_identity(out_f, in_f, seed):
    # W0 R leaves directions outside W0's row space unseen: every rotation agreeing on the row space is optimal,
    # and the one returned must be the closest to I (in particular no farther than the planted one)
    g = torch.Generator().manual_seed(seed)
    W0 = torch.randn(out_f, in_f, generator=g, dtype=torch.float64)
    M = torch.randn(in_f, in_f, generator=g, dtype=torch.float64)
    R_true = _expm64(0.5 * (M - M.T))
    R, res = decouple_orthogonal(W0, W0 @ R_true)
    assert float(torch.linalg.matrix_norm(res)) <= 1e-12
    assert float(torch.linalg.det(R)) == pytest.approx(1.0)
    assert float(torch.linalg.matrix_norm(R - torch.eye(in_f, dtype=torch.float64))) <= \
        float(torch.linalg.matrix_norm(R_true - torch.eye(in_f, dtype=torch.float64))) + 1e-10
    # directions orthogonal to both row spaces are left alone (up to one flip when the determinant needs it)
    rows = torch.cat([W0, W0 @ R_true])
    _, sv, vh = torch.linalg.svd(rows)
    null = vh[int((sv > 1e-10).sum()):]
    if null.shape[0] >= 2:
        fixed = (null @ R.T * null).sum(1)          # <v, R v> for each null direction v
        assert int((fixed > 1 - 1e-10).sum()) >= null.shape[0] - 1


@given(st.integers(2, 6), st.integers(1, 6), st.integers(1, 4), seeds)
def test_orthomerge_of_pure_rotations_stays_on_the_orbit_of_the_base(d, out_f, T, seed):
    # experts W0 R_i: OrthoMerge returns W0 R with R = cay(norm-corrected average of the Cayley coordinates), a
    # rotation, so the merged weight keeps the base's Gram W W^T (its "hyperspherical energy")
    g = torch.Generator().manual_seed(seed)
    W0 = torch.randn(out_f, d, generator=g, dtype=torch.float64)
    Rs = []
    for _ in range(T):
        M = torch.randn(d, d, generator=g, dtype=torch.float64)
        Rs.append(_expm64(0.3 * (M - M.T) / max(float(torch.linalg.matrix_norm(M - M.T, ord=2)), 1e-9)))
    assume_full = out_f >= d
    merged = orthomerge(W0, [W0 @ R for R in Rs])
    torch.testing.assert_close(merged @ merged.T, W0 @ W0.T, atol=1e-12, rtol=0)
    if assume_full:   # W0 has full column rank: R_i is recovered exactly and the merge is the chart average
        R_bar = cayley(norm_corrected_average([cayley_inverse(R) for R in Rs]))
        torch.testing.assert_close(merged, W0 @ R_bar, atol=1e-10, rtol=0)


def test_orthomerge_of_one_expert_at_full_scale_is_the_expert():
    g = torch.Generator().manual_seed(0)
    W0 = torch.randn(5, 4, generator=g, dtype=torch.float64)
    W = W0 + 0.3 * torch.randn(5, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(orthomerge(W0, [W], scale=1.0), W, atol=1e-13, rtol=0)


def test_orthomerge_rejects_rotations_outside_the_cayley_chart_and_bad_options():
    W0 = torch.eye(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="near pi"):
        orthomerge(W0, [torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64))])
    with pytest.raises(ValueError, match="magnitude"):
        orthomerge(W0, [W0], magnitude="mode")
    with pytest.raises(ValueError, match="2-d"):
        orthomerge(torch.zeros(3), [torch.zeros(3)])
    with pytest.raises(ValueError, match="shape"):
        orthomerge(W0, [torch.eye(2, dtype=torch.float64)])
    with pytest.raises(ValueError, match="density"):
        ties_merge(W0, [W0], density=0.0)


def _mlp(seed, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.LayerNorm(8), nn.Linear(8, 4), nn.BatchNorm1d(4),
                         nn.Linear(4, 3)).to(dtype)


def _perturbed(model, seed, eps=0.05):
    g = torch.Generator().manual_seed(seed)
    out = _mlp(0)
    out.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p in out.parameters():
            p.add_(eps * torch.randn(p.shape, generator=g, dtype=p.dtype))
        out[4].running_mean.add_(1.0)
        out[4].num_batches_tracked.add_(7)
    return out


def test_merge_models_applies_each_method_to_the_right_entries():
    base = _mlp(0)
    experts = [_perturbed(base, s) for s in (1, 2)]
    st0, sts = base.state_dict(), [e.state_dict() for e in experts]
    for method, opts in (("orthomerge", {}), ("orthomerge", {"residual": "ties", "density": 0.5}),
                         ("task_arithmetic", {"scale": 0.7}), ("ties", {"density": 0.3})):
        merged = merge_models(base, experts, method=method, **opts).state_dict()
        for key, value in st0.items():
            ex = [s[key] for s in sts]
            if not value.is_floating_point():
                assert torch.equal(merged[key], value)
            elif method == "task_arithmetic":
                torch.testing.assert_close(merged[key], task_arithmetic(value, ex, scale=0.7))
            elif method == "ties":
                torch.testing.assert_close(merged[key], ties_merge(value, ex, density=0.3))
            elif key in ("0.weight", "3.weight", "5.weight"):
                torch.testing.assert_close(merged[key], orthomerge(value, ex, **opts))
            elif opts.get("residual") == "ties":
                torch.testing.assert_close(merged[key], ties_merge(value, ex, density=0.5))
            else:
                torch.testing.assert_close(merged[key], task_arithmetic(value, ex))
    # identical experts come back, the inputs are untouched
    same = merge_models(base, [experts[0], experts[0]])
    for key, value in experts[0].state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(same.state_dict()[key], value, atol=1e-12, rtol=0)
    assert all(torch.equal(a, b) for a, b in zip(base.state_dict().values(), st0.values()))


def test_merge_models_errors():
    base = _mlp(0)
    with pytest.raises(ValueError, match="do not match"):
        merge_models(base, [nn.Sequential(nn.Linear(6, 8))])
    with pytest.raises(TypeError, match="unexpected options"):
        merge_models(base, [base], method="ties", magnitude="max")
    with pytest.raises(ValueError, match="method"):
        merge_models(base, [base], method="average")
    with pytest.raises(ValueError, match="non-empty"):
        merge_models(base, [])


# -- orthogonal adapters -----------------------------------------------------------------------------------------------
@given(st.integers(2, 24), st.lists(st.integers(1, 4), min_size=1, max_size=5), seeds,
       st.sampled_from([torch.float32, torch.float64]))
def test_adapters_on_disjoint_slices_do_not_interfere(in_f, ranks, seed, dtype):
    if sum(ranks) > in_f:
        with pytest.raises(ValueError, match="add up"):
            orthogonal_adapter_bases(in_f, ranks)
        return
    g = torch.Generator().manual_seed(seed)
    Bs = orthogonal_adapter_bases(in_f, ranks, generator=g, dtype=dtype)
    Q = torch.cat(Bs, dim=1).double()
    eps = torch.finfo(dtype).eps
    assert float((Q.T @ Q - torch.eye(Q.shape[1], dtype=torch.float64)).abs().max()) <= 50 * eps * in_f
    deltas = [torch.randn(5, r, generator=g, dtype=dtype) @ B.T for r, B in zip(ranks, Bs)]
    inter = adapter_interference(deltas)
    norms = [float(torch.linalg.matrix_norm(d.double() @ d.double().T)) for d in deltas]
    for i in range(len(deltas)):
        for j in range(len(deltas)):
            if i == j:
                assert float(inter[i, i]) == pytest.approx(norms[i], rel=1e-10)
            else:
                assert float(inter[i, j]) <= 100 * eps * in_f * max(norms)
    assert float(adapter_interference(deltas, normalized=True).max()) <= 1.0 + 1e-12


def test_interference_of_overlapping_adapters_matches_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    deltas = [torch.randn(4, 6, generator=g, dtype=torch.float64) for _ in range(3)]
    inter_in = adapter_interference(deltas)
    inter_out = adapter_interference(deltas, side="output", normalized=True)
    for i in range(3):
        for j in range(3):
            a, b = deltas[i].numpy(), deltas[j].numpy()
            assert float(inter_in[i, j]) == pytest.approx(np.linalg.norm(a @ b.T), rel=1e-12)
            expected = np.linalg.norm(a.T @ b) / (np.linalg.norm(a) * np.linalg.norm(b))
            assert float(inter_out[i, j]) == pytest.approx(expected, rel=1e-12)
    assert float(inter_in[0, 1]) > 0.1


def test_adapter_errors():
    with pytest.raises(ValueError, match="num_adapters"):
        orthogonal_adapter_bases(8, 2)
    with pytest.raises(ValueError, match="shape"):
        adapter_interference([torch.zeros(2, 3), torch.zeros(3, 2)])
    assert random_orthogonal(3, 3).shape == (3, 3)
