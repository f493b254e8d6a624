r"""Issue 13's "Done when": default-constructed maps trained by ``fit_alignment`` (given only epochs, batch size and,
optionally, lr) against the relaxed closed form at the same λ, on the shipped text embeddings and on the digits
demo's features. Not a timed test.

For each λ in {0, 0.5, 1, 2, 8}: ``LambdaOrthoLinear(p, q, lam=λ)`` trained with the library's data-driven start and
default lr, and ``lambda_init(X, Y, lam=λ)`` (the relaxed closed form at radius λ), both evaluated by held-out
CMC top-1 of mapped new-model queries against the old-model gallery (the demo's protocol), plus ‖G − I‖_F and the
nearest-neighbour agreement of the mapped queries (geometry kept). Also hard maps (trained vs Procrustes) and, with
``--lr-grid``, the held-out top-1 over lr 1e-4 … 1e-1 (the measurement behind ``default_lr``).

``text-rect`` is the rectangular case: the old model's side cut to its 256 leading principal directions (computed on
the training rows), so the maps are 384 → 256. ``--seeds 0,1,2`` trains every map once per seed (the closed forms
are deterministic) and reports the worst gap.

    python benchmarks/bench_convergence.py [--dataset text|text-rect|digits|all] [--epochs 60] [--seeds 0]
                                           [--lr-grid] [--relaxed-start-max-entries N]
"""
from __future__ import annotations

import argparse
import copy
import json
import time
import warnings

import numpy as np
import torch

import relaxedortho as ro
from relaxedortho.closed_form import fit_closed_form, lambda_init
from relaxedortho.metrics import cmc
from relaxedortho.training import neighbour_agreement

LAMS = (0.0, 0.5, 1.0, 2.0, 8.0)


def text_data():
    from relaxedortho.datasets import load_text_embeddings

    d = load_text_embeddings()
    f = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32))  # noqa: E731
    ql, gl = d.labels("item")
    return f(d.train_new), f(d.train_old), f(d.query_new), f(d.gallery_old), ql, gl


def text_rect_data(width: int = 256):
    X, Y, Q, G, ql, gl = text_data()
    mu = Y.mean(0)
    V = torch.linalg.svd(Y - mu, full_matrices=False)[2][:width].T  # the old side's leading principal directions
    return X, (Y - mu) @ V, Q, (G - mu) @ V, ql, gl


def digits_data():
    import relaxedortho.demo as demo
    import relaxedortho.demo.image_scenario as image_scenario  # the module whose _run calls _maps_and_report

    got = {}

    def grab(out, cfg, dev, seed, prog, t0, about, new_w, ql, gl, H_new, H_old, Q_new, Q_old, G_new, G_old):
        got.update(v=(H_new, H_old, Q_new, G_old, ql, gl))
        raise StopIteration

    real, image_scenario._maps_and_report = image_scenario._maps_and_report, grab
    try:
        demo.run_demo("/tmp/bench-convergence-digits", progress=False)
    except StopIteration:
        pass
    finally:
        image_scenario._maps_and_report = real
    return got["v"]


def evaluate(m, Q, G, ql, gl):
    with torch.no_grad():
        BQ = m(Q.to(next(m.parameters()).dtype) if any(True for _ in m.parameters()) else Q).float()
    return {"top1": float(cmc(BQ, G, ql, gl, topk=(1,))[1]), "dev": float(m.orthogonality_error()),
            "geometry": neighbour_agreement(Q, BQ)}


def train(m, X, Y, epochs, batch, lr=None, seed=0):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ro.ConvergenceWarning)
        h = ro.fit_alignment(m, X, Y, epochs=epochs, batch_size=batch, lr=lr, progress=False, seed=seed)
    return h, any(issubclass(w.category, ro.ConvergenceWarning) for w in caught)


def table(name, X, Y, Q, G, ql, gl, epochs, batch, seeds=(0,)):
    p, q = X.shape[1], Y.shape[1]
    rows = []
    t = time.perf_counter()
    ref = fit_closed_form(X, Y, kind="centered")
    rows.append({"map": "centred Procrustes (closed form)", **evaluate(ref, Q, G, ql, gl),
                 "seconds": time.perf_counter() - t})
    torch.manual_seed(0)
    m = ro.OrthogonalLinear(p, q, bias=True)
    t = time.perf_counter()
    h, warned = train(m, X, Y, epochs, batch)
    rows.append({"map": "OrthogonalLinear(bias=True), trained", **evaluate(m, Q, G, ql, gl), "init": h.init["init"],
                 "epochs_run": h.epochs, "converged": h.converged, "seconds": time.perf_counter() - t})
    for lam in LAMS:
        t = time.perf_counter()
        cf = lambda_init(X, Y, lam=lam)
        rows.append({"map": f"lambda_init λ={lam:g}", "lam": lam, **evaluate(cf, Q, G, ql, gl),
                     "seconds": time.perf_counter() - t})
        closed = rows[-1]["top1"]
        for seed in seeds:
            torch.manual_seed(seed)
            m = ro.LambdaOrthoLinear(p, q, lam=lam)
            t = time.perf_counter()
            h, warned = train(m, X, Y, epochs, batch, seed=seed)
            rows.append({"map": f"trained λ={lam:g}" + (f" (seed {seed})" if len(seeds) > 1 else ""), "lam": lam,
                         "seed": seed, **evaluate(m, Q, G, ql, gl), "init": h.init["init"], "lr": h.lr,
                         "epochs_run": h.epochs, "converged": h.converged, "warned": warned,
                         "seconds": time.perf_counter() - t})
            print(name, f"λ={lam:g} closed form {closed:.3f}", rows[-1]["map"], f"{rows[-1]['top1']:.3f}",
                  f"gap {rows[-1]['top1'] - closed:+.3f}", f"dev {rows[-1]['dev']:.3g}", rows[-1]["init"],
                  f"epochs {rows[-1]['epochs_run']}", flush=True)
    torch.manual_seed(0)
    m = ro.AffineMap(p, q)
    h, _ = train(m, X, Y, epochs, batch)
    rows.append({"map": "AffineMap, trained", **evaluate(m, Q, G, ql, gl), "init": h.init["init"],
                 "epochs_run": h.epochs, "converged": h.converged})
    return rows


def sweep(name, X, Y, Q, G, ql, gl, epochs, batch):
    """``lambda_sweep`` over the same λ on the training pairs (20 % held out): is it monotone on real data?"""
    from relaxedortho.training import lambda_sweep

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ro.ConvergenceWarning)
        table = lambda_sweep(X, Y, LAMS, epochs=epochs, batch_size=batch, holdout=0.2, ends=False)
    rows = [{k: r[k] for k in ("lam", "fit_mse", "geometry", "orthogonality_error")} for r in table]
    fits, geo = [r["fit_mse"] for r in rows], [r["geometry"] for r in rows]
    out = {"rows": rows, "fit_non_increasing": all(b <= a for a, b in zip(fits, fits[1:])),
           "geometry_non_increasing": all(b <= a for a, b in zip(geo, geo[1:]))}
    print(name, "sweep", json.dumps(out), flush=True)
    return out


def lr_grid(name, X, Y, Q, G, ql, gl, epochs, batch):
    p, q = X.shape[1], Y.shape[1]
    builders = {"orthogonal": lambda: ro.OrthogonalLinear(p, q, bias=True),
                **{f"λ={lam:g}": (lambda lam=lam: ro.LambdaOrthoLinear(p, q, lam=lam)) for lam in (0.0, 1.0, 8.0)},
                "affine": lambda: ro.AffineMap(p, q)}
    out = {}
    for key, build in builders.items():
        out[key] = {}
        for lr in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1):
            torch.manual_seed(0)
            m = build()
            try:
                train(m, X, Y, epochs, batch, lr=lr)
                out[key][lr] = evaluate(m, Q, G, ql, gl)["top1"]
            except (ro.training.TrainingDivergedError, ro.training.NonFiniteLossError):
                out[key][lr] = None
        print(name, key, out[key], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", choices=("text", "text-rect", "digits", "all"), default="all")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--seeds", default="0", help="comma-separated seeds of the trained λ maps")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr-grid", action="store_true")
    ap.add_argument("--sweep", action="store_true", help="also run lambda_sweep and check that it is monotone")
    ap.add_argument("--json", default=None)
    ap.add_argument("--relaxed-start-max-entries", type=int, default=None,
                    help="override relaxedortho.training.initialization.RELAXED_START_MAX_ENTRIES (e.g. 1048576 to "
                         "start 384-d λ maps at the relaxed closed form)")
    args = ap.parse_args()
    if args.relaxed_start_max_entries is not None:
        from relaxedortho.training import initialization

        initialization.RELAXED_START_MAX_ENTRIES = args.relaxed_start_max_entries
    torch.set_num_threads(1)
    result = {}
    seeds = tuple(int(v) for v in args.seeds.split(","))
    for name, load in (("text", text_data), ("text-rect", text_rect_data), ("digits", digits_data)):
        if args.dataset not in (name, "all"):
            continue
        data = load()
        result[name] = {"table": table(name, *data, args.epochs, args.batch_size, seeds)}
        if args.sweep:
            result[name]["sweep"] = sweep(name, *data, args.epochs, args.batch_size)
        if args.lr_grid:
            result[name]["lr_grid"] = lr_grid(name, *data, min(args.epochs, 10), args.batch_size)
        print(f"\n{name}: map | top-1 | ‖G−I‖_F | NN agreement | start | epochs run")
        for r in result[name]["table"]:
            print(f"| {r['map']} | {r['top1']:.3f} | {r['dev']:.3g} | {r['geometry']:.3f} | {r.get('init', '–')} | "
                  f"{r.get('epochs_run', '–')} |")
        closed = {r["lam"]: r["top1"] for r in result[name]["table"] if r["map"].startswith("lambda_init")}
        gaps = {lam: min(r["top1"] - c for r in result[name]["table"] if r["map"].startswith("trained λ")
                         and r["lam"] == lam) for lam, c in closed.items()}
        print(f"{name}: worst gap (trained − closed form) per λ over seeds {list(seeds)}:",
              ", ".join(f"{lam:g}: {g:+.3f}" for lam, g in gaps.items()))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
