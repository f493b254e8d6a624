"""Relaxed Procrustes on non-whitened data: the iterative solver against the projected gradient it replaced.

For each width d (``--sizes``, default 128 256 512 768 1024; the map is d -> 2d/3, e.g. 768 -> 512), n = 2048
rows (``--n``), two kinds of data and four problems:

- data ``gaussian``: X with a geometric spectrum (condition number 1e3 of XᵀX) in a random basis, Y = X·T + noise
  with T random; ``embedding``: a power-law spectrum (eigenvalue i ∝ 1/i), a large common offset (5× the spread),
  Y from a planted semi-orthogonal map times 1.3 plus a small nonlinearity, noise and an offset (centred fits);
- problems ``lambda_init`` radius 0.5 (:func:`relaxedortho.lambda_init`, the Frobenius ball) and radius 12 (the
  README's example), ``band`` [0.8, 1.2], ``penalty`` μ = tr(XᵀX)/p.

Columns: ``new`` = this library's solver (PANOC in the eigenbasis of XᵀX, default ``tol``): seconds, iterations,
relative KKT residual; ``old`` = the projected gradient of commit 3495c86 (full float64 SVD per step, Nesterov with
restart, step 1/L, reproduced below as the baseline), run ``--old-iters`` iterations (default 30) to measure its
seconds per iteration, and ``old@500`` = that cost times its default ``max_iter=500`` (where it stopped, usually
unconverged). ``ratio`` = old@500 / new. ``gap`` = (F_new − F_ref)/F_ref, the relative difference of
:math:`\\lVert XW - Y\\rVert^2` (+ penalty) from a reference: with ``--reference`` (sizes ≤ ``--reference-max``)
the old projected gradient run from the same start to convergence (``--reference-iters``, steps below 1e-14);
otherwise the new solver at ``tol=1e-10``. ``fixed`` = the relative objective decrease that the old projected
gradient still finds in ``--check-iters`` steps started at the new solution (0 when the new solution is a fixed
point of the old iteration). Old and new runs alternate (old, new, old, new, ...) and the medians are
reported; run on a quiet machine, or compare ratios.

Usage: ``python benchmarks/bench_relaxed.py [--quick] [--sizes 128 256] [--data gaussian embedding]
[--threads 1] [--reference] [--json out.json]``.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import numpy as np
import torch

from relaxedortho.closed_form import accumulate_moments, solve_relaxed_band, solve_relaxed_frobenius, \
    solve_relaxed_penalty
from relaxedortho.closed_form.singular_value_maps import ball_values, penalty_values


def make_data(kind: str, n: int, p: int, q: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        sv = np.geomspace(1.0, 1.0 / math.sqrt(1e3), p)
        R = np.linalg.qr(rng.standard_normal((p, p)))[0]
        X = (rng.standard_normal((n, p)) * sv) @ R.T
        T = rng.standard_normal((p, q)) * 3 / math.sqrt(p)
        return X, X @ T + 0.5 * sv[:q].mean() * rng.standard_normal((n, q))
    ev = np.arange(1, p + 1) ** -0.5
    R = np.linalg.qr(rng.standard_normal((p, p)))[0]
    mean = rng.standard_normal(p)
    mean *= 5.0 * np.linalg.norm(ev) / np.linalg.norm(mean)
    X = (rng.standard_normal((n, p)) * ev) @ R.T + mean
    T = np.linalg.qr(rng.standard_normal((max(p, q), min(p, q))))[0]
    T = T if p >= q else T.T
    Y = (X - mean) @ T * 1.3 + 0.1 * np.tanh(X @ rng.standard_normal((p, q)) / math.sqrt(p))
    Y += 0.3 * ev[:q].mean() * rng.standard_normal((n, q)) + rng.standard_normal(q) * 3 * ev[:q].mean() * math.sqrt(q)
    return X, Y


PROBLEMS = {
    "lambda_init r=0.5": ("ball", 0.5),
    "lambda_init r=12": ("ball", 12.0),
    "band [0.8,1.2]": ("band", (0.8, 1.2)),
    "penalty mu=c": ("penalty", None),
}


def solve_new(m, kind, par, **kw):
    if kind == "ball":
        return solve_relaxed_frobenius(m, radius=par, center=True, **kw)
    if kind == "band":
        return solve_relaxed_band(m, lower=par[0], upper=par[1], center=True, **kw)
    return solve_relaxed_penalty(m, mu=par, center=True, **kw)


def sv_map(kind, par):
    if kind == "ball":
        return lambda s, t: torch.from_numpy(ball_values(s.numpy(), par)[0])
    if kind == "band":
        return lambda s, t: s.clamp(*par)
    return lambda s, t: torch.from_numpy(penalty_values(s.numpy(), 1.0, 2 * t * par))


def objective(A, M, W, kind, par):
    f = float((W * (A @ W)).sum() - 2 * (W * M).sum())
    if kind == "penalty":
        s = torch.linalg.svdvals(W)
        f += par * float(((s * s - 1) ** 2).sum())
    return f


def old_projected_gradient(A, M, kind, par, W0, iters, tol=-1.0):
    """The projected gradient of relaxedortho at commit 3495c86: a full float64 SVD of the p×q map per step,
    Nesterov extrapolation with restart on increase, step 1/L, the objective evaluated at every step."""
    fn = sv_map(kind, par)
    L = 2 * float(torch.linalg.eigvalsh(A)[-1])
    t = 1.0 / L

    def step(V):
        u, s, vh = torch.linalg.svd(V - t * 2 * (A @ V - M), full_matrices=False)
        return (u * fn(s, t)) @ vh
    W = Wp = W0
    f, k, it = objective(A, M, W, kind, par), 0, 0
    for it in range(1, iters + 1):
        k += 1
        Wn = step(W + ((k - 1) / (k + 2)) * (W - Wp)) if k > 1 else step(W)
        fn_ = objective(A, M, Wn, kind, par)
        if fn_ > f and k > 1:
            k = 1
            Wn = step(W)
            fn_ = objective(A, M, Wn, kind, par)
        change = float(torch.linalg.matrix_norm(Wn - W))
        Wp, W, f = W, Wn, min(f, fn_)
        if change <= tol * max(1.0, float(torch.linalg.matrix_norm(W))):
            break
    return W, it


def run(d, data, args):
    p, q = d, max(1, (2 * d) // 3)
    X, Y = make_data(data, args.n, p, q)
    m = accumulate_moments(X, Y)
    A, M = m.gram_x(center=True), m.cross(center=True)
    yy = float(((Y - Y.mean(0)) ** 2).sum())
    c = float(torch.trace(A)) / p
    rows = []
    for name, (kind, par) in PROBLEMS.items():
        par = c if par is None else par
        start = solve_new(m, kind, par, solver="closed_form").W
        new_t, old_t, sol = [], [], None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            old_projected_gradient(A, M, kind, par, start, args.old_iters)
            old_t.append((time.perf_counter() - t0) / args.old_iters)
            t0 = time.perf_counter()
            sol = solve_new(m, kind, par)
            new_t.append(time.perf_counter() - t0)
        F = objective(A, M, sol.W, kind, par) + yy
        if args.reference and d <= args.reference_max:
            W_ref, ref_it = old_projected_gradient(A, M, kind, par, start, args.reference_iters, tol=1e-14)
            ref = f"old PG, {ref_it} it"
        else:
            W_ref = solve_new(m, kind, par, tol=1e-10, max_iter=20000).W
            ref = "new, tol 1e-10"
        F_ref = objective(A, M, W_ref, kind, par) + yy
        W_chk, _ = old_projected_gradient(A, M, kind, par, sol.W, args.check_iters)
        F_chk = objective(A, M, W_chk, kind, par) + yy
        new_s, old_s = statistics.median(new_t), statistics.median(old_t)
        rows.append(dict(d=f"{p}->{q}", data=data, problem=name, new_s=new_s, iterations=sol.info["iterations"],
                         prox=sol.info.get("prox_evaluations", 0), residual=sol.info["residual"],
                         solver=sol.info["solver"], old_s_per_iter=old_s, old_500_s=500 * old_s,
                         ratio=500 * old_s / new_s, gap=(F - F_ref) / F_ref, reference=ref,
                         fixed=max(0.0, (F - F_chk) / F)))
        r = rows[-1]
        print(f"| {r['d']} | {data} | {name} | {new_s:.2f} | {r['iterations']} | {r['residual']:.1e} | "
              f"{old_s:.3f} | {r['old_500_s']:.1f} | {r['ratio']:.0f}x | {r['gap']:.1e} ({ref}) | "
              f"{r['fixed']:.1e} |", flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512, 768, 1024])
    ap.add_argument("--data", nargs="+", default=["gaussian", "embedding"], choices=["gaussian", "embedding"])
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--old-iters", type=int, default=30)
    ap.add_argument("--check-iters", type=int, default=50)
    ap.add_argument("--reference", action="store_true", help="converge the old projected gradient as reference")
    ap.add_argument("--reference-max", type=int, default=256)
    ap.add_argument("--reference-iters", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to check that the script runs")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.n, args.old_iters, args.check_iters = [24], 200, 3, 3
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, n = {args.n}")
    print("| map | data | problem | new s | new it | residual | old s/it | old@500 s | ratio | gap vs ref | "
          "old PG gain from new |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for d in args.sizes:
        for data in args.data:
            rows += run(d, data, args)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
