"""Accuracy and cost of the rotation logarithm (relaxedortho.riemannian.skew_log) against scipy.linalg.logm.

For rotations R = Q blockdiag(rot(a_1), ..., rot(a_k), 1...) Q^T built from chosen angles (so the true logarithm X is
known exactly), prints the forward error ||log R - X||_F and the backward error ||exp(log R) - R||_F of both, in
float64; then milliseconds per call at a few sizes (median of interleaved repeats; the ratio is what to read on a
shared machine).

    python benchmarks/bench_riemannian.py            # accuracy table + timings at n = 64, 256
    python benchmarks/bench_riemannian.py --quick    # accuracy table only
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from relaxedortho.linalg import random_orthogonal  # noqa: E402
from relaxedortho.riemannian import skew_log  # noqa: E402

CASES = {
    "generic angles": lambda n: list(np.random.default_rng(0).uniform(-3.0, 3.0, n // 2)),
    "one angle pi - 1e-6": lambda n: [math.pi - 1e-6] + [0.5] * (n // 2 - 1),
    "one angle pi - 1e-12": lambda n: [math.pi - 1e-12] + [0.5] * (n // 2 - 1),
    "two angles pi - 1e-3, pi - 2e-3": lambda n: [math.pi - 1e-3, math.pi - 2e-3] + [0.5] * (n // 2 - 2),
    "tiny angles 1e-9": lambda n: [1e-9] * (n // 2),
}


def rotation(angles, n, seed=0):
    Q = random_orthogonal(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).numpy()
    B, X = np.eye(n), np.zeros((n, n))
    for j, a in enumerate(angles):
        B[2 * j:2 * j + 2, 2 * j:2 * j + 2] = [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]
        X[2 * j:2 * j + 2, 2 * j:2 * j + 2] = [[0.0, -a], [a, 0.0]]
    return Q @ B @ Q.T, Q @ X @ Q.T


def accuracy(n: int) -> None:
    print(f"n = {n}, float64: forward error ||log R - X||_F / backward error ||exp(log R) - R||_F")
    print(f"{'case':36s} {'skew_log':>22s} {'scipy logm':>22s}")
    for name, angles in CASES.items():
        R, X = rotation(angles(n), n)
        ours = skew_log(torch.from_numpy(R)).numpy()
        ref = np.real(scipy.linalg.logm(R))
        row = []
        for L in (ours, ref):
            row.append(f"{np.linalg.norm(L - X):.1e} / {np.linalg.norm(scipy.linalg.expm(L) - R):.1e}")
        print(f"{name:36s} {row[0]:>22s} {row[1]:>22s}")


def timing(n: int, rounds: int = 7) -> None:
    R, _ = rotation(CASES["generic angles"](n), n)
    Rt = torch.from_numpy(R)
    a, b = [], []
    for _ in range(rounds):
        t = time.perf_counter(); skew_log(Rt); a.append(time.perf_counter() - t)
        t = time.perf_counter(); scipy.linalg.logm(R); b.append(time.perf_counter() - t)
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"n = {n:4d}: skew_log {1e3 * ma:8.2f} ms, scipy logm {1e3 * mb:8.2f} ms, ratio {ma / mb:.2f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="accuracy table only")
    args = parser.parse_args(argv)
    accuracy(8)
    if not args.quick:
        for n in (64, 256):
            timing(n)


if __name__ == "__main__":
    main()
