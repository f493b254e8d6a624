"""Mergeable moments: merge / + / sum of shards equals one pass over all rows; save / load."""
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from relaxedortho.closed_form import PairedMoments, accumulate_moments, fit_closed_form
from relaxedortho.closed_form.moments_file import load_moments

seeds = st.integers(0, 2**31 - 1)


def _data(rng, n, p, q, offset, spread):
    """Offset-heavy anisotropic rows (mean ≫ spread when offset is large), Y a noisy map of X."""
    X = offset + spread * rng.standard_normal((n, p)) * np.geomspace(1.0, 0.05, p)
    Y = -0.5 * offset + X @ rng.standard_normal((p, q)) * 0.3 + spread * rng.standard_normal((n, q))
    return X, Y


def _tolerances(X, Y):
    """Float64 rounding of the moments: centred relative to n·spread², uncentred relative to n·(|mean|+spread)²."""
    n = X.shape[0]
    sx, sy = X.std(0).max(), Y.std(0).max()
    mx, my = np.abs(X).max(), np.abs(Y).max()
    eps = np.finfo(np.float64).eps
    return {"centred": 64 * eps * n * max(sx, sy) * (max(sx, sy) + 1e-300),
            "uncentred": 16 * eps * n * max(mx, my) ** 2, "mean": 16 * eps * max(mx, my)}


def _assert_moments_equal(m, whole, X, Y):
    tol = _tolerances(X, Y)
    assert m.n == whole.n
    pairs = [("cross", m.cross, whole.cross), ("gram_x", m.gram_x, whole.gram_x), ("gram_y", m.gram_y, whole.gram_y)]
    for name, a, b in pairs:
        if name == "gram_x" and (m.gram_x_shifted is None or whole.gram_x_shifted is None):
            continue
        if name == "gram_y" and (m.gram_y_shifted is None or whole.gram_y_shifted is None):
            continue
        torch.testing.assert_close(a(), b(), rtol=0, atol=tol["uncentred"], msg=name)
        if m.has_sums and whole.has_sums:
            torch.testing.assert_close(a(center=True), b(center=True), rtol=0, atol=tol["centred"], msg=name + " centred")
    if m.has_sums and whole.has_sums:
        torch.testing.assert_close(m.mean_x(), whole.mean_x(), rtol=0, atol=tol["mean"])
        torch.testing.assert_close(m.mean_y(), whole.mean_y(), rtol=0, atol=tol["mean"])


def _merge_in_random_tree(parts, rng):
    """Merge by repeatedly combining two random items, operands in random order: any order and grouping."""
    items = list(parts)
    while len(items) > 1:
        i, j = rng.choice(len(items), size=2, replace=False)
        a, b = items[i], items[j]
        merged = a.merge(b) if rng.random() < 0.5 else b + a
        items = [m for k, m in enumerate(items) if k not in (i, j)] + [merged]
    return items[0]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 80), p=st.integers(1, 5), q=st.integers(1, 4),
       offset=st.sampled_from([0.0, 1.0, 1e3, -1e6]), spread=st.sampled_from([1.0, 1e-3, 1e4]),
       cuts=st.lists(st.integers(0, 80), max_size=5), chunk=st.integers(1, 9), means=st.booleans(),
       second=st.sampled_from([(), ("x",), ("x", "y")]), seed=seeds)
def test_merge_of_any_split_equals_one_pass(n, p, q, offset, spread, cuts, chunk, means, second, seed):
    """Any split of the rows, each part accumulated with its own shift (the mean of its first chunk), merged
    in any order and grouping: the moments of all rows to float64 rounding."""
    rng = np.random.default_rng(seed)
    X, Y = _data(rng, n, p, q, offset, spread)
    bounds = sorted({0, n, *[c for c in cuts if c < n]})
    parts = [accumulate_moments(X[a:b], Y[a:b], second_moments=second, means=means, chunk_size=chunk)
             for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    whole = accumulate_moments(X, Y, second_moments=second, means=means)
    m = _merge_in_random_tree(parts, rng)
    assert m.has_sums == all(part.has_sums for part in parts)
    assert m.info["parts"] == len(parts) and m.info["chunks"] == sum(part.info["chunks"] for part in parts)
    _assert_moments_equal(m, whole, X, Y)
    _assert_moments_equal(sum(parts), whole, X, Y)


def test_merge_is_commutative_and_associative_to_rounding():
    rng = np.random.default_rng(0)
    X, Y = _data(rng, 300, 6, 4, 1e5, 1.0)
    a, b, c = (accumulate_moments(X[s], Y[s], second_moments=("x", "y"), chunk_size=17)
               for s in (slice(0, 50), slice(50, 170), slice(170, 300)))
    assert len({float(m.shift_x[0]) for m in (a, b, c)}) == 3  # three different shifts
    whole = accumulate_moments(X, Y, second_moments=("x", "y"))
    for m in (a + b + c, c + (b + a), (a + c) + b, sum([b, c, a])):
        _assert_moments_equal(m, whole, X, Y)
    # the centred products far from the origin keep full accuracy: (X - μ)ᵀ(Y - μ) from a direct float64 computation
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    np.testing.assert_allclose((a + b + c).cross(center=True).numpy(), Xc.T @ Yc, rtol=1e-9, atol=1e-9 * 300)


def test_merged_moments_give_the_same_fit():
    rng = np.random.default_rng(1)
    X, Y = _data(rng, 200, 5, 5, 50.0, 1.0)
    shards = [accumulate_moments(X[i::3], Y[i::3], second_moments=("x", "y")) for i in range(3)]
    for kind in ("orthogonal", "centered", "affine", "cca"):
        a = fit_closed_form(sum(shards), kind=kind)
        b = fit_closed_form(X, Y, kind=kind)
        torch.testing.assert_close(a.weight, b.weight, atol=1e-10, rtol=0)


def test_merge_keeps_the_grams_both_sides_have():
    rng = np.random.default_rng(2)
    X, Y = _data(rng, 40, 3, 2, 10.0, 1.0)
    a = accumulate_moments(X[:20], Y[:20], second_moments=("x", "y"))
    b = accumulate_moments(X[20:], Y[20:], second_moments=("x",))
    m = a + b
    assert m.gram_x_shifted is not None and m.gram_y_shifted is None
    with pytest.raises(RuntimeError, match="Gram of y was not accumulated"):
        m.gram_y()
    _assert_moments_equal(m, accumulate_moments(X, Y, second_moments=("x",)), X, Y)


def test_merge_without_sums_on_one_side_keeps_the_uncentred_products():
    """means=False keeps no sums for data that need no shift, but does for offset-heavy data: the same call on
    two shards can give both kinds; the union holds the exact uncentred products and no means."""
    rng = np.random.default_rng(3)
    X0, Y0 = _data(rng, 30, 3, 2, 0.0, 1.0)
    X1, Y1 = _data(rng, 30, 3, 2, 1e4, 1.0)
    a = accumulate_moments(X0, Y0, second_moments=("x",), means=False)
    b = accumulate_moments(X1, Y1, second_moments=("x",), means=False)
    assert not a.has_sums and b.has_sums
    X, Y = np.vstack([X0, X1]), np.vstack([Y0, Y1])
    for m in (a + b, b + a):
        assert not m.has_sums
        with pytest.raises(RuntimeError, match="means=False"):
            m.mean_x()
        np.testing.assert_allclose(m.cross().numpy(), X.T @ Y, rtol=1e-12)
        np.testing.assert_allclose(m.gram_x().numpy(), X.T @ X, rtol=1e-12)
    np.testing.assert_allclose(fit_closed_form(a + b).weight.detach().numpy(),
                               fit_closed_form(X, Y).weight.detach().numpy(), atol=1e-12)


def test_merge_of_different_dtypes_and_scales():
    """A float32 shard at 1e30 (scaled chunk path) merged with a float64 shard: dtype promoted, the weaker GEMM
    dtype reported, the moments those of the union."""
    rng = np.random.default_rng(4)
    X, Y = _data(rng, 500, 4, 3, 2.0, 1.0)
    X, Y = (X * 1e30).astype(np.float32), (Y * 1e30).astype(np.float32)
    a = accumulate_moments(X[:300], Y[:300], second_moments=("x", "y"))
    b = accumulate_moments(X[300:].astype(np.float64), Y[300:].astype(np.float64), second_moments=("x", "y"))
    assert a.info["scaled_chunks"] == 1
    m = a + b
    assert m.dtype == torch.float64 and m.info["gemm_dtype"] == torch.float32 and m.info["scaled_chunks"] == 1
    ref = accumulate_moments(X.astype(np.float64), Y.astype(np.float64), second_moments=("x", "y"))
    for name in ("cross", "gram_x", "gram_y"):
        for center in (False, True):
            rel = getattr(m, name)(center) - getattr(ref, name)(center)
            assert float(rel.abs().max() / getattr(ref, name)(center).abs().max()) < 1e-6


def test_merge_errors():
    rng = np.random.default_rng(5)
    a = accumulate_moments(rng.standard_normal((5, 3)), rng.standard_normal((5, 2)))
    b = accumulate_moments(rng.standard_normal((5, 4)), rng.standard_normal((5, 2)))
    with pytest.raises(ValueError, match="different widths: X 3, Y 2 and X 4, Y 2"):
        a.merge(b)
    with pytest.raises(TypeError, match="other must be a PairedMoments, got int"):
        a.merge(3)
    with pytest.raises(TypeError):
        a + 3
    assert sum([a]) is a


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_merge_across_devices():
    rng = np.random.default_rng(6)
    X, Y = _data(rng, 100, 3, 3, 5.0, 1.0)
    a = accumulate_moments(torch.from_numpy(X[:40]).cuda(), torch.from_numpy(Y[:40]).cuda())
    b = accumulate_moments(X[40:], Y[40:])
    m = a + b
    assert m.device.type == "cuda"
    _assert_moments_equal(m, accumulate_moments(torch.from_numpy(X).cuda(), torch.from_numpy(Y).cuda()), X, Y)
    assert (b + a).device.type == "cpu"


# ---- save / load ----

def test_save_load_round_trip_is_exact_and_weights_only(tmp_path):
    rng = np.random.default_rng(7)
    X, Y = _data(rng, 60, 4, 3, 1e3, 1.0)
    m = accumulate_moments(X[:25], Y[:25], second_moments=("y",)) + accumulate_moments(X[25:], Y[25:],
                                                                                        second_moments=("y",))
    path = tmp_path / "shard.pt"
    m.save(path)
    assert torch.load(path, weights_only=True)["format"] == "relaxedortho-moments"
    back = PairedMoments.load(path)
    assert back.n == m.n and back.dtype == m.dtype and back.has_sums == m.has_sums and back.gram_x_shifted is None
    for name in ("shift_x", "shift_y", "sum_x", "sum_y", "cross_shifted", "gram_y_shifted"):
        assert torch.equal(getattr(back, name), getattr(m, name))
    assert back.info == m.info
    f32 = accumulate_moments(rng.standard_normal((60, 4)).astype(np.float32), rng.standard_normal((60, 3)).astype(np.float32), means=False)
    f32.save(tmp_path / "f32.pt")
    again = PairedMoments.load(os.fspath(tmp_path / "f32.pt"))
    assert again.dtype == torch.float32 and again.info["gemm_dtype"] == torch.float32 and not again.has_sums
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_shards_saved_by_other_jobs_merge_later(tmp_path):
    rng = np.random.default_rng(8)
    X, Y = _data(rng, 90, 3, 3, -2e4, 3.0)
    for i in range(3):
        accumulate_moments(X[30 * i:30 * (i + 1)], Y[30 * i:30 * (i + 1)], second_moments=("x", "y")).save(
            tmp_path / f"part{i}.pt")
    merged = sum(PairedMoments.load(tmp_path / f"part{i}.pt") for i in range(3))
    _assert_moments_equal(merged, accumulate_moments(X, Y, second_moments=("x", "y")), X, Y)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_moments(tmp_path / "missing.pt")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        load_moments(tmp_path)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file at all")
    with pytest.raises(ValueError, match="junk.pt is not a readable relaxedortho moments file"):
        load_moments(junk)
    other = tmp_path / "other.pt"
    torch.save({"format": "relaxedortho-map"}, other)
    with pytest.raises(ValueError, match="other.pt is not a relaxedortho moments file"):
        load_moments(other)
    m = accumulate_moments(np.ones((3, 2)) + np.arange(3)[:, None], np.ones((3, 2)))
    good = tmp_path / "good.pt"
    m.save(good)
    payload = torch.load(good, weights_only=True)
    payload["tensors"]["cross_shifted"] = torch.zeros(3, 3, dtype=torch.float64)
    torch.save(payload, tmp_path / "bad_shape.pt")
    with pytest.raises(ValueError, match=r"bad_shape.pt is a damaged moments file: cross_shifted has shape \(3, 3\)"):
        load_moments(tmp_path / "bad_shape.pt")
    payload = torch.load(good, weights_only=True)
    payload["n"] = 0
    torch.save(payload, tmp_path / "bad_n.pt")
    with pytest.raises(ValueError, match="n = 0 is not a positive row count"):
        load_moments(tmp_path / "bad_n.pt")
    payload = torch.load(good, weights_only=True)
    payload["version"] = 99
    torch.save(payload, tmp_path / "new.pt")
    with pytest.raises(ValueError, match="newer relaxedortho"):
        load_moments(tmp_path / "new.pt")
    data = good.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.pt is not a readable"):
        load_moments(tmp_path / "truncated.pt")
    with pytest.raises(TypeError, match="needs a PairedMoments"):
        from relaxedortho.closed_form.moments_file import save_moments
        save_moments("x", tmp_path / "x.pt")
