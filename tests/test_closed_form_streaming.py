"""Streaming sufficient statistics: chunks, memory maps, generators, devices; same answer as in memory."""
import tracemalloc

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from relaxedortho.closed_form import KINDS, accumulate_moments, fit_closed_form

seeds = st.integers(0, 2**31 - 1)
OPTS = {"anchored": {"prior": np.eye(4), "gamma": 2.0}, "relaxed_penalty": {"mu": 1.0, "solver": "closed_form"},
        "relaxed_frobenius": {"radius": 0.5, "solver": "closed_form"}, "relaxed_band": {"lower": 0.9, "upper": 1.1, "solver": "closed_form"}}


def chunked(X, Y, sizes):
    start = 0
    for s in sizes:
        yield X[start:start + s], Y[start:start + s]
        start += s
    if start < len(X):
        yield X[start:], Y[start:]


@given(n=st.integers(2, 60), p=st.integers(1, 5), q=st.integers(1, 5), offset=st.floats(-1e3, 1e3),
       sizes=st.lists(st.integers(0, 17), max_size=8), seed=seeds)
def test_moments_match_numpy(n, p, q, offset, sizes, seed):
    rng = np.random.default_rng(seed)
    X, Y = rng.standard_normal((n, p)) + offset, rng.standard_normal((n, q)) - offset
    m = accumulate_moments(chunked(X, Y, sizes), second_moments=("x", "y"))
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    big = 1 + abs(offset) ** 2 * n
    assert m.n == n
    np.testing.assert_allclose(m.mean_x().numpy(), X.mean(0), atol=1e-12 * (1 + abs(offset)))
    np.testing.assert_allclose(m.cross().numpy(), X.T @ Y, atol=1e-12 * big)
    np.testing.assert_allclose(m.gram_x().numpy(), X.T @ X, atol=1e-12 * big)
    np.testing.assert_allclose(m.gram_y().numpy(), Y.T @ Y, atol=1e-12 * big)
    # centred products keep full accuracy even far from the origin (shifted accumulation)
    np.testing.assert_allclose(m.cross(center=True).numpy(), Xc.T @ Yc, atol=1e-10 * n)
    np.testing.assert_allclose(m.gram_x(center=True).numpy(), Xc.T @ Xc, atol=1e-10 * n)
    np.testing.assert_allclose(float(m.sq_norm_x(center=True)), (Xc ** 2).sum(), atol=1e-10 * n)
    np.testing.assert_allclose(float(m.sq_norm_y()), (Y ** 2).sum(), rtol=1e-12)


@given(n=st.integers(12, 60), sizes=st.lists(st.integers(1, 13), max_size=6), seed=seeds,
       kind=st.sampled_from(KINDS))
def test_streaming_equals_in_memory(n, sizes, seed, kind):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 4)) * np.array([1.0, 2.0, 0.5, 1.5]) + 3.0
    Y = X @ rng.standard_normal((4, 4)) + 0.2 * rng.standard_normal((n, 4))
    opts = OPTS.get(kind, {})
    a = fit_closed_form(X, Y, kind=kind, **opts)
    b = fit_closed_form(chunked(X, Y, sizes), kind=kind, **opts)
    c = fit_closed_form(X, Y, kind=kind, chunk_size=3, **opts)
    scale = 1 + float(a.weight.detach().abs().max())
    for other in (b, c):
        assert type(other) is type(a)
        torch.testing.assert_close(other.weight, a.weight, atol=1e-10 * scale, rtol=0)
        if a.bias is not None:
            torch.testing.assert_close(other.bias, a.bias, atol=1e-10 * scale * 10, rtol=0)


def test_memmap_and_npy_mmap(tmp_path):
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((500, 6)), rng.standard_normal((500, 5))
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "y.npy", Y)
    mx = np.load(tmp_path / "x.npy", mmap_mode="r")
    my = np.load(tmp_path / "y.npy", mmap_mode="r")
    raw = np.memmap(tmp_path / "y.raw", dtype=np.float64, mode="w+", shape=Y.shape)
    raw[:] = Y
    raw.flush()
    raw = np.memmap(tmp_path / "y.raw", dtype=np.float64, mode="r", shape=Y.shape)
    ref = fit_closed_form(X, Y, kind="affine")
    for yy in (my, raw):
        m = fit_closed_form(mx, yy, kind="affine", chunk_size=64)
        torch.testing.assert_close(m.weight, ref.weight, atol=1e-10, rtol=0)
        torch.testing.assert_close(m.bias, ref.bias, atol=1e-10, rtol=0)


def test_means_false_fast_path():
    rng = np.random.default_rng(5)
    X, Y = rng.standard_normal((300, 4)), rng.standard_normal((300, 3))
    m = accumulate_moments(X, Y, second_moments=(), means=False, chunk_size=50)
    np.testing.assert_allclose(m.cross().numpy(), X.T @ Y, atol=1e-12)
    with pytest.raises(RuntimeError, match="means=False"):
        m.mean_x()
    m2 = accumulate_moments(X + 50.0, Y, second_moments=(), means=False, chunk_size=50)
    assert m2.info["shifted"] == (True, False)
    np.testing.assert_allclose(m2.cross().numpy(), (X + 50.0).T @ Y, rtol=1e-12, atol=1e-9)


def test_float32_fast_path_accuracy():
    """float32 chunk GEMMs summed in float64: the answer is as good as a float64 fit of the same float32 data."""
    rng = np.random.default_rng(1)
    X = (rng.standard_normal((20000, 16)) + 2).astype(np.float32)
    Y = (X.astype(np.float64) @ np.linalg.qr(rng.standard_normal((16, 16)))[0]
         + 0.5 * rng.standard_normal((20000, 16))).astype(np.float32)
    fast = accumulate_moments(X, Y, chunk_size=4096)
    exact = accumulate_moments(X.astype(np.float64), Y.astype(np.float64))
    assert fast.info["gemm_dtype"] == torch.float32 and exact.info["gemm_dtype"] == torch.float64
    rel = float(torch.linalg.matrix_norm(fast.cross(True) - exact.cross(True)) / torch.linalg.matrix_norm(exact.cross(True)))
    assert rel < 1e-5
    a = fit_closed_form(X, Y, kind="centered", chunk_size=4096)
    b = fit_closed_form(X.astype(np.float64), Y.astype(np.float64), kind="centered")
    assert a.weight.dtype == torch.float32
    assert float((a.weight.detach().double() - b.weight.detach()).abs().max()) < 1e-5
    p64 = accumulate_moments(X, Y, precision="float64")
    assert p64.info["gemm_dtype"] == torch.float64


def test_stream_errors_name_the_chunk():
    rng = np.random.default_rng(2)
    good = [(rng.standard_normal((5, 3)), rng.standard_normal((5, 2))) for _ in range(4)]
    bad = list(good)
    bad[2] = (rng.standard_normal((5, 4)), rng.standard_normal((5, 2)))
    with pytest.raises(ValueError, match="chunk 2 has widths X: 4"):
        fit_closed_form(iter(bad))
    bad = list(good)
    bad[3] = (good[3][0], good[3][1][:4])
    with pytest.raises(ValueError, match=r"X and Y \(chunk 3\) must have the same number of rows"):
        fit_closed_form(bad)
    x = good[1][0].copy()
    x[0, 0] = np.nan
    bad = list(good)
    bad[1] = (x, good[1][1])
    for kind in ("orthogonal", "affine"):  # without and with column sums
        bad[1] = (x, good[1][1])
        with pytest.raises(ValueError, match=r"X \(chunk 1\) contains NaN or Inf"):
            fit_closed_form(bad, kind=kind)
        bad[1] = (good[1][0], np.full((5, 2), np.inf))
        with pytest.raises(ValueError, match=r"Y \(chunk 1\) contains NaN or Inf"):
            fit_closed_form(bad, kind=kind)
        big = [(c[0] + 100.0, c[1]) for c in bad]  # shifted accumulation path
        with pytest.raises(ValueError, match=r"Y \(chunk 1\) contains NaN or Inf"):
            fit_closed_form(big, kind=kind)
    bad[1] = (good[1][0].astype(np.int64), good[1][1])
    with pytest.raises(TypeError, match=r"X \(chunk 1\) must hold floating"):
        fit_closed_form(bad)
    with pytest.raises(TypeError, match="chunk 0 must be a pair"):
        fit_closed_form([good[0][0]])
    with pytest.raises(ValueError, match="no rows"):
        fit_closed_form([])
    with pytest.raises(ValueError, match="chunk_size"):
        fit_closed_form(good[0][0], good[0][0], chunk_size=0)
    with pytest.raises(ValueError, match="precision"):
        fit_closed_form(good[0][0], good[0][0], precision="half")


def test_peak_memory_does_not_grow_with_n():
    """Python-side allocations (NumPy chunks) stay O(chunk): 10x more chunks, about the same peak."""
    def stream(k):
        rng = np.random.default_rng(3)
        for _ in range(k):
            yield rng.standard_normal((2000, 32)), rng.standard_normal((2000, 32))

    peaks = []
    for k in (4, 40):
        tracemalloc.start()
        fit_closed_form(stream(k), kind="affine")
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.5 * peaks[0] + 200_000


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors_and_mixed_stream():
    rng = np.random.default_rng(4)
    X, Y = rng.standard_normal((3000, 8)), rng.standard_normal((3000, 8))
    ref = fit_closed_form(X, Y, kind="affine")
    Xg, Yg = torch.from_numpy(X).cuda(), torch.from_numpy(Y).cuda()
    m = fit_closed_form(Xg, Yg, kind="affine", chunk_size=700)
    assert m.weight.device.type == "cuda" and m.weight.dtype == torch.float64
    torch.testing.assert_close(m.weight.cpu(), ref.weight, atol=1e-10, rtol=0)
    # NumPy chunks computed on the GPU
    m2 = fit_closed_form(chunked(X, Y, [1000, 1000]), kind="orthogonal", device="cuda")
    torch.testing.assert_close(m2.weight.cpu(), fit_closed_form(X, Y).weight, atol=1e-10, rtol=0)
    m3 = fit_closed_form(Xg.float(), Yg.float(), kind="relaxed_frobenius", radius=0.5)
    assert m3.weight.device.type == "cuda" and m3.weight.dtype == torch.float32


# ---- scale: finite data of any magnitude (float32 overflow / underflow in the chunk products) ----

MOMENTS = ("cross", "gram_x", "gram_y")


def _embedding_like(rng, n, p, q, offset=3.0):
    """Anisotropic (power-law column scales), offset, a planted map with det -1 plus noise."""
    X = rng.standard_normal((n, p)) * np.geomspace(1.0, 1e-2, p) + offset
    W = np.linalg.qr(rng.standard_normal((p, q)))[0]
    W[:, 0] *= -1
    return X, X @ W + 0.1 * rng.standard_normal((n, q)) - offset


def _rel_err(m, ref, name, center, factor=1.0):
    a, b = getattr(m, name)(center), getattr(ref, name)(center) * factor
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("k", [-100, -70, -45, 60, 80, 100])
def test_power_of_two_scale_gives_exactly_scaled_moments(k):
    """Data times 2^k (exact in float32): the moments are 4^k times those at scale 1, bit for bit, also where
    the float32 products overflow (k > 0) or underflow (k < 0) and the chunk takes the scaled path."""
    rng = np.random.default_rng(11)
    X, Y = _embedding_like(rng, 3000, 6, 5)
    X = (np.round(X * 1024) / 1024).astype(np.float32)  # multiples of 2^-10 below 2^12: X 2^k stays normal
    Y = (np.round(Y * 1024) / 1024).astype(np.float32)
    s = np.float32(2.0 ** k)
    assert np.array_equal((X * s) / s, X)
    base = accumulate_moments(X, Y, second_moments=("x", "y"), chunk_size=700)
    m = accumulate_moments(X * s, Y * s, second_moments=("x", "y"), chunk_size=700)
    assert base.info["scaled_chunks"] == 0 and m.info["scaled_chunks"] > 0
    assert base.info["shifted"] == m.info["shifted"] == (True, True)
    for name in ("shift_x", "shift_y", "sum_x", "sum_y"):
        torch.testing.assert_close(getattr(m, name), getattr(base, name) * 2.0 ** k, rtol=0, atol=0)
    for name in ("cross_shifted", "gram_x_shifted", "gram_y_shifted"):
        torch.testing.assert_close(getattr(m, name), getattr(base, name) * 4.0 ** k, rtol=0, atol=0)


@given(exponent=st.integers(-30, 30), seed=seeds, dtype=st.sampled_from([np.float32, "bfloat16"]),
       chunk=st.sampled_from([None, 97]))
def test_moments_at_any_scale_are_as_accurate_as_at_scale_one(exponent, seed, dtype, chunk):
    """float32 (and bfloat16) data at 1e-30 … 1e30: the fast path's moments equal the float64-GEMM moments of the
    same data to float32-GEMM accuracy, and those equal scale² × the moments at scale 1 (up to the rounding
    of the data); no error blames the finite data."""
    rng = np.random.default_rng(seed)
    X, Y = _embedding_like(rng, 400, 5, 4)
    scale = 10.0 ** exponent

    def data(s):
        xs, ys = torch.from_numpy(X * s), torch.from_numpy(Y * s)
        tdt = torch.bfloat16 if dtype == "bfloat16" else torch.float32
        return xs.to(tdt), ys.to(tdt)

    xs, ys = data(scale)
    m = accumulate_moments(xs, ys, second_moments=("x", "y"), chunk_size=chunk)
    ref = accumulate_moments(xs, ys, second_moments=("x", "y"), chunk_size=chunk, precision="float64")
    unit = accumulate_moments(*data(1.0), second_moments=("x", "y"), precision="float64")
    data_eps = 8e-3 if dtype == "bfloat16" else 1e-6  # the rounding of X * scale to the input dtype
    for name in MOMENTS:
        for center in (False, True):
            assert _rel_err(m, ref, name, center) < 1e-5, (name, center)
            assert _rel_err(ref, unit, name, center, scale ** 2) < data_eps * (20 if center else 1), (name, center)
    if abs(exponent) <= 10:  # ordinary magnitudes keep the fast path
        assert m.info["scaled_chunks"] == 0
    if abs(exponent) >= 20:  # float32 products overflow (1e40) or lose everything to underflow (1e-40)
        assert m.info["scaled_chunks"] > 0


def test_float32_reproducer_of_issue_11():
    """×1e30 used to raise 'Y contains NaN or Inf values' (the float32 XᵀY overflowed) or return Inf moments;
    ×1e-30 used to return zeros (every product underflowed)."""
    rng = np.random.default_rng(3)
    X, Y = _embedding_like(rng, 2000, 8, 6)
    X, Y = X.astype(np.float32), Y.astype(np.float32)
    for s in (np.float32(1e30), np.float32(1e-30)):
        ref = fit_closed_form(X.astype(np.float64) * float(s), Y.astype(np.float64) * float(s))
        m = fit_closed_form(X * s, Y * s)  # kind="orthogonal": uncentred, no sums
        assert float((m.weight.detach().double() - ref.weight.detach()).abs().max()) < 1e-5
        mom = accumulate_moments(X * s, Y * s, second_moments=("x", "y"))
        assert all(bool(torch.isfinite(getattr(mom, k)()).all()) and bool(getattr(mom, k)().abs().max() > 0)
                   for k in MOMENTS)


def test_nan_in_huge_or_tiny_data_is_still_reported():
    rng = np.random.default_rng(4)
    chunks = [(rng.standard_normal((50, 3)).astype(np.float32) * np.float32(1e30),
               rng.standard_normal((50, 2)).astype(np.float32) * np.float32(1e30)) for _ in range(3)]
    bad = list(chunks)
    y = chunks[2][1].copy()
    y[3, 1] = np.inf
    bad[2] = (chunks[2][0], y)
    for kind in ("orthogonal", "affine"):
        with pytest.raises(ValueError, match=r"Y \(chunk 2\) contains NaN or Inf"):
            fit_closed_form(bad, kind=kind)
    x = chunks[1][0] * np.float32(1e-60)
    x[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"X \(chunk 1\) contains NaN or Inf"):
        accumulate_moments([chunks[0], (x, chunks[1][1])])


def test_float64_data_beyond_float64_moments_raise_a_clear_error():
    """float64 inputs: moments of data near 1e±140 are exact (scaled path); beyond what float64 can hold the
    error says so and never blames the (finite) data."""
    rng = np.random.default_rng(5)
    X, Y = _embedding_like(rng, 500, 4, 3)
    unit = accumulate_moments(X, Y, second_moments=("x", "y"))
    for s in (1e140, 1e-140):
        m = accumulate_moments(X * s, Y * s, second_moments=("x", "y"), chunk_size=128)
        for name in MOMENTS:
            for center in (False, True):
                assert _rel_err(m, unit, name, center, s * s) < 1e-12
    with pytest.raises(ValueError, match="overflow float64 .*finite"):
        accumulate_moments(X * 1e160, Y * 1e160)
    with pytest.raises(ValueError, match="underflow float64"):
        accumulate_moments(X * 1e-170, Y * 1e-170)
    with pytest.raises(ValueError, match="overflow float64"):
        fit_closed_form(X * 1e300, Y, kind="affine")  # the sums overflow too; the first chunk's mean does not
