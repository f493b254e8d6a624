"""state_dict and relaxedortho.save/load round-trips restore identical outputs for every map."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import relaxedortho as ro
from relaxedortho.testing import strategies as ros
from relaxedortho.testing.maps import VARIANTS as REGISTRY

VARIANTS = {n: (v.class_name, dict(v.options)) for n, v in REGISTRY.items()}  # every variant of the registry

tmp_settings = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
                        max_examples=15)


def build(variant, shape, dtype, bias):
    cls_name, kwargs = VARIANTS[variant]
    if "square-only" in REGISTRY[variant].tags:
        shape = (shape[0], shape[0])
    return getattr(ro, cls_name)(shape[1], shape[0], bias=bias, dtype=dtype, **kwargs)


def train_a_little(m, seed, steps=3):
    """Move the map off its initial point (and populate parametrization state) with a few optimizer steps."""
    g = torch.Generator().manual_seed(seed)
    dt = m.weight.dtype
    x = torch.randn(8, m.in_features, generator=g, dtype=torch.float64).to(dt)
    y = torch.randn(8, m.out_features, generator=g, dtype=torch.float64).to(dt)
    if isinstance(m, ro.StiefelLinear):
        opt = ro._geoopt.geoopt.optim.RiemannianAdam(m.parameters(), lr=0.05)
    else:
        opt = torch.optim.Adam(m.parameters(), lr=0.05)
    if hasattr(m, "register_optimizer"):  # the steps of a registered optimizer are counted (Stiefel's polish)
        m.register_optimizer(opt)
    for _ in range(steps):
        opt.zero_grad()
        (nn.functional.mse_loss(m(x), y) + m.regularizer()).backward()
        opt.step()
    return x


def same_outputs(a, b, x):
    with torch.no_grad():
        return torch.equal(a(x), b(x)) and torch.equal(a.weight, b.weight)


@tmp_settings
@given(st.sampled_from(sorted(VARIANTS)), ros.shapes(max_side=6), ros.float_dtypes(), st.booleans(), ros.seeds())
def test_state_dict_round_trip(variant, shape, dtype, bias, seed):
    m = build(variant, shape, dtype, bias)
    x = train_a_little(m, seed)
    fresh = build(variant, shape, dtype, bias)
    fresh.load_state_dict(m.state_dict())
    assert same_outputs(m, fresh, x)
    if m.is_orthogonal:
        assert fresh.orthogonality_error() == m.orthogonality_error()


@tmp_settings
@given(st.sampled_from(sorted(VARIANTS)), ros.shapes(max_side=6), ros.float_dtypes(), st.booleans(), ros.seeds())
def test_save_load_round_trip(tmp_path, variant, shape, dtype, bias, seed):
    m = build(variant, shape, dtype, bias)
    x = train_a_little(m, seed)
    path = tmp_path / f"{variant}.pt"
    ro.save(m, path)
    payload = torch.load(path, weights_only=True)  # a safe file
    assert payload["format"] == "relaxedortho-map" and isinstance(payload["config"], dict)
    loaded = ro.load(path)
    assert isinstance(loaded, type(m).__mro__[0]) or type(loaded).__name__ == type(m).__name__
    assert loaded.config() == m.config()
    assert loaded.weight.dtype == dtype
    assert same_outputs(m, loaded, x)
    reg_m, reg_l = m.regularizer(), loaded.regularizer()
    if not (isinstance(m, ro.LambdaOrthoLinear) and m.estimator == "randomized"):
        assert torch.equal(reg_m.detach(), reg_l.detach())
    # the loaded map trains like the saved one
    for mod in (m, loaded):
        torch.manual_seed(seed)  # the randomized estimator draws its probes from the global generator
        train_a_little(mod, seed + 1, steps=1)
    assert same_outputs(m, loaded, x)


def test_lambda_inf_survives_save(tmp_path):
    m = ro.LambdaOrthoLinear(3, 5, lam=math.inf)
    ro.save(m, tmp_path / "m.pt")
    assert math.isinf(ro.load(tmp_path / "m.pt").lam)


def test_plain_linear_round_trip(tmp_path):
    lin = nn.Linear(4, 2, dtype=torch.float64)
    ro.save(lin, tmp_path / "lin.pt")
    back = ro.load(tmp_path / "lin.pt")
    assert type(back) is nn.Linear and torch.equal(back.weight, lin.weight) and torch.equal(back.bias, lin.bias)


def test_parametrized_module_cannot_be_pickled_safely_but_save_works(tmp_path):
    m = ro.OrthogonalLinear(4, 4, method="cayley")
    ro.save(m, tmp_path / "m.pt")
    assert torch.equal(ro.load(tmp_path / "m.pt").weight, m.weight)


def test_bad_files(tmp_path):
    torch.save({"a": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a relaxedortho map"):
        ro.load(tmp_path / "other.pt")
    m = ro.AffineMap(2, 2)
    ro.save(m, tmp_path / "m.pt")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    payload["version"] = 99
    torch.save(payload, tmp_path / "new.pt")
    with pytest.raises(ValueError, match="newer"):
        ro.load(tmp_path / "new.pt")
    payload["version"], payload["class"] = 1, "Bogus"
    torch.save(payload, tmp_path / "bogus.pt")
    with pytest.raises(ValueError, match="Bogus"):
        ro.load(tmp_path / "bogus.pt")
    with pytest.raises(TypeError, match="Conv"):
        ro.save(nn.Conv1d(1, 1, 1), tmp_path / "conv.pt")
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_canonical_stiefel_polish_counters_survive_save_and_old_states_load(tmp_path):
    """StiefelLinear(canonical=True) re-projects every CANONICAL_POLISH_EVERY steps: the counter is saved, so a
    reloaded map polishes at the same step as the original (outputs stay bit-identical); a state without the
    counters (saved before they were buffers) still loads."""
    torch.manual_seed(0)
    m = ro.StiefelLinear(3, 3, canonical=True, dtype=torch.float64)
    x = train_a_little(m, 0, steps=3)
    assert int(m.polish_steps) == 3
    ro.save(m, tmp_path / "m.pt")
    loaded = ro.load(tmp_path / "m.pt")
    assert int(loaded.polish_steps) == 3
    for mod in (m, loaded):
        train_a_little(mod, 1, steps=1)  # the 4th step polishes both
    assert int(m.polish_steps) == int(loaded.polish_steps) == 0
    assert same_outputs(m, loaded, x)
    old = {k: v for k, v in m.state_dict().items() if not k.startswith("polish_")}
    fresh = ro.StiefelLinear(3, 3, canonical=True, dtype=torch.float64)
    fresh.load_state_dict(old)
    assert int(fresh.polish_steps) == 0 and torch.equal(fresh.weight, m.weight)
