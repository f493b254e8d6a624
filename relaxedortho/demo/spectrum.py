"""Every map of the spectrum fitted on paired features, evaluated, and written as the demo's report."""
from __future__ import annotations

import math
import os
import sys
import time
import warnings
from dataclasses import asdict

import torch
from torch import nn

from ..closed_form import fit_closed_form
from ..exceptions import ConvergenceWarning
from ..files import write_json
from ..metrics import cmc, fit_mse, mean_average_precision
from ..training import fit_alignment, lambda_sweep
from .band_path import fit_band_path
from .report import PLOT_NAME, REPORT_NAME, _plot_tradeoff

def _retrieval(query, gallery, ql, gl) -> dict:
    acc = cmc(query, gallery, ql, gl, topk=(1, 5))
    return {"top1": float(acc[1]), "top5": float(acc[5]),
            "map": float(mean_average_precision(query, gallery, ql, gl))}


def _fit_mse(module: nn.Module, X: torch.Tensor, Y: torch.Tensor) -> float:
    """:func:`~relaxedortho.metrics.fit_mse` of ``module(X)`` against ``Y`` (mean over rows of the squared row error)."""
    with torch.no_grad():
        return fit_mse(module(X), Y)


class _Progress:
    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total, self.i, self.t0 = enabled, total, 0, time.perf_counter()

    def step(self, msg: str) -> None:
        self.i += 1
        if self.enabled:
            print(f"[{self.i:>2}/{self.total}] {time.perf_counter() - self.t0:6.1f}s  {msg}", file=sys.stderr,
                  flush=True)


def _maps_and_report(out, cfg, dev, seed, prog, t_start, about, new_w, ql, gl,
                     H_new, H_old, Q_new, Q_old, G_new, G_old) -> dict:
    """Baselines, every map of the spectrum, the forward map, the report and the plot, from paired features."""
    baselines = {"old_old": _retrieval(Q_old, G_old, ql, gl),
                 "new_old": (_retrieval(Q_new, G_old, ql, gl) if new_w == cfg.width
                             else {"top1": None, "top5": None, "map": None, "applicable": False}),
                 "new_new": _retrieval(Q_new, G_new, ql, gl)}
    baselines["new_old"].setdefault("applicable", True)
    prog.step("features extracted; baselines old/old {:.3f}, new/new {:.3f} (CMC top-1)".format(
        baselines["old_old"]["top1"], baselines["new_new"]["top1"]))

    # -- backward maps
    maps: dict[str, dict] = {}
    modules: dict[str, nn.Module] = {}

    def record(name, kind, module, seconds, **extra):
        module.eval()
        with torch.no_grad():
            BQ, BG = module(Q_new), module(G_new)
        to_old, self_ = _retrieval(BQ, G_old, ql, gl), _retrieval(BQ, BG, ql, gl)
        oe = module.orthogonality_error() if hasattr(module, "orthogonality_error") else None
        entry = {"kind": kind, "top1_to_old": to_old["top1"], "top5_to_old": to_old["top5"],
                 "map_to_old": to_old["map"], "top1_self": self_["top1"], "top5_self": self_["top5"],
                 "map_self": self_["map"], "orthogonality_error": oe, "bias": module.bias is not None,
                 "fit_mse_train": _fit_mse(module, H_new, H_old),
                 "compatible_top1": to_old["top1"] > baselines["old_old"]["top1"],
                 "compatible_map": to_old["map"] > baselines["old_old"]["map"],
                 "seconds": round(seconds, 3), **extra}
        entry["compatible"] = entry["compatible_top1"] and entry["compatible_map"]
        maps[name], modules[name] = entry, module
        prog.step(f"{name:<16} B(new)/old top-1 {entry['top1_to_old']:.3f}  B(new)/B(new) top-1 "
                  f"{entry['top1_self']:.3f}  ||G-I||_F {oe:.3g}")

    runs: dict[int, dict] = {}

    def trained(module, seed_offset):
        torch.manual_seed(seed + seed_offset)
        # an unconverged run (e.g. --quick) is reported in the table and the report, not raised as a warning
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            h = fit_alignment(module, H_new, H_old, epochs=cfg.map_epochs, batch_size=cfg.map_batch, lr=cfg.map_lr,
                              progress=False)  # trains in place
        for w in caught:
            if not issubclass(w.category, ConvergenceWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        runs[id(module)] = {"init": h.init["init"], "lr": h.lr, "epochs_run": h.epochs, "converged": h.converged}
        return module

    from ..maps import AffineMap, OrthogonalLinear

    t = time.perf_counter()
    procrustes = fit_closed_form(H_new, H_old, kind="orthogonal").to(dev)
    record("procrustes", "closed_form", procrustes, time.perf_counter() - t, solver="closed form",
           constraint="orthogonal")
    if cfg.hard_bias:
        t = time.perf_counter()
        record("procrustes_centred", "closed_form", fit_closed_form(H_new, H_old, kind="centered").to(dev),
               time.perf_counter() - t, solver="closed form", constraint="orthogonal, with bias")
    # every trained map is default-constructed and starts from the library's data-driven start (init="auto")
    t = time.perf_counter()
    torch.manual_seed(seed + 1)
    m = trained(OrthogonalLinear(new_w, cfg.width, bias=cfg.hard_bias).to(dev), 1)
    record("orthogonal", "orthogonal", m, time.perf_counter() - t, solver="trained", constraint="orthogonal",
           **runs[id(m)])
    # the λ maps: the library's λ sweep, warm-started along λ (each larger λ starts from the previous λ's map)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # reported per map in the table and the report
        sweep = lambda_sweep(H_new, H_old, cfg.lams, epochs=cfg.map_epochs, batch_size=cfg.map_batch,
                             lr=cfg.map_lr, holdout=0.0, ends=False, seed=seed + 10, device=dev, geometry=False)
    for row, m, h in zip(sweep.rows, sweep.maps, sweep.histories):
        lam = float(row["lam"])
        record(f"lambda={lam:g}", "lambda", m, row["seconds"], lam=lam, solver="trained", init=row["init"],
               lr=h.lr, epochs_run=h.epochs, converged=h.converged)
    t = time.perf_counter()
    torch.manual_seed(seed + 2)
    m = trained(AffineMap(new_w, cfg.width).to(dev), 2)
    record("affine", "affine", m, time.perf_counter() - t, solver="trained", **runs[id(m)])  # λ = ∞
    t = time.perf_counter()
    record("least_squares", "closed_form", fit_closed_form(H_new, H_old, kind="affine").to(dev),
           time.perf_counter() - t, solver="closed form", constraint="none")
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # reported per band in the table and the report
        path = fit_band_path(H_new, H_old, cfg.band_eps, steps=cfg.band_steps, tol=cfg.band_tol, with_info=True)
    per = (time.perf_counter() - t) / max(1, len(path))
    for eps, W, b, mse, info in path:
        m = AffineMap.from_matrix(W.mT.float(), b.float()).to(dev)
        record(f"band eps={eps:g}", "closed_form", m, per, band_eps=eps, solver="band path",
               constraint=f"sigma in [{math.sqrt(max(0, 1 - eps)):.3g}, {math.sqrt(1 + eps):.3g}]",
               converged=bool(info["converged"]), solver_iterations=int(info["iterations"]),
               solver_residual=float(info["residual"]),
               band_objective=mse)

    # -- forward map F: old -> new-aligned space (the space of the orthogonal B)
    t = time.perf_counter()
    B = modules["orthogonal"]
    with torch.no_grad():
        target = B(H_new)
        BQ = B(Q_new)
    torch.manual_seed(seed + 3)
    F_map = AffineMap(cfg.width, cfg.width).to(dev)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # recorded in the report's forward entry
        h_forward = fit_alignment(F_map, H_old, target, epochs=cfg.map_epochs, batch_size=cfg.map_batch,
                                  lr=cfg.map_lr, progress=False)
    with torch.no_grad():
        FG = F_map(G_old)
    fwd = _retrieval(BQ, FG, ql, gl)
    forward = {"backward_map": "orthogonal", "top1": fwd["top1"], "top5": fwd["top5"], "map": fwd["map"],
               "fit_mse_train": _fit_mse(F_map, H_old, target),
               "orthogonality_error": F_map.orthogonality_error(), "converged": h_forward.converged,
               "seconds": round(time.perf_counter() - t, 3),
               "description": "query B_orth(new), gallery F(old): old gallery moved forward without re-embedding"}
    prog.step(f"forward map F   B(new)/F(old) top-1 {forward['top1']:.3f}")

    report = {
        "dataset": cfg.dataset, "seed": int(seed), "device": str(dev),
        **about,
        "old_width": cfg.width, "new_width": new_w,
        "baselines": baselines, "maps": maps, "forward": forward,
        "compatibility_criterion": "B(new)/old > old/old (CMC top-1 and mAP), Shen et al. 2020",
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "backends": {"closed_form": fit_closed_form.__module__, "metrics": cmc.__module__,
                     "training": fit_alignment.__module__},
        "torch": torch.__version__,
    }
    plot_path = os.path.join(out, PLOT_NAME)
    _plot_tradeoff(report, plot_path)
    report["files"] = {"report": os.path.join(out, REPORT_NAME), "plot": plot_path}
    report["seconds_total"] = round(time.perf_counter() - t_start, 2)
    write_json(os.path.join(out, REPORT_NAME), report)
    prog.step(f"wrote {report['files']['report']} and {plot_path}")
    return report
