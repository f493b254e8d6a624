"""Time and peak memory of chunked CMC and mAP (relaxedortho.metrics) on CPU.

Default: a 1e5-item gallery at d = 512 with 1e4 and 1e5 queries (1000 balanced classes). Each size runs in
a fresh subprocess so that its peak resident memory (ru_maxrss) is its own; the script prints the memory
of the features alone next to it, so the metric's working memory is the difference.

    python benchmarks/bench_metrics.py --quick          # tiny sizes, seconds
    python benchmarks/bench_metrics.py                  # the real sizes (minutes)
    python benchmarks/bench_metrics.py --queries 10000 --gallery 100000 --dim 512 --chunk-size 256
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: KiB


def run_one(n_query: int, n_gallery: int, dim: int, classes: int, chunk_size: int | None, threads: int | None,
            loo: bool) -> dict:
    import torch

    from relaxedortho import metrics

    if threads:
        torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(classes, dim, generator=g)
    gallery_labels = torch.arange(n_gallery) % classes
    gallery = centres[gallery_labels] + 2.0 * torch.randn(n_gallery, dim, generator=g)
    if loo:
        query, query_labels = gallery, gallery_labels
    else:
        query_labels = torch.arange(n_query) % classes
        query = centres[query_labels] + 2.0 * torch.randn(n_query, dim, generator=g)
    rss_data = _rss_mib()
    t0 = time.perf_counter()
    top = metrics.cmc(query, gallery, query_labels, gallery_labels, topk=(1, 5), leave_one_out=loo,
                      chunk_size=chunk_size)
    t1 = time.perf_counter()
    mean_ap = metrics.mean_average_precision(query, gallery, query_labels, gallery_labels, leave_one_out=loo,
                                             chunk_size=chunk_size)
    t2 = time.perf_counter()
    return dict(n_query=n_query, n_gallery=n_gallery, dim=dim, classes=classes, leave_one_out=loo,
                chunk_size=chunk_size, threads=torch.get_num_threads(), cmc_s=t1 - t0, map_s=t2 - t1,
                top1=top[1], top5=top[5], mAP=mean_ap, rss_features_mib=rss_data, peak_rss_mib=_peak_mib())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    ap.add_argument("--queries", type=int, nargs="+", default=None, help="query counts (default 1e4 1e5)")
    ap.add_argument("--gallery", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--chunk-size", type=int, default=None, help="queries per chunk (default: automatic)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--leave-one-out", action="store_true",
                    help="query set = gallery (uses --gallery for both)")
    ap.add_argument("--_child", type=str, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._child is not None:
        print(json.dumps(run_one(**json.loads(args._child))))
        return
    if args.quick:
        sizes, n_gallery, dim, classes = [200, 1000], 1000, 32, 20
    else:
        sizes = args.queries or [10_000, 100_000]
        n_gallery, dim, classes = args.gallery, args.dim, args.classes
    if args.leave_one_out:
        sizes = [n_gallery]
    header = (f"{'queries':>8} {'gallery':>8} {'dim':>5} {'chunk':>6} {'thr':>4} {'cmc s':>9} {'mAP s':>9} "
              f"{'top1':>7} {'mAP':>7} {'feat MiB':>9} {'peak MiB':>9}")
    print(header)
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for n_query in sizes:
        cfg = dict(n_query=n_query, n_gallery=n_gallery, dim=dim, classes=classes, chunk_size=args.chunk_size,
                   threads=args.threads, loo=args.leave_one_out)
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--_child", json.dumps(cfg)],
                             capture_output=True, text=True, env=env, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['n_query']:>8} {r['n_gallery']:>8} {r['dim']:>5} {str(r['chunk_size'] or 'auto'):>6} "
              f"{r['threads']:>4} {r['cmc_s']:>9.3f} {r['map_s']:>9.3f} {r['top1']:>7.4f} {r['mAP']:>7.4f} "
              f"{r['rss_features_mib']:>9.0f} {r['peak_rss_mib']:>9.0f}", flush=True)


if __name__ == "__main__":
    main()
