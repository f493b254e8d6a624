"""``relaxedortho fit``: fit a map between two feature files and save it."""
from __future__ import annotations

import time

from ..files import write_json
from .inputs import _check_output_file, _device, _load_pair, _log, _loo_retrieval
from .map_factory import _check_solver, _fit_summary, build_map

def cmd_fit(args) -> int:
    """``relaxedortho fit``: fit a map between two feature files and save it; returns the exit status."""
    import torch

    from ..serialization import save

    solver = args.solver or ("trained" if args.kind == "lambda" else "closed")
    _check_solver(args.kind, solver)
    _check_output_file(args.out)
    if args.json:
        _check_output_file(args.json)
    device = _device(args.device)
    X, Y, labels = _load_pair(args, device)
    _log(args, f"fitting a {args.kind} map {X.shape[1]} -> {Y.shape[1]} on {X.shape[0]} pairs ({solver})")
    t = time.perf_counter()
    module = build_map(args.kind, solver, X, Y, lam=args.lam, eps=args.eps, bias=args.bias, epochs=args.epochs,
                       batch_size=args.batch_size, lr=args.lr, seed=args.seed, progress=not args.quiet,
                       init=args.init, tol=args.tol)
    summary = {"kind": args.kind, "solver": solver, **_fit_summary(module, X, Y),
               "seconds": round(time.perf_counter() - t, 3), "source": args.source, "target": args.target,
               "map_file": args.out}
    if args.kind == "lambda":
        summary["lam"] = args.lam
    if args.kind == "band":
        summary["band_eps"] = args.eps
    if labels is not None:
        with torch.no_grad():
            summary["retrieval_mapped_source_vs_target"] = _loo_retrieval(module(X), Y, labels)
            if X.shape[1] == Y.shape[1]:
                summary["retrieval_unmapped_source_vs_target"] = _loo_retrieval(X, Y, labels)
    save(module.cpu(), args.out)
    if args.json:
        write_json(args.json, summary)
    print(f"saved {summary['class']} ({summary['in_features']} -> {summary['out_features']}"
          f"{', bias' if summary['bias'] else ''}) to {args.out}")
    print(f"fit MSE (mean squared error per pair) {summary['fit_mse']:.6g}; "
          f"||G - I||_F {summary['orthogonality_error']:.4g}")
    if labels is not None:
        r = summary["retrieval_mapped_source_vs_target"]
        print(f"B(source)/target on the training pairs (leave-one-out, n={r['n']}): "
              f"top-1 {r['top1']:.4f}, mAP {r['map']:.4f}")
    return 0
