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
