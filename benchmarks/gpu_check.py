"""GPU check, one script: the figures of relaxedortho on a CUDA device, in under 5 minutes on one H200.

Sections (each runs on its own: a failure is recorded with its message and the next section still runs):

- ``maps``: the training step of every map of ``bench_maps.py`` against ``nn.Linear`` + Adam (its own
  functions: ``time_paired`` interleaved rounds, medians), at d = 1024 and 4096, batch 4096, float32 and bf16
  autocast (forward and loss under ``torch.autocast``; backward and optimizer step outside). A map whose single
  step exceeds 0.5 s is reported from its calibration step only, one whose step at d = 4096 is predicted
  (d^3 from d = 1024) above 3 s is skipped, and so are the cases past the section's time budget (120 s); all
  are listed. The slowest maps (matrix_exp, Householder, geotorch) run last in each group.
- ``procrustes``: streaming orthogonal Procrustes (:func:`relaxedortho.fit_closed_form`, kind ``orthogonal``)
  over 10^7 x 1024 paired float32 rows generated on the device in chunks of 65536 (Y = X R + noise, a planted
  orthogonal R). Reports the generation time alone, the fit's time, the accumulation's throughput
  (2 n d^2 flops over fit time minus generation time) as a share of the device's float32 GEMM throughput
  measured on the same chunk-shaped product, and max |W - W64| against the float64-GEMM fit of the same stream.
- ``metrics``: CMC top-1/5 and mAP (:mod:`relaxedortho.metrics`) of 10^5 queries against a 10^6-item gallery
  (d = 512, 1000 classes), and a check of both on 256 queries against an independent float64 brute force
  (full sort per query).
- ``tests``: the test suite's CUDA tests, ``pytest -k cuda`` on the test files that mention CUDA.

Every timing synchronises the device before reading the clock. Prints one table; ``--json PATH`` also writes
everything (rewritten after each section, so an interrupted run keeps the finished sections). Exit status 1
when a section failed.

Examples::

    python benchmarks/gpu_check.py --json gpu.json                 # on a CUDA machine
    python benchmarks/gpu_check.py --device cpu --small            # the same code paths at tiny sizes (seconds)
    python benchmarks/gpu_check.py --sections maps procrustes      # a subset
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_maps  # noqa: E402
import relaxedortho as ro  # noqa: E402

SECTIONS = ("maps", "procrustes", "metrics", "tests")

#: Sizes of the full check and of ``--small``; budgets are seconds per section (the full run stays < 5 min).
FULL = dict(map_dims=(1024, 4096), map_batch=4096, map_steps=10, map_rounds=5, map_warmup=1, max_step_ms=500.0,
            skip_predicted_ms=3000.0, block_ms=30.0, proc_rows=10**7, proc_dim=1024, proc_chunk=1 << 16, met_queries=10**5,
            met_gallery=10**6, met_dim=512, met_classes=1000, met_check=256,
            budget_s={"maps": 120, "procrustes": 40, "metrics": 60, "tests": 90}, total_s=285)
SMALL = dict(map_dims=(32,), map_batch=64, map_steps=2, map_rounds=2, map_warmup=1, max_step_ms=500.0,
             skip_predicted_ms=3000.0, block_ms=5.0, proc_rows=20_000, proc_dim=32, proc_chunk=4096, met_queries=300, met_gallery=3000,
             met_dim=32, met_classes=20, met_check=50,
             budget_s={"maps": 120, "procrustes": 60, "metrics": 60, "tests": 150}, total_s=600)

#: Maps that take the longest per step; they run last in each group, so a section budget cuts them first.
SLOW_MAPS = ("ortho-matrix_exp", "ortho-householder", "geotorch-orthogonal")


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


class Device:
    """The device under test, its clock synchronisation and a description."""

    def __init__(self, name: str) -> None:
        self.device = torch.device(name)
        self.cuda = self.device.type == "cuda"
        if self.cuda and not torch.cuda.is_available():
            raise SystemExit(f"--device {name}: CUDA is not available here (torch {torch.__version__}); "
                             "use --device cpu --small to check the script")

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mib(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 2**20 if self.cuda else None

    def describe(self) -> dict:
        info = {"device": str(self.device), "torch": torch.__version__, "python": platform.python_version()}
        if self.cuda:
            p = torch.cuda.get_device_properties(self.device)
            info.update(name=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                        cuda=torch.version.cuda, bf16_supported=bool(torch.cuda.is_bf16_supported()))
        else:
            info.update(name=platform.processor() or platform.machine(), threads=torch.get_num_threads())
        info["float32_matmul_precision"] = torch.get_float32_matmul_precision()  # "highest": no TF32
        return info

    def timed(self, fn):
        """``(seconds, result)`` of ``fn()``, the device synchronised before and after."""
        self.sync()
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - t0, out


# ------------------------------------------------------------------------------------------------- maps
def section_maps(cfg: dict, dev: Device, deadline: float) -> dict:
    names = [n for n in bench_maps.MAPS if n != "linear"]
    names = [n for n in names if n not in SLOW_MAPS] + [n for n in names if n in SLOW_MAPS]
    batch, rows = cfg["map_batch"], []
    last = {}  # (map, precision) -> (d, ms) of its previous size, to skip a step predicted too slow
    for d in cfg["map_dims"]:
        for precision in ("float32", "bf16"):
            autocast = None
            if precision == "bf16":
                def autocast():
                    return torch.autocast(dev.device.type, dtype=torch.bfloat16)
            for name in names:
                row = {"map": name, "d": d, "batch": batch, "precision": precision}
                rows.append(row)
                if time.perf_counter() > deadline:
                    row["status"] = "skipped (section time budget)"
                    continue
                if (name, precision) in last:  # a dense step costs about d^3
                    d0, ms0 = last[name, precision]
                    predicted = ms0 * (d / d0) ** 3
                    if predicted > cfg["skip_predicted_ms"]:
                        row.update(status=f"skipped (predicted {predicted / 1e3:.1f} s per step from d={d0})",
                                   predicted_ms=predicted)
                        continue
                try:
                    with torch.device(dev.device):  # bench_maps builds its modules and data on the default device
                        # calibration: one timed step of each after the warm-up
                        ms, base, ratio, lo, hi = bench_maps.time_paired(name, d, batch, 1, cfg["map_warmup"], 1,
                                                                         autocast=autocast, sync=dev.sync)
                        slow = ms > cfg["max_step_ms"]
                        steps, rounds = 1, 1
                        if not slow:
                            steps = max(1, min(cfg["map_steps"], round(cfg["block_ms"] / max(ms, 1e-3))))
                            rounds = cfg["map_rounds"]
                            ms, base, ratio, lo, hi = bench_maps.time_paired(
                                name, d, batch, steps, 1, rounds, autocast=autocast, sync=dev.sync)
                    row.update(status="ok", note="slow: one calibration step" if slow else "", ms=ms,
                               linear_ms=base, ratio=ratio, ratio_min=lo, ratio_max=hi, steps=steps, rounds=rounds)
                    last[name, precision] = (d, ms)
                except Exception as exc:  # one map failing (or not installed) must not lose the others
                    row["status"] = "error: " + _first_line(exc)
                _say(f"  maps {name:26s} d={d:<5d} {precision:7s} {row['status']:<12.40s} "
                     + (f"{row['ms']:8.3f} ms  {row['ratio']:5.2f}x" if "ratio" in row else ""))
    # a map that errors is a finding (a peer that is not installed is not)
    errors = [r for r in rows if r["status"].startswith("error") and "ModuleNotFoundError" not in r["status"]]
    return {"rows": rows, "ok": not errors}


# --------------------------------------------------------------------------------------------- procrustes
def _gemm_tflops(dev: Device, rows: int, d: int, dtype: torch.dtype, reps: int) -> float:
    """Measured throughput of the chunk-shaped product ``X^T Y`` ((d x rows) @ (rows x d)) in ``dtype``."""
    g = torch.Generator(device=dev.device).manual_seed(3)
    x = torch.randn(rows, d, generator=g, device=dev.device, dtype=dtype)
    y = torch.randn(rows, d, generator=g, device=dev.device, dtype=dtype)
    out = torch.empty(d, d, device=dev.device, dtype=dtype)
    torch.matmul(x.T, y, out=out)  # warm-up (library handles, kernel selection)
    seconds, _ = dev.timed(lambda: [torch.matmul(x.T, y, out=out) for _ in range(reps)])
    return 2.0 * rows * d * d * reps / seconds / 1e12


def section_procrustes(cfg: dict, dev: Device) -> dict:
    n, d, rows = cfg["proc_rows"], cfg["proc_dim"], cfg["proc_chunk"]
    R = ro.linalg.random_orthogonal(d, d, generator=torch.Generator().manual_seed(0)).to(dev.device)

    def stream(seed: int = 1):
        g = torch.Generator(device=dev.device).manual_seed(seed)
        done = 0
        while done < n:
            m = min(rows, n - done)
            x = torch.randn(m, d, generator=g, device=dev.device).add_(0.5)  # off-centre, like real embeddings
            noise = torch.randn(m, d, generator=g, device=dev.device)
            yield x, torch.addmm(noise, x, R, beta=0.1)                     # Y = X R + 0.1 noise
            done += m

    out = {"rows": n, "dim": d, "chunk_rows": rows}
    first = [next(stream())]
    ro.fit_closed_form(first, kind="orthogonal")  # warm-up on one chunk: generator, allocator, GEMM and SVD handles
    ro.fit_closed_form(first, kind="orthogonal", precision="float64")
    out["generate_s"], _ = dev.timed(lambda: sum(1 for _ in stream()))
    dev.reset_peak()
    out["fit_s"], model = dev.timed(lambda: ro.fit_closed_form(stream(), kind="orthogonal"))
    out["peak_mib"] = dev.peak_mib()
    out["fit_float64_s"], model64 = dev.timed(lambda: ro.fit_closed_form(stream(), kind="orthogonal",
                                                                        precision="float64"))
    w, w64 = model.weight.detach().double(), model64.weight.detach().double()
    out["max_abs_diff_float64"] = float((w - w64).abs().max())
    out["max_abs_diff_planted"] = float((w64 - R.double().T).abs().max())
    out["orthogonality_error"] = float(ro.linalg.orthogonality_error(w))
    accumulate_s = max(out["fit_s"] - out["generate_s"], 1e-9)
    out["accumulate_tflops"] = 2.0 * n * d * d / accumulate_s / 1e12
    out["gemm_float32_tflops"] = _gemm_tflops(dev, rows, d, torch.float32, reps=max(3, min(50, n // rows)))
    out["gemm_float64_tflops"] = _gemm_tflops(dev, rows, d, torch.float64, reps=max(3, min(20, n // rows)))
    out["share_of_gemm"] = out["accumulate_tflops"] / out["gemm_float32_tflops"]
    out["ok"] = out["max_abs_diff_float64"] < 1e-5 and out["orthogonality_error"] < 1e-5
    return out


# ------------------------------------------------------------------------------------------------ metrics
def _brute_force(query, gallery, ql, gl, ks, chunk: int = 16) -> tuple[dict, float]:
    """CMC@k and mAP by a full float64 sort of every query's similarities (no ties in continuous data)."""
    qn, gn = F.normalize(query.double(), dim=1), F.normalize(gallery.double(), dim=1)
    hits = {k: 0 for k in ks}
    ap_sum, counted = 0.0, 0
    for s in range(0, qn.shape[0], chunk):
        order = (qn[s:s + chunk] @ gn.T).argsort(dim=1, descending=True)
        rel = gl[order] == ql[s:s + chunk, None]                                # (c, n_gallery), ranked
        n_rel = rel.sum(1)
        pos = torch.arange(1, rel.shape[1] + 1, device=rel.device, dtype=torch.float64)
        precision_at = rel.cumsum(1).double() / pos
        ap = (precision_at * rel).sum(1) / n_rel.clamp_min(1)
        first = torch.where(rel.any(1), rel.double().argmax(1) + 1, math.inf)
        valid = n_rel > 0
        for k in ks:
            hits[k] += int(((first <= k) & valid).sum())
        ap_sum += float(ap[valid].sum())
        counted += int(valid.sum())
    return {k: h / counted for k, h in hits.items()}, ap_sum / counted


def section_metrics(cfg: dict, dev: Device) -> dict:
    nq, ng, d, classes = cfg["met_queries"], cfg["met_gallery"], cfg["met_dim"], cfg["met_classes"]
    g = torch.Generator(device=dev.device).manual_seed(1)
    centres = torch.randn(classes, d, generator=g, device=dev.device)
    gl = torch.arange(ng, device=dev.device) % classes
    gallery = centres[gl].add_(torch.randn(ng, d, generator=g, device=dev.device), alpha=2.0)
    ql = torch.randint(0, classes, (nq,), generator=g, device=dev.device)
    query = centres[ql].add_(torch.randn(nq, d, generator=g, device=dev.device), alpha=2.0)
    ks = (1, 5)
    out = {"queries": nq, "gallery": ng, "dim": d, "classes": classes}
    ro.metrics.retrieval_report(query[:64], gallery, ql[:64], gl, ks)  # warm-up
    dev.reset_peak()
    out["cmc_s"], cmc = dev.timed(lambda: ro.metrics.cmc(query, gallery, ql, gl, topk=ks))
    out["map_s"], mean_ap = dev.timed(lambda: ro.metrics.mean_average_precision(query, gallery, ql, gl))
    out["peak_mib"] = dev.peak_mib()
    out.update(top1=cmc[1], top5=cmc[5], mAP=mean_ap)
    m = cfg["met_check"]
    lib = ro.metrics.retrieval_report(query[:m], gallery, ql[:m], gl, ks)
    ref_cmc, ref_map = _brute_force(query[:m], gallery, ql[:m], gl, ks)
    out["check_queries"] = m
    out["check_map_abs_diff"] = abs(lib.map - ref_map)
    out["check_cmc_abs_diff"] = max(abs(lib.cmc[k] - ref_cmc[k]) for k in ks)
    # float32 similarities against float64: at most one near-tie swap among the checked queries
    out["ok"] = out["check_map_abs_diff"] < 1e-4 and out["check_cmc_abs_diff"] <= 1.0 / m + 1e-12
    return out


# -------------------------------------------------------------------------------------------------- tests
def section_tests(cfg: dict, dev: Device, timeout: float) -> dict:
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                   if "cuda" in p.read_text(encoding="utf-8") and p.name != "test_gpu_check.py")
    if dev.cuda:
        torch.cuda.empty_cache()  # leave the device's memory to the test process
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda", f"--junitxml={xml}",
               *files]
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        out = {"command": "python -m pytest -k cuda " + " ".join(files), "files": files, "returncode": r.returncode}
        if r.returncode not in (0, 1) or not xml.exists():  # 1: some test failed; anything else: pytest failed
            raise RuntimeError(f"pytest exited with {r.returncode}: {r.stdout[-500:]}{r.stderr[-500:]}")
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        failed = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
                  if c.find("failure") is not None or c.find("error") is not None]
    out.update(counts, passed=counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
               failed=failed, ok=counts["failures"] == 0 and counts["errors"] == 0)
    return out


# ---------------------------------------------------------------------------------------------------- run
def _table(results: dict) -> str:
    lines = [f"relaxedortho GPU check on {results['device'].get('name')} ({results['device']['device']}), "
             f"torch {results['device']['torch']}" + (" [--small]" if results["small"] else ""),
             f"{'section':11s} {'case':44s} {'value':30s} ratio / check", "-" * 110]
    sec = results["sections"]
    for name in SECTIONS:
        s = sec.get(name)
        if s is None:
            continue
        if s["status"] != "ok":
            lines.append(f"{name:11s} {'(section ' + s['status'] + ')':44s} {s.get('error', '')[:60]}")
            continue
        if name == "maps":
            for r in s["rows"]:
                case = f"{r['map']} d={r['d']} B={r['batch']} {r['precision']}"
                if "ratio" in r:
                    lines.append(f"{name:11s} {case:44s} {r['ms']:8.3f} ms (linear {r['linear_ms']:.3f})"
                                 f"{'':5s} {r['ratio']:5.2f}x [{r['ratio_min']:.2f}-{r['ratio_max']:.2f}]"
                                 + (f"  {r['note']}" if r["note"] else ""))
                else:
                    lines.append(f"{name:11s} {case:44s} {r['status'][:60]}")
        elif name == "procrustes":
            case = f"fit_closed_form {s['rows']:.0e} x {s['dim']} float32"
            lines.append(f"{name:11s} {case:44s} {s['fit_s']:7.2f} s (generation {s['generate_s']:.2f} s)"
                         f"   {s['accumulate_tflops']:.1f} TFLOP/s = {100 * s['share_of_gemm']:.0f}% of GEMM "
                         f"({s['gemm_float32_tflops']:.1f})")
            lines.append(f"{name:11s} {'float64 GEMMs, same stream':44s} {s['fit_float64_s']:7.2f} s"
                         f"{'':23s} max|W-W64| {s['max_abs_diff_float64']:.1e}, ||G-I|| "
                         f"{s['orthogonality_error']:.1e} {'ok' if s['ok'] else 'FAILED'}")
        elif name == "metrics":
            case = f"{s['queries']:.0e} queries x {s['gallery']:.0e} gallery d={s['dim']}"
            lines.append(f"{name:11s} {case:44s} CMC {s['cmc_s']:.2f} s, mAP {s['map_s']:.2f} s"
                         f"{'':7s} top-1 {s['top1']:.3f}, mAP {s['mAP']:.3f}")
            lines.append(f"{name:11s} {'float64 brute force, ' + str(s['check_queries']) + ' queries':44s}"
                         f" |dmAP| {s['check_map_abs_diff']:.1e}, |dCMC| {s['check_cmc_abs_diff']:.1e}"
                         f"{'':4s} {'ok' if s['ok'] else 'FAILED'}")
        else:
            lines.append(f"{name:11s} {'pytest -k cuda (' + str(len(s['files'])) + ' files)':44s} "
                         f"{s['passed']} passed, {s['failures'] + s['errors']} failed, {s['skipped']} skipped"
                         f"{'':3s} {'ok' if s['ok'] else 'FAILED: ' + ', '.join(s['failed'])[:80]}")
    lines.append(f"total {results['total_s']:.1f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="device to check (default cuda; cpu for a dry run)")
    p.add_argument("--small", action="store_true", help="tiny sizes: the same code paths in seconds")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")
    a = p.parse_args(argv)
    cfg = SMALL if a.small else FULL
    dev = Device(a.device)
    threads = torch.get_num_threads()
    if not dev.cuda and a.small:
        torch.set_num_threads(1)  # tiny matrices: threads only add synchronisation on a busy machine
    try:
        return _run(a, cfg, dev)
    finally:
        torch.set_num_threads(threads)


def _run(a: argparse.Namespace, cfg: dict, dev: Device) -> int:
    t_start = time.perf_counter()
    results = {"small": a.small, "device": dev.describe(), "config": {k: v for k, v in cfg.items()},
               "sections": {}, "total_s": 0.0}
    _say(f"gpu_check on {results['device']}")

    def save() -> None:
        results["total_s"] = time.perf_counter() - t_start
        if a.json:
            Path(a.json).write_text(json.dumps(results, indent=2, default=str) + "\n")

    for name in a.sections:
        left = cfg["total_s"] - (time.perf_counter() - t_start)
        budget = min(cfg["budget_s"][name], left)
        _say(f"[{time.perf_counter() - t_start:6.1f}s] {name} (budget {budget:.0f} s)")
        t0 = time.perf_counter()
        if budget < 10:
            results["sections"][name] = {"status": "skipped", "error": "total time budget spent", "seconds": 0.0}
            save()
            continue
        try:
            if name == "maps":
                out = section_maps(cfg, dev, deadline=t0 + budget)
            elif name == "procrustes":
                out = section_procrustes(cfg, dev)
            elif name == "metrics":
                out = section_metrics(cfg, dev)
            else:
                out = section_tests(cfg, dev, timeout=budget)
            status = "ok"
        except Exception as exc:  # keep the other sections' numbers
            out = {"error": _first_line(exc), "traceback": traceback.format_exc()}
            status = "error"
            _say(out["traceback"])
        results["sections"][name] = {"status": status, "seconds": time.perf_counter() - t0, **out}
        save()
    save()
    print(_table(results))
    failed = [n for n, s in results["sections"].items() if s["status"] != "ok" or s.get("ok") is False]
    if failed:
        print(f"failed sections: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
