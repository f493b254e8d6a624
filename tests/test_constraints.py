"""relaxedortho.orthogonal / lambda_orthogonal: the constraints of the hard and relaxed maps on an existing module."""
import copy
import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

import relaxedortho as ro
from relaxedortho.linalg import random_orthogonal
from relaxedortho.maps.base import orthonormality_tolerance
from relaxedortho.testing import strategies as ros
from relaxedortho.training import make_optimizer

from helpers import deviation

METHODS = ["trivialization", "retraction", "cayley", "matrix_exp", "householder"]


def linear(shape, dtype=torch.float32, seed=0, bias=True):
    torch.manual_seed(seed)
    return nn.Linear(shape[1], shape[0], bias=bias, dtype=dtype)


def data(shape, dtype, seed=0, scale=1.0, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(32, shape[1], generator=g, dtype=torch.float64) + offset) * scale
    target = random_orthogonal(*shape, generator=g, dtype=torch.float64)
    return x.to(dtype), (x @ target.mT).to(dtype)


def train(module, opt, x, y, steps):
    for _ in range(steps):
        opt.zero_grad()
        (F.mse_loss(module(x), y) + module.regularizer()).backward()
        opt.step()


@pytest.mark.parametrize("method", METHODS)
@settings(max_examples=6)
@given(draw=st.data())
def test_orthogonal_weight_stays_orthonormal_and_learns(method, draw):
    kind = "square" if method == "trivialization" else draw.draw(st.sampled_from(ros.SHAPE_KINDS), label="kind")
    shape = draw.draw(ros.shapes(kind, min_side=2, max_side=7), label="shape")
    dtype = draw.draw(ros.float_dtypes(), label="dtype")
    lr = 10.0 ** draw.draw(st.floats(-4.0, -1.0), label="log10 lr")
    registered = draw.draw(st.booleans(), label="registered optimizer")
    layer = ro.orthogonal(linear(shape, dtype), method=method)
    x, y = data(shape, dtype, offset=3.0)
    opt = make_optimizer(layer, lr) if registered else torch.optim.Adam(layer.parameters(), lr=lr)
    start = float(F.mse_loss(layer(x), y).detach())
    train(layer, opt, x, y, 30)
    w = layer.weight.detach()
    assert w.shape == shape and bool(torch.isfinite(w).all())
    assert deviation(w) <= orthonormality_tolerance(w)
    if lr >= 1e-2:
        assert float(F.mse_loss(layer(x), y).detach()) < start


@pytest.mark.parametrize("method", METHODS)
def test_gradient_reaches_the_trainable_tensor(method):
    layer = ro.orthogonal(linear((4, 4) if method == "trivialization" else (5, 3)), method=method)
    hard = layer.constraints["weight"]
    x = torch.randn(8, layer.in_features)
    layer(x).pow(2).sum().backward()
    g = hard._trainable_tensor().grad
    assert g is not None and float(g.abs().max()) > 0
    assert layer.bias.grad is not None


@pytest.mark.parametrize("method", ["trivialization", "retraction", "cayley"])
def test_equals_orthogonal_linear_on_the_same_data(method):
    """The same start, optimizer and data: the constrained nn.Linear and OrthogonalLinear take the same steps."""
    shape = (5, 5) if method != "retraction" else (6, 4)
    dt = torch.float64
    layer = ro.orthogonal(linear(shape, dt, bias=True), method=method)
    m = ro.OrthogonalLinear(shape[1], shape[0], bias=True, method=method, dtype=dt, init=layer.weight.detach())
    with torch.no_grad():
        m.bias.copy_(layer.bias)
    x, y = data(shape, dt, seed=1)
    for module in (layer, m):
        train(module, make_optimizer(module, 1e-2), x, y, 20)
    torch.testing.assert_close(layer.weight.detach(), m.weight.detach(), rtol=0, atol=1e-10)
    torch.testing.assert_close(layer(x), m(x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_state_dict_round_trip(method):
    shape = (4, 4) if method == "trivialization" else (3, 5)
    layer = ro.orthogonal(linear(shape, seed=0), method=method)
    x, y = data(shape, torch.float32)
    train(layer, make_optimizer(layer, 1e-2), x, y, 5)
    state = layer.state_dict()
    assert any(k.startswith("constraints.weight.") for k in state) and "weight" not in state
    fresh = ro.orthogonal(linear(shape, seed=1), method=method)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh.load_state_dict(state)
    torch.testing.assert_close(fresh(x), layer(x), rtol=0, atol=0)
    clone = copy.deepcopy(layer)
    torch.testing.assert_close(clone(x), layer(x), rtol=0, atol=0)


def test_polar_start_is_the_nearest_orthonormal_matrix():
    for shape in ((4, 4), (6, 3), (3, 6)):
        layer = linear(shape, torch.float64)
        w = layer.weight.detach().clone()
        u, _, vh = torch.linalg.svd(w, full_matrices=False)
        ro.orthogonal(layer)
        torch.testing.assert_close(layer.weight.detach(), u @ vh, rtol=0, atol=1e-12)


def test_so_group_starts_from_a_rotation_and_stays_one():
    layer = nn.Linear(4, 4, bias=False, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.diag(torch.tensor([1.0, 1.0, 1.0, -1.0], dtype=torch.float64)))
    ro.orthogonal(layer, group="SO")
    assert float(torch.linalg.det(layer.weight.detach())) == pytest.approx(1.0, abs=1e-12)
    x, y = data((4, 4), torch.float64)
    train(layer, make_optimizer(layer, 0.05), x, y, 20)
    assert float(torch.linalg.det(layer.weight.detach())) == pytest.approx(1.0, abs=1e-10)


def test_setting_the_weight_loads_a_checked_matrix():
    layer = ro.orthogonal(linear((5, 3)))
    q = random_orthogonal(5, 3, generator=torch.Generator().manual_seed(3))
    layer.weight = q
    assert torch.equal(layer.weight.detach(), q)
    with pytest.raises(ValueError, match="orthonormal"):
        layer.weight = torch.randn(5, 3)
    assert torch.equal(layer.weight.detach(), q)


def test_fit_alignment_and_parameter_groups_see_the_constraint():
    layer = ro.orthogonal(linear((4, 6)))
    groups = {g["name"]: g for g in ro.training.parameter_groups(layer, 1e-3, weight_decay=0.1)}
    assert groups["orthogonal"]["weight_decay"] == 0.0 and groups["free"]["params"] == [layer.bias]
    x, y = data((4, 6), torch.float32, offset=3.0)
    hist = ro.fit_alignment(layer, x, y, epochs=2, batch_size=8, lr=1e-2, progress=False)
    assert max(hist.regularizer) == 0.0
    assert deviation(layer.weight) <= orthonormality_tolerance(layer.weight)


def test_bf16_autocast_forward():
    layer = ro.orthogonal(linear((4, 4)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(torch.randn(3, 4))
    assert out.dtype == torch.bfloat16 and out.shape == (3, 4)


@settings(max_examples=15)
@given(shape=ros.shapes(min_side=1, max_side=6), dtype=ros.float_dtypes(), seed=ros.seeds(),
       lam=st.sampled_from([0.0, 0.1, 1.0, 4.0, math.inf]), alpha=st.sampled_from([1.0, 10.0, "auto"]),
       gate=st.sampled_from(["sigmoid", "heaviside"]), scale=st.floats(0.1, 3.0), pw=st.sampled_from([0.0, 0.5, 1.0]))
def test_lambda_regularizer_equals_lambda_ortho_linear(shape, dtype, seed, lam, alpha, gate, scale, pw):
    """The penalty of lambda_orthogonal is LambdaOrthoLinear's on the same weight, value and gradient."""
    layer = linear(shape, dtype, seed=seed % 1000)
    with torch.no_grad():
        layer.weight.mul_(scale)
    ref = ro.LambdaOrthoLinear(shape[1], shape[0], lam=lam, alpha=alpha, gate=gate, penalty_weight=pw, dtype=dtype,
                               init=layer.weight.detach().clone())
    ro.lambda_orthogonal(layer, lam=lam, alpha=alpha, gate=gate, penalty_weight=pw)
    r1, r2 = layer.regularizer(), ref.regularizer()
    assert r1.dtype == r2.dtype
    torch.testing.assert_close(r1.detach(), r2.detach(), rtol=0, atol=0)
    if r1.requires_grad:
        r1.backward()
        r2.backward()
        torch.testing.assert_close(layer.weight.grad, ref.weight.grad, rtol=0, atol=0)


def test_lambda_orthogonal_trains_under_fit_alignment_and_keeps_the_state_dict():
    layer = nn.Linear(6, 6)
    keys = sorted(layer.state_dict())
    ro.lambda_orthogonal(layer, lam=0.5)
    assert sorted(layer.state_dict()) == keys  # nothing stored: a plain nn.Linear state loads
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 6, generator=g)
    y = x @ (2.0 * torch.eye(6)).T  # the data pull towards a far-from-orthogonal map
    hist = ro.fit_alignment(layer, x, y, epochs=20, batch_size=32, lr=1e-2, tol=None, progress=False)
    assert max(hist.regularizer) > 0
    free = nn.Linear(6, 6)
    ro.fit_alignment(free, x, y, epochs=20, batch_size=32, lr=1e-2, tol=None, progress=False)
    assert deviation(layer.weight) < deviation(free.weight)  # the penalty held the weight nearer orthogonal


def test_penalties_of_several_weights_add_up():
    rnn = nn.RNN(3, 3, bias=False)
    ro.lambda_orthogonal(rnn, "weight_ih_l0", lam=0.0, alpha=1.0)
    ro.lambda_orthogonal(rnn, "weight_hh_l0", lam=0.0, alpha=1.0)
    expected = sum(rnn.constraints[n](getattr(rnn, n)) for n in ("weight_ih_l0", "weight_hh_l0"))
    torch.testing.assert_close(rnn.regularizer(), expected)


@pytest.mark.parametrize("call,exc,phrase", [
    (lambda: ro.orthogonal("layer"), TypeError, "module must be a torch.nn.Module"),
    (lambda: ro.orthogonal(nn.Linear(3, 3), 3), TypeError, "name must be a str"),
    (lambda: ro.orthogonal(nn.Linear(3, 3), "weights"), ValueError, "not a parameter"),
    (lambda: ro.orthogonal(nn.Linear(3, 3), "bias"), ValueError, "2-dimensional"),
    (lambda: ro.orthogonal(ro.orthogonal(nn.Linear(3, 3))), ValueError, "constrained already"),
    (lambda: ro.orthogonal(nn.Linear(3, 3), method="qr"), ValueError, "method must be one of"),
    (lambda: ro.orthogonal(nn.Linear(3, 4), group="SO"), ValueError, "group='SO' needs a square map"),
    (lambda: ro.orthogonal(nn.Linear(3, 3), init="kaiming"), ValueError, "init must be one of"),
    (lambda: ro.lambda_orthogonal(nn.Linear(3, 3), lam=-1.0), ValueError, "lam"),
    (lambda: ro.lambda_orthogonal(nn.Linear(3, 3), gate="step"), ValueError, "gate must be one of"),
])
def test_bad_input(call, exc, phrase):
    with pytest.raises(exc, match=phrase):
        call()


def test_a_failed_constraint_leaves_the_module_unchanged():
    layer = nn.Linear(3, 4)
    with pytest.raises(ValueError):
        ro.orthogonal(layer, group="SO")
    assert type(layer) is nn.Linear and "weight" in layer._parameters


def test_auto_alpha_is_resolved_for_the_current_lam():
    """alpha="auto" near the threshold: the gate of max(10, 100/λ) = 100 at λ = 1, not that of α = 10."""
    w = math.sqrt(1.525) * torch.eye(4, dtype=torch.float64)  # ||G - I||_F = 0.525 * 2 = 1.05
    layer = nn.Linear(4, 4, bias=False, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(w)
    ro.lambda_orthogonal(layer, lam=1.0, alpha="auto")
    auto = float(layer.regularizer().detach())
    ref = ro.LambdaOrthoLinear(4, 4, lam=1.0, alpha="auto", dtype=torch.float64, init=w)
    assert auto == pytest.approx(float(ref.regularizer().detach()), rel=1e-12)
    assert auto == pytest.approx(1.05 / (1 + math.exp(-100 * 0.05)), rel=1e-9)
    layer.constraints["weight"].lam = 2.0  # re-resolved: alpha = 50, gate closed at n = 1.05
    assert float(layer.regularizer().detach()) == pytest.approx(1.05 / (1 + math.exp(50 * 0.95)), rel=1e-9)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning:torch", "ignore::FutureWarning:torch")
@pytest.mark.parametrize("method", ["trivialization", "retraction", "cayley"])
def test_compile_equals_eager_and_catches_up_after_an_unregistered_step(method):
    with warnings.catch_warnings():  # inductor's import-time DeprecationWarnings (see test_maps.py)
        warnings.simplefilter("ignore", DeprecationWarning)
        import torch._inductor.compile_fx  # noqa: F401
    torch._dynamo.reset()
    layer = ro.orthogonal(linear((4, 4)), method=method)
    compiled = torch.compile(layer)
    x = torch.randn(3, 4)
    torch.testing.assert_close(compiled(x), layer(x), rtol=0, atol=1e-6)
    opt = torch.optim.Adam(layer.parameters(), lr=0.1)
    compiled(x).sum().backward()
    opt.step()
    y = compiled(x)  # the catch-up runs outside the graph
    hard = layer.constraints["weight"]
    w = layer.weight.detach() if method == "cayley" else hard._weight_tensor().detach()
    assert deviation(w) <= orthonormality_tolerance(w)
    torch.testing.assert_close(y, x @ w.T + layer.bias, rtol=0, atol=1e-6)
