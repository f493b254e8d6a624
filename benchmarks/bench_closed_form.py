"""Streaming orthogonal Procrustes vs SciPy: time, peak memory, GEMM throughput, accuracy.

For each n in {1e4, 1e5, 1e6} and d in {256, 768} (``--quick``: tiny sizes, to check the script runs):

- ``ours``: :func:`relaxedortho.fit_closed_form` (kind ``orthogonal``) on a stream of float32 (X, Y) chunks
  generated on the fly (a pool of 8 random chunk pairs, cycled, so memory stays O(chunk) and generation
  time does not pollute the timing). Float32 chunk GEMMs are summed into float64 accumulators.
- ``accumulate``: the XᵀY accumulation alone (:func:`relaxedortho.closed_form.accumulate_moments`), reported
  as GFLOP/s (2·n·d² flops) and as a fraction of this machine's float32 GEMM throughput, measured here on a
  square GEMM and on the chunk-shaped GEMM.
- ``scipy``: :func:`scipy.linalg.orthogonal_procrustes` on the same data materialised in memory (only where it
  fits under ``--scipy-max-gb``).

Accuracy: max |W − W_ref| against a float64 reference fitted on the same stream (float64 chunk GEMMs).
Each measurement runs in a fresh subprocess; peak memory is its ru_maxrss increase over the state after
imports and warm-up. Prints one table with ratios (SciPy time / ours, SciPy memory / ours).

Usage: ``python benchmarks/bench_closed_form.py [--quick] [--n 10000 100000] [--d 256 768]``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _pool(d: int, rows: int, seed: int = 0):
    import numpy as np
    rng = np.random.default_rng(seed)
    R = np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32)
    pool = []
    for _ in range(8):
        x = rng.standard_normal((rows, d), dtype=np.float32) + 0.5
        pool.append((x, x @ R + 0.1 * rng.standard_normal((rows, d), dtype=np.float32)))
    return pool


def _stream(pool, n: int):
    done, i = 0, 0
    while done < n:
        x, y = pool[i % len(pool)]
        take = min(len(x), n - done)
        yield x[:take], y[:take]
        done += take
        i += 1


def child(mode: str, n: int, d: int, rows: int, reps: int) -> dict:
    import numpy as np
    import scipy.linalg
    import torch

    from relaxedortho.closed_form import accumulate_moments, fit_closed_form

    pool = _pool(d, rows)
    fit_closed_form(_stream(pool, 2 * rows), kind="orthogonal")  # warm-up
    base = _rss_mb()
    out = {"mode": mode, "n": n, "d": d}
    if mode == "ours":
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            m = fit_closed_form(_stream(pool, n), kind="orthogonal")
            best = min(best, time.perf_counter() - t)
        out["peak_mb"] = max(0.0, _rss_mb() - base)  # before the float64 reference
        ref = fit_closed_form(_stream(pool, n), kind="orthogonal", precision="float64")
        out["time"] = best
        out["err"] = float((m.weight.detach().double() - ref.weight.detach()).abs().max())
    elif mode == "accumulate":
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            accumulate_moments(_stream(pool, n), second_moments=(), means=False)
            best = min(best, time.perf_counter() - t)
        out["time"] = best
        out["gflops"] = 2.0 * n * d * d / best / 1e9
    elif mode == "scipy":
        X = np.concatenate([x for x, _ in _stream(pool, n)])
        Y = np.concatenate([y for _, y in _stream(pool, n)])
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            R, _ = scipy.linalg.orthogonal_procrustes(X, Y)
            best = min(best, time.perf_counter() - t)
        out["peak_mb"] = max(0.0, _rss_mb() - base)
        del X, Y
        ref = fit_closed_form(_stream(pool, n), kind="orthogonal", precision="float64")
        out["time"] = best
        out["err"] = float(np.abs(R.T.astype(np.float64) - ref.weight.detach().numpy()).max())
    elif mode == "gemm":
        flops = []
        for shape in ((2048, 2048, 2048), (d, rows, d)):
            a = torch.randn(shape[0], shape[1])
            b = torch.randn(shape[1], shape[2])
            a @ b
            t = min(_timed(lambda: a @ b) for _ in range(max(3, reps)))
            flops.append(2.0 * shape[0] * shape[1] * shape[2] / t / 1e9)
        out["square_gflops"], out["chunk_gflops"] = flops
    out.setdefault("peak_mb", max(0.0, _rss_mb() - base))
    return out


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run(mode: str, n: int, d: int, rows: int, reps: int) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, str(n), str(d), str(rows), str(reps)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if res.returncode != 0:
        raise RuntimeError(f"{mode} n={n} d={d} failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to check that the script runs")
    ap.add_argument("--n", type=int, nargs="+", default=None)
    ap.add_argument("--d", type=int, nargs="+", default=None)
    ap.add_argument("--chunk-entries", type=int, default=1 << 22, help="entries per chunk (rows = this // d)")
    ap.add_argument("--scipy-max-gb", type=float, default=2.0, help="skip SciPy when X and Y exceed this")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        mode, n, d, rows, reps = args.child
        print(json.dumps(child(mode, int(n), int(d), int(rows), int(reps))))
        return
    ns = args.n or ([5000, 20000] if args.quick else [10_000, 100_000, 1_000_000])
    ds = args.d or ([128] if args.quick else [256, 768])
    reps = 2 if args.quick else args.reps
    import torch
    print(f"# torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
    header = (f"{'n':>9} {'d':>5} | {'ours s':>8} {'scipy s':>8} {'scipy/ours':>10} | {'ours MB':>8} {'scipy MB':>8} "
              f"{'ratio':>6} | {'acc GF/s':>8} {'%sq':>5} {'%chunk':>6} | {'err ours':>9} {'err scipy':>9}")
    rows_out = []
    for d in ds:
        rows = max(256, args.chunk_entries // d)
        g = run("gemm", 0, d, rows, reps)
        print(f"# d={d}: float32 GEMM {g['square_gflops']:.1f} GFLOP/s (2048^3), {g['chunk_gflops']:.1f} GFLOP/s "
              f"(chunk shape {d}x{rows}x{d})")
        for n in ns:
            ours = run("ours", n, d, rows, reps)
            acc = run("accumulate", n, d, rows, reps)
            fits = 2 * n * d * 4 / 1e9 <= args.scipy_max_gb
            sp = run("scipy", n, d, rows, reps) if fits else None
            rows_out.append((n, d, ours, acc, sp, g))
    print(header)
    print("-" * len(header))
    for n, d, ours, acc, sp, g in rows_out:
        sp_t = f"{sp['time']:8.3f}" if sp else f"{'-':>8}"
        ratio_t = f"{sp['time'] / ours['time']:10.2f}" if sp else f"{'-':>10}"
        sp_m = f"{sp['peak_mb']:8.1f}" if sp else f"{'-':>8}"
        ratio_m = f"{sp['peak_mb'] / max(ours['peak_mb'], 1e-3):6.1f}" if sp else f"{'-':>6}"
        sp_e = f"{sp['err']:9.1e}" if sp else f"{'-':>9}"
        print(f"{n:>9} {d:>5} | {ours['time']:8.3f} {sp_t} {ratio_t} | {ours['peak_mb']:8.1f} {sp_m} {ratio_m} | "
              f"{acc['gflops']:8.1f} {100 * acc['gflops'] / g['square_gflops']:5.0f} "
              f"{100 * acc['gflops'] / g['chunk_gflops']:6.0f} | {ours['err']:9.1e} {sp_e}")
    print("# ours: streamed fit incl. SVD; acc: XᵀY accumulation only; %sq / %chunk: fraction of the square / "
          "chunk-shaped float32 GEMM throughput; err: max |W - W_float64|; MB: peak RSS increase")


if __name__ == "__main__":
    main()
