"""benchmarks/gpu_check.py: its --device cpu --small mode runs every section; failures stay per section."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_small_mode_runs_every_section_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--small", "--json", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text())
    assert res["small"] and res["device"]["device"] == "cpu"
    sections = res["sections"]
    assert {name: s["status"] for name, s in sections.items()} == dict.fromkeys(
        ["maps", "procrustes", "metrics", "tests"], "ok")
    gc = _load()
    maps = {(row["map"], row["precision"]) for row in sections["maps"]["rows"] if row["status"] == "ok"}
    expected = {(n, p) for n in gc.bench_maps.MAPS if n != "linear" for p in ("float32", "bf16")}
    optional = {(n, p) for n, p in expected if n == "geotorch-orthogonal"}  # a peer, may be absent
    assert expected - optional <= maps and maps <= expected
    assert all(row["ms"] > 0 and row["ratio"] > 0 for row in sections["maps"]["rows"] if "ms" in row)
    p = sections["procrustes"]
    assert p["ok"] and p["max_abs_diff_float64"] < 1e-5 and p["fit_s"] > 0 and p["gemm_float32_tflops"] > 0
    m = sections["metrics"]
    assert m["ok"] and m["check_map_abs_diff"] < 1e-4 and 0 < m["mAP"] <= 1 and 0 < m["top1"] <= 1
    t = sections["tests"]
    assert t["ok"] and t["tests"] >= 1 and t["failures"] == t["errors"] == 0
    assert any("test_metrics.py" in f for f in t["files"])
    for line in ("maps ", "procrustes ", "metrics ", "tests ", "total "):
        assert line in r.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_cuda_without_a_device_is_one_clear_error():
    r = subprocess.run([sys.executable, str(SCRIPT), "--device", "cuda"], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert r.stderr.strip().splitlines()[-1].startswith("--device cuda: CUDA is not available")


def test_a_failing_section_keeps_the_others(tmp_path, monkeypatch, capsys):
    gc = _load()

    def broken(cfg, dev):
        raise RuntimeError("simulated device fault")

    monkeypatch.setattr(gc, "section_procrustes", broken)
    out = tmp_path / "r.json"
    threads = torch.get_num_threads()
    rc = gc.main(["--device", "cpu", "--small", "--sections", "procrustes", "metrics", "--json", str(out)])
    assert rc == 1 and torch.get_num_threads() == threads  # --small's one thread is restored
    res = json.loads(out.read_text())
    assert res["sections"]["procrustes"]["status"] == "error"
    assert "simulated device fault" in res["sections"]["procrustes"]["error"]
    assert res["sections"]["metrics"]["status"] == "ok" and res["sections"]["metrics"]["ok"]
    printed = capsys.readouterr().out
    assert "failed sections: procrustes" in printed and "metrics " in printed


def test_maps_skip_what_is_predicted_too_slow_and_report_errors(monkeypatch):
    gc = _load()
    calls = []

    def fake_time_paired(name, d, batch, steps, warmup, repeats, *, autocast=None, sync=None):
        calls.append((name, d, steps))
        if name == "affine":
            raise ValueError("boom")
        ms = {"lambda-exact": 1.0, "ortho-householder": 100.0}.get(name, 0.1) * (d / 32) ** 3
        return ms, 0.1, ms / 0.1, ms / 0.1, ms / 0.1

    monkeypatch.setattr(gc.bench_maps, "time_paired", fake_time_paired)
    monkeypatch.setattr(gc.bench_maps, "MAPS", {"linear": None, "affine": None, "lambda-exact": None,
                                                "ortho-householder": None})
    cfg = dict(gc.SMALL, map_dims=(32, 128), skip_predicted_ms=3000.0, max_step_ms=500.0)
    out = gc.section_maps(cfg, gc.Device("cpu"), deadline=float("inf"))
    rows = {(r["map"], r["d"], r["precision"]): r for r in out["rows"]}
    assert not out["ok"] and rows["affine", 32, "float32"]["status"] == "error: ValueError: boom"
    assert rows["lambda-exact", 128, "bf16"]["status"] == "ok"                          # 64 ms: timed
    assert rows["ortho-householder", 32, "float32"]["status"] == "ok"
    assert rows["ortho-householder", 128, "float32"]["status"].startswith("skipped (predicted 6.4 s")
    assert ("ortho-householder", 128, 1) not in calls
    out = gc.section_maps(cfg, gc.Device("cpu"), deadline=0.0)
    assert all(r["status"] == "skipped (section time budget)" for r in out["rows"])
