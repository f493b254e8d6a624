r"""``relaxedortho compat-bench``: every compatible-learning method on one class-extension protocol.

:func:`run_compat_bench` builds the protocol (:mod:`relaxedortho.compat.protocol`: an old CNN on half of the
classes, a larger new CNN on all of them, both frozen), runs each method, and writes ``report.json`` and
``compat_tradeoff.png`` (new→old against new/new per method, the stability–plasticity picture, and FastFill's
backfilling curves).

Methods (report names; "new→old" is the method's query searched in the gallery embedded by the old model):

=================  =====================================================================================
``procrustes``     closed-form orthogonal backward map :math:`B` new → old (:func:`~relaxedortho.fit_closed_form`);
                    new→old :math:`B(\text{new})/\text{old}`, new/new :math:`B(\text{new})/B(\text{new})`
``lambda``         λ-orthogonal :math:`B` with a forward map :math:`F` (:func:`~relaxedortho.fit_pair`, Ricci et al.
                    2025), started at Procrustes; same rows as ``procrustes``
``fct``            FCT's transformation of the old gallery into the new space (:mod:`~relaxedortho.compat.fct`);
                    new→old new/:math:`h(\text{old})`, new/new the new model's own
``fastfill``       FastFill (same rows as FCT) and its backfilling curve
``slerp``          Procrustes + spherical interpolation of the query (:mod:`~relaxedortho.compat.slerp`); new/new the
                    new model's own (the model is unchanged)
``bct``            a new model trained with BCT's influence loss (:mod:`~relaxedortho.compat.bct`), old width; the
                    old classifier extended by the old class centroids (BCT Sec. 3.3)
``bct_centroids``  the same with the centroid classifier on normalised features, weight 10 (the BCT baseline of
                    the BT² code base; see the scale pitfall in :mod:`~relaxedortho.compat.bct`)
``oca``            a new model with OCA's orthogonal layer (:mod:`~relaxedortho.compat.oca`); new→old uses the first
                    :math:`d_\text{old}` coordinates, new/new all; its influence term uses the centroid classifier
``bt2``            a new model with BT²'s basis transformations (:mod:`~relaxedortho.compat.bt2`); new→old the
                    compatible part, new/new the whole embedding
=================  =====================================================================================

A method is *compatible* when new→old beats old/old on CMC top-1 and on mAP (Shen et al. 2020).
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from .protocol import ClassExtension, ProtocolConfig, SmallCNN, batched, build_protocol, protocol_config, \
    resolve_dataset

__all__ = ["run_compat_bench", "format_table", "METHODS", "REPORT_NAME", "PLOT_NAME"]

REPORT_NAME = "report.json"
PLOT_NAME = "compat_tradeoff.png"

#: Report names of the methods, in the order they run, with their family.
METHODS = {"procrustes": "map (reference)", "lambda": "map (reference)", "fct": "forward transformation",
           "fastfill": "forward transformation", "slerp": "training-free query interpolation",
           "bct": "new-model training", "bct_centroids": "new-model training", "oca": "new-model training",
           "bt2": "new-model training"}


class _Log:
    def __init__(self, enabled: bool) -> None:
        self.enabled, self.t0 = enabled, time.perf_counter()

    def __call__(self, msg: str) -> None:
        if self.enabled:
            print(f"[{time.perf_counter() - self.t0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def _row(ext: ClassExtension, baselines: dict, q_to_old, g_old, q_self, g_self, seconds: float, **extra) -> dict:
    to_old = ext.retrieval(q_to_old, g_old)
    own = ext.retrieval(q_self, g_self)
    row = {"top1_new_old": to_old["top1"], "top5_new_old": to_old["top5"], "map_new_old": to_old["map"],
           "top1_new_new": own["top1"], "top5_new_new": own["top5"], "map_new_new": own["map"],
           "compatible_top1": to_old["top1"] > baselines["old_old"]["top1"],
           "compatible_map": to_old["map"] > baselines["old_old"]["map"], "seconds": round(seconds, 2), **extra}
    row["compatible"] = bool(row["compatible_top1"] and row["compatible_map"])
    row["top1_new_old_by_group"] = ext.top1_by_group(q_to_old, g_old)
    return row


def _side(ext: ClassExtension) -> int:
    return int(ext.X.shape[-1])


def _maps(ext, cfg, baselines, methods, log, seed) -> None:
    from ..closed_form import fit_closed_form
    from ..maps import AffineMap, LambdaOrthoLinear
    from ..training import fit_pair

    Qn, Gn, Go = ext.query_new, ext.gallery_new, ext.gallery_old
    t = time.perf_counter()
    B0 = fit_closed_form(ext.train_new, ext.train_old, kind="orthogonal").to(ext.device).float()
    with torch.no_grad():
        methods["procrustes"] = _row(ext, baselines, B0(Qn), Go, B0(Qn), B0(Gn), time.perf_counter() - t,
                                     orthogonality_error=B0.orthogonality_error())
    t = time.perf_counter()
    torch.manual_seed(seed + 1)
    # α = 10 and a constant rate: the protocol measured in docs/compat.md (the library's defaults are now α = "auto"
    # and a decaying rate)
    B = LambdaOrthoLinear(cfg.new_width, cfg.old_width, lam=cfg.lam, alpha=10.0,
                          init=B0.weight.detach().clone()).to(ext.device)
    Fm = AffineMap(cfg.old_width, cfg.old_width, init="identity").to(ext.device)
    fit_pair(B, Fm, ext.train_new, ext.train_old, ext.train_labels, epochs=cfg.map_epochs, batch_size=cfg.map_batch,
             lr=cfg.map_lr, progress=False, seed=seed + 1,
             init="module", tol=None, warmup=0, lr_schedule="constant")  # the protocol's start and schedule
    B.eval()
    Fm.eval()
    with torch.no_grad():
        fwd = ext.retrieval(B(Qn), Fm(Go))
        methods["lambda"] = _row(ext, baselines, B(Qn), Go, B(Qn), B(Gn), time.perf_counter() - t, lam=cfg.lam,
                                 orthogonality_error=B.orthogonality_error(),
                                 forward_top1=fwd["top1"], forward_map=fwd["map"])
    log(f"procrustes / lambda: new->old top-1 {methods['procrustes']['top1_new_old']:.3f} / "
        f"{methods['lambda']['top1_new_old']:.3f}")


def _forward(ext, cfg, baselines, methods, backfill, log, seed) -> None:
    from ..metrics import backfilling_curve
    from .fct import fit_fastfill, fit_fct, uncertainty_order

    Qn, Gn = ext.query_new, ext.gallery_new
    # as in the reference, the transformation maps the models' raw embeddings (the classifiers' inputs);
    # retrieval normalises
    X, tr = ext.X, ext.train
    raw_old, raw_new = batched(ext.old_model.features, X[tr]), batched(ext.new_model.features, X[tr])
    raw_gallery_old = batched(ext.old_model.features, X[ext.gallery])
    kw = dict(hidden=cfg.fct_hidden, epochs=cfg.map_epochs, batch_size=cfg.map_batch, lr=cfg.map_lr)
    t = time.perf_counter()
    h = fit_fct(raw_old, raw_new, seed=seed + 2, **kw)
    with torch.no_grad():
        hG = F.normalize(h(raw_gallery_old), dim=1)
    methods["fct"] = _row(ext, baselines, Qn, hG, Qn, Gn, time.perf_counter() - t, side_information=False)
    t = time.perf_counter()
    hf = fit_fastfill(raw_old, raw_new, labels=ext.train_labels, classifier=ext.new_model.head, seed=seed + 3, **kw)
    with torch.no_grad():
        fG, s = hf(raw_gallery_old)
        fG = F.normalize(fG, dim=1)
    methods["fastfill"] = _row(ext, baselines, Qn, fG, Qn, Gn, time.perf_counter() - t, side_information=False)
    ql, gl = ext.query_labels, ext.gallery_labels
    fr = np.linspace(0.0, 1.0, 11)
    curves = {"fastfill_uncertainty": backfilling_curve(Qn, fG, Gn, ql, gl, order=uncertainty_order(s).cpu().numpy(),
                                                        fractions=fr),
              "fastfill_distance": backfilling_curve(Qn, fG, Gn, ql, gl, order="distance", fractions=fr),
              "fastfill_random": backfilling_curve(Qn, fG, Gn, ql, gl, order="random", fractions=fr, seed=seed),
              "fct_random": backfilling_curve(Qn, hG, Gn, ql, gl, order="random", fractions=fr, seed=seed),
              "fct_distance": backfilling_curve(Qn, hG, Gn, ql, gl, order="distance", fractions=fr)}
    backfill["fractions"] = fr.tolist()
    backfill["metric"] = "top1"
    for k, c in curves.items():
        backfill[k] = {"values": c.values.tolist(), "area": c.area}
    for k in ("uncertainty", "distance", "random"):
        methods["fastfill"][f"backfill_area_{k}"] = curves[f"fastfill_{k}"].area
    methods["fct"]["backfill_area_random"] = curves["fct_random"].area
    methods["fct"]["backfill_area_distance"] = curves["fct_distance"].area
    log(f"fct / fastfill: new->old top-1 {methods['fct']['top1_new_old']:.3f} / "
        f"{methods['fastfill']['top1_new_old']:.3f}; backfilling area uncertainty "
        f"{curves['fastfill_uncertainty'].area:.3f}, distance {curves['fastfill_distance'].area:.3f}, random "
        f"{curves['fastfill_random'].area:.3f}")


def _slerp(ext, baselines, methods, log) -> None:
    from .slerp import fit_slerp

    t = time.perf_counter()
    rule = fit_slerp(ext.train_new, ext.train_old, ext.train_labels)
    q = rule.query(ext.query_old, ext.query_new).float()
    methods["slerp"] = _row(ext, baselines, q, ext.gallery_old, ext.query_new, ext.gallery_new,
                            time.perf_counter() - t, alpha=rule.alpha,
                            support_top1={f"{a:g}": v for a, v in rule.support_scores.items()},
                            note="queries are embedded by both models; new/new is the new model's own")
    log(f"slerp (alpha {rule.alpha:g}): new->old top-1 {methods['slerp']['top1_new_old']:.3f}")


def _trained(ext, cfg, baselines, methods, log, seed) -> None:
    from .bct import bct_loss, centroid_classifier, class_means, synthesized_classifier
    from .bt2 import BT2Model, bt2_loss
    from .oca import OCAModel, oca_loss
    from ..training.minibatch import train_module

    X, tr, y = ext.X, ext.train, ext.train_labels
    side, n_cls = _side(ext), ext.n_classes
    raw_old = batched(ext.old_model.features, X[tr])
    head = ext.old_model.head
    W_ext = synthesized_classifier(head.weight.detach(), head.bias.detach(), ext.old_classes, raw_old, y, n_cls)
    protos = F.normalize(class_means(ext.train_old, y, n_cls), dim=1)
    centroids = centroid_classifier(ext.train_old, y, n_cls)
    sched = dict(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr)
    Q, G, Go = X[ext.query], X[ext.gallery], ext.gallery_old

    t = time.perf_counter()
    torch.manual_seed(seed + 2000)
    bct = SmallCNN(side, cfg.new_channels, cfg.new_hidden, cfg.old_width, n_cls).to(ext.device)
    train_module(bct, lambda m, xb, yb: bct_loss(m(xb), m.features(xb), yb, W_ext), [X[tr], y], seed=seed + 2000,
                 freeze=True, **sched)
    qb, gb = bct.embed(Q), bct.embed(G)
    methods["bct"] = _row(ext, baselines, qb, Go, qb, gb, time.perf_counter() - t, influence_weight=1.0)
    log(f"bct: new->old top-1 {methods['bct']['top1_new_old']:.3f}, new/new {methods['bct']['top1_new_new']:.3f}")

    t = time.perf_counter()
    torch.manual_seed(seed + 2500)
    bctc = SmallCNN(side, cfg.new_channels, cfg.new_hidden, cfg.old_width, n_cls).to(ext.device)
    train_module(bctc, lambda m, xb, yb: bct_loss(m(xb), F.normalize(m.features(xb), dim=1), yb, centroids,
                                                  influence_weight=10.0),
                 [X[tr], y], seed=seed + 2500, freeze=True, **sched)
    qb, gb = bctc.embed(Q), bctc.embed(G)
    methods["bct_centroids"] = _row(ext, baselines, qb, Go, qb, gb, time.perf_counter() - t, influence_weight=10.0)
    log(f"bct_centroids: new->old top-1 {methods['bct_centroids']['top1_new_old']:.3f}, new/new "
        f"{methods['bct_centroids']['top1_new_new']:.3f}")

    t = time.perf_counter()
    torch.manual_seed(seed + 3000)
    oca = OCAModel(SmallCNN(side, cfg.new_channels, cfg.new_hidden, cfg.new_width, n_cls), cfg.old_width,
                   n_cls).to(ext.device)
    train_module(oca, lambda m, xb, yb: oca_loss(m, xb, yb, centroids, protos, normalize_head=True), [X[tr], y],
                 seed=seed + 3000, freeze=True, **sched)
    methods["oca"] = _row(ext, baselines, oca.embed_compatible(Q), Go, oca.embed(Q), oca.embed(G),
                          time.perf_counter() - t, extra_dims=cfg.new_width - cfg.old_width,
                          orthogonality_error=oca.orthogonal.orthogonality_error())
    log(f"oca: new->old top-1 {methods['oca']['top1_new_old']:.3f}, new/new {methods['oca']['top1_new_new']:.3f}")

    t = time.perf_counter()
    torch.manual_seed(seed + 4000)
    bt2 = BT2Model(SmallCNN(side, cfg.new_channels, cfg.new_hidden, cfg.new_width, n_cls), cfg.old_width,
                   cfg.bt2_extra).to(ext.device)
    train_module(bt2, lambda m, xb, yb, ob, nb: bt2_loss(m, xb, yb, ob, nb, protos),
                 [X[tr], y, ext.train_old, ext.train_new], seed=seed + 4000, freeze=True, **sched)
    M = bt2.basis.basis_matrix()
    ortho = float(torch.linalg.matrix_norm(M.T @ M - torch.eye(M.shape[0], dtype=M.dtype)))
    methods["bt2"] = _row(ext, baselines, bt2.embed_compatible(Q), Go, bt2.embed(Q), bt2.embed(G),
                          time.perf_counter() - t, extra_dims=cfg.bt2_extra, orthogonality_error=ortho)
    log(f"bt2: new->old top-1 {methods['bt2']['top1_new_old']:.3f}, new/new {methods['bt2']['top1_new_new']:.3f}")


def run_compat_bench(out: str | os.PathLike = "compat-out", *, dataset: str = "auto", quick: bool = False,
                     seed: int = 0, data_dir=None, device: str = "cpu", progress: bool = True,
                     config: ProtocolConfig | None = None) -> dict:
    """Run every method on the class-extension protocol; write ``out/report.json`` and ``out/compat_tradeoff.png``;
    return the report.

    Args:
        out: output folder (created; checked for writability before any work).
        dataset: ``"auto"`` (Fashion-MNIST when its files are found, else the bundled digits; digits with
            ``quick``), ``"digits"`` or ``"fashion-mnist"``.
        quick: the short schedules of :func:`~relaxedortho.compat.protocol.protocol_config`.
        seed: seeds the split, every model and every map (the digits report reproduced to the last digit across
            processes on one machine; one Fashion-MNIST run did not, see the docs' compat page).
        data_dir: folder of the Fashion-MNIST files when not in the Debian package's place.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        progress: one line per stage on stderr.
        config: a full :class:`~relaxedortho.compat.protocol.ProtocolConfig` (overrides ``dataset`` and ``quick``).

    The report holds ``"baselines"`` (``old_old``, ``new_new``: top1, top5, map), ``"methods"`` (per method
    ``top1_new_old``, ``top5_new_old``, ``map_new_old``, ``top1_new_new``, ``top5_new_new``, ``map_new_new``,
    ``compatible``, ``compatible_top1``, ``compatible_map``, ``seconds`` and method-specific keys),
    ``"backfilling"`` (FastFill's and FCT's curves, CMC top-1 at 0, 0.1, …, 1 of the gallery re-embedded),
    ``"ranking"`` (methods by new→old top-1), and the configuration.
    """
    from .._checks import check_device
    from ..files import writable_dir, write_json

    t_start = time.perf_counter()
    note = None
    if config is None:
        name, note = resolve_dataset(dataset, data_dir, quick=quick)
        cfg = protocol_config(name, quick=quick)
    else:
        cfg = config
    dev = check_device(device)
    out = writable_dir(out)
    log = _Log(progress)
    if note:
        log(note)
    threads = torch.get_num_threads()
    if dev.type == "cpu" and cfg.cpu_threads:
        torch.set_num_threads(min(threads, cfg.cpu_threads))
    try:
        ext = build_protocol(cfg, seed=seed, data_dir=data_dir, device=dev, progress=progress)
        baselines = {"old_old": ext.retrieval(ext.query_old, ext.gallery_old),
                     "new_new": ext.retrieval(ext.query_new, ext.gallery_new)}
        baselines["old_old"]["top1_by_group"] = ext.top1_by_group(ext.query_old, ext.gallery_old)
        log("baselines: old/old top-1 {:.3f}, new/new top-1 {:.3f}".format(baselines["old_old"]["top1"],
                                                                          baselines["new_new"]["top1"]))
        methods: dict = {}
        backfill: dict = {}
        _maps(ext, cfg, baselines, methods, log, seed)
        _forward(ext, cfg, baselines, methods, backfill, log, seed)
        _slerp(ext, baselines, methods, log)
        _trained(ext, cfg, baselines, methods, log, seed)
    finally:
        torch.set_num_threads(threads)
    for name in methods:
        methods[name]["family"] = METHODS[name]
    ranking = sorted(methods, key=lambda k: (-methods[k]["top1_new_old"], -methods[k]["map_new_old"]))
    report = {
        "dataset": cfg.dataset, "dataset_note": note, "seed": int(seed), "device": str(dev),
        "protocol": "class extension: old model on classes {} of {}, new model (other seed, larger) on all; both "
                    "frozen except in the methods that train a new model; cosine retrieval, queries and gallery "
                    "from held-out images".format(list(ext.old_classes), list(ext.classes)),
        "n_train": int(ext.train.numel()), "n_query": int(ext.query.numel()), "n_gallery": int(ext.gallery.numel()),
        "n_query_old_classes": int(np.isin(ext.query_labels, ext.old_classes).sum()),
        "old_width": cfg.old_width, "new_width": cfg.new_width,
        "baselines": baselines, "methods": methods, "backfilling": backfill, "ranking": ranking,
        "compatibility_criterion": "new->old beats old/old on CMC top-1 and on mAP (Shen et al. 2020)",
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()},
        "seconds_models": {k: round(v, 2) for k, v in ext.seconds.items()},
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
    }
    plot = os.path.join(out, PLOT_NAME)
    _plot(report, plot)
    report["files"] = {"report": os.path.join(out, REPORT_NAME), "plot": plot}
    report["seconds_total"] = round(time.perf_counter() - t_start, 2)
    write_json(report["files"]["report"], report)
    log(f"wrote {report['files']['report']} and {plot}")
    return report


def _plot(report: dict, path: str) -> None:
    from matplotlib.figure import Figure

    from ..files import save_figure

    m, b = report["methods"], report["baselines"]
    fig = Figure(figsize=(11, 4.4), dpi=110)
    ax, ax2 = fig.subplots(1, 2)
    markers = {"map (reference)": "s", "forward transformation": "^", "training-free query interpolation": "D",
               "new-model training": "o"}
    seen = set()
    for i, (name, r) in enumerate(m.items()):
        fam = r["family"]
        ax.scatter(r["top1_new_old"], r["top1_new_new"], marker=markers.get(fam, "o"), s=40,
                   color=f"C{list(markers).index(fam) if fam in markers else 0}",
                   label=None if fam in seen else fam)
        seen.add(fam)
        ax.annotate(name, (r["top1_new_old"], r["top1_new_new"]), textcoords="offset points",
                    xytext=(4, 3 if i % 2 else -9), fontsize=7)   # alternate sides: close points stay legible
    ax.axvline(b["old_old"]["top1"], ls="--", color="gray", label="old/old (compatibility threshold)")
    ax.axhline(b["new_new"]["top1"], ls=":", color="black", label="new/new (independent new model)")
    ax.set_xlabel("new→old CMC top-1 (stability)")
    ax.set_ylabel("new/new CMC top-1 (plasticity)")
    ax.set_title(f"Stability–plasticity ({report['dataset']})")
    ax.legend(fontsize=6, loc="best")
    bf = report.get("backfilling") or {}
    if bf:
        fr = bf["fractions"]
        for key, style in (("fastfill_uncertainty", "-"), ("fastfill_distance", "--"), ("fastfill_random", ":"),
                           ("fct_random", "-.")):
            ax2.plot(fr, bf[key]["values"], style, label=f"{key.replace('_', ', ')} (area {bf[key]['area']:.3f})")
        ax2.axhline(b["new_new"]["top1"], color="black", lw=0.6)
        ax2.set_xlabel("fraction of the gallery re-embedded")
        ax2.set_ylabel("CMC top-1")
        ax2.set_title("Partial backfilling (FastFill / FCT)")
        ax2.legend(fontsize=7, loc="lower right")
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.9, wspace=0.25)
    save_figure(fig, path)


def _f(v) -> str:
    return "   n/a" if v is None else f"{v:6.3f}"


def format_table(report: dict) -> str:
    """The comparison as plain text: baselines, then one row per method, then the backfilling areas."""
    b = report["baselines"]
    lines = [f"Compatible-learning methods — {report['dataset']}, seed {report['seed']}: {report['n_query']} "
             f"queries, "
             f"{report['n_gallery']} gallery images, old width {report['old_width']}, new width "
             f"{report['new_width']} (cosine; CMC top-1, top-5, mAP)", ""]
    head = f"{'':<15}{'new->old':>8}{'':>14}   {'new/new':>7}{'':>14}  {'compatible':<11}{'new->old top-1':>14}"
    sub = (f"{'method':<15}{'top-1':>8}{'top-5':>7}{'mAP':>7}   {'top-1':>7}{'top-5':>7}{'mAP':>7}  {'':<11}"
           f"{'old cls':>7}{'new cls':>8}")
    lines += [head, sub, "-" * len(sub)]
    grp = b["old_old"].get("top1_by_group", {})
    lines.append(f"{'old/old':<15}{_f(b['old_old']['top1']):>8}{_f(b['old_old']['top5']):>7}"
                 f"{_f(b['old_old']['map']):>7}   {'':>21}  {'':<11}{_f(grp.get('old_classes')):>7}"
                 f"{_f(grp.get('new_classes')):>8}")
    lines.append(f"{'new/new':<15}{'':>8}{'':>7}{'':>7}   {_f(b['new_new']['top1']):>7}"
                 f"{_f(b['new_new']['top5']):>7}{_f(b['new_new']['map']):>7}")
    for name, r in report["methods"].items():
        lines.append(f"{name:<15}{_f(r['top1_new_old']):>8}{_f(r['top5_new_old']):>7}{_f(r['map_new_old']):>7}   "
                     f"{_f(r['top1_new_new']):>7}{_f(r['top5_new_new']):>7}{_f(r['map_new_new']):>7}  "
                     f"{'yes' if r['compatible'] else 'no':<11}{_f(r['top1_new_old_by_group']['old_classes']):>7}"
                     f"{_f(r['top1_new_old_by_group']['new_classes']):>8}")
    bf = report.get("backfilling") or {}
    if bf:
        lines.append("")
        lines.append("backfilling (area under CMC top-1 vs re-embedded fraction): " + ", ".join(
            f"{k} {bf[k]['area']:.3f}" for k in ("fastfill_uncertainty", "fastfill_distance", "fastfill_random",
                                                 "fct_random", "fct_distance") if k in bf))
    lines.append("")
    lines.append("ranking by new->old top-1: " + " > ".join(report["ranking"]))
    lines.append("compatible: new->old beats old/old on CMC top-1 and mAP (Shen et al. 2020). old cls / new cls: "
                 "top-1 of the queries of the old / the new classes.")
    return "\n".join(lines)
