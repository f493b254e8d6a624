"""Throughput of ``fit_alignment`` on CPU against a hand-written minimal PyTorch loop (target: ratio >= 0.9).

Both train the same map (same initial weights), on the same in-memory tensors, with the same batch size,
number of steps, shuffling (one ``randperm`` per epoch, ``index_select`` per batch), loss (element-wise MSE
plus the map's regularizer) and optimizer (Adam, or RiemannianAdam for a Stiefel map). The best of
``--repeats`` timings is reported for each, in samples per second.

    python benchmarks/bench_trainer.py            # n=65536, d=512, batch=1024, 2 epochs, all maps
    python benchmarks/bench_trainer.py --quick    # a tiny size that only proves the script runs
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.nn import functional as F

import relaxedortho as ro
from relaxedortho.training import fit_alignment, make_optimizer

MAPS = {
    "affine": lambda d: ro.AffineMap(d, d),
    "lambda": lambda d: ro.LambdaOrthoLinear(d, d, lam=1.0),
    "orthogonal": lambda d: ro.OrthogonalLinear(d, d),
    "stiefel": lambda d: ro.StiefelLinear(d, d),
}


def minimal_loop(module, X, Y, epochs, batch_size, lr, seed):
    opt = make_optimizer(module, lr)
    n = X.shape[0]
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for lo in range(0, n, batch_size):
            idx = perm[lo:lo + batch_size]
            x, y = X.index_select(0, idx), Y.index_select(0, idx)
            opt.zero_grad(set_to_none=True)
            loss = F.mse_loss(module(x), y) + module.regularizer()
            loss.backward()
            opt.step()
    return float(loss.detach())


def trainer(module, X, Y, epochs, batch_size, lr, seed):
    return fit_alignment(module, X, Y, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device="cpu",
                         progress=False).loss[-1]


def best_time(fn, build, X, Y, args, repeats):
    """Best of ``repeats`` of the process CPU time (robust on a shared machine) or the wall time."""
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    times = []
    for _ in range(repeats):
        torch.manual_seed(0)
        module = build(X.shape[1])
        t0 = clock()
        fn(module, X, Y, args.epochs, args.batch, 1e-3, 0)
        times.append(clock() - t0)
    return min(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=65536)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--maps", default=",".join(MAPS))
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall time, or process CPU time (steadier when other jobs share the machine)")
    p.add_argument("--quick", action="store_true", help="n=2048, d=32, batch=128, 1 epoch, 2 repeats")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.dim, args.batch, args.epochs, args.repeats = 2048, 32, 128, 1, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(args.n, args.dim, generator=g)
    Y = X @ torch.randn(args.dim, args.dim, generator=g) / args.dim ** 0.5
    print(f"CPU, torch {torch.__version__}, {torch.get_num_threads()} threads; n={args.n} d={args.dim} "
          f"batch={args.batch} epochs={args.epochs}, best of {args.repeats} ({args.clock} clock)")
    print(f"{'map':<11} {'minimal (samples/s)':>20} {'fit_alignment (samples/s)':>26} {'ratio':>7}")
    samples = args.n * args.epochs
    for name in args.maps.split(","):
        build = MAPS[name]
        best_time(minimal_loop, build, X[: 4 * args.batch], Y[: 4 * args.batch], args, 1)  # warm-up
        t_min = t_fit = float("inf")
        for _ in range(args.repeats):  # interleaved, so that load changes hit both alike
            t_min = min(t_min, best_time(minimal_loop, build, X, Y, args, 1))
            t_fit = min(t_fit, best_time(trainer, build, X, Y, args, 1))
        print(f"{name:<11} {samples / t_min:>20.0f} {samples / t_fit:>26.0f} {t_min / t_fit:>7.3f}")


if __name__ == "__main__":
    main()
