"""The demo end to end at a reduced size, checked for what the mathematics guarantees; the data loaders."""
from __future__ import annotations

import gzip
import json
import math

import numpy as np
import pytest
import torch

from relaxedortho.data import (DataFileError, fashion_mnist_dir, load_digits, load_fashion_mnist, load_features,
                               load_labels)
from relaxedortho.demo import DemoConfig, fit_band_path, format_table, run_demo

KINDS = {"orthogonal", "lambda", "affine", "closed_form"}


def tiny(**kw) -> DemoConfig:
    """A small but real configuration (a few seconds)."""
    base = dict(hidden=48, model_epochs=6, map_epochs=8, lams=(0.0, 1.0), band_eps=(0.05, 0.5, 3.0))
    base.update(kw)
    return DemoConfig(**base)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    report = run_demo(out, seed=3, progress=False, config=tiny())
    return out, report


def _in_unit(v):
    return isinstance(v, float) and 0.0 <= v <= 1.0


def test_report_schema_and_ranges(demo_run):
    out, report = demo_run
    on_disk = json.loads((out / "report.json").read_text())
    assert set(on_disk["baselines"]) >= {"old_old", "new_old", "new_new"}
    for b in on_disk["baselines"].values():
        assert _in_unit(b["top1"]) and _in_unit(b["map"]) and b["top1"] <= b["top5"]
    assert {"procrustes", "orthogonal", "lambda=0", "lambda=1", "affine", "least_squares"} <= set(on_disk["maps"])
    for name, m in on_disk["maps"].items():
        assert m["kind"] in KINDS, name
        for key in ("top1_to_old", "top1_self", "map_to_old", "map_self"):
            assert _in_unit(m[key]), (name, key)
        assert m["orthogonality_error"] >= 0
        assert isinstance(m["compatible"], bool)
    assert on_disk["forward"]["top1"] is not None and _in_unit(on_disk["forward"]["top1"])
    pngs = list(out.glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert not [p for p in out.iterdir() if ".tmp-" in p.name], "temporary files left behind"
    assert "old/old" in format_table(report) and "new/old (unmapped)" in format_table(report)


def test_square_orthogonal_map_preserves_new_new_retrieval_exactly(demo_run):
    # <Bq, Bg> = <q, g> for A^T A = I and no bias: every cosine similarity, hence every ranking, is preserved
    _, report = demo_run
    nn_ = report["baselines"]["new_new"]
    for name in ("procrustes", "orthogonal"):
        m = report["maps"][name]
        assert m["orthogonality_error"] < 1e-4
        assert m["top1_self"] == nn_["top1"] and m["top5_self"] == nn_["top5"]
        assert m["map_self"] == pytest.approx(nn_["map"], abs=1e-6)


def test_least_squares_fits_training_pairs_best(demo_run):
    # every map in the report is affine, and least squares is the global minimiser over affine maps
    _, report = demo_run
    best = report["maps"]["least_squares"]["fit_mse_train"]
    for name, m in report["maps"].items():
        assert m["fit_mse_train"] >= best * (1 - 1e-4) - 1e-7, name


def test_nested_bands_looser_never_fits_worse(demo_run):
    _, report = demo_run
    bands = sorted((m["band_eps"], m) for m in report["maps"].values() if "band_eps" in m)
    assert len(bands) == 3
    objs = [m["band_objective"] for _, m in bands]
    assert all(b <= a for a, b in zip(objs, objs[1:]))
    mses = [m["fit_mse_train"] for _, m in bands]
    assert all(b <= a * (1 + 1e-5) + 1e-7 for a, b in zip(mses, mses[1:]))
    # an orthogonal map (all sigma = 1) lies in every band, so no band fits worse than Procrustes
    assert max(mses) <= report["maps"]["procrustes"]["fit_mse_train"] * (1 + 1e-5)


def test_deterministic_for_a_seed(tmp_path, demo_run):
    _, first = demo_run
    again = run_demo(tmp_path, seed=3, progress=False, config=tiny())
    assert again["baselines"] == first["baselines"]
    assert again["forward"]["top1"] == first["forward"]["top1"]
    for name, m in first["maps"].items():
        for key, v in m.items():
            if key == "seconds":
                continue
            if key.startswith(("top", "map")) or not isinstance(v, float):
                assert again["maps"][name][key] == v, (name, key)   # retrieval numbers: identical
            else:  # LAPACK results may differ in the last bits with memory alignment (MKL)
                assert again["maps"][name][key] == pytest.approx(v, rel=1e-9, abs=1e-12), (name, key)


def test_other_new_width_reports_new_old_not_applicable(tmp_path):
    report = run_demo(tmp_path, seed=0, progress=False, config=tiny(new_width=24, lams=(1.0,), band_eps=(0.5,)))
    no = report["baselines"]["new_old"]
    assert no["applicable"] is False and no["top1"] is None
    assert report["new_width"] == 24 and report["old_width"] == 32
    assert report["maps"]["orthogonal"]["orthogonality_error"] < 1e-4  # a Stiefel (co-isometry) map
    assert "not applicable" in format_table(report)
    assert json.loads((tmp_path / "report.json").read_text())["baselines"]["new_old"]["top1"] is None


# ---------------------------------------------------------------------------------------------- band path
def test_band_path_matches_clip_closed_form_on_whitened_data():
    # X^T X = c I (centred): the optimum is U clip(S / c, a, b) V^T of X^T Y (docs/math.md §5), computed here in NumPy
    rng = np.random.default_rng(0)
    n, p = 200, 6
    Z = rng.normal(size=(n, p))
    Z -= Z.mean(0)
    Qx, _ = np.linalg.qr(Z)
    X = Qx * 3.0                                    # centred columns, X^T X = 9 I
    Y = X @ rng.normal(size=(p, p)) + 0.1 * rng.normal(size=(n, p))
    Y -= Y.mean(0)
    for eps, W, b, _ in fit_band_path(torch.from_numpy(X), torch.from_numpy(Y), [0.1, 0.6], steps=5):
        U, s, Vt = np.linalg.svd(X.T @ Y)
        ref = U @ np.diag(np.clip(s / 9.0, math.sqrt(max(0, 1 - eps)), math.sqrt(1 + eps))) @ Vt
        np.testing.assert_allclose(W.numpy(), ref, atol=1e-10)
        np.testing.assert_allclose(b.numpy(), 0, atol=1e-10)


def test_band_path_feasible_and_monotone_on_general_data():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(100, 5, generator=g, dtype=torch.float64) @ torch.randn(5, 5, generator=g, dtype=torch.float64)
    Y = torch.randn(100, 5, generator=g, dtype=torch.float64)
    path = fit_band_path(X, Y, [2.0, 0.0, 0.3], steps=30)
    assert [e for e, *_ in path] == [0.0, 0.3, 2.0]
    for eps, W, _, _ in path:
        s = torch.linalg.svdvals(W)
        assert float(s.min()) >= math.sqrt(max(0, 1 - eps)) - 1e-12 and float(s.max()) <= math.sqrt(1 + eps) + 1e-12
    objs = [o for *_, o in path]
    assert objs[0] >= objs[1] >= objs[2]


# ---------------------------------------------------------------------------------------------- data
def test_load_digits():
    X, y = load_digits()
    assert X.shape == (1797, 64) and X.dtype == np.float32 and 0 <= X.min() and X.max() == 1.0
    assert y.dtype == np.int64 and set(y.tolist()) == set(range(10))


def _idx(path, arr, compress):
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    with (gzip.open if compress else open)(path, "wb") as fh:
        fh.write(data)


def _fake_fashion(folder, n_train=400, n_test=100, compress=True):
    rng = np.random.default_rng(0)
    protos = rng.integers(0, 255, size=(10, 28, 28))
    folder.mkdir(parents=True, exist_ok=True)
    sfx = ".gz" if compress else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        y = np.arange(n) % 10
        imgs = np.clip(protos[y] + rng.normal(0, 40, size=(n, 28, 28)), 0, 255)
        _idx(folder / f"{split}-images-idx3-ubyte{sfx}", imgs, compress)
        _idx(folder / f"{split}-labels-idx1-ubyte{sfx}", y, compress)
    return folder


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_reader(tmp_path, compress):
    d = _fake_fashion(tmp_path / "fm", compress=compress)
    X, y = load_fashion_mnist(d, "train")
    assert X.shape == (400, 784) and X.dtype == np.float32 and X.max() <= 1.0 and y.shape == (400,)
    assert load_fashion_mnist(d, "test")[0].shape == (100, 784)


def test_fashion_mnist_missing_and_truncated(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        fashion_mnist_dir(tmp_path / "nowhere")
    d = _fake_fashion(tmp_path / "fm", compress=False)
    raw = (d / "t10k-labels-idx1-ubyte").read_bytes()
    (d / "t10k-labels-idx1-ubyte").write_bytes(raw[:-5])
    with pytest.raises(DataFileError, match="truncated"):
        load_fashion_mnist(d, "test")


def test_demo_on_fashion_mnist_files(tmp_path):
    d = _fake_fashion(tmp_path / "fm")
    cfg = tiny(dataset="fashion-mnist", width=16, lams=(1.0,), band_eps=(0.5,), max_train=300, max_eval=150)
    report = run_demo(tmp_path / "out", data_dir=d, progress=False, config=cfg)
    assert report["dataset"] == "fashion-mnist" and report["n_train"] == 300
    assert report["n_query"] + report["n_gallery"] == 150
    assert (tmp_path / "out" / "report.json").exists()


def test_load_features_formats(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.save(tmp_path / "a.npy", a)
    np.savez(tmp_path / "one.npz", x=a)
    np.savez(tmp_path / "two.npz", x=a, y=a * 2)
    torch.save(torch.from_numpy(a), tmp_path / "a.pt")
    torch.save({"f": torch.from_numpy(a)}, tmp_path / "d.pt")
    mm = load_features(tmp_path / "a.npy")
    assert isinstance(mm, np.memmap)
    for spec in ("a.npy", "one.npz", "two.npz:x", "a.pt", "d.pt:f"):
        np.testing.assert_array_equal(load_features(f"{tmp_path}/{spec}"), a)
    np.testing.assert_array_equal(load_features(f"{tmp_path}/two.npz:y"), 2 * a)
    with pytest.raises(DataFileError, match="2 arrays"):
        load_features(tmp_path / "two.npz")
    with pytest.raises(DataFileError, match="no array named"):
        load_features(f"{tmp_path}/two.npz:z")
    np.save(tmp_path / "nan.npy", np.array([[1.0, np.nan]]))
    with pytest.raises(DataFileError, match="NaN"):
        load_features(tmp_path / "nan.npy")
    np.save(tmp_path / "int.npy", np.ones((2, 2), dtype=np.int64))
    with pytest.raises(DataFileError, match="floating"):
        load_features(tmp_path / "int.npy")
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(DataFileError, match="cannot read"):
        load_features(tmp_path / "bad.npy")
    (tmp_path / "a.csv").write_text("1")
    with pytest.raises(DataFileError, match="unsupported format"):
        load_features(tmp_path / "a.csv")
    with pytest.raises(DataFileError, match="not found"):
        load_features(tmp_path / "missing.npy")


def test_load_labels(tmp_path):
    (tmp_path / "l.txt").write_text("1\n2\n3\n")
    np.testing.assert_array_equal(load_labels(tmp_path / "l.txt", 3), [1, 2, 3])
    np.save(tmp_path / "l.npy", np.array([0.0, 1.0]))
    assert load_labels(tmp_path / "l.npy").dtype == np.int64
    with pytest.raises(DataFileError, match="has 3 labels but the features have 4"):
        load_labels(tmp_path / "l.txt", 4)
    (tmp_path / "bad.txt").write_text("a\nb\n")
    with pytest.raises(DataFileError, match="one integer per line"):
        load_labels(tmp_path / "bad.txt")
