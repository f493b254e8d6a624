"""OrthogonalLinear(method="trivialization"): the skew generator, its cheap gradient, the cubic/Cayley fold,
and the module's behaviour under the optimizers, edits and precisions users bring."""
import math
import warnings

import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

import relaxedortho as ro
from relaxedortho.linalg import (orthogonality_error, random_orthogonal, skew_retraction, skew_retraction_kind,
                                 spectral_norm_estimate)
from relaxedortho.maps._generator import GeneratorWeight, generator_linear, skew_part
from relaxedortho.testing import strategies as ros

F64 = torch.float64


def skew(n, scale, seed, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=F64)
    a = (a - a.T) / 2
    a = a * (scale / max(float(torch.linalg.matrix_norm(a, 2)), 1e-300)) if n > 1 else a
    return a.to(dtype)


def cayley(a):
    eye = torch.eye(a.shape[0], dtype=a.dtype)
    return torch.linalg.solve(eye - a / 2, eye + a / 2)


def cubic(a):
    eye = torch.eye(a.shape[0], dtype=a.dtype)
    return eye + a + a @ a / 2 + a @ a @ a / 8


def quadratic(a):
    eye = torch.eye(a.shape[0], dtype=a.dtype)
    return eye + a + a @ a / 2


# -- the gradient -------------------------------------------------------------------------------------------
@settings(max_examples=40)
@given(st.integers(1, 6), ros.leading_shapes(max_dims=2), st.booleans(), st.booleans(), ros.seeds())
def test_generator_gradient_is_the_derivative_of_the_cayley_parametrization(n, lead, bias, x_grad, seed):
    """At P = 0 the custom backward equals autograd through W(P) = Cayley((P - P^T)/2) W, for the generator,
    the input and the bias; the forward equals F.linear."""
    g = torch.Generator().manual_seed(seed)
    w = random_orthogonal(n, n, generator=g, dtype=F64)
    b = torch.randn(n, generator=g, dtype=F64) if bias else None
    x = torch.randn(*lead, n, generator=g, dtype=F64)
    target = torch.randn(*lead, n, generator=g, dtype=F64)

    def run(fast):
        p = torch.zeros(n, n, dtype=F64, requires_grad=True)
        bb = None if b is None else b.clone().requires_grad_(True)
        xx = x.clone().requires_grad_(x_grad)
        if fast:
            y = generator_linear(xx, w, p, bb)
        else:
            y = F.linear(xx, cayley((p - p.T) / 2) @ w, bb)
        (y - target).pow(2).sum().backward()
        return y.detach(), p.grad, None if bb is None else bb.grad, xx.grad

    fast, ref = run(True), run(False)
    torch.testing.assert_close(fast[0], F.linear(x, w, b), rtol=0, atol=0)
    for a, r in zip(fast[1:], ref[1:]):
        if r is None:
            assert a is None
        else:
            torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)
    assert torch.equal(fast[1], -fast[1].T)  # exactly skew: element-wise optimizers keep it so


@settings(max_examples=25)
@given(st.integers(1, 6), ros.seeds())
def test_weight_alias_gradient_is_the_derivative_of_the_parametrization(n, seed):
    g = torch.Generator().manual_seed(seed)
    w = random_orthogonal(n, n, generator=g, dtype=F64)
    t = torch.randn(n, n, generator=g, dtype=F64)
    p = torch.zeros(n, n, dtype=F64, requires_grad=True)
    alias = GeneratorWeight.apply(w, p)
    assert torch.equal(alias, w)
    (alias @ t).sin().sum().backward()
    p2 = torch.zeros(n, n, dtype=F64, requires_grad=True)
    ((cayley((p2 - p2.T) / 2) @ w) @ t).sin().sum().backward()
    torch.testing.assert_close(p.grad, p2.grad, rtol=1e-10, atol=1e-12)


def test_input_and_bias_gradients_pass_gradcheck():
    g = torch.Generator().manual_seed(0)
    w = random_orthogonal(4, 4, generator=g, dtype=F64)
    p = torch.zeros(4, 4, dtype=F64)
    x = torch.randn(3, 4, generator=g, dtype=F64, requires_grad=True)
    b = torch.randn(4, generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, b: generator_linear(x, w, p, b), (x, b))


@pytest.mark.parametrize("n", [1, 5, 256, 300, 513])
def test_skew_part_is_exact_at_every_size(n):
    m = torch.randn(n, n, generator=torch.Generator().manual_seed(n))
    assert torch.equal(skew_part(m), (m - m.T) * 0.5)


# -- the fold -----------------------------------------------------------------------------------------------
def test_defect_identities():
    """For skew A: R^T R = I + A^4/4 for the quadratic and I - A^6/64 for the cubic (the docstring's claims)."""
    a = skew(7, 0.9, 0)
    eye = torch.eye(7, dtype=F64)
    a4, a6 = torch.linalg.matrix_power(a, 4), torch.linalg.matrix_power(a, 6)
    torch.testing.assert_close(quadratic(a).T @ quadratic(a), eye + a4 / 4, rtol=0, atol=1e-14)
    torch.testing.assert_close(cubic(a).T @ cubic(a), eye - a6 / 64, rtol=0, atol=1e-14)
    assert float(torch.linalg.matrix_norm(a6, 2)) > 0.1  # the identities are not trivially satisfied


@settings(max_examples=40)
@given(st.integers(1, 12), ros.float_dtypes(), st.sampled_from([1e-4, 1e-2, 0.05, 0.3, 2.0, 20.0]), ros.seeds())
def test_skew_retraction_stays_orthogonal_and_keeps_det(n, dtype, scale, seed):
    w = random_orthogonal(n, n, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    a = skew(n, scale, seed + 1, dtype)
    r = skew_retraction(w, a)
    assert float(orthogonality_error(r.double())) <= ros.dtype_tolerance(dtype, n) * 10
    assert float(torch.linalg.det(r.double())) == pytest.approx(float(torch.linalg.det(w.double())), abs=1e-4)
    out = w.clone()
    assert skew_retraction(out, a, inplace=True) is out and torch.equal(out, r)


@pytest.mark.parametrize("dtype,scale,kind", [
    (torch.float32, 0.005, "quadratic"), (torch.float32, 0.05, "cubic"), (torch.float32, 0.5, "cayley"),
    (F64, 5e-5, "quadratic"), (F64, 1e-3, "cubic"), (F64, 0.05, "cayley")])
def test_skew_retraction_picks_the_cheapest_map_orthogonal_to_rounding(dtype, scale, kind):
    """The quadratic where ||A||^4/4 is below eps/2, the cubic where ||A||^6/64 is, the Cayley transform elsewhere."""
    n = 9
    a = skew(n, scale, 4)
    assert skew_retraction_kind(a.to(dtype)) == kind
    assert skew_retraction_kind(a.to(dtype), F64) == ("cayley" if scale > 2e-3 else "cubic" if scale > 5e-5 else
                                                       "quadratic")
    w = random_orthogonal(n, n, generator=torch.Generator().manual_seed(3), dtype=dtype)
    assert torch.equal(skew_retraction(w, a.to(dtype)), skew_retraction(w, a.to(dtype), kind=kind))


@pytest.mark.parametrize("kind,formula", [("quadratic", quadratic), ("cubic", cubic), ("cayley", cayley)])
def test_each_kind_evaluates_its_formula(kind, formula):
    """Forced kinds, in float64 at a step where the three differ (2e-2 >> rounding): each is its own formula."""
    a = skew(9, 0.2, 6)
    w = random_orthogonal(9, 9, generator=torch.Generator().manual_seed(7), dtype=F64)
    torch.testing.assert_close(skew_retraction(w, a, kind=kind), formula(a) @ w, rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match="kind"):
        skew_retraction(w, a, kind="exp")


@pytest.mark.parametrize("scale", [1e-3, 1e-2, 0.1, 0.4])
def test_skew_retraction_agrees_with_exp_to_second_order(scale):
    a = skew(8, scale, 5)
    r = skew_retraction(torch.eye(8, dtype=F64), a)
    err = float(torch.linalg.matrix_norm(r - torch.from_numpy(scipy.linalg.expm(a.numpy())), 2))
    assert err <= scale ** 3 / 4 + 1e-15  # third-order terms: 1/8 (cubic) or 1/4 (Cayley) minus 1/6


def test_skew_retraction_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="skew must be 3 x 3"):
        skew_retraction(torch.eye(3), torch.zeros(4, 4))
    with pytest.raises(ValueError, match="inplace"):
        skew_retraction(torch.eye(3).expand(2, 3, 3), torch.zeros(2, 3, 3), inplace=True)


@settings(max_examples=30)
@given(ros.matrices(shape=ros.shapes(max_side=10), max_condition=1e3), ros.seeds())
def test_spectral_norm_estimate_is_a_lower_bound_close_to_the_norm(m, seed):
    m = m.double()
    true = float(torch.linalg.matrix_norm(m, 2))
    est = float(spectral_norm_estimate(m))
    assert est <= true * (1 + 1e-12) + 1e-300
    assert est >= 0.5 * true


# -- the module ---------------------------------------------------------------------------------------------
def test_method_resolution_and_bad_arguments():
    assert ro.OrthogonalLinear(4, 4).method == "trivialization"
    assert ro.OrthogonalLinear(4, 3).method == "retraction" and ro.OrthogonalLinear(3, 4).method == "retraction"
    with pytest.raises(ValueError, match="square"):
        ro.OrthogonalLinear(4, 3, method="trivialization")
    for bad in (0, -1, 1.5, True, "8"):
        with pytest.raises(ValueError, match="polish_every"):
            ro.OrthogonalLinear(4, 4, polish_every=bad)


def test_parameters_buffers_and_the_weight_alias():
    m = ro.OrthogonalLinear(5, 5, bias=True)
    assert [n for n, _ in m.named_parameters()] == ["generator", "bias"]
    assert set(m.state_dict()) == {"generator", "bias", "weight", "folds"}
    with torch.no_grad():
        assert m.weight is m._buffers["weight"]
    alias = m.weight
    assert alias.grad_fn is not None and torch.equal(alias, m._buffers["weight"])
    assert float(m.generator.detach().abs().max()) == 0.0


def planted(n, seed, dtype=torch.float32):
    """Pairs y = x Q^T with a rotation Q (det +1: reachable from the default and the SO starts)."""
    g = torch.Generator().manual_seed(seed)
    q = random_orthogonal(n, n, generator=g, dtype=F64, special=True)
    x = torch.randn(256, n, generator=g, dtype=F64)
    return x.to(dtype), (x @ q.T).to(dtype)


def fit(m, opt, x, y, steps):
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(m(x), y).backward()
        opt.step()
    with torch.no_grad():
        return float(F.mse_loss(m(x), y))


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.Adam(p, lr=1e-2),
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9),
], ids=["adam", "adamw", "sgd-momentum"])
def test_learns_a_planted_rotation_and_stays_orthogonal(make_opt):
    torch.manual_seed(0)
    m = ro.OrthogonalLinear(8, 8, group="SO")  # same connected component as the planted rotation
    x, y = planted(8, 1)
    opt = make_opt(m.parameters())
    with torch.no_grad():
        start = float(F.mse_loss(m(x), y))
    loss = fit(m, opt, x, y, 400)
    assert loss < 1e-3 * start
    assert m.orthogonality_error() <= 1e-5
    assert float(m.generator.detach().abs().max()) == 0.0
    assert float(torch.linalg.det(m.weight.detach().double())) == pytest.approx(1.0, abs=1e-5)


def test_optimizer_state_survives_the_folds():
    m = ro.OrthogonalLinear(6, 6)
    x, y = planted(6, 2)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    fit(m, opt, x, y, 3)
    state = opt.state[m.generator]
    assert int(state["step"]) == 3 and float(state["exp_avg"].abs().max()) > 0
    assert torch.equal(state["exp_avg"], -state["exp_avg"].T)  # the moments stay skew


def test_large_learning_rate_takes_the_cayley_path_and_stays_orthogonal():
    m = ro.OrthogonalLinear(12, 12)
    x, y = planted(12, 3)
    fit(m, torch.optim.Adam(m.parameters(), lr=0.3), x, y, 200)
    assert m.orthogonality_error() <= 1e-5


def test_float64_drift_is_at_float64_rounding():
    m = ro.OrthogonalLinear(10, 10, dtype=F64)
    x, y = planted(10, 4, F64)
    fit(m, torch.optim.Adam(m.parameters(), lr=1e-2), x, y, 500)
    assert m.orthogonality_error() <= 1e-13


def test_hand_edits_are_folded_or_projected_at_the_next_forward():
    m = ro.OrthogonalLinear(6, 6)
    with torch.no_grad():
        m.generator.copy_(0.05 * torch.randn(6, 6))  # not skew: its skew part is folded
    before = m._buffers["weight"].clone()
    m(torch.randn(1, 6))
    assert m.orthogonality_error() < 1e-6 and float(m.generator.detach().abs().max()) == 0.0
    assert not torch.equal(before, m._buffers["weight"])
    with torch.no_grad():
        m._buffers["weight"].add_(1e-3 * torch.randn(6, 6))  # the stored weight edited: projected back
    m(torch.randn(1, 6))
    assert m.orthogonality_error() < 1e-6


def test_an_unrelated_optimizer_step_folds_an_edited_generator_safely():
    m = ro.OrthogonalLinear(6, 6)
    other = nn.Linear(2, 2)
    opt = torch.optim.SGD(other.parameters(), lr=0.1)
    with torch.no_grad():
        m.generator.copy_(0.05 * torch.randn(6, 6))
    other(torch.randn(1, 2)).sum().backward()
    opt.step()  # the global hook folds m, but m.generator is not this optimizer's: its skew part is used
    assert m.orthogonality_error() < 1e-6


def test_gradient_accumulation_equals_one_summed_step():
    x, y = planted(6, 5, F64)
    ms = []
    for split in (False, True):
        torch.manual_seed(0)
        m = ro.OrthogonalLinear(6, 6, bias=True, dtype=F64)
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        if split:
            (F.mse_loss(m(x[:128]), y[:128], reduction="sum")).backward()
            (F.mse_loss(m(x[128:]), y[128:], reduction="sum")).backward()
        else:
            F.mse_loss(m(x), y, reduction="sum").backward()
        ms.append(m.generator.grad.clone())
        opt.step()
    torch.testing.assert_close(ms[0], ms[1], rtol=1e-12, atol=1e-12)


def test_in_place_ops_on_the_output_are_safe():
    torch.manual_seed(0)
    m = ro.OrthogonalLinear(5, 5, bias=True)
    x = torch.randn(7, 5)
    F.relu(m(x)).sum().backward()
    ref = m.generator.grad.clone()
    m.generator.grad = None
    m(x).relu_().sum().backward()
    assert torch.equal(m.generator.grad, ref)


def test_direct_use_of_the_weight_trains_the_map():
    """Code that uses ``m.weight`` itself (a task-vector transfer U^T tau U) gets the generator's gradient."""
    torch.manual_seed(0)
    m = ro.OrthogonalLinear(4, 4, init="identity")
    target = random_orthogonal(4, 4, generator=torch.Generator().manual_seed(1), special=True)
    opt = torch.optim.Adam(m.parameters(), lr=5e-2)
    for _ in range(300):
        opt.zero_grad()
        (m.weight - target).pow(2).sum().backward()
        opt.step()
    assert float((m.weight.detach() - target).abs().max()) < 1e-3
    assert m.orthogonality_error() <= 1e-5


def test_autocast_bfloat16_on_cpu():
    torch.manual_seed(0)
    m = ro.OrthogonalLinear(8, 8, bias=True)
    x, y = planted(8, 6)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(20):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(x)
            assert out.dtype == torch.bfloat16
            loss = F.mse_loss(out.float(), y)
        loss.backward()
        assert m.generator.grad.dtype == torch.float32 and m.bias.grad.dtype == torch.float32
        opt.step()
    assert m.weight.dtype == torch.float32 and m.orthogonality_error() <= 1e-5


def test_polish_schedule_is_counted_in_the_state():
    m = ro.OrthogonalLinear(4, 4, polish_every=3)
    x, y = planted(4, 7)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    seen = []
    for _ in range(7):
        fit(m, opt, x, y, 1)
        seen.append(int(m.state_dict()["folds"]))
    assert seen == [1, 2, 0, 1, 2, 0, 1]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning:torch", "ignore::FutureWarning:torch")
def test_compiled_training_step_matches_eager():
    with warnings.catch_warnings():  # inductor's own import-time DeprecationWarnings (see test_maps.py)
        warnings.simplefilter("ignore", DeprecationWarning)
        import torch._inductor.compile_fx  # noqa: F401
    torch._dynamo.reset()
    x, y = planted(6, 8)
    grads = []
    for compiled in (False, True):
        torch.manual_seed(0)
        m = ro.OrthogonalLinear(6, 6, bias=True)
        f = torch.compile(m) if compiled else m
        F.mse_loss(f(x), y).backward()
        grads.append((m.generator.grad.clone(), m.bias.grad.clone()))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_cpu_drift_targets_hold_at_d_128_for_2000_steps():
    """A shortened version of the benchmark's drift run (d = 128, float32, Adam lr 1e-3, batch 256)."""
    torch.manual_seed(0)
    d = 128
    m = ro.OrthogonalLinear(d, d, bias=True)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    target = torch.randn(d, d, generator=g) / math.sqrt(d)
    worst = 0.0
    for step in range(2000):
        x = torch.randn(256, d, generator=g)
        opt.zero_grad()
        F.mse_loss(m(x), x @ target.T).backward()
        opt.step()
        if step % 50 == 49 or step >= 1960:
            worst = max(worst, m.orthogonality_error())
    assert worst <= 1e-5


@pytest.mark.parametrize("method,shape", [("trivialization", (5, 5)), ("retraction", (5, 5)), ("retraction", (6, 4))])
def test_deep_copies_are_re_projected_like_the_original(method, shape):
    """copy.deepcopy (and pickle) rebuild the module without __init__: the copy must still be folded or
    re-projected after each optimizer step, and a retraction copy must still project its gradient."""
    import copy

    m = ro.OrthogonalLinear(shape[1], shape[0], method=method, bias=True)
    c = copy.deepcopy(m)
    x, y = torch.randn(16, shape[1]), torch.randn(16, shape[0])
    opt = torch.optim.Adam(c.parameters(), lr=0.1)
    (c(x) - y).pow(2).sum().backward()
    if method == "retraction" and shape[0] == shape[1]:
        w, g = c.weight.detach(), c.weight.grad
        scale = float(g.norm())  # tangent to rounding, relative to the gradient's size
        torch.testing.assert_close(w.T @ g + g.T @ w, torch.zeros(5, 5), atol=1e-6 * scale, rtol=0)
    opt.step()
    assert c.orthogonality_error() <= 1e-5
    if method == "trivialization":
        assert float(c.generator.detach().abs().max()) == 0.0
        assert not torch.equal(c._buffers["weight"], m._buffers["weight"])  # the update was folded at the step


def test_a_loaded_non_zero_generator_is_folded_not_ignored():
    m = ro.OrthogonalLinear(5, 5)
    state = m.state_dict()
    a = 0.05 * torch.randn(5, 5)
    state["generator"] = a - a.T  # a pending update (saved between an edit and a forward)
    fresh = ro.OrthogonalLinear(5, 5)
    fresh.load_state_dict(state)
    x = torch.randn(3, 5)
    expected = x.double() @ skew_retraction(state["weight"].double(), state["generator"].double()).T
    torch.testing.assert_close(fresh(x).double(), expected, rtol=0, atol=1e-5)
    assert float(fresh.generator.detach().abs().max()) == 0.0 and fresh.orthogonality_error() < 1e-6
