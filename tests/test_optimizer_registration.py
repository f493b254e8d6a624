"""No process-wide state: hard maps join optimizer instances (register_optimizer / register_hard_maps; make_optimizer
and the trainers register theirs); any other optimizer's change is brought back at the next forward pass or read."""
import gc
import math

import pytest
import torch
from torch import nn
from torch.optim import optimizer as torch_optimizer

import relaxedortho as ro
from relaxedortho.maps import optimizer_hooks
from relaxedortho.maps.base import orthonormality_tolerance
from relaxedortho.testing.maps import VARIANTS, stored_weight, variants
from relaxedortho.training import make_optimizer

from helpers import deviation

HARD = variants("hard")


def build(variant, shape=(5, 3), dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return VARIANTS[variant].build(shape, dtype=dtype)


def step(m, opt, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, m.in_features, generator=g) * scale
    y = torch.randn(16, m.out_features, generator=g) * scale
    opt.zero_grad()
    nn.functional.mse_loss(m(x), y).backward()
    opt.step()


raw = stored_weight


def global_hook_counts():
    return len(torch_optimizer._global_optimizer_pre_hooks), len(torch_optimizer._global_optimizer_post_hooks)


@pytest.mark.parametrize("variant", HARD)
def test_no_global_optimizer_hook(variant):
    """Building, training and copying a map adds no process-wide optimizer hook."""
    before = global_hook_counts()
    m = build(variant)
    opt = make_optimizer(m, 1e-2)
    step(m, opt)
    m2 = __import__("copy").deepcopy(m)
    step(m2, make_optimizer(m2, 1e-2))
    assert global_hook_counts() == before


@pytest.mark.parametrize("variant", HARD)
def test_an_unrelated_optimizer_step_leaves_the_map_alone(variant):
    m = build(variant)
    other = nn.Linear(3, 3)
    opt = torch.optim.SGD(other.parameters(), lr=0.1)
    versions = [t._version for t in m.parameters()] + [raw(m)._version]
    other(torch.randn(2, 3)).sum().backward()
    opt.step()
    assert [t._version for t in m.parameters()] + [raw(m)._version] == versions


@pytest.mark.parametrize("variant", HARD)
def test_registered_optimizer_brings_the_weight_back_at_once(variant):
    """Right after the step, before any forward or read: the stored weight is orthonormal to rounding."""
    m = build(variant)
    opt = m.register_optimizer(torch.optim.Adam(m.parameters(), lr=0.1))
    for i in range(3):
        step(m, opt, seed=i)
    stored = raw(m)
    if "parametrized" in VARIANTS[variant].tags:
        stored = m.weight  # computed from the parametrization
    assert deviation(stored) <= orthonormality_tolerance(stored)


@pytest.mark.parametrize("variant", ["orthogonal-retraction", "orthogonal-trivialization", "stiefel"])
def test_unregistered_optimizer_is_caught_up_at_the_next_forward(variant):
    m = build(variant)
    opt = torch.optim.Adam(m.parameters(), lr=0.1) if not isinstance(m, ro.StiefelLinear) else \
        torch.optim.SGD(m.parameters(), lr=0.5)  # a Euclidean step leaves the Stiefel manifold
    step(m, opt)
    stale = raw(m) if variant != "orthogonal-trivialization" else m.generator
    if variant == "orthogonal-trivialization":
        assert float(stale.detach().abs().max()) > 0  # the update waits in the generator
    else:
        assert deviation(stale) > 1e-3  # off the manifold until the next forward
    m(torch.randn(2, m.in_features))
    assert deviation(raw(m)) <= orthonormality_tolerance(raw(m))


@pytest.mark.parametrize("variant", ["orthogonal-retraction", "orthogonal-trivialization"])
def test_reads_and_saved_states_are_on_the_manifold_after_an_unregistered_step(variant):
    """Reading ``weight`` (orthogonality_error, to_linear, inverse) and ``state_dict`` bring the map back first, so
    a state saved after a plain optimizer's step loads without a warning."""
    m = build(variant)
    step(m, torch.optim.Adam(m.parameters(), lr=0.1))
    assert m.orthogonality_error() <= orthonormality_tolerance(raw(m))
    step(m, torch.optim.Adam(m.parameters(), lr=0.1), seed=1)
    state = m.state_dict()
    assert deviation(state["weight"]) <= orthonormality_tolerance(state["weight"])
    fresh = build(variant)
    with __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("error")
        fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.weight.detach(), m.weight.detach(), rtol=0, atol=0)


def test_unregistered_non_finite_step_raises_at_the_next_forward_and_every_later_one():
    m = build("orthogonal-retraction")
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    with torch.no_grad():
        m.weight.grad = torch.full_like(m.weight, math.inf)
    opt.step()
    for _ in range(2):
        with pytest.raises(FloatingPointError, match="NaN"):
            m(torch.randn(2, 3))


def test_a_forward_after_nothing_changed_does_no_work(monkeypatch):
    """The forward's check is a version comparison: no projection, no fold, when nothing changed."""
    calls = []
    for name in ("project_orthonormal_",):
        real = getattr(ro.maps.orthogonal_backends.backend, name)
        monkeypatch.setattr(ro.maps.orthogonal_backends.backend, name,
                            lambda *a, _real=real, **k: calls.append(1) or _real(*a, **k))
    for variant in ("orthogonal-retraction", "orthogonal-trivialization"):
        m = build(variant)
        opt = make_optimizer(m, 1e-2)
        step(m, opt)
        calls.clear()
        for _ in range(3):
            m(torch.randn(2, m.in_features))
        _ = m.weight
        assert calls == [], variant
        with torch.no_grad():
            raw(m).mul_(1.0 + 1e-3)  # an edit: projected at the next forward
        m(torch.randn(2, m.in_features))
        assert calls, variant


def test_make_optimizer_and_trainer_register_their_optimizers():
    model = nn.Sequential(ro.OrthogonalLinear(4, 4), nn.ReLU(), ro.OrthogonalLinear(4, 3), ro.AffineMap(3, 3))
    opt = make_optimizer(model, 1e-2)
    assert [r() for r in opt.__dict__[optimizer_hooks._REGISTRY]] == [model[0], model[2]]
    make_optimizer(model[0], 1e-2)  # another optimizer: its own registry
    assert len(opt.__dict__[optimizer_hooks._REGISTRY]) == 2
    m = ro.OrthogonalLinear(4, 3)
    seen = []
    x, y = torch.randn(32, 4), torch.randn(32, 3)

    def build_sgd(module):
        seen.append(torch.optim.SGD(module.parameters(), lr=0.05))
        return seen[-1]

    ro.fit_alignment(m, x, y, epochs=1, batch_size=16, optimizer=build_sgd, progress=False)
    assert [r() for r in seen[0].__dict__[optimizer_hooks._REGISTRY]] == [m]


def test_registration_is_idempotent_and_weak():
    m = build("orthogonal-retraction")
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    assert m.register_optimizer(opt) is opt and m.register_optimizer(opt) is opt
    assert len(opt.__dict__[optimizer_hooks._REGISTRY]) == 1
    assert len(opt._optimizer_step_post_hooks) == 1 and len(opt._optimizer_step_pre_hooks) == 1
    other = build("orthogonal-trivialization")
    other.register_optimizer(opt)
    del other
    gc.collect()
    step(m, opt)  # the dropped map is skipped, the live one brought back
    assert deviation(raw(m)) <= orthonormality_tolerance(raw(m))
    assert len(opt.__dict__[optimizer_hooks._REGISTRY]) == 1 or \
        optimizer_hooks._registered(opt) == [m]


def test_one_failing_map_does_not_stop_the_others():
    """Two maps in one optimizer, one of them receives a non-finite gradient: both are handled, the bad step is
    undone, the error raised after."""
    good, bad = build("orthogonal-retraction", seed=0), build("orthogonal-retraction", seed=1)
    model = nn.ModuleList([bad, good])
    opt = make_optimizer(model, 0.1)
    good_before = good.weight.detach().clone()
    bad_before = bad.weight.detach().clone()
    (good(torch.randn(4, 3)).sum() + bad(torch.randn(4, 3) * 1e30).pow(2).sum() * 1e30).backward()
    with pytest.raises(FloatingPointError, match="NaN or Inf"):
        opt.step()
    assert torch.equal(bad.weight.detach(), bad_before)
    assert not torch.equal(good.weight.detach(), good_before)
    assert deviation(raw(good)) <= orthonormality_tolerance(raw(good))


def test_register_hard_maps_rejects_what_is_not_a_module_or_an_optimizer():
    m = build("orthogonal-retraction")
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        m.register_optimizer([p for p in m.parameters()])
    with pytest.raises(TypeError, match="module must be a torch.nn.Module"):
        optimizer_hooks.register_hard_maps("model", torch.optim.SGD(m.parameters(), lr=0.1))


@pytest.mark.parametrize("variant", variants("hard", "basic"))
def test_catch_up_under_autocast_works_in_the_maps_dtype(variant):
    """Found by the GPU check: an unregistered step followed by a bf16-autocast forward re-based torch's
    parametrization with a bf16 weight (torch refused it), and projected a Stiefel weight with bf16 products
    (||G - I||_F = 6e-3); the catch-up now runs outside autocast, in the map's dtype."""
    m = build(variant)
    step(m, torch.optim.SGD(m.parameters(), lr=0.2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(torch.randn(2, m.in_features))
    assert y.dtype == torch.bfloat16 and bool(torch.isfinite(y).all())
    w = m.weight.detach()
    assert w.dtype == torch.float32 and deviation(w) <= orthonormality_tolerance(w)


def test_a_stiefel_weight_read_after_an_unregistered_euclidean_step_is_on_the_manifold():
    m = build("stiefel")
    step(m, torch.optim.SGD(m.parameters(), lr=0.5))
    assert deviation(m.stiefel_weight) > 1e-3  # the stored point left the manifold
    assert m.orthogonality_error() <= orthonormality_tolerance(m.weight)  # the read brings it back


def test_fit_pair_and_the_few_shot_trainer_register_their_maps(monkeypatch):
    attached = []
    real = optimizer_hooks.attach
    monkeypatch.setattr(optimizer_hooks, "attach", lambda opt, m: attached.append(m) or real(opt, m))
    g = torch.Generator().manual_seed(0)
    new, old = torch.randn(64, 4, generator=g), torch.randn(64, 3, generator=g)
    b, f = ro.OrthogonalLinear(4, 3), ro.AffineMap(3, 3)  # B: d_new -> d_old, F: d_old -> d_old
    ro.fit_pair(b, f, new, old, epochs=1, batch_size=16, progress=False)
    assert attached == [b]
    attached.clear()
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))
    tau = {k: 0.1 * torch.randn_like(v) for k, v in model.state_dict().items()}
    moved = ro.transfer_task_vector(model, tau, {"0": ro.OrthogonalLinear(4, 4)}, strict=False)
    ro.train_transfer_maps(moved, torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g), steps=2)
    assert len(attached) == 1 and isinstance(attached[0], ro.OrthogonalLinear)
