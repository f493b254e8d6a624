"""The command line, through a subprocess and in process, on temporary files; every bad-input case."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import relaxedortho
from relaxedortho.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "relaxedortho", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Paired new/old features with labels: old = new · R + noise for a random rotation R, classes separated."""
    d = tmp_path_factory.mktemp("feats")
    rng = np.random.default_rng(0)
    n, p = 240, 12
    labels = np.arange(n) % 6
    centers = rng.normal(size=(6, p)) * 2
    new = (centers[labels] + rng.normal(size=(n, p))).astype(np.float32)
    R, _ = np.linalg.qr(rng.normal(size=(p, p)))
    old = (new @ R + 0.1 * rng.normal(size=(n, p))).astype(np.float32)
    np.save(d / "new.npy", new)
    np.save(d / "old.npy", old)
    np.savetxt(d / "labels.txt", labels, fmt="%d")
    np.save(d / "q_new.npy", new[:60])
    np.save(d / "q_old.npy", old[:60])
    np.save(d / "g_new.npy", new[60:])
    np.save(d / "g_old.npy", old[60:])
    np.save(d / "q_lab.npy", labels[:60])
    np.save(d / "g_lab.npy", labels[60:])
    return d


# ----------------------------------------------------------------------------------------------- subprocess
def test_fit_and_eval_through_subprocess(files, tmp_path):
    d = files
    r = run_cli("fit", d / "new.npy", d / "old.npy", "--out", tmp_path / "b.pt", "--labels", d / "labels.txt",
                "--json", tmp_path / "fit.json")
    assert r.returncode == 0, r.stderr
    assert "saved OrthogonalLinear" in r.stdout
    m = relaxedortho.load(tmp_path / "b.pt")
    # independent Procrustes in float64 NumPy: W = U V^T of X^T Y; the module's weight is W^T
    X, Y = np.load(d / "new.npy").astype(np.float64), np.load(d / "old.npy").astype(np.float64)
    U, _, Vt = np.linalg.svd(X.T @ Y)
    np.testing.assert_allclose(m.weight.detach().double().numpy(), (U @ Vt).T, atol=1e-5)
    summary = json.loads((tmp_path / "fit.json").read_text())
    assert summary["orthogonality_error"] < 1e-4 and summary["retrieval_mapped_source_vs_target"]["top1"] > 0.5

    r = run_cli("eval", tmp_path / "b.pt", "--query", d / "q_new.npy", "--query-labels", d / "q_lab.npy",
                "--gallery", d / "g_old.npy", "--gallery-labels", d / "g_lab.npy", "--old-query", d / "q_old.npy",
                "--new-gallery", d / "g_new.npy", "--json", tmp_path / "eval.json")
    assert r.returncode == 0, r.stderr
    assert "B(new)/old" in r.stdout and "compatibility" in r.stdout
    res = json.loads((tmp_path / "eval.json").read_text())["metrics"]
    assert set(res) == {"B(new)/old", "old/old", "new/old (unmapped)", "B(new)/B(new)", "new/new"}
    assert res["B(new)/B(new)"]["top1"] == res["new/new"]["top1"]          # orthogonal, no bias
    assert res["B(new)/B(new)"]["map"] == pytest.approx(res["new/new"]["map"], abs=1e-6)
    assert res["B(new)/old"]["top1"] > res["new/old (unmapped)"]["top1"]
    for row in res.values():
        assert all(0.0 <= v <= 1.0 for v in row.values())


def test_demo_through_subprocess(tmp_path):
    r = run_cli("demo", "--quick", "--quiet", "--seed", "1", "--out", tmp_path / "demo")
    assert r.returncode == 0, r.stderr
    assert "old/old" in r.stdout and "B(new)/old" in r.stdout and "report.json" in r.stdout
    assert r.stderr == ""  # --quiet
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert set(report["baselines"]) == {"old_old", "new_old", "new_new"}
    assert list((tmp_path / "demo").glob("*.png"))


def test_bad_input_through_subprocess_is_one_line(files, tmp_path):
    src = tmp_path / "nan.npy"
    bad = np.load(files / "new.npy")
    bad[3, 2] = np.nan
    np.save(src, bad)
    r = run_cli("fit", src, files / "old.npy", "--out", tmp_path / "b.pt")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith("relaxedortho fit: error:")
    assert not (tmp_path / "b.pt").exists()


# ----------------------------------------------------------------------------------------------- in process
@pytest.mark.parametrize("args", [
    ["--kind", "orthogonal", "--solver", "trained", "--epochs", "5"],
    ["--kind", "orthogonal", "--bias"],
    ["--kind", "lambda", "--lam", "0.5", "--epochs", "5"],
    ["--kind", "lambda", "--lam", "inf", "--epochs", "3"],
    ["--kind", "affine"],
    ["--kind", "affine", "--no-bias"],
    ["--kind", "affine", "--solver", "trained", "--epochs", "3"],
    ["--kind", "band", "--eps", "0.3"],
])
def test_saved_map_loads_back_with_identical_outputs(files, tmp_path, args, capsys):
    out = tmp_path / "m.pt"
    assert main(["fit", str(files / "new.npy"), str(files / "old.npy"), "--out", str(out), "--quiet",
                 "--json", str(tmp_path / "s.json"), *args]) == 0
    m = relaxedortho.load(out)
    X = torch.from_numpy(np.load(files / "new.npy"))
    summary = json.loads((tmp_path / "s.json").read_text())
    with torch.no_grad():
        y = m(X)
        y2 = relaxedortho.load(out)(X)
        mse = float(((y.double() - torch.from_numpy(np.load(files / "old.npy")).double()) ** 2).sum(1).mean())
    assert torch.equal(y, y2)
    assert mse == pytest.approx(summary["fit_mse"], rel=1e-9)  # the saved map is the one that was fitted
    assert (m.bias is not None) == summary["bias"]
    if "orthogonal" in args:
        assert m.orthogonality_error() < 1e-4
    if "band" in args:
        s = torch.linalg.svdvals(m.weight.detach().double())
        assert float(s.max()) <= (1.3 ** 0.5) * (1 + 1e-6) and float(s.min()) >= (0.7 ** 0.5) * (1 - 1e-6)


def test_npz_and_pt_inputs(files, tmp_path, capsys):
    new, old = np.load(files / "new.npy"), np.load(files / "old.npy")
    np.savez(tmp_path / "both.npz", new=new, old=old)
    torch.save(torch.from_numpy(new), tmp_path / "new.pt")
    assert main(["fit", f"{tmp_path}/both.npz:new", f"{tmp_path}/both.npz:old", "--out", str(tmp_path / "a.pt"),
                 "--quiet"]) == 0
    assert main(["fit", str(tmp_path / "new.pt"), str(files / "old.npy"), "--out", str(tmp_path / "b.pt"),
                 "--quiet"]) == 0
    assert torch.equal(relaxedortho.load(tmp_path / "a.pt").weight, relaxedortho.load(tmp_path / "b.pt").weight)
    # rectangular (12 -> 7): an orthonormal-rows map, a band map, and a trained λ map
    np.save(tmp_path / "old7.npy", old[:, :7])
    for extra in ([], ["--kind", "band"], ["--kind", "lambda", "--epochs", "2"]):
        assert main(["fit", str(files / "new.npy"), str(tmp_path / "old7.npy"), "--out", str(tmp_path / "r.pt"),
                     "--quiet", *extra]) == 0
        m = relaxedortho.load(tmp_path / "r.pt")
        assert (m.in_features, m.out_features) == (12, 7)
        if not extra:
            assert m.orthogonality_error() < 1e-4


def test_sweep(files, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", str(files / "new.npy"), str(files / "old.npy"), "--out", str(out), "--lams", "0,2,inf",
                 "--epochs", "5", "--labels", str(files / "labels.txt"), "--quiet", "--save-maps"]) == 0
    rep = json.loads((out / "sweep.json").read_text())
    assert [r["lam"] for r in rep["results"]] == [0.0, 2.0, "inf"]
    assert rep["results"][-1]["kind"] == "affine"
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "map_lam=inf.pt").exists()
    assert "val MSE" in capsys.readouterr().out


@pytest.mark.parametrize("sub", ["demo", "fit", "eval", "sweep", "transfer-demo", "compat-bench", None])
def test_help_is_a_manual(sub, capsys):
    with pytest.raises(SystemExit) as exc:
        main(([sub] if sub else []) + ["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "usage: relaxedortho" in text


def test_transfer_demo_calls_run_transfer_demo(tmp_path, capsys, monkeypatch):
    calls = []
    fake = types.ModuleType("relaxedortho.transfer")
    fake.run_transfer_demo = lambda out, seed=0, quick=False, progress=True: calls.append((out, seed, quick,
                                                                                             progress)) or {}
    monkeypatch.setitem(sys.modules, "relaxedortho.transfer", fake)
    monkeypatch.setattr(relaxedortho, "transfer", fake, raising=False)
    assert main(["transfer-demo", "--out", str(tmp_path / "t"), "--seed", "4", "--quick", "--quiet"]) == 0
    assert calls == [(str(tmp_path / "t"), 4, True, False)]


def test_parser_rejects_bad_options(capsys):
    p = build_parser()
    for argv in (["fit", "a", "b"], ["demo", "--seed", "-1"], ["sweep", "a", "b", "--out", "o", "--lams", "x"],
                 ["fit", "a", "b", "--out", "o", "--kind", "nope"]):
        with pytest.raises(SystemExit) as exc:
            p.parse_args(argv)
        assert exc.value.code == 2


# ----------------------------------------------------------------------------------------------- bad input
def _bad(tmp_path, files):
    new = np.load(files / "new.npy")
    np.save(tmp_path / "short.npy", new[:-1])
    for name, val in (("nan", np.nan), ("inf", np.inf)):
        a = new.copy()
        a[0, 0] = val
        np.save(tmp_path / f"{name}.npy", a)
    (tmp_path / "garbage.npy").write_bytes(b"\x00garbage")
    (tmp_path / "feats.h5").write_bytes(b"x")
    (tmp_path / "short.txt").write_text("1\n2\n")
    (tmp_path / "a_file").write_text("")
    (tmp_path / "not_a_map.pt").write_bytes(b"junk")
    torch.save({"x": torch.zeros(2)}, tmp_path / "dict.pt")


CASES = {
    "missing file": (["fit", "{t}/nope.npy", "{d}/old.npy"], "not found"),
    "unreadable": (["fit", "{t}/garbage.npy", "{d}/old.npy"], "cannot read"),
    "unsupported format": (["fit", "{t}/feats.h5", "{d}/old.npy"], "unsupported format"),
    "row mismatch": (["fit", "{t}/short.npy", "{d}/old.npy"], "same number of rows"),
    "labels length": (["fit", "{d}/new.npy", "{d}/old.npy", "--labels", "{t}/short.txt"], "has 2 labels"),
    "nan": (["fit", "{t}/nan.npy", "{d}/old.npy"], "NaN or Inf"),
    "inf": (["fit", "{d}/new.npy", "{t}/inf.npy"], "NaN or Inf"),
    "output folder missing": (["fit", "{d}/new.npy", "{d}/old.npy", "--out", "{t}/no/such/dir/m.pt"],
                              "does not exist"),
    "output is a folder": (["fit", "{d}/new.npy", "{d}/old.npy", "--out", "{t}"], "is a folder"),
    "lambda closed": (["fit", "{d}/new.npy", "{d}/old.npy", "--kind", "lambda", "--solver", "closed"],
                      "trained"),
    "eval bad map": (["eval", "{t}/not_a_map.pt", "--query", "{d}/q_new.npy", "--query-labels", "{d}/q_lab.npy",
                      "--gallery", "{d}/g_old.npy", "--gallery-labels", "{d}/g_lab.npy"], "map file"),
    "eval not a map": (["eval", "{t}/dict.pt", "--query", "{d}/q_new.npy", "--query-labels", "{d}/q_lab.npy",
                        "--gallery", "{d}/g_old.npy", "--gallery-labels", "{d}/g_lab.npy"], "not a relaxedortho map"),
    "eval labels length": (["eval", "{t}/good.pt", "--query", "{d}/q_new.npy", "--query-labels", "{d}/g_lab.npy",
                            "--gallery", "{d}/g_old.npy", "--gallery-labels", "{d}/g_lab.npy"], "labels"),
    "eval width": (["eval", "{t}/good.pt", "--query", "{t}/narrow.npy", "--query-labels", "{d}/q_lab.npy",
                    "--gallery", "{d}/g_old.npy", "--gallery-labels", "{d}/g_lab.npy"], "columns"),
    "demo unwritable out": (["demo", "--out", "{t}/a_file/sub"], "cannot write"),
    "demo fashion absent": (["demo", "--dataset", "fashion-mnist", "--data-dir", "{t}/nowhere", "--out", "{t}/o"],
                            "Fashion-MNIST files not found"),
    "demo no cuda": (["demo", "--device", "cuda", "--out", "{t}/o"], "cuda"),
    "demo bad device": (["demo", "--device", "gpu", "--out", "{t}/o"], "unknown device"),
    "sweep row mismatch": (["sweep", "{t}/short.npy", "{d}/old.npy", "--out", "{t}/s"], "same number of rows"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_clear_line(files, tmp_path, case, capsys):
    if case == "demo no cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    _bad(tmp_path, files)
    np.save(tmp_path / "narrow.npy", np.load(files / "q_new.npy")[:, :5])
    assert main(["fit", str(files / "new.npy"), str(files / "old.npy"), "--out", str(tmp_path / "good.pt"),
                 "--quiet"]) == 0
    capsys.readouterr()
    before = set(tmp_path.rglob("*"))
    argv, needle = CASES[case]
    argv = [a.format(t=tmp_path, d=files) for a in argv]
    if argv[0] == "fit" and "--out" not in argv:
        argv += ["--out", str(tmp_path / "out.pt")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"relaxedortho {argv[0]}: error:"), err
    assert needle in lines[0], lines[0]
    created = {p for p in set(tmp_path.rglob("*")) - before if p.is_file()}
    assert not created, f"partial output left behind: {created}"


def test_device_check_names_the_problem():
    from relaxedortho._checks import check_device

    assert check_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        check_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            check_device("cuda:0")


def test_eval_reads_a_saved_plain_linear(files, tmp_path, capsys):
    """relaxedortho.save writes nn.Linear too; eval reports its ||G - I||_F from the weight (it has no method)."""
    lin = torch.nn.Linear(12, 12, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(12) * 2.0)
    relaxedortho.save(lin, tmp_path / "lin.pt")
    assert main(["eval", str(tmp_path / "lin.pt"), "--query", str(files / "q_new.npy"), "--query-labels",
                 str(files / "q_lab.npy"), "--gallery", str(files / "g_old.npy"), "--gallery-labels",
                 str(files / "g_lab.npy"), "--json", str(tmp_path / "e.json")]) == 0
    # G = 4 I: ||G - I||_F = 3 sqrt(12)
    assert json.loads((tmp_path / "e.json").read_text())["orthogonality_error"] == pytest.approx(3 * 12 ** 0.5)


def test_an_unconverged_trained_map_is_one_warning_line(files, tmp_path, capsys):
    """Five epochs from the module's own random start at lr 3e-3: still descending when the epochs run out."""
    assert main(["fit", str(files / "new.npy"), str(files / "old.npy"), "--out", str(tmp_path / "m.pt"), "--quiet",
                 "--kind", "lambda", "--lam", "8", "--epochs", "5", "--batch-size", "32", "--lr", "3e-3",
                 "--init", "module"]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "did not converge" in line]
    assert len(lines) == 1 and "--tol=0.0001" in lines[0] and "before the learning-rate decay" in lines[0], err
