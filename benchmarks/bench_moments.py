"""Mergeable moments: communication of the distributed closed forms, and the cost of a merge.

1. ``comm``: W gloo processes on this machine (``relaxedortho.training.launch``); each accumulates its own
   shard of n/W float32 rows (p = q = d, both Grams: the largest payload, as for CCA) with
   ``accumulate_moments(..., distributed=True)`` and fits ``fit_closed_form(..., kind="cca", distributed=True)``.
   Every call into ``torch.distributed`` (all_gather, all_reduce, broadcast) is counted by wrapping it: the
   bytes of the tensors each call gathers, reduces or broadcasts, per process. The table shows they do not
   depend on n and equal 8(pq + p² + q² + 2p + 2q) + 88W for the moments (+ 8(pq + q) + 48 for the
   broadcast of the solution), the time of the local accumulation and of the reduction alone.
2. ``merge``: :meth:`PairedMoments.merge` of two accumulations with different shifts (both Grams), and
   save / load of one accumulation (file size and time), for d in {256, 768, 2048}.

Usage: ``python benchmarks/bench_moments.py [--quick] [--world 2] [--n 10000 100000] [--d 64 256]
[--only comm|merge] [--threads 1]``. Timings are medians of ``--reps`` repeats; one torch thread by default
(the merge is a few passes over d² numbers, where OpenMP start-up dominates on a loaded machine).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

COLLECTIVES = ("all_gather", "all_reduce", "broadcast", "broadcast_object_list")


def _count_collectives(counter: dict) -> None:
    """Wrap the torch.distributed collectives the library calls; add each call's tensor bytes to ``counter``."""
    import torch
    import torch.distributed as dist

    def nbytes(x):
        if isinstance(x, torch.Tensor):
            return x.numel() * x.element_size()
        if isinstance(x, (list, tuple)):
            return sum(nbytes(t) for t in x)
        return 0

    for name in COLLECTIVES:
        original = getattr(dist, name)

        def wrapped(*args, _original=original, _name=name, **kwargs):
            payload = args[0] if args else next(iter(kwargs.values()))
            counter[_name] = counter.get(_name, 0) + nbytes(payload)
            counter["calls"] = counter.get("calls", 0) + 1
            return _original(*args, **kwargs)

        setattr(dist, name, wrapped)


def _comm_worker(rank: int, world: int, n: int, d: int, reps: int, out_dir: str) -> None:
    import numpy as np
    import torch
    import torch.distributed

    from relaxedortho.closed_form import accumulate_moments, fit_closed_form

    torch.set_num_threads(1)
    rows = n // world + (1 if rank < n % world else 0)
    rng = np.random.default_rng(rank)
    X = rng.standard_normal((rows, d), dtype=np.float32) + 3.0
    Y = X @ rng.standard_normal((d, d), dtype=np.float32) / np.float32(d ** 0.5) + 1.0
    counter: dict = {}
    _count_collectives(counter)
    t = time.perf_counter()
    local = accumulate_moments(X, Y, second_moments=("x", "y"))
    local_s = time.perf_counter() - t
    reduce_t = []
    for _ in range(reps):  # the reduction alone: this process's moments given as its shard
        torch.distributed.barrier()  # not waiting for a slower process's accumulation
        counter.clear()
        t = time.perf_counter()
        accumulate_moments(local, distributed=True)
        reduce_t.append(time.perf_counter() - t)
    moments_bytes = sum(v for k, v in counter.items() if k != "calls")
    calls = counter.get("calls", 0)
    counter.clear()
    fit_closed_form(local, kind="cca", distributed=True)
    fit_bytes = sum(v for k, v in counter.items() if k != "calls")
    result = {"rank": rank, "rows": rows, "moments_bytes": moments_bytes, "calls": calls, "fit_bytes": fit_bytes,
              "local_s": local_s, "reduce_s": statistics.median(reduce_t)}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


def comm_table(world: int, ns: list, ds: list, reps: int) -> None:
    from relaxedortho.training import launch

    print(f"## Communication per process, {world} gloo processes (float32 rows, p = q = d, both Grams)")
    print(f"{'d':>5} {'n':>9} | {'bytes/process':>13} {'formula':>11} {'calls':>5} | {'fit bytes':>10} | "
          f"{'local s':>8} {'reduce s':>9}")
    for d in ds:
        for n in ns:
            with tempfile.TemporaryDirectory() as tmp:
                launch(_comm_worker, world, n, d, reps, tmp)
                res = [json.load(open(os.path.join(tmp, f"rank{r}.json"))) for r in range(world)]
            assert len({r["moments_bytes"] for r in res}) == 1, "processes sent different amounts"
            formula = 8 * (3 * d * d + 4 * d) + 88 * world
            r0 = res[0]
            extra = max(r["reduce_s"] for r in res)
            print(f"{d:>5} {n:>9} | {r0['moments_bytes']:>13} {formula:>11} {r0['calls']:>5} | {r0['fit_bytes']:>10} | "
                  f"{max(r['local_s'] for r in res):8.3f} {extra:9.3f}")
    print("# bytes/process: tensors gathered, reduced or broadcast by accumulate_moments(distributed=True); "
          "formula 8(pq+p²+q²+2p+2q)+88W; fit bytes: fit_closed_form(kind='cca', distributed=True), moments "
          "plus the broadcast of W and the bias; local s: one process's accumulation; reduce s: the reduction of the "
          "accumulated moments (slowest process, median)")


def merge_table(ds: list, reps: int) -> None:
    import numpy as np
    import torch

    from relaxedortho.closed_form import PairedMoments, accumulate_moments

    print("\n## Merge and save/load (float64 moments, both Grams)")
    print(f"{'d':>5} | {'merge ms':>9} | {'file MB':>8} {'save ms':>8} {'load ms':>8}")
    for d in ds:
        rng = np.random.default_rng(0)
        X = rng.standard_normal((2 * d + 10, d)) + 5.0
        Y = rng.standard_normal((2 * d + 10, d)) - 5.0
        a = accumulate_moments(X[: d + 5], Y[: d + 5], second_moments=("x", "y"))
        b = accumulate_moments(X[d + 5:], Y[d + 5:], second_moments=("x", "y"))
        assert not torch.equal(a.shift_x, b.shift_x)
        merge_t, save_t, load_t = [], [], []
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "m.pt")
            for _ in range(reps):
                t = time.perf_counter()
                a.merge(b)
                merge_t.append(time.perf_counter() - t)
                t = time.perf_counter()
                a.save(path)
                save_t.append(time.perf_counter() - t)
                t = time.perf_counter()
                PairedMoments.load(path)
                load_t.append(time.perf_counter() - t)
            size = os.path.getsize(path) / 2 ** 20
        print(f"{d:>5} | {1e3 * statistics.median(merge_t):9.1f} | {size:8.1f} {1e3 * statistics.median(save_t):8.1f} "
              f"{1e3 * statistics.median(load_t):8.1f}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to check that the script runs")
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--n", type=int, nargs="+", default=None)
    ap.add_argument("--d", type=int, nargs="+", default=None)
    ap.add_argument("--merge-d", type=int, nargs="+", default=None)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (each process of the comm part uses 1)")
    ap.add_argument("--only", choices=("comm", "merge"), default=None)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)

    ns = args.n or ([1000, 10000] if args.quick else [10_000, 100_000, 1_000_000])
    ds = args.d or ([32] if args.quick else [64, 256])
    mds = args.merge_d or ([64] if args.quick else [256, 768, 2048])
    reps = 1 if args.quick else args.reps
    print(f"# torch {torch.__version__}, cpus {os.cpu_count()}, threads {torch.get_num_threads()}")
    if args.only != "merge":
        comm_table(args.world, ns, ds, reps)
    if args.only != "comm":
        merge_table(mds, reps)


if __name__ == "__main__":
    main()
