"""The demo's outputs: the file names, the plot of the λ trade-off and the compatibility table."""
from __future__ import annotations

import numpy as np

from ..files import save_figure

REPORT_NAME = "report.json"


PLOT_NAME = "lambda_tradeoff.png"


def _spectrum_rows(report: dict) -> list[tuple[str, dict]]:
    maps = report["maps"]
    order = (["procrustes", "procrustes_centred", "orthogonal"] + [k for k in maps if maps[k]["kind"] == "lambda"]
             + ["affine", "least_squares"] + [k for k in maps if k.startswith("band")])
    return [(k, maps[k]) for k in order if k in maps]


def _plot_tradeoff(report: dict, path: str) -> None:
    """Two panels along the spectrum ⊥ … λ … affine: retrieval (left) and ‖G − I‖_F (right); atomic write."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    maps = report["maps"]
    names = ["procrustes", "orthogonal"] + [k for k in maps if maps[k]["kind"] == "lambda"] + ["affine"]
    names = [n for n in names if n in maps]
    labels = ["⊥ closed", "⊥ trained"] + [f"λ={maps[n]['lam']:g}" for n in names[2:-1]] + ["affine (λ=∞)"]
    xs = np.arange(len(names))
    fig = Figure(figsize=(10, 4), dpi=110)
    ax, ax2 = fig.subplots(1, 2)
    ax.plot(xs, [maps[n]["top1_to_old"] for n in names], "o-", label="B(new)/old  (compatibility)")
    ax.plot(xs, [maps[n]["top1_self"] for n in names], "s-", label="B(new)/B(new)  (new model kept)")
    b = report["baselines"]
    ax.axhline(b["old_old"]["top1"], ls="--", color="gray", label="old/old")
    ax.axhline(b["new_new"]["top1"], ls=":", color="black", label="new/new")
    if b["new_old"].get("top1") is not None:
        ax.axhline(b["new_old"]["top1"], ls="-.", color="tab:red", label="new/old unmapped")
    ax.set_xticks(xs, labels, rotation=30, ha="right")
    ax.set_ylabel("CMC top-1")
    ax.set_title(f"Stability-plasticity trade-off ({report['dataset']})")
    ax.legend(fontsize=7, loc="best")
    ax2.plot(xs, [max(maps[n]["orthogonality_error"], 1e-8) for n in names], "o-", color="tab:green")
    ax2.set_yscale("log")
    ax2.set_xticks(xs, labels, rotation=30, ha="right")
    ax2.set_ylabel("‖AᵀA − I‖_F of B")
    ax2.set_title("Distance from orthogonality")
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.24, top=0.9, wspace=0.28)  # tight_layout is slow
    save_figure(fig, path)


def _fmt(v, width=7) -> str:
    return f"{'n/a':>{width}}" if v is None else f"{v:>{width}.3f}"


def format_table(report: dict) -> str:
    """The compatibility table as plain text (baselines, then each backward map, then the forward map)."""
    b = report["baselines"]
    kind = "documents" if "old_model" in report else "images"
    lines = [f"Compatibility table — {report['dataset']}, seed {report['seed']}: {report['n_query']} queries, "
             f"{report['n_gallery']} gallery {kind} (cosine; CMC top-1 / mAP)"]
    if "old_model" in report:
        lines += [f"old model: {report['old_model']} ({report['old_width']}-d)",
                  f"new model: {report['new_model']} ({report['new_width']}-d)",
                  f"corpus: {report['corpus']}; relevance: {report['relevance']}"]
    lines.append("")
    head = f"{'query/gallery':<44}{'top-1':>7}{'mAP':>7}   {'B(new)/B(new)':>13}{'mAP':>7}{'‖G−I‖_F':>9}" \
           f"{'fit MSE':>9}  compatible"
    lines.append(head)
    lines.append("-" * len(head))
    lines.append(f"{'old/old':<44}{_fmt(b['old_old']['top1'])}{_fmt(b['old_old']['map'])}")
    no = b["new_old"]
    lines.append(f"{'new/old (unmapped)':<44}{_fmt(no['top1'])}{_fmt(no['map'])}"
                 + ("" if no.get("applicable", True) else "   not applicable: widths differ"))
    lines.append(f"{'new/new':<44}{_fmt(b['new_new']['top1'])}{_fmt(b['new_new']['map'])}")
    lines.append("")
    for name, e in _spectrum_rows(report):
        label = f"B(new)/old {name} [{e['kind']}]"
        oe = e["orthogonality_error"]
        lines.append(f"{label:<44}{_fmt(e['top1_to_old'])}{_fmt(e['map_to_old'])}   {_fmt(e['top1_self'], 13)}"
                     f"{_fmt(e['map_self'])}{oe:>9.3g}{e['fit_mse_train']:>9.4f}  "
                     f"{'yes' if e['compatible'] else 'no'}" + ("  (not converged)" if e.get("converged") is False
                                                                 else ""))
    f = report.get("forward")
    if f:
        lines.append("")
        lines.append(f"{'B_orth(new)/F(old) forward':<44}{_fmt(f['top1'])}{_fmt(f['map'])}"
                     + ("  (not converged)" if f.get("converged") is False else ""))
    lines.append("")
    lines.append("compatible: B(new)/old beats old/old on both CMC top-1 and mAP (Shen et al. 2020).")
    if any(e.get("converged") is False for _, e in _spectrum_rows(report)) or (f and f.get("converged") is False):
        lines.append("not converged: a trained map's loss still fell by more than tol before its learning-rate decay "
                     "(more epochs would fit better), or a band solver stopped at its iteration limit.")
    return "\n".join(lines)
