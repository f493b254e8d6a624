"""Lazy imports (PEP 562): what ``import relaxedortho`` loads, and that every public name still resolves."""
import importlib
import json
import subprocess
import sys
import warnings

import pytest
import torch

import relaxedortho as ro
from relaxedortho.linalg import orthogonality_error

HEAVY = ["geoopt", "sklearn", "matplotlib", "scipy.optimize", "torch._dynamo", "tqdm"]
PACKAGES = ["relaxedortho", "relaxedortho.maps", "relaxedortho.closed_form", "relaxedortho.training",
            "relaxedortho.transfer", "relaxedortho.losses"]


def _fresh(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it must print one JSON line, returned decoded."""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


LOADED = "import sys, json; print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))"


def test_import_loads_no_heavy_dependency_and_every_public_name_resolves():
    out = _fresh(f"""
import sys, json
import relaxedortho
loaded = sorted(m for m in {HEAVY!r} + ["relaxedortho.maps", "relaxedortho.training"] if m in sys.modules)
missing = {{}}
for pkg in {PACKAGES!r}:
    mod = __import__(pkg, fromlist=["_"])
    listed = dir(mod)  # before any name is resolved (a resolved name is stored in the module)
    missing[pkg] = [n for n in mod.__all__ if n not in listed] + [n for n in mod.__all__ if not hasattr(mod, n)]
print(json.dumps({{"loaded": loaded, "missing": missing}}))
""")
    assert out["loaded"] == []
    assert out["missing"] == {pkg: [] for pkg in PACKAGES}


def test_losses_load_neither_the_training_package_nor_geoopt():
    # tqdm: torch itself imports it (torch.hub) when installed
    out = _fresh("import relaxedortho.losses\n" + LOADED.format(heavy=HEAVY[:-1] + ["relaxedortho.training"]))
    assert out == []


def test_first_use_of_maps_closed_forms_metrics_and_saving_loads_no_heavy_dependency(tmp_path):
    path = str(tmp_path / "m.pt")
    code = f"""
import torch, relaxedortho as ro
x = torch.randn(64, 6)
for m in (ro.LambdaOrthoLinear(6, 4, lam=0.5), ro.OrthogonalLinear(6, 6), ro.OrthogonalLinear(6, 4), ro.AffineMap(6, 4)):
    m(x).sum().backward()
    m.regularizer()
ro.fit_closed_form(x, x[:, :4], kind="orthogonal")
ro.metrics.cmc(x, x, torch.arange(64) % 3, torch.arange(64) % 3, topk=(1,), leave_one_out=True)
ro.losses.backward_loss(x, x)
ro.save(ro.LambdaOrthoLinear(6, 4), {path!r}); ro.load({path!r})
""" + LOADED.format(heavy=HEAVY[:-1])
    assert _fresh(code) == []


@pytest.mark.parametrize("init, heavy", [
    ("module", ["geoopt", "sklearn", "matplotlib", "scipy.optimize"]),
    # the default start of a λ map is the relaxed closed form, whose Frobenius-ball projection uses
    # scipy.optimize.brentq: that import is the cost of the start (docs/training.md)
    ("auto", ["geoopt", "sklearn", "matplotlib"]),
])
def test_training_plain_maps_loads_neither_geoopt_nor_scipy_optimize(init, heavy):
    # torch.optim imports torch._dynamo itself (Optimizer.add_param_group is wrapped in torch._disable_dynamo)
    code = f"""
import torch, relaxedortho as ro
x = torch.randn(64, 6)
for m in (ro.LambdaOrthoLinear(6, 4, lam=0.5), ro.OrthogonalLinear(6, 6), ro.OrthogonalLinear(6, 4), ro.AffineMap(6, 4)):
    ro.fit_alignment(m, x, x[:, :m.out_features], epochs=1, batch_size=32, progress=False, init={init!r}, tol=None)
""" + LOADED.format(heavy=heavy)
    assert _fresh(code) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_every_name_of_all_is_the_object_of_its_defining_module(package):
    mod = importlib.import_module(package)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # geoopt's import-time warnings are silenced anyway
        for name in mod.__all__:
            value = getattr(mod, name)
            assert name in dir(mod)
            exec(f"from {package} import {name} as _v", {}, scope := {})
            assert scope["_v"] is value
            source = getattr(value, "__module__", None)
            if isinstance(value, type) or callable(value) and source and source.startswith("relaxedortho"):
                assert getattr(importlib.import_module(source), value.__name__) is value


def test_star_import_and_unknown_names():
    scope = {}
    exec("from relaxedortho import *", scope)
    assert set(ro.__all__) <= set(scope)
    with pytest.raises(AttributeError, match="relaxedortho.maps.*no attribute 'Nope'"):
        ro.maps.Nope
    with pytest.raises(ImportError, match="Nope"):
        exec("from relaxedortho import Nope", {})
    assert ro.__version__ == "0.1.0"


def test_map_classes_is_a_lazy_read_only_mapping():
    classes = ro.maps.MAP_CLASSES
    assert list(classes) == ["AffineMap", "LambdaOrthoLinear", "OrthogonalLinear", "StiefelLinear"]
    assert len(classes) == 4 and "StiefelLinear" in classes and "AlignmentMap" not in classes
    assert classes["LambdaOrthoLinear"] is ro.LambdaOrthoLinear and classes.get("nope") is None
    with pytest.raises(KeyError):
        classes["AlignmentMap"]
    with pytest.raises(TypeError):
        classes["x"] = int
    assert dict(classes) == {n: getattr(ro, n) for n in classes}
    out = _fresh("import json, sys; from relaxedortho.maps import MAP_CLASSES; "
                 "print(json.dumps(['StiefelLinear' in MAP_CLASSES, MAP_CLASSES['AffineMap'].__name__, "
                 "'geoopt' in sys.modules]))")
    assert out == [True, "AffineMap", False]


def test_geoopt_loads_with_a_stiefel_map_and_its_optimizer():
    out = _fresh("import json, sys, relaxedortho as ro\n"
                 "from relaxedortho.training import make_optimizer\n"
                 "before = 'geoopt' in sys.modules\n"
                 "opt = make_optimizer(ro.StiefelLinear(4, 6), 1e-3)\n"
                 "print(json.dumps([before, type(opt).__name__, 'geoopt' in sys.modules]))")
    assert out == [False, "RiemannianAdam", True]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning:torch", "ignore::FutureWarning:torch")
@pytest.mark.parametrize("out_features", [6, 4], ids=["trivialization", "retraction"])
def test_the_pre_forward_retraction_runs_under_torch_compile(out_features):
    """The retraction hook runs outside the graph under torch.compile (torch.compiler.disable, applied lazily)."""
    with warnings.catch_warnings():  # inductor's import-time DeprecationWarnings (see test_maps.py)
        warnings.simplefilter("ignore", DeprecationWarning)
        import torch._inductor.compile_fx  # noqa: F401
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = ro.OrthogonalLinear(6, out_features)
    x = torch.randn(3, 6)
    compiled = torch.compile(m)
    compiled(x)
    with torch.no_grad():  # move off the manifold: the next forward must bring the weight back
        if out_features == 6:
            m.generator.add_(0.3 * torch.randn(6, 6))
        else:
            m.weight.add_(0.05 * torch.randn_like(m.weight))
    before = m._weight_tensor().detach().clone()  # the stored tensor: reading m.weight would bring it back
    y = compiled(x)
    w = m._weight_tensor().detach()
    assert float(orthogonality_error(w.double())) < 1e-5
    assert float((w - before).abs().max()) > 1e-3  # folded (trivialization) or re-projected (retraction)
    if out_features == 6:
        assert not m.generator.detach().any()
    torch.testing.assert_close(y, x @ w.T, rtol=1e-5, atol=1e-6)
