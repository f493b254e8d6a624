"""``relaxedortho sweep``: the λ sweep of :func:`relaxedortho.training.lambda_sweep` as a JSON table and a plot."""
from __future__ import annotations

import math
import os
import sys
import warnings

from ..files import write_json
from .errors import CLIError
from .inputs import _device, _load_pair, _log, _loo_retrieval
from .map_factory import _training_errors

def cmd_sweep(args) -> int:
    """``relaxedortho sweep``: a λ sweep (:func:`relaxedortho.training.lambda_sweep`) with a JSON table and a plot;
    returns the exit status."""
    import torch

    from ..exceptions import ConvergenceWarning
    from ..files import writable_dir
    from ..metrics import fit_mse, gram_distortion
    from ..training import lambda_sweep
    from ..training.learning_rate import DEFAULT_ANGLE

    out = writable_dir(args.out)
    device = _device(args.device)
    X, Y, labels = _load_pair(args, device)
    n = X.shape[0]
    n_val = int(round(args.val_fraction * n))
    if n_val < 2 or n - n_val < 2:
        raise CLIError(f"--val-fraction {args.val_fraction} leaves too few rows for training or validation "
                       f"({n} pairs)")
    lams = sorted(args.lams)
    _log(args, f"λ sweep over {', '.join(f'{v:g}' for v in lams)} on {n - n_val} training pairs")
    p = max(X.shape[1], Y.shape[1])
    with _training_errors(args.lr, lambda: DEFAULT_ANGLE / math.sqrt(p)), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # said per map below, in the command's options
        table = lambda_sweep(X, Y, lams, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                             holdout=n_val / n, ends=False, seed=args.seed, device=device, init=args.init,
                             warm_start=args.init != "module", dtype=X.dtype, tol=args.tol)
    tr, val = table.train_index.to(device), table.eval_index.to(device)
    results = []
    for i, (entry, module, h) in enumerate(zip(table.rows, table.maps, table.histories)):
        lam = math.inf if entry["lam"] is None else entry["lam"]
        module.eval()
        with torch.no_grad():
            BXv = module(X[val])
            row = {"lam": lam, "kind": entry["map"],
                   "train_mse": fit_mse(module(X[tr]), Y[tr]), "val_mse": entry["fit_mse"],
                   "orthogonality_error": entry["orthogonality_error"],
                   "gram_distortion_val": gram_distortion(X[val], BXv), "neighbour_agreement_val": entry["geometry"],
                   "init": entry["init"], "lr": h.lr, "epochs_run": h.epochs, "converged": h.converged,
                   "stop_reason": h.stop_reason}
            if labels is not None:
                lv = labels[val.cpu().numpy()]
                r = _loo_retrieval(BXv, Y[val], lv)
                s = _loo_retrieval(BXv, BXv, lv)
                row.update(top1_to_target=r["top1"], map_to_target=r["map"], top1_self=s["top1"],
                           map_self=s["map"])
        row["seconds"] = entry["seconds"]
        results.append(row)
        if not h.converged:
            print(f"relaxedortho: warning: the {row['kind']} map (λ={lam:g}) did not converge in {args.epochs} epochs "
                  f"(the loss still fell by {100 * h.relative_change[-1]:.3g}% in the last); use more --epochs or a "
                  f"larger --lr (now {h.lr:g})", file=sys.stderr)
        if args.save_maps:
            from ..serialization import save

            save(module.cpu(), os.path.join(out, f"map_lam={lam:g}.pt"))
        _log(args, f"[{i + 1}/{len(table)}] λ={lam:g}: val MSE {row['val_mse']:.5g}, ||G-I||_F "
                   f"{row['orthogonality_error']:.4g}, Gram distortion {row['gram_distortion_val']:.4g}")
    report = {"source": args.source, "target": args.target, "n_train": int(n - n_val), "n_val": n_val,
              "seed": args.seed, "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
              "fit_mse": "mean over pairs of the squared error per pair, (1/n)||B(X) - Y||_F^2 (docs/math.md §6)",
              "results": results}
    if labels is not None:
        with torch.no_grad():
            lv = labels[val.cpu().numpy()]
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
    from ..files import save_figure

    save_figure(fig, path)
