"""The shared interface of the maps: forward, inverse, export, regularizer, geometry, bad input, compile."""
import math
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import relaxedortho as ro
from relaxedortho.maps.base import OrthonormalityWarning
from relaxedortho.testing import strategies as ros
from relaxedortho.testing.maps import VARIANTS, variants
from helpers import tol

HARD = variants("hard", "basic")
ALL = variants("basic")
CLASSES = [ro.AffineMap, ro.LambdaOrthoLinear, ro.OrthogonalLinear, ro.StiefelLinear]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@given(ros.maps(), ros.leading_shapes(), ros.seeds())
def test_forward_is_affine_for_any_leading_shape(m, lead, seed):
    x = torch.randn(*lead, m.in_features, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    y = m(x.to(m.weight.dtype))
    assert y.shape == (*lead, m.out_features) and y.dtype == m.weight.dtype
    w = m.weight.detach().double().numpy()
    ref = x.numpy() @ w.T + (0 if m.bias is None else m.bias.detach().double().numpy())
    np.testing.assert_allclose(y.detach().double().numpy(), ref, atol=tol(m.weight.dtype, m.in_features) * 10)


@given(ros.maps())
def test_interface_diagnostics_match_numpy(m):
    w = m.weight.detach().double().numpy()
    g = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
    assert m.orthogonality_error() == pytest.approx(np.linalg.norm(g - np.eye(g.shape[0])), abs=1e-12)
    sv = m.singular_values()
    assert sv.shape == (min(w.shape),)
    np.testing.assert_allclose(sv.double().numpy(), np.linalg.svd(w, compute_uv=False),
                               atol=tol(m.weight.dtype, max(w.shape)))
    assert bool(torch.all(sv[:-1] >= sv[1:]))
    assert isinstance(m.is_orthogonal, bool)
    r = m.regularizer()
    assert r.ndim == 0 and r.dtype == (torch.float64 if m.weight.dtype == torch.float64 else torch.float32)
    if m.is_orthogonal or isinstance(m, ro.LambdaOrthoLinear) and math.isinf(m.lam) or type(m) is ro.AffineMap:
        assert float(r.detach()) == 0.0


@given(ros.maps(variants=HARD), ros.seeds())
def test_hard_maps_preserve_geometry(m, seed):
    g = torch.Generator().manual_seed(seed)
    dt = m.weight.dtype
    if m.out_features >= m.in_features:  # square/expanding: an isometry of the whole input space
        a, b = torch.randn(2, m.in_features, generator=g, dtype=torch.float64).to(dt)
    else:  # compressing: a co-isometry, isometric on the row space of A
        z = torch.randn(2, m.out_features, generator=g, dtype=torch.float64).to(dt)
        a, b = z @ m.weight.detach()
    wa, wb = a @ m.weight.detach().mT, b @ m.weight.detach().mT
    t = tol(dt, max(m.in_features, m.out_features)) * float(a.norm() * b.norm() + 1)
    assert abs(float(wa @ wb) - float(a @ b)) <= t
    assert abs(float(wa.norm()) - float(a.norm())) <= t
    assert m.orthogonality_error() <= tol(dt, max(m.in_features, m.out_features))


@given(ros.shapes("square"), ros.float_dtypes(), st.sampled_from(["trivialization", "retraction", "cayley", "matrix_exp"]))
def test_special_orthogonal_has_det_plus_one(shape, dtype, method):
    m = ro.OrthogonalLinear(*shape, method=method, group="SO", dtype=dtype)
    assert float(torch.linalg.det(m.weight.detach().double())) == pytest.approx(1.0, abs=1e-4)


@given(ros.maps(variants=HARD), ros.seeds())
def test_inverse_of_orthogonal_is_transpose(m, seed):
    inv = m.inverse()
    assert type(inv) is ro.AffineMap and (inv.in_features, inv.out_features) == (m.out_features, m.in_features)
    assert torch.equal(inv.weight.detach(), m.weight.detach().mT)
    if m.out_features >= m.in_features:  # left inverse: inv(m(x)) = x
        x = torch.randn(3, m.in_features, generator=torch.Generator().manual_seed(seed)).to(m.weight.dtype)
        torch.testing.assert_close(inv(m(x)).detach(), x, atol=tol(x.dtype, m.out_features) * 10, rtol=0)


@given(ros.matrices(max_condition=20.0), st.booleans(), ros.seeds())
def test_inverse_of_affine_is_pseudo_inverse(w, bias, seed):
    g = torch.Generator().manual_seed(seed)
    b = torch.randn(w.shape[0], generator=g, dtype=torch.float64).to(w.dtype) if bias else None
    m = ro.AffineMap.from_matrix(w, b)
    inv = m.inverse()
    np.testing.assert_allclose(inv.weight.detach().double().numpy(), np.linalg.pinv(w.double().numpy()),
                               atol=tol(w.dtype, max(w.shape), 20.0**2) * 20)
    if w.shape[0] >= w.shape[1]:  # full column rank: exact left inverse
        x = torch.randn(4, w.shape[1], generator=g, dtype=torch.float64).to(w.dtype)
        torch.testing.assert_close(inv(m(x)).detach(), x, atol=tol(w.dtype, max(w.shape), 20.0) * 20, rtol=0)


@given(ros.maps(), ros.leading_shapes(max_dims=2), ros.seeds())
def test_to_linear_gives_same_outputs(m, lead, seed):
    lin = m.to_linear()
    assert type(lin) is nn.Linear and lin.weight.dtype == m.weight.dtype
    x = torch.randn(*lead, m.in_features, generator=torch.Generator().manual_seed(seed)).to(m.weight.dtype)
    # equal up to rounding: a parametrized weight may be a strided view, which changes the BLAS kernel
    torch.testing.assert_close(lin(x).detach(), m(x).detach(), rtol=0, atol=tol(x.dtype, m.in_features))


@given(ros.map_kwargs(), ros.matrices(max_condition=5.0), st.booleans())
def test_from_matrix_restores_given_weight(variant, w, bias):
    cls_name, kwargs = variant
    cls = getattr(ro, cls_name)
    if variant in [ros.MAP_VARIANTS[n] for n in ros.SQUARE_ONLY]:
        k = min(w.shape)
        w = w[:k, :k].contiguous()
    if cls.is_orthogonal:
        w = ro.linalg.polar(w.double()).to(w.dtype)
    b = torch.arange(w.shape[0], dtype=w.dtype) if bias else None
    m = cls.from_matrix(w.numpy(), b, **kwargs)  # NumPy accepted
    assert m.weight.dtype == w.dtype and tuple(m.weight.shape) == tuple(w.shape)
    torch.testing.assert_close(m.weight.detach(), w, atol=tol(w.dtype, 1) * 10, rtol=0)
    if bias:
        assert torch.equal(m.bias.detach(), b)
    else:
        assert m.bias is None
    assert m.load_matrix_(w) is m


@given(ros.shapes(), ros.seeds())
def test_lambda_inf_is_exactly_the_affine_map(shape, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(*shape, generator=g, dtype=torch.float64)
    b = torch.randn(shape[0], generator=g, dtype=torch.float64)
    lm = ro.LambdaOrthoLinear.from_matrix(w, b, lam=math.inf)
    am = ro.AffineMap.from_matrix(w, b)
    assert float(lm.regularizer().detach()) == 0.0
    opts = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in (lm, am)]
    x = torch.randn(16, shape[1], generator=g, dtype=torch.float64)
    y = torch.randn(16, shape[0], generator=g, dtype=torch.float64)
    for _ in range(5):
        for m, opt in zip((lm, am), opts):
            opt.zero_grad()
            (torch.nn.functional.mse_loss(m(x), y) + m.regularizer()).backward()
            opt.step()
    assert torch.equal(lm.weight, am.weight) and torch.equal(lm.bias, am.bias)


def test_lambda_regularizer_is_weighted_eq6():
    w = 1.3 * torch.eye(4, 3, dtype=torch.float64)
    m = ro.LambdaOrthoLinear.from_matrix(w, lam=0.5, alpha=3.0, penalty_weight=2.0)
    ref = 2.0 * float(ro.penalties.lambda_orthogonality(w, 0.5, 3.0))
    assert float(m.regularizer().detach()) == pytest.approx(ref, rel=1e-12)
    assert float(ro.LambdaOrthoLinear.from_matrix(w, penalty_weight=0.0).regularizer().detach()) == 0.0


# -- bad input --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "4"])
def test_bad_feature_counts(cls, bad):
    with pytest.raises(ValueError, match="in_features"):
        cls(bad, 3)
    with pytest.raises(ValueError, match="out_features"):
        cls(3, bad)


@pytest.mark.parametrize("kwargs,exc,name", [
    ({"lam": -0.1}, ValueError, "lam"), ({"lam": float("nan")}, ValueError, "lam"), ({"lam": "1"}, TypeError, "lam"),
    ({"alpha": 0.0}, ValueError, "alpha"), ({"alpha": -1.0}, ValueError, "alpha"),
    ({"gate": "relu"}, ValueError, "gate"), ({"estimator": "svd"}, ValueError, "estimator"),
    ({"penalty_weight": -1.0}, ValueError, "penalty_weight"), ({"num_probes": 0}, ValueError, "num_probes")])
def test_lambda_bad_options(kwargs, exc, name):
    with pytest.raises(exc, match=name):
        ro.LambdaOrthoLinear(4, 4, **kwargs)


@pytest.mark.parametrize("kwargs,name", [({"method": "qr"}, "method"), ({"group": "U"}, "group"),
                                         ({"group": "SO", "method": "householder"}, "householder"),
                                         ({"ns_steps": 0}, "ns_steps")])
def test_orthogonal_bad_options(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ro.OrthogonalLinear(4, 4, **kwargs)
    with pytest.raises(ValueError, match="SO"):
        ro.OrthogonalLinear(4, 3, group="SO")


@pytest.mark.parametrize("cls", CLASSES)
def test_bad_init_matrices(cls):
    good = torch.eye(4, 3)
    for value, exc in [(torch.full((4, 3), float("nan")), ValueError), (good.masked_fill(good == 1, math.inf),
                                                                         ValueError),
                       (torch.eye(4, 3, dtype=torch.int64), TypeError), (np.eye(4, 3, dtype=np.int32), TypeError),
                       (torch.eye(3, 4), ValueError), (torch.ones(4, 3, 1), ValueError)]:
        with pytest.raises(exc, match="init"):
            cls(3, 4, init=value)
    with pytest.raises(ValueError, match="init"):
        cls(3, 4, init="zeros")


@pytest.mark.parametrize("cls", CLASSES)
def test_bad_load_matrix(cls):
    m = cls(3, 4, bias=True)
    for value, exc in [(torch.eye(3, 4), ValueError), (torch.full((4, 3), float("nan")), ValueError),
                       (torch.eye(4, 3, dtype=torch.int32), TypeError), ([[1, 0, 0]] * 4, TypeError),
                       ("eye", TypeError)]:
        with pytest.raises(exc, match="weight"):
            m.load_matrix_(value)
    with pytest.raises(ValueError, match="bias"):
        m.load_matrix_(torch.eye(4, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="bias"):
        cls(3, 4, bias=False).load_matrix_(torch.eye(4, 3), torch.zeros(4))


@pytest.mark.parametrize("variant", HARD)
def test_hard_maps_reject_non_orthonormal(variant):
    cls_name, kwargs = ros.MAP_VARIANTS[variant]
    cls = getattr(ro, cls_name)
    in_f = 4 if variant in ros.SQUARE_ONLY else 3
    with pytest.raises(ValueError, match="orthonormal"):
        cls(in_f, 4, init=2.0 * torch.eye(4, in_f), **kwargs)
    with pytest.raises(ValueError, match="orthonormal"):
        cls(in_f, 4, **kwargs).load_matrix_(torch.eye(4, in_f) + 0.1)
    with pytest.raises(ValueError, match="orthonormal"):
        cls.from_matrix(torch.ones(3, 3), **kwargs)
    with pytest.warns(OrthonormalityWarning, match="polar factor"):  # close: projected, not taken as it is
        m = cls(in_f, 4, **kwargs).load_matrix_(torch.eye(4, in_f) + 1e-3)
    assert m.orthogonality_error() <= 1e-6


def test_special_orthogonal_rejects_reflection():
    with pytest.raises(ValueError, match="det"):
        ro.OrthogonalLinear(2, 2, group="SO", init=torch.diag(torch.tensor([1.0, -1.0])))


def test_import_and_construct_print_nothing():
    env = {**os.environ, "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, "-W", "default", "-c",
                          "import relaxedortho as r; r.LambdaOrthoLinear(768, 512)"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "" and out.stderr == ""


# -- torch.compile ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def inductor():
    """Import inductor once with its own import-time DeprecationWarnings (torch.jit.script_method in
    torch.utils.mkldnn, torch 2.13) silenced: they are torch's, not ours, and -W error would turn them into errors."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import torch._inductor.compile_fx  # noqa: F401


# torch's compiler emits internal Deprecation/FutureWarnings and, for geoopt's tensor subclass, a .grad-access
# UserWarning that it hides itself under default filters; -W error (pyproject) would turn them into errors.
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning:torch", "ignore::FutureWarning:torch",
                            "ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")
@pytest.mark.parametrize("variant", ALL)
def test_compile_matches_eager(variant, inductor):
    torch._dynamo.reset()
    cls_name, kwargs = ros.MAP_VARIANTS[variant]
    out_f = 5 if variant in ros.SQUARE_ONLY else 3
    m = getattr(ro, cls_name)(5, out_f, bias=True, **kwargs)
    x = torch.randn(2, 4, 5)
    compiled = torch.compile(m)
    torch.testing.assert_close(compiled(x), m(x), rtol=1e-5, atol=1e-6)
    if "randomized" not in variant:  # the randomized estimate draws fresh probes each call
        torch.testing.assert_close(torch.compile(m.regularizer)(), m.regularizer(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64, "float32"])
def test_non_float_dtype_rejected(cls, dtype):
    with pytest.raises(TypeError, match="dtype"):
        cls(3, 4, dtype=dtype)


@pytest.mark.parametrize("variant", ALL)
def test_bf16_autocast_forward_is_float32_to_bf16_rounding(variant):
    """Under CPU bf16 autocast every map computes in bf16: each entry within 2 eps_bf16 sum|x||A| (+|b|) of the
    float32 output (the rounding of x and A, eps/2 each, and of the result), and the backward reaches the
    trainable tensors with finite values."""
    torch.manual_seed(0)
    m = VARIANTS[variant].build((3, 5), bias=True)
    with torch.no_grad():
        if m.bias is not None:
            m.bias.normal_()
    x = torch.randn(4, 5 if m.in_features == 5 else m.in_features) * 3.0
    ref = m(x).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert y.dtype == torch.bfloat16 and y.shape == ref.shape
    w = m.weight.detach()
    bound = 2 * torch.finfo(torch.bfloat16).eps * (x.abs() @ w.abs().T + (0 if m.bias is None else m.bias.abs()))
    assert bool(((y.detach().float() - ref).abs() <= bound + 1e-30).all())
    y.float().pow(2).sum().backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert grads and all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
