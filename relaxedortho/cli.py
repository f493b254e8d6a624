r"""The ``relaxedortho`` command line: the demo, and alignment of your own embeddings without writing Python.

Subcommands (``relaxedortho SUBCOMMAND --help`` is the full manual of each):

- ``demo``: backward-compatible retrieval on real data across the spectrum of maps (:mod:`relaxedortho.demo`).
- ``fit``: fit a map from source features to target features (closed form or trained) and save it.
- ``eval``: retrieval and compatibility metrics of a saved map on query/gallery feature files.
- ``sweep``: a λ sweep of λ-orthogonal maps, as JSON and a plot.
- ``transfer-demo``: the cross-model task-vector transfer demo (:mod:`relaxedortho.transfer`, when installed).
- ``compat-bench``: the compatible-learning methods of the field side by side on one protocol
  (:mod:`relaxedortho.compat`).

Bad input (missing or unreadable files, mismatched rows, wrong label counts, NaN/Inf, data too large for the
dtype, an output place that cannot be written) and failed fits (a diverged or non-finite training loss, a
failed factorization) end with one line on stderr and exit status 1, never a traceback, and write no output;
outputs are written to a temporary name and renamed, so nothing half-written is left behind. Usage errors
exit with status 2. An unexpected internal error is also reported in one line (exit status 1); set the
environment variable ``RELAXEDORTHO_TRACEBACK=1`` to see its traceback.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from typing import Sequence

from .files import write_json

EXIT_ERROR = 1

MAP_KINDS = ("orthogonal", "lambda", "affine", "band")

FORMATS_HELP = """\
feature files (one row per item, same row order in paired files):
  x.npy            NumPy array, opened memory-mapped
  x.npz            archive with exactly one array; x.npz:KEY names one of several
  x.pt / x.pth     torch.save'd tensor (read with weights_only=True); x.pt:KEY for a dict of tensors
label files: the same formats with integers, or .txt/.csv/.tsv with one integer label per line
"""


class CLIError(Exception):
    """A user-facing error: printed as one line on stderr, exit status 1."""


# ----------------------------------------------------------------------------------------------- helpers
def _float_list(text: str) -> list[float]:
    try:
        vals = [math.inf if t.strip().lower() in ("inf", "∞") else float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers (or inf), got {text!r}") from None
    if not vals or any(math.isnan(v) or v < 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected non-negative numbers, got {text!r}")
    return vals


def _int_list(text: str) -> list[int]:
    try:
        vals = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def _int_at_least(low: int, what: str):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v
    return parse


_positive_int = _int_at_least(1, "a positive integer")
_nonneg_int = _int_at_least(0, "a non-negative integer")


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def _lam(text: str) -> float:
    vals = _float_list(text)
    if len(vals) != 1:
        raise argparse.ArgumentTypeError(f"expected one number, got {text!r}")
    return vals[0]


def _check_output_file(path: str) -> str:
    """Fail early when ``path``'s folder is missing or not writable, or ``path`` is a folder."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise CLIError(f"output {path} is a folder; give a file name")
    if not os.path.isdir(folder):
        raise CLIError(f"output folder {folder} does not exist")
    from .files import probe_writable

    try:
        probe_writable(folder)
    except OSError as exc:
        raise CLIError(f"cannot write to output folder {folder}: {exc.strerror or exc}") from None
    return path


def _device(name: str):
    from ._checks import check_device

    try:
        return check_device(name)
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def _tensor(arr, device, dtype=None):
    import numpy as np
    import torch

    a = np.asarray(arr)
    if dtype is None:
        dtype = torch.float64 if a.dtype == np.float64 else torch.float32
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    a = np.array(a, dtype=np_dtype, order="C", copy=True)  # reads a memory-mapped file once, writable
    return torch.from_numpy(a).to(device=device)


def _backends():
    """The library's fitting and metric functions, imported when a command runs (keeps ``--help`` fast)."""
    from .closed_form import fit_closed_form
    from .metrics import cmc, mean_average_precision
    from .training import fit_alignment

    return fit_closed_form, fit_alignment, cmc, mean_average_precision


def _log(args, msg: str) -> None:
    if not getattr(args, "quiet", False):
        print(msg, file=sys.stderr, flush=True)


def _load_pair(args, device):
    """Source and target features (paired rows), validated; optional labels."""
    from .data import load_features, load_labels

    X = load_features(args.source, "source features")
    Y = load_features(args.target, "target features")
    if X.shape[0] != Y.shape[0]:
        raise CLIError(f"source and target must have the same number of rows (paired items): {args.source} has "
                       f"{X.shape[0]}, {args.target} has {Y.shape[0]}")
    if X.shape[0] < 2:
        raise CLIError("need at least 2 paired rows to fit a map")
    labels = load_labels(args.labels, X.shape[0]) if getattr(args, "labels", None) else None
    return _tensor(X, device), _tensor(Y, device, dtype=_tensor(X, "cpu").dtype), labels


# ----------------------------------------------------------------------------------------------- fitting
def _check_solver(kind: str, solver: str) -> None:
    if kind not in MAP_KINDS:
        raise CLIError(f"kind must be one of {', '.join(MAP_KINDS)}; got {kind!r}")
    if solver not in ("closed", "trained"):
        raise CLIError(f"solver must be 'closed' or 'trained'; got {solver!r}")
    if kind == "lambda" and solver == "closed":
        raise CLIError("λ-orthogonal maps are trained: use --solver trained (or --kind band for a closed form "
                       "with a bounded deviation from orthogonality)")
    if kind == "band" and solver == "trained":
        raise CLIError("band maps are fitted in closed form / projected gradient: use --solver closed")


def build_map(kind: str, solver: str, X, Y, *, lam: float = 1.0, eps: float = 0.5, bias: bool | None = None,
              epochs: int = 100, batch_size: int = 256, lr: float | None = None, seed: int = 0, progress: bool = False,
              band_steps: int = 300, init: str = "auto", tol: float | None = 1e-4, start=None):
    """Fit a map ``X → Y`` of ``kind`` by ``solver`` (``"closed"`` or ``"trained"``); returns the module.

    Trained maps start from ``init`` (:func:`relaxedortho.training.initialization.initialize_map`), or from the
    weight and bias of ``start`` (a trained map of the same shape: the warm start of a λ sweep)."""
    import torch

    from .maps import AffineMap, LambdaOrthoLinear, OrthogonalLinear

    fit_closed_form, fit_alignment, _, _ = _backends()
    p, q = X.shape[1], Y.shape[1]
    _check_solver(kind, solver)
    if solver == "closed":
        if kind == "orthogonal":
            if bias:  # centred Procrustes, then add the target mean (Gupta et al. 2026)
                return fit_closed_form(X, Y, kind="centered")
            return fit_closed_form(X, Y, kind="orthogonal")
        if kind == "affine":
            m = fit_closed_form(X, Y, kind="affine")
            if bias is False:
                w = torch.linalg.lstsq(X.double(), Y.double()).solution.mT.to(X.dtype)
                return AffineMap.from_matrix(w, None)
            return m
        from .demo import fit_band_path

        (_, W, b, _), = fit_band_path(X, Y, [eps], steps=band_steps)
        return AffineMap.from_matrix(W.mT.to(X.dtype), b.to(X.dtype) if bias is not False else None)
    torch.manual_seed(seed)
    if kind == "orthogonal":
        module = OrthogonalLinear(p, q, bias=bool(bias), dtype=X.dtype, device=X.device)
    elif kind == "lambda":
        module = LambdaOrthoLinear(p, q, bias=bias is not False, lam=lam, dtype=X.dtype, device=X.device)
    else:
        module = AffineMap(p, q, bias=bias is not False, dtype=X.dtype, device=X.device)
    from .training import NonFiniteLossError, TrainingDivergedError

    if start is not None:
        with torch.no_grad():
            module.load_matrix_(start.weight.detach(), None if start.bias is None or module.bias is None
                                else start.bias.detach())
        init = "module"
    from .exceptions import ConvergenceWarning

    try:
        with warnings.catch_warnings(record=True) as caught:  # said on stderr as a one-line warning, below
            warnings.simplefilter("always", ConvergenceWarning)
            h = fit_alignment(module, X, Y, epochs=epochs, batch_size=batch_size, lr=lr, progress=progress,
                              init=init, tol=tol)
    except TrainingDivergedError as exc:  # the library's advice names Python arguments: say it in options
        h = exc.history
        raise CLIError(f"training diverged: the last epoch's mean loss ({h.loss[-1]:.4g}) is far above the "
                       f"initial loss ({h.initial_loss:.4g}); no map is saved. Use a smaller --lr (now {h.lr:g}; "
                       f"try {h.lr / 10:g}) or rescale the data") from None
    except NonFiniteLossError as exc:
        now = lr if lr is not None else _default_lr(module)
        raise CLIError(f"training failed: the loss became NaN or Inf at step {exc.step}; no map is saved. Use a "
                       f"smaller --lr (now {now:g}; try {now / 10:g}) or rescale the data") from None
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            print(f"relaxedortho: warning: the {kind} map did not converge in {epochs} epochs (the loss still fell "
                  f"by {100 * h.relative_change[-1]:.3g}% in the last); use more --epochs or a larger --lr (now "
                  f"{h.lr:g})", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    module._train_history = h  # read by _fit_summary
    return module


def _default_lr(module) -> float:
    from .training.learning_rate import default_lr

    return default_lr(module)


def _fit_summary(module, X, Y) -> dict:
    import torch

    with torch.no_grad():
        mse = float(((module(X).double() - Y.double()) ** 2).sum(1).mean())
    return {"class": type(module).__name__, "in_features": module.in_features,
            "out_features": module.out_features, "bias": module.bias is not None,
            "fit_mse": mse, "orthogonality_error": module.orthogonality_error(), **_training_record(module)}


def _training_record(module) -> dict:
    """The start, learning rate, epochs run and convergence of a trained map (empty for a closed form)."""
    h = getattr(module, "_train_history", None)
    if h is None:
        return {}
    return {"init": h.init["init"] if h.init else None, "lr": h.lr, "epochs_run": h.epochs,
            "converged": h.converged, "stop_reason": h.stop_reason}


def _loo_retrieval(A, B, labels, limit: int = 2000) -> dict:
    """Cross retrieval of rows of ``A`` against rows of ``B`` (paired), leaving the paired item out."""
    _, _, cmc, mean_average_precision = _backends()
    n = min(A.shape[0], limit)
    lab = labels[:n]
    acc = cmc(A[:n], B[:n], lab, lab, topk=(1, 5), leave_one_out=True)
    return {"top1": float(acc[1]), "top5": float(acc[5]),
            "map": float(mean_average_precision(A[:n], B[:n], lab, lab, leave_one_out=True)), "n": n}


def cmd_fit(args) -> int:
    """``relaxedortho fit``: fit a map between two feature files and save it; returns the exit status."""
    import torch

    from .serialization import save

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


# ----------------------------------------------------------------------------------------------- eval
def _orthogonality_error(module) -> float:
    """The map's ``orthogonality_error()``; for a plain ``nn.Linear`` (which relaxedortho.save also writes)
    :func:`relaxedortho.linalg.orthogonality_error` of its weight."""
    fn = getattr(module, "orthogonality_error", None)
    if callable(fn):
        return float(fn())
    from .linalg import orthogonality_error

    return float(orthogonality_error(module.weight.detach()))


def cmd_eval(args) -> int:
    """``relaxedortho eval``: retrieval and compatibility metrics of a saved map; returns the exit status."""
    import torch

    from .data import load_features, load_labels
    from .demo import _fmt
    from .serialization import load

    if args.json:
        _check_output_file(args.json)
    device = _device(args.device)
    module = load(args.map, map_location="cpu")  # OSError / ValueError naming the file: one line in main()
    module = module.to(device).eval()
    q_new = load_features(args.query, "query features")
    g_old = load_features(args.gallery, "gallery features")
    ql = load_labels(args.query_labels, q_new.shape[0], "query labels")
    gl = load_labels(args.gallery_labels, g_old.shape[0], "gallery labels")
    if q_new.shape[1] != module.in_features:
        raise CLIError(f"query features have {q_new.shape[1]} columns but the map takes {module.in_features}")
    if g_old.shape[1] != module.out_features:
        raise CLIError(f"gallery features have {g_old.shape[1]} columns but the map outputs "
                       f"{module.out_features}")
    q_old = g_new = None
    if args.old_query:
        q_old = load_features(args.old_query, "old-model query features")
        if q_old.shape != (q_new.shape[0], g_old.shape[1]):
            raise CLIError(f"old-model query features must have shape ({q_new.shape[0]}, {g_old.shape[1]}), "
                           f"got {q_old.shape}")
    if args.new_gallery:
        g_new = load_features(args.new_gallery, "new-model gallery features")
        if g_new.shape != (g_old.shape[0], q_new.shape[1]):
            raise CLIError(f"new-model gallery features must have shape ({g_old.shape[0]}, {q_new.shape[1]}), "
                           f"got {g_new.shape}")
    _, _, cmc, mean_average_precision = _backends()
    dtype = next(module.parameters()).dtype
    T = lambda a: _tensor(a, device, dtype)  # noqa: E731
    topk = tuple(sorted(set(args.topk)))

    def metrics(Qf, Gf):
        acc = cmc(Qf, Gf, ql, gl, topk=topk)
        out = {f"top{k}": float(acc[k]) for k in topk}
        out["map"] = float(mean_average_precision(Qf, Gf, ql, gl))
        return out

    with torch.no_grad():
        BQ = module(T(q_new))
        rows = {"B(new)/old": metrics(BQ, T(g_old))}
        if q_old is not None:
            rows["old/old"] = metrics(T(q_old), T(g_old))
        if module.in_features == module.out_features:
            rows["new/old (unmapped)"] = metrics(T(q_new), T(g_old))
        if g_new is not None:
            rows["B(new)/B(new)"] = metrics(BQ, module(T(g_new)))
            rows["new/new"] = metrics(T(q_new), T(g_new))
    result = {"map_file": args.map, "map_class": type(module).__name__,
              "orthogonality_error": _orthogonality_error(module), "n_query": int(q_new.shape[0]),
              "n_gallery": int(g_old.shape[0]), "metrics": rows}
    if q_old is not None:
        ref, new = rows["old/old"], rows["B(new)/old"]
        result["compatible"] = {"top1": new.get("top1", 0) > ref.get("top1", 0) if 1 in topk else None,
                                "map": new["map"] > ref["map"]}
    keys = [f"top{k}" for k in topk] + ["map"]
    print(f"{'query/gallery':<22}" + "".join(f"{k:>8}" for k in keys))
    for name, r in rows.items():
        print(f"{name:<22}" + "".join(_fmt(r[k], 8) for k in keys))
    print(f"||G - I||_F of the map: {result['orthogonality_error']:.4g}")
    if "compatible" in result:
        c = result["compatible"]
        print("compatibility (B(new)/old > old/old): " + ", ".join(
            f"{k} {'passed' if v else 'failed'}" for k, v in c.items() if v is not None))
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


# ----------------------------------------------------------------------------------------------- sweep
def _gram_distortion(A, B) -> float:
    r"""Relative change of the Gram matrix :math:`\lVert BB^\top - AA^\top\rVert_F / \lVert AA^\top\rVert_F`."""
    Ga, Gb = A.double() @ A.double().mT, B.double() @ B.double().mT
    return float(((Gb - Ga).norm() / Ga.norm().clamp_min(1e-300)))


def cmd_sweep(args) -> int:
    """``relaxedortho sweep``: a λ sweep with a JSON table and a plot; returns the exit status."""
    import numpy as np
    import torch

    from .files import writable_dir

    out = writable_dir(args.out)
    device = _device(args.device)
    X, Y, labels = _load_pair(args, device)
    n = X.shape[0]
    g = np.random.default_rng(args.seed)
    perm = g.permutation(n)
    n_val = int(round(args.val_fraction * n))
    if n_val < 2 or n - n_val < 2:
        raise CLIError(f"--val-fraction {args.val_fraction} leaves too few rows for training or validation "
                       f"({n} pairs)")
    val, tr = torch.as_tensor(np.sort(perm[:n_val]), device=device), torch.as_tensor(np.sort(perm[n_val:]),
                                                                                      device=device)
    lams = sorted(args.lams)
    results = []
    previous = None  # warm start along λ: each finite λ after the first starts from the previous λ's map
    for i, lam in enumerate(lams):
        t = time.perf_counter()
        kind = "affine" if math.isinf(lam) else "lambda"
        module = build_map(kind, "trained", X[tr], Y[tr], lam=lam, epochs=args.epochs, batch_size=args.batch_size,
                           lr=args.lr, seed=args.seed, progress=False, init=args.init, tol=args.tol,
                           start=previous if kind == "lambda" and args.init != "module" else None)
        if kind == "lambda":
            previous = module
        with torch.no_grad():
            BXv = module(X[val])
            row = {"lam": lam, "kind": kind,
                   "train_mse": float(((module(X[tr]).double() - Y[tr].double()) ** 2).sum(1).mean()),
                   "val_mse": float(((BXv.double() - Y[val].double()) ** 2).sum(1).mean()),
                   "orthogonality_error": module.orthogonality_error(),
                   "gram_distortion_val": _gram_distortion(X[val], BXv), **_training_record(module)}
            if labels is not None:
                lv = labels[np.sort(perm[:n_val])]
                r = _loo_retrieval(BXv, Y[val], lv)
                s = _loo_retrieval(BXv, BXv, lv)
                row.update(top1_to_target=r["top1"], map_to_target=r["map"], top1_self=s["top1"],
                           map_self=s["map"])
        row["seconds"] = round(time.perf_counter() - t, 3)
        results.append(row)
        if args.save_maps:
            from .serialization import save

            save(module.cpu(), os.path.join(out, f"map_lam={lam:g}.pt"))
        _log(args, f"[{i + 1}/{len(lams)}] λ={lam:g}: val MSE {row['val_mse']:.5g}, ||G-I||_F "
                   f"{row['orthogonality_error']:.4g}, Gram distortion {row['gram_distortion_val']:.4g}")
    report = {"source": args.source, "target": args.target, "n_train": int(n - n_val), "n_val": n_val,
              "seed": args.seed, "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
              "results": results}
    if labels is not None:
        with torch.no_grad():
            lv = labels[np.sort(perm[:n_val])]
            report["source_self_top1"] = _loo_retrieval(X[val], X[val], lv)["top1"]
    plot = os.path.join(out, "sweep.png")
    _plot_sweep(report, plot)
    write_json(os.path.join(out, "sweep.json"), report)
    print(f"{'λ':>8}{'train MSE':>12}{'val MSE':>12}{'‖G−I‖_F':>10}{'Gram dist.':>12}"
          + (f"{'top-1→tgt':>11}{'top-1 self':>11}" if labels is not None else ""))
    for r in results:
        print(f"{r['lam']:>8g}{r['train_mse']:>12.5g}{r['val_mse']:>12.5g}{r['orthogonality_error']:>10.4g}"
              f"{r['gram_distortion_val']:>12.4g}"
              + (f"{r['top1_to_target']:>11.4f}{r['top1_self']:>11.4f}" if labels is not None else ""))
    print(f"wrote {os.path.join(out, 'sweep.json')} and {plot}")
    return 0


def _plot_sweep(report: dict, path: str) -> None:
    from matplotlib.figure import Figure

    res = report["results"]
    labels = [("∞" if math.isinf(r["lam"]) else f"{r['lam']:g}") for r in res]
    xs = range(len(res))
    fig = Figure(figsize=(10, 4), dpi=110)
    ax, ax2 = fig.subplots(1, 2)
    ax.plot(xs, [r["val_mse"] for r in res], "o-", label="validation MSE (fit)")
    ax.plot(xs, [r["train_mse"] for r in res], "s--", label="training MSE")
    ax.set_xticks(list(xs), labels)
    ax.set_xlabel("λ")
    ax.set_ylabel("mean squared error per pair")
    ax.set_title("Fit to the target space")
    ax.legend(fontsize=8)
    ax2.plot(xs, [r["gram_distortion_val"] for r in res], "o-", color="tab:red", label="Gram distortion")
    ax2.plot(xs, [r["orthogonality_error"] for r in res], "s-", color="tab:green", label="‖AᵀA − I‖_F")
    ax2.set_xticks(list(xs), labels)
    ax2.set_xlabel("λ")
    ax2.set_yscale("symlog", linthresh=1e-3)
    ax2.set_title("Distortion of the source geometry")
    ax2.legend(fontsize=8)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.24, top=0.9, wspace=0.28)  # tight_layout is slow
    from .files import save_figure

    save_figure(fig, path)


# ----------------------------------------------------------------------------------------------- demos
def cmd_demo(args) -> int:
    """``relaxedortho demo``: run :func:`relaxedortho.demo.run_demo` and print its table."""
    from .demo import format_table, run_demo

    report = run_demo(args.out, dataset=args.dataset, data_dir=args.data_dir, device=args.device, seed=args.seed,
                      quick=args.quick, new_width=args.new_width, progress=not args.quiet)
    print(format_table(report))
    print(f"\nReport: {report['files']['report']}\nPlot:   {report['files']['plot']}\n"
          f"({report['seconds_total']:.1f} s)")
    return 0


def cmd_compat_bench(args) -> int:
    """``relaxedortho compat-bench``: run :func:`relaxedortho.compat.bench.run_compat_bench` and print its table."""
    from .compat.bench import format_table, run_compat_bench

    report = run_compat_bench(args.out, dataset=args.dataset, quick=args.quick, seed=args.seed,
                              data_dir=args.data_dir, device=args.device, progress=not args.quiet)
    print(format_table(report))
    print(f"\nReport: {report['files']['report']}\nPlot:   {report['files']['plot']}\n"
          f"({report['seconds_total']:.1f} s)")
    return 0


def cmd_transfer_demo(args) -> int:
    """``relaxedortho transfer-demo``: run :func:`relaxedortho.transfer.run_transfer_demo`."""
    from .files import writable_dir
    from .transfer import run_transfer_demo

    writable_dir(args.out)
    run_transfer_demo(args.out, seed=args.seed, quick=args.quick, progress=not args.quiet)
    print(f"Report: {os.path.join(args.out, 'report.json')}")
    return 0


# ----------------------------------------------------------------------------------------------- parser
class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the hand-wrapped descriptions and appends "(default: X)" where a default exists and the help
    text does not already state one."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("default" not in text and action.option_strings and default is not None and default is not False
                and default != argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


def _tol(text: str):
    """``--tol``: a non-negative number, or ``none`` (no stopping rule)."""
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative number or 'none', got {text!r}") from None
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a non-negative number or 'none', got {text!r}")
    return value


def _add_training_options(parser: argparse.ArgumentParser, note: str, *, epochs_help: str, seed_help: str) -> None:
    """``--epochs --batch-size --lr --seed --device`` of the subcommands that train maps (``note`` ends the help
    of the batch size and learning rate)."""
    parser.add_argument("--epochs", type=_positive_int, default=100, help=epochs_help)
    parser.add_argument("--batch-size", type=_positive_int, default=256, help="mini-batch size" + note)
    parser.add_argument("--lr", type=_positive_float, default=None,
                        help="Adam learning rate (default: 0.02/sqrt(max(in, out)), the library's default_lr)" + note)
    parser.add_argument("--init", choices=("auto", "procrustes", "module"), default="auto",
                        help="start of trained maps: the closed form of the map's constraint from the data (auto), "
                             "(centred) Procrustes for every map, or the map's own random start (module)" + note)
    parser.add_argument("--tol", type=_tol, default=1e-4,
                        help="stop when the epoch's mean loss falls by less than this (relative) in two "
                             "consecutive epochs; 'none': run every epoch" + note)
    parser.add_argument("--seed", type=_nonneg_int, default=0, help=seed_help)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``relaxedortho`` command (all subcommands)."""
    from . import __version__

    p = argparse.ArgumentParser(
        prog="relaxedortho", formatter_class=_Formatter,
        description="Maps between representation spaces that are exactly, nearly (λ-orthogonal) or not "
                    "orthogonal: a demo of backward-compatible retrieval, and tools to align your own "
                    "embeddings.",
        epilog="examples:\n"
               "  relaxedortho demo --out demo-out\n"
               "  relaxedortho fit new_train.npy old_train.npy --kind lambda --lam 1 --out b.pt\n"
               "  relaxedortho eval b.pt --query new_q.npy --query-labels q.txt \\\n"
               "      --gallery old_g.npy --gallery-labels g.txt --old-query old_q.npy\n"
               "  relaxedortho sweep new_train.npy old_train.npy --lams 0,0.5,1,2,inf --out sweep-out\n\n"
               "Run 'relaxedortho SUBCOMMAND --help' for the manual of each subcommand.")
    p.add_argument("--version", action="version", version=f"relaxedortho {__version__}")
    sub = p.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)

    # demo ---------------------------------------------------------------------------------------------
    d = sub.add_parser(
        "demo", formatter_class=_Formatter, help="backward-compatible retrieval on real data (the main demo)",
        description=(
            "Class-extension scenario of Ricci et al. (NeurIPS 2025, arXiv 2509.16664): an 'old' MLP trained on\n"
            "half of the classes and a 'new' MLP (other seed, one more layer) trained on all classes, both frozen.\n"
            "Backward maps B: new -> old are fitted on paired training features across the spectrum: closed-form\n"
            "orthogonal Procrustes, a trained hard orthogonal map, λ-orthogonal maps for several λ, the affine map\n"
            "(trained and least squares), nested band maps (singular values in [sqrt(1-eps), sqrt(1+eps)]), and a\n"
            "forward map F: old -> new-aligned space. Held-out images are split into queries and gallery; cosine\n"
            "retrieval gives CMC top-1 and mAP for old/old, new/old (unmapped), new/new, B(new)/old and\n"
            "B(new)/B(new). A map is compatible when B(new)/old beats old/old on top-1 and mAP.\n\n"
            "Output: the table on stdout, OUT/report.json (schema: 'baselines' {old_old, new_old, new_new} and\n"
            "'maps' {name: {kind, top1_to_old, top1_self, map_to_old, orthogonality_error, ...}}) and\n"
            "OUT/lambda_tradeoff.png. Deterministic for a given seed on a given machine and device.\n\n"
            "datasets:\n"
            "  digits         scikit-learn's bundled 8x8 handwritten digits (1797 images; no download)\n"
            "  fashion-mnist  Fashion-MNIST from local IDX files (train-images-idx3-ubyte[.gz] etc.), as installed\n"
            "                 by the Debian package dataset-fashion-mnist in /usr/share/datasets/fashion-mnist;\n"
            "                 --data-dir for another folder. Nothing is downloaded.\n"
            "  text           model upgrade on real text: shipped embeddings of two pretrained sentence encoders\n"
            "                 (old all-MiniLM-L6-v2, new multilingual-e5-small) of Debian package descriptions;\n"
            "                 short descriptions query long ones; no model is trained, only the maps."),
        epilog="examples:\n  relaxedortho demo\n  relaxedortho demo --out /tmp/demo --seed 3 --quiet\n"
               "  relaxedortho demo --new-width 48\n"
               "  relaxedortho demo --dataset fashion-mnist --data-dir ~/data/fashion-mnist --device cuda\n"
               "  relaxedortho demo --dataset text --out text-out")
    d.add_argument("--out", default="demo-out", help="output folder for report.json and lambda_tradeoff.png")
    d.add_argument("--dataset", choices=("digits", "fashion-mnist", "text"), default="digits",
                   help="image dataset, or text (sentence-encoder embeddings)")
    d.add_argument("--data-dir", default=None,
                   help="folder with the Fashion-MNIST files (default: /usr/share/datasets/fashion-mnist)")
    d.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    d.add_argument("--seed", type=_nonneg_int, default=0, help="random seed (split, models, maps)")
    d.add_argument("--new-width", type=_positive_int, default=None,
                   help="feature width of the new model (default: same as the old model; when different, "
                        "the unmapped new/old row is not applicable)")
    d.add_argument("--quick", action="store_true", help="reduced epochs and fewer λ values (a smoke test)")
    d.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    d.set_defaults(func=cmd_demo)

    # fit ----------------------------------------------------------------------------------------------
    f = sub.add_parser(
        "fit", formatter_class=_Formatter, help="fit a map between two feature files and save it",
        description=(
            "Fit a map B with B(source_i) ≈ target_i (row i of both files describes the same item), minimising\n"
            "the squared error ||B(X) - Y||_F^2 (closed forms; trained maps: its element-wise mean plus the map's\n"
            "regularizer, as relaxedortho.fit_alignment does), and save it with relaxedortho.save (load it back with\n"
            "relaxedortho.load; the loaded map gives identical outputs). Typical use: source = new-model\n"
            "embeddings, target = old-model embeddings, B = backward map.\n\n"
            "kinds and solvers:\n"
            "  orthogonal  closed: Procrustes W = U V^T of X^T Y = U S V^T (Schönemann 1966); with --bias the data\n"
            "              are centred and the target mean added. trained: OrthogonalLinear (Adam; its default method).\n"
            "  lambda      trained only: LambdaOrthoLinear, penalty sigmoid(alpha(||G-I||_F - λ)) ||G-I||_F\n"
            "              (Ricci et al. 2025); --lam sets λ (inf = affine).\n"
            "  affine      closed: least squares on centred data; trained: AffineMap with Adam.\n"
            "  band        closed: singular values clipped to [sqrt(1-eps), sqrt(1+eps)], refined by projected\n"
            "              gradient (docs/math.md §5); --eps sets eps.\n\n" + FORMATS_HELP +
            "\nWith --labels (one per pair) the command also reports leave-one-out retrieval of B(source) against\n"
            "target on the training pairs (first 2000 rows)."),
        epilog="examples:\n"
               "  relaxedortho fit new.npy old.npy --out procrustes.pt\n"
               "  relaxedortho fit new.npy old.npy --kind lambda --lam 2 --epochs 200 --out b.pt\n"
               "  relaxedortho fit feats.npz:new feats.npz:old --kind band --eps 0.5 --labels y.txt --out b.pt\n"
               "  relaxedortho fit new.pt old.pt --kind affine --solver trained --device cuda --out b.pt")
    f.add_argument("source", help="source feature file (rows = items), e.g. new-model embeddings")
    f.add_argument("target", help="target feature file, same rows as source, e.g. old-model embeddings")
    f.add_argument("--out", required=True, help="file to write the map to (relaxedortho.save format, .pt)")
    f.add_argument("--kind", choices=MAP_KINDS, default="orthogonal", help="map of the spectrum")
    f.add_argument("--solver", choices=("closed", "trained"), default=None,
                   help="closed form or gradient training (default: closed, except trained for lambda)")
    f.add_argument("--lam", type=_lam, default=1.0, help="λ of a lambda map (>= 0, or inf)")
    f.add_argument("--eps", type=_lam, default=0.5, help="band half-width eps of a band map (>= 0)")
    f.add_argument("--bias", action=argparse.BooleanOptionalAction, default=None,
                   help="learn a bias (default: no for orthogonal, yes for the others)")
    f.add_argument("--labels", default=None, help="optional label file (one per pair) for a retrieval report")
    _add_training_options(f, " (trained solver)", epochs_help="training epochs (trained solver)",
                          seed_help="random seed (trained solver)")
    f.add_argument("--json", default=None, help="also write a JSON summary to this file")
    f.add_argument("--quiet", action="store_true", help="no progress on stderr")
    f.set_defaults(func=cmd_fit)

    # eval ---------------------------------------------------------------------------------------------
    e = sub.add_parser(
        "eval", formatter_class=_Formatter, help="retrieval and compatibility metrics of a saved map",
        description=(
            "Evaluate a saved map B (new -> old) for compatible retrieval: queries embedded by the new model are\n"
            "mapped by B and searched in a gallery embedded by the old model (cosine similarity). Reports CMC\n"
            "top-k and mAP (docs/math.md §7) for B(new)/old; with --old-query also old/old and the compatibility\n"
            "criterion B(new)/old > old/old (Shen et al. 2020); with --new-gallery also B(new)/B(new) and\n"
            "new/new; new/old unmapped when B is square.\n\n" + FORMATS_HELP),
        epilog="examples:\n"
               "  relaxedortho eval b.pt --query new_q.npy --query-labels q.npy --gallery old_g.npy \\\n"
               "      --gallery-labels g.npy\n"
               "  relaxedortho eval b.pt --query new_q.npy --query-labels q.txt --gallery old_g.npy \\\n"
               "      --gallery-labels g.txt --old-query old_q.npy --new-gallery new_g.npy --json eval.json")
    e.add_argument("map", help="map file written by 'relaxedortho fit' or relaxedortho.save")
    e.add_argument("--query", required=True, help="query features from the new model")
    e.add_argument("--query-labels", required=True, help="one label per query row")
    e.add_argument("--gallery", required=True, help="gallery features from the old model")
    e.add_argument("--gallery-labels", required=True, help="one label per gallery row")
    e.add_argument("--old-query", default=None, help="the same queries embedded by the old model (old/old)")
    e.add_argument("--new-gallery", default=None, help="the same gallery embedded by the new model")
    e.add_argument("--topk", type=_int_list, default=[1, 5], help="comma-separated k of CMC top-k")
    e.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    e.add_argument("--json", default=None, help="also write the metrics as JSON to this file")
    e.set_defaults(func=cmd_eval)

    # sweep --------------------------------------------------------------------------------------------
    s = sub.add_parser(
        "sweep", formatter_class=_Formatter, help="λ sweep of λ-orthogonal maps with a plot",
        description=(
            "Train one LambdaOrthoLinear map source -> target per λ (λ = inf is the free affine map) on a\n"
            "training share of the pairs and measure, on the held-out pairs: the fit (mean squared error per\n"
            "pair), the distance from orthogonality ||A^T A - I||_F, and the distortion of the source geometry\n"
            "||B(X)B(X)^T - XX^T||_F / ||XX^T||_F. With --labels also leave-one-out retrieval B(source)/target\n"
            "and B(source)/B(source). Larger λ: better fit, more distortion (the stability-plasticity\n"
            "trade-off of Ricci et al. 2025). Writes OUT/sweep.json and OUT/sweep.png.\n\n" + FORMATS_HELP),
        epilog="examples:\n"
               "  relaxedortho sweep new.npy old.npy --out sweep-out\n"
               "  relaxedortho sweep new.npy old.npy --lams 0,1,4,16,inf --labels y.npy --epochs 200 --out s")
    s.add_argument("source", help="source feature file (rows = items)")
    s.add_argument("target", help="target feature file (same rows)")
    s.add_argument("--out", required=True, help="output folder for sweep.json and sweep.png")
    s.add_argument("--lams", type=_float_list, default=[0.0, 0.5, 1.0, 2.0, 4.0, math.inf],
                   help="comma-separated λ values (inf allowed)")
    s.add_argument("--labels", default=None, help="optional label file (one per pair)")
    s.add_argument("--val-fraction", type=_positive_float, default=0.2, help="share of pairs held out")
    _add_training_options(s, "", epochs_help="training epochs per λ", seed_help="random seed (split and training)")
    s.add_argument("--save-maps", action="store_true", help="also save each map as OUT/map_lam=λ.pt")
    s.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    s.set_defaults(func=cmd_sweep)

    # transfer-demo ------------------------------------------------------------------------------------
    t = sub.add_parser(
        "transfer-demo", formatter_class=_Formatter, help="cross-model task-vector transfer demo",
        description=(
            "Transfer a task vector tau = W_finetuned - W_pretrained from a source model to an independently\n"
            "trained target model through orthogonal / λ-orthogonal maps U (W_target + U^T tau U; Endo, Kera,\n"
            "Kawamoto, arXiv 2505.12021). Provided by relaxedortho.transfer.run_transfer_demo; reports go to OUT."),
        epilog="examples:\n  relaxedortho transfer-demo --out transfer-out\n"
               "  relaxedortho transfer-demo --quick --seed 1 --out /tmp/t")
    t.add_argument("--out", default="transfer-out", help="output folder")
    t.add_argument("--seed", type=_nonneg_int, default=0, help="random seed")
    t.add_argument("--quick", action="store_true", help="reduced size (a smoke test)")
    t.add_argument("--quiet", action="store_true", help="no progress display")
    t.set_defaults(func=cmd_transfer_demo)

    # compat-bench -------------------------------------------------------------------------------------
    c = sub.add_parser(
        "compat-bench", formatter_class=_Formatter, help="compatible-learning methods side by side",
        description=(
            "Class-extension protocol (BCT/FCT/BT2/OCA): an old CNN trained on half of the classes, a larger new CNN\n"
            "(other seed) on all classes, both frozen. Runs, on the same split: Procrustes and the λ-orthogonal B/F\n"
            "pair (maps new -> old), FCT and FastFill (old gallery transformed into the new space, FastFill's\n"
            "uncertainty-ordered partial backfilling), SLERP (training-free query interpolation), and three new\n"
            "models trained to be compatible: BCT, OCA and BT2. Reports CMC top-1/top-5 and mAP for old/old,\n"
            "new/new and, per method, new->old (against the gallery embedded by the old model) and the method's\n"
            "own new/new; compatible = new->old beats old/old on top-1 and mAP.\n\n"
            "Output: the table on stdout, OUT/report.json ('baselines' {old_old, new_new}, 'methods' {name:\n"
            "{top1_new_old, map_new_old, top1_new_new, compatible, ...}}, 'backfilling', 'ranking') and\n"
            "OUT/compat_tradeoff.png. The seed fixes the split, the initialisations and the batch order (digits runs\n"
            "reproduce to the last digit on one machine).\n\n"
            "datasets:\n"
            "  auto           Fashion-MNIST when its files are found, else the bundled digits (digits with --quick)\n"
            "  digits         scikit-learn's bundled 8x8 digits (1797 images; no download)\n"
            "  fashion-mnist  Fashion-MNIST IDX files as installed by the Debian package dataset-fashion-mnist\n"
            "                 (/usr/share/datasets/fashion-mnist) or in --data-dir. Nothing is downloaded."),
        epilog="examples:\n  relaxedortho compat-bench --out compat-out --quick\n"
               "  relaxedortho compat-bench --out compat-out --dataset fashion-mnist --data-dir ~/data/fmnist")
    c.add_argument("--out", default="compat-out", help="output folder for report.json and compat_tradeoff.png")
    c.add_argument("--dataset", choices=("auto", "digits", "fashion-mnist"), default="auto", help="image dataset")
    c.add_argument("--data-dir", default=None,
                   help="folder with the Fashion-MNIST files (default: /usr/share/datasets/fashion-mnist)")
    c.add_argument("--quick", action="store_true", help="short schedules (about half a minute on digits)")
    c.add_argument("--seed", type=_nonneg_int, default=0, help="random seed (split, models, maps)")
    c.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    c.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    c.set_defaults(func=cmd_compat_bench)
    return p


def _is_library_error(exc: BaseException) -> bool:
    """Errors that report bad input or a failed fit (printed as they are): :class:`CLIError`, data-file and
    value errors, file-system errors, arithmetic failures (a non-finite or diverged training loss) and failed
    factorizations (:class:`torch.linalg.LinAlgError`)."""
    if isinstance(exc, (CLIError, OSError, ValueError, ArithmeticError)):
        return True
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(exc, torch.linalg.LinAlgError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``relaxedortho`` console script; returns the exit status.

    Every error ends as one line on stderr, ``relaxedortho COMMAND: error: ...``, and exit status 1 (usage
    errors: argparse's message and status 2). Errors that are not bad input or a failed fit are bugs: they are
    reported as "internal error" in one line too, with their traceback when ``RELAXEDORTHO_TRACEBACK=1``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"relaxedortho {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        if not _is_library_error(exc):
            if os.environ.get("RELAXEDORTHO_TRACEBACK") == "1":
                raise
            msg = (f"internal error ({type(exc).__name__}: {msg}); please report it, with the output of the "
                   f"command run again with RELAXEDORTHO_TRACEBACK=1")
        print(f"relaxedortho {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
