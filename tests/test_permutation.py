"""The permutation end: fit_closed_form(kind="permutation") against brute force, planted (signed) permutations, and
weight matching of MLPs (Git Re-Basin)."""
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import relaxedortho as ro
from relaxedortho.closed_form import fit_closed_form
from relaxedortho.closed_form.permutation import linear_assignment
from relaxedortho.riemannian import permute_hidden_units, weight_matching

seeds = st.integers(0, 2**31 - 1)


def embeddings(n, d, g, offset=0.0, decay=2.0):
    """Rows with an anisotropic power-law spectrum (std_i ~ i^-decay/2, random rotation) and a common offset."""
    Q = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    std = torch.arange(1, d + 1, dtype=torch.float64) ** (-decay / 2)
    return (torch.randn(n, d, generator=g, dtype=torch.float64) * std) @ Q.T + offset


def planted(p, q, signed, g):
    """A p x q (signed, partial) permutation matrix."""
    W = torch.zeros(p, q, dtype=torch.float64)
    k = min(p, q)
    rows, cols = torch.randperm(p, generator=g)[:k], torch.randperm(q, generator=g)[:k]
    W[rows, cols] = torch.where(torch.rand(k, generator=g) < 0.5, -1.0, 1.0).double() if signed else 1.0
    return W


@given(st.integers(1, 5), st.integers(1, 5), st.booleans(), seeds)
def test_assignment_maximises_the_score_over_all_partial_permutations(p, q, signed, seed):
    S = torch.randn(p, q, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    W = linear_assignment(S, signed=signed)
    best = -np.inf
    k = min(p, q)
    for rows in itertools.permutations(range(p), k):
        for cols in itertools.combinations(range(q), k):
            vals = S.numpy()[list(rows), list(cols)]
            best = max(best, np.abs(vals).sum() if signed else vals.sum())
    assert float((W * S).sum()) == pytest.approx(best, abs=1e-12)
    assert torch.equal(W.abs().sum(0) <= 1, torch.ones(q, dtype=torch.bool))
    assert int(W.abs().sum()) == k


@given(st.integers(2, 24), st.booleans(), st.sampled_from([0.0, 30.0]), seeds,
       st.sampled_from([torch.float32, torch.float64]))
def test_planted_signed_permutation_is_recovered_exactly_from_noisy_data(d, signed, offset, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    X = embeddings(400, d, g, offset)
    P = planted(d, d, signed, g)
    std = X.std(0)
    Y = X @ P + 0.05 * torch.randn(400, d, generator=g, dtype=torch.float64) * (std @ P.abs())
    m = fit_closed_form(X.to(dtype), Y.to(dtype), kind="permutation", signed=signed)
    assert isinstance(m, ro.OrthogonalLinear) and m.weight.dtype == dtype
    assert torch.equal(m.weight.detach().double().T, P)
    assert m.orthogonality_error() == 0.0


@given(st.integers(1, 10), st.integers(1, 10), st.booleans(), seeds)
def test_partial_permutations_for_different_widths(p, q, signed, seed):
    g = torch.Generator().manual_seed(seed)
    X = embeddings(300, p, g, offset=5.0)
    P = planted(p, q, signed, g)
    Y = X @ P + torch.where(P.abs().sum(0) > 0, 0.0, 1.0) * torch.randn(300, q, generator=g, dtype=torch.float64)
    Y = Y + 0.01 * torch.randn(300, q, generator=g, dtype=torch.float64) * X.std(0).mean()
    m = fit_closed_form(X, Y, kind="permutation", signed=signed)
    W = m.weight.detach().T
    assert torch.equal(W, P)
    assert m.orthogonality_error() == 0.0 and tuple(m.weight.shape) == (q, p)


def test_cross_score_follows_offsets_in_a_partial_matching_where_correlation_does_not():
    # X (8 units) is a noisy copy of 8 of Y's 12 units; every unit has a mean of 30, the 4 unmatched units of Y
    # are unit-variance noise. A common offset cancels in a complete matching (it adds the same total to every
    # permutation) but not in a partial one: the cross score then prefers Y's high-variance unmatched units.
    g = torch.Generator().manual_seed(0)
    p, q = 8, 12
    X = embeddings(1000, p, g, decay=1.0)
    P = planted(p, q, False, g)
    unused = (P.sum(0) == 0).double()
    Y = X @ P + unused * torch.randn(1000, q, generator=g, dtype=torch.float64)
    Y = Y + 0.05 * torch.randn(1000, q, generator=g, dtype=torch.float64) + 30.0
    X = X + 30.0
    assert torch.equal(fit_closed_form(X, Y, kind="permutation").weight.detach().T, P)
    assert not torch.equal(fit_closed_form(X, Y, kind="permutation", score="cross").weight.detach().T, P)


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_extreme_scales_are_matched_in_float64_and_float32(scale):
    g = torch.Generator().manual_seed(0)
    X = embeddings(300, 8, g)
    P = planted(8, 8, True, g)
    Y = X @ P + 0.01 * torch.randn(300, 8, generator=g, dtype=torch.float64)
    m = fit_closed_form(X * scale, Y * scale, kind="permutation", signed=True)
    assert torch.equal(m.weight.detach().T, P)
    m32 = fit_closed_form((X * scale).float(), (Y * scale).float(), kind="permutation", signed=True,
                          precision="float64")
    assert torch.equal(m32.weight.detach().double().T, P)
    # float32 products of 1e±30 leave float32's range: the moments are accumulated scale-safely (power-of-two
    # rescaling), so even the default precision matches the planted permutation
    m32 = fit_closed_form((X * scale).float(), (Y * scale).float(), kind="permutation", signed=True)
    assert torch.equal(m32.weight.detach().double().T, P)


def test_permutation_options_are_validated():
    X = torch.randn(10, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="score"):
        fit_closed_form(X, X, kind="permutation", score="cosine")
    with pytest.raises(TypeError, match="signed"):
        fit_closed_form(X, X, kind="permutation", signed=1)
    with pytest.raises(TypeError, match="unexpected option"):
        fit_closed_form(X, X, kind="permutation", center=True)


# -- weight matching ---------------------------------------------------------------------------------------------------
ACTIVATIONS = [nn.ReLU, nn.GELU, nn.Tanh, nn.SiLU, nn.LeakyReLU]


@st.composite
def mlps(draw):
    depth = draw(st.integers(1, 3))
    widths = [draw(st.integers(2, 12))] + [draw(st.integers(8, 24)) for _ in range(depth)] + [draw(st.integers(1, 5))]
    torch.manual_seed(draw(seeds))
    layers = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1], bias=draw(st.booleans())))
        if i < len(widths) - 2:
            layers.append(draw(st.sampled_from(ACTIVATIONS))())
            extra = draw(st.sampled_from(["none", "layernorm", "batchnorm", "dropout"]))
            if extra == "layernorm":
                layers.append(nn.LayerNorm(widths[i + 1]))
            elif extra == "batchnorm":
                layers.append(nn.BatchNorm1d(widths[i + 1]))
            elif extra == "dropout":
                layers.append(nn.Dropout(0.1))
    model = nn.Sequential(*layers).double()
    with torch.no_grad():   # non-trivial per-unit parameters and statistics
        for m in model:
            if isinstance(m, (nn.LayerNorm, nn.BatchNorm1d)):
                m.weight.normal_()
                m.bias.normal_()
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    return model.eval(), widths


@given(mlps(), seeds)
def test_weight_matching_recovers_a_hidden_unit_permutation_and_keeps_the_function(case, seed):
    model, widths = case
    g = torch.Generator().manual_seed(seed)
    perms = [torch.randperm(w, generator=g) for w in widths[1:-1]]
    shuffled = permute_hidden_units(model, perms)
    x = torch.randn(7, widths[0], generator=g, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(shuffled(x), model(x), atol=1e-12, rtol=0)
    res = weight_matching(model, shuffled)
    assert res.converged
    for a, b in zip(res.model.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    for found, planted_perm in zip(res.permutations, perms):
        assert torch.equal(planted_perm[found], torch.arange(len(found)))   # found = inverse of the planted one
    assert all(b >= a - 1e-9 for a, b in zip(res.objective, res.objective[1:]))
    with torch.no_grad():
        torch.testing.assert_close(res.model(x), shuffled(x), atol=1e-12, rtol=0)


def test_weight_matching_of_independent_networks_increases_the_objective_and_keeps_the_function():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)).double()
    b = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)).double()
    res = weight_matching(a, b)
    assert res.objective[-1] > res.objective[0]
    x = torch.randn(5, 10, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(res.model(x), b(x), atol=1e-12, rtol=0)


def test_weight_matching_errors():
    a = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(TypeError, match="Sequential"):
        weight_matching(nn.Linear(3, 4), a)
    with pytest.raises(TypeError, match="unit by unit"):
        weight_matching(nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=-1), nn.Linear(4, 2)), a)
    with pytest.raises(ValueError, match="same architecture"):
        weight_matching(a, nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)))
    with pytest.raises(ValueError, match="two nn.Linear"):
        weight_matching(nn.Sequential(nn.Linear(3, 4)), nn.Sequential(nn.Linear(3, 4)))
    with pytest.raises(ValueError, match="permutation of range"):
        permute_hidden_units(a, [torch.tensor([0, 0, 1, 2])])
