"""Closed forms at extreme but finite scales (issue 11 defect 6): every kind is scale equivariant, and an
overflow is reported as an overflow (never as bad data, never as a raw LinAlgError)."""
import numpy as np
import pytest
import torch

from relaxedortho.closed_form import accumulate_moments, fit_closed_form, solve_closed_form

def _data(p, q, seed=0):
    """Anisotropic features with an offset and a planted map of det -1 plus noise (far from the identity)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((40, p)) * np.logspace(0, -1, p) + rng.standard_normal(p)
    R = np.linalg.qr(rng.standard_normal((max(p, q), max(p, q))))[0][:p, :q]
    if p == q and np.linalg.det(R) > 0:
        R[:, 0] *= -1
    Y = 2.0 * X @ R + 0.2 * rng.standard_normal((40, q)) + 1.0
    return X, Y


# kind -> (p, q, options at scale 1, how W and b transform when X is scaled by a and Y by c)
#   "invariant": W unchanged, b -> c b;   "ratio": W -> (c/a) W, b -> c b;   options scale with a, c as given.
KINDS = {
    "orthogonal": (5, 5, {}, "invariant"),
    "rotation": (5, 5, {}, "invariant"),
    "orthogonal_lsq": (6, 3, {}, "invariant"),
    "centered": (6, 3, {}, "invariant"),
    "anchored": (5, 5, {"gamma": 3.0}, "invariant"),
    "similarity": (5, 5, {}, "ratio"),
    "affine": (6, 3, {}, "ratio"),
    "ridge": (6, 3, {"ridge": 2.0}, "ratio"),
    "cca": (6, 3, {}, "ratio"),
    "cca-procrustes": (6, 3, {"shrinkage": 1.0}, "invariant"),
}


def _options(name, p, q, a, c):
    opts = dict(KINDS[name][2])
    if "gamma" in opts:               # gamma weighs ||W - W0||^2 against ||XW - Y||^2: units of X^T Y
        opts["gamma"] *= a * c
        opts["prior"] = np.eye(q, p)
    if "ridge" in opts:               # the ridge is added to X^T X: units of X^2
        opts["ridge"] *= a * a
    return opts


def _fit(name, X, Y, a, c):
    """W (row convention) and b of kind ``name`` on (already scaled) X, Y with the options of scale (a, c)."""
    p, q = X.shape[1], Y.shape[1]
    m = fit_closed_form(X, Y, kind=name.split("-")[0], **_options(name, p, q, a, c))
    W = m.weight.detach().double().numpy().T
    b = np.zeros(q) if m.bias is None else m.bias.detach().double().numpy()
    return W, b


def _check(name, a, c, dtype, rtol):
    p, q, _, law = KINDS[name]
    X, Y = (z.astype(dtype).astype(np.float64) for z in _data(p, q))
    W1, b1 = _fit(name, X, Y, 1.0, 1.0)
    Xs, Ys = (X * a).astype(dtype), (Y * c).astype(dtype)
    assert np.isfinite(Xs).all() and np.isfinite(Ys).all()
    W, b = _fit(name, Xs, Ys, a, c)
    factor = c / a if law == "ratio" else 1.0
    np.testing.assert_allclose(W / factor, W1, rtol=rtol, atol=rtol * np.abs(W1).max())
    if KINDS[name][0] and np.abs(b1).max() > 0:  # b = mu_y - mu_x W at scale (a, c), divided by c
        expected = Y.mean(0) - (a / c) * (X.mean(0) @ (factor * W1))
        spread = np.abs(Y).max() + (a / c) * np.abs(X).max() * factor * np.abs(W1).sum()
        np.testing.assert_allclose(b / c, expected, rtol=rtol, atol=rtol * spread)


#: float64 data up to 1e±140: the moments (products of entries) then stay within float64's normal range, which
#: accumulate_moments requires (beyond about 1e±150 it raises; test_closed_form_streaming.py).
FLOAT64_SCALES = [1e-140, 1e-100, 1e-30, 1e30, 1e100, 1e140]


@pytest.mark.parametrize("scale", FLOAT64_SCALES)
@pytest.mark.parametrize("name", list(KINDS))
def test_float64_common_scale(name, scale):
    """X and Y both scaled: orthogonal kinds unchanged, the others with W unchanged and b scaled."""
    _check(name, scale, scale, np.float64, 1e-9)


@pytest.mark.parametrize("a, c", [(1e-140, 1e140), (1e140, 1e-140), (1e-100, 1.0), (1.0, 1e120)])
@pytest.mark.parametrize("name", [k for k in KINDS if k != "orthogonal_lsq"])
def test_float64_separate_scales(name, a, c):
    """X scaled by a, Y by c: W -> (c/a) W for the affine kinds, unchanged for the orthogonal ones (the
    compressing least squares is excluded: its optimum genuinely depends on c/a)."""
    _check(name, a, c, np.float64, 1e-9)


@pytest.mark.parametrize("scale", [1e-30, 1e-20, 1e-10, 1e10, 1e20, 1e30])
@pytest.mark.parametrize("name", list(KINDS))
def test_float32_common_scale(name, scale):
    """float32 features of size 1e-30 ... 1e30 (the float32 chunk products over/underflow at |x|^2 beyond
    the float32 range; the accumulation rescales such chunks, the solvers rescale the moments)."""
    _check(name, scale, scale, np.float32, 2e-4)


@pytest.mark.parametrize("kind", ["centered", "similarity", "affine", "cca", "orthogonal_lsq"])
def test_non_finite_moments_are_reported_as_overflow_not_as_bad_data(kind):
    """Moments that are not finite (merged or hand-built from sums beyond the float range) are named as an
    overflow of the moments, never as NaN/Inf in the user's X or Y, and never reach an SVD or Cholesky."""
    X, Y = _data(6, 3)
    m = accumulate_moments(X, Y, second_moments=("x", "y"))
    m.cross_shifted[0, 0] = float("inf")
    with pytest.raises(OverflowError, match=r"moments \(X\^T Y\) overflowed.*data are finite.*common factor"):
        solve_closed_form(m, kind)


def test_unrepresentable_float32_weight_raises():
    """A float32 map whose weights leave the float32 range says so instead of returning Inf or zeros."""
    X, Y = _data(6, 3)
    with pytest.raises(OverflowError, match="weight.*outside the range of torch.float32"):
        fit_closed_form((X * 1e-20).astype(np.float32), (Y * 1e20).astype(np.float32), kind="affine",
                        precision="float64")
    with pytest.raises(OverflowError, match="weight.*outside the range of torch.float32"):
        fit_closed_form((X * 1e20).astype(np.float32), (Y * 1e-20).astype(np.float32), kind="affine",
                        precision="float64")
    # float64 inputs hold it
    m = fit_closed_form(X * 1e-20, Y * 1e20, kind="affine")
    assert np.isfinite(m.weight.detach().numpy()).all()


@pytest.mark.parametrize("scale", [1e-200, 1e200])
def test_generalized_procrustes_at_extreme_scale(scale):
    """The rotations do not depend on a common scale of the views; the consensus and biases scale with it."""
    from relaxedortho.closed_form import generalized_procrustes
    rng = np.random.default_rng(4)
    Z = rng.standard_normal((30, 4))
    views = [Z @ np.linalg.qr(rng.standard_normal((4, 4)))[0] + 0.05 * rng.standard_normal((30, 4)) + 1.0
             for _ in range(3)]
    maps1, Z1, info1 = generalized_procrustes(views)
    maps, Zs, info = generalized_procrustes([v * scale for v in views])
    for a, b in zip(maps1, maps):
        np.testing.assert_allclose(b.weight.detach().numpy(), a.weight.detach().numpy(), atol=1e-10)
        np.testing.assert_allclose(b.bias.detach().numpy() / scale, a.bias.detach().numpy(), atol=1e-10)
    np.testing.assert_allclose(Zs.numpy() / scale, Z1.numpy(), atol=1e-10)
    assert info["iterations"] == info1["iterations"]


@pytest.mark.parametrize("scale", [1e-30, 1e-20, 1e20, 1e30])
def test_lambda_init_on_float32_data_of_extreme_scale(scale):
    """lambda_init (the Frobenius-ball closed form behind LambdaOrthoLinear's start) on float32 X, Y of size
    1e-30 ... 1e30: the same weight as at scale 1, the bias scaled (issue 11 defect 6 named it among the kinds
    that failed on large float32 data)."""
    from relaxedortho.closed_form import lambda_init
    X, Y = (z.astype(np.float32).astype(np.float64) for z in _data(6, 6))
    m1 = lambda_init(X, Y, lam=0.5)
    m = lambda_init((X * scale).astype(np.float32), (Y * scale).astype(np.float32), lam=0.5)
    assert m.weight.dtype == torch.float32
    np.testing.assert_allclose(m.weight.detach().double().numpy(), m1.weight.detach().double().numpy(), atol=2e-6)
    np.testing.assert_allclose(m.bias.detach().double().numpy() / scale, m1.bias.detach().double().numpy(),
                               atol=2e-6 * (1 + np.abs(Y).max()))
