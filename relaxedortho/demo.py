r"""The demo: backward-compatible retrieval on real data, across the spectrum of maps.

Scenario (class extension, Ricci et al., "λ-Orthogonality Regularization for Compatible Representation
Learning", NeurIPS 2025, arXiv 2509.16664, Sec. 4 and Table 1a; Shen et al., "Towards backward-compatible
representation learning", CVPR 2020, for the protocol):

1. An **old** model (a small MLP, one hidden layer) is trained on the images of half of the classes; a
   **new** model (another seed, one more hidden layer; same feature width by default) on all classes.
   Both are then frozen. Features are their L2-normalised embeddings (the layer before the classifier).
2. Held-out images are split into a query set and a gallery set (stratified). The gallery is embedded
   once with the old model ("old gallery"); queries come from the new model.
3. Backward maps :math:`B:` new → old are fitted on the training images' paired features
   (:math:`\min_B \tfrac1n\sum_i \lVert B(h^{new}_i) - h^{old}_i\rVert^2`, docs/math.md §6), across the spectrum:
   closed-form orthogonal Procrustes (Schönemann 1966), a trained hard orthogonal map
   (:class:`~relaxedortho.OrthogonalLinear`), λ-orthogonal maps (:class:`~relaxedortho.LambdaOrthoLinear`)
   for several λ, the free affine map (trained and in closed form), and the nested relaxed *band*
   maps :math:`\sigma_i(W)\in[\sqrt{(1-\varepsilon)_+}, \sqrt{1+\varepsilon}]` (docs/math.md §5). A forward map
   :math:`F:` old → new-aligned space is fitted to :math:`\lVert F(h^{old}) - B_\perp(h^{new})\rVert^2`.
   Trained maps are default-constructed and handed to :func:`~relaxedortho.fit_alignment` with epochs, batch
   size and (by default) the library's learning rate: training starts from the library's data-driven start
   (:mod:`relaxedortho.training.initialization`: Procrustes for hard maps, the relaxed closed form at radius λ
   or centred Procrustes for λ maps, least squares for affine maps).
4. Retrieval (cosine similarity, CMC top-k and mAP, docs/math.md §7) is measured for old/old, new/old
   (unmapped; only when the widths agree), new/new, and per map :math:`B(new)/old` (query mapped,
   old gallery) and :math:`B(new)/B(new)` (both mapped). A map is *compatible* when
   :math:`M(B(\phi^Q_{new}), \phi^G_{old}) > M(\phi^Q_{old}, \phi^G_{old})` (Shen et al. 2020).

The ``"text"`` dataset is the **model-upgrade** scenario on real pretrained encoders: steps 1–2 are replaced by
the shipped embeddings of :mod:`relaxedortho.datasets` (old: all-MiniLM-L6-v2, new: multilingual-e5-small, on
Debian package descriptions; short descriptions are the queries, long ones the gallery, a query's relevant
document is its own package's), and steps 3–4 run unchanged on them; no model is trained.

Band maps are fitted by projected gradient with the singular-value clip as the projection (exact Euclidean
projection onto the band), started from the clipped least-squares closed form and warm-started along the
path from the tightest band to the loosest. With step :math:`1/L` every projected-gradient step does not
increase the objective, and each band's start is feasible for the next, looser band, so a looser band never
fits the training pairs worse — the guarantee the exact optimum has.

Guarantees checked by the tests: a square orthogonal map without bias preserves every cosine similarity, so
:math:`B(new)/B(new)` equals new/new exactly (up to ties); the band path is monotone.

Call :func:`run_demo` or ``relaxedortho demo``; the report (``report.json``) and the plot of the λ
trade-off (``lambda_tradeoff.png``) go to the output folder.
"""
from __future__ import annotations

import math
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from torch import nn

from ._checks import check_device
from .files import save_figure, writable_dir, write_json
from .data import DATASETS, load_digits, load_fashion_mnist
from .exceptions import ConvergenceWarning

from .closed_form import fit_closed_form
from .metrics import cmc, mean_average_precision
from .training import fit_alignment

REPORT_NAME = "report.json"
PLOT_NAME = "lambda_tradeoff.png"


@dataclass
class DemoConfig:
    """Sizes and schedules of one demo scenario (see :func:`scenario`)."""

    dataset: str = "digits"
    width: int = 32                 #: feature width of both models (old and, by default, new)
    new_width: int | None = None    #: a different feature width for the new model
    hidden: int = 128               #: hidden units of the MLPs
    model_epochs: int = 40
    model_lr: float = 3e-3
    model_batch: int = 64
    map_epochs: int = 60
    #: learning rate of the trained maps; ``None``: the library's default (:func:`relaxedortho.training.default_lr`)
    map_lr: float | None = None
    map_batch: int = 256
    #: give the hard maps (closed-form and trained) a bias: Procrustes on centred data. Needed for embeddings
    #: with a large common offset (the text encoders), where a bias-free orthogonal map cannot fit the means
    hard_bias: bool = False
    train_fraction: float = 0.6     #: share of images for the models and the maps; the rest is split into query and gallery
    query_fraction: float = 0.3     #: share of the held-out images used as queries
    max_train: int | None = None    #: cap on training images (Fashion-MNIST)
    max_eval: int | None = None     #: cap on held-out images (Fashion-MNIST)
    lams: tuple = (0.0, 0.5, 1.0, 2.0, 4.0)
    band_eps: tuple = (0.05, 0.2, 0.5, 1.0, 3.0)
    band_steps: int = 200
    old_classes: tuple = field(default_factory=tuple)
    #: text dataset: what makes a gallery document relevant to a query — ``"item"`` (its own package's
    #: description) or ``"section"`` (any package of its Debian section)
    relevance: str = "item"
    #: CPU threads while the demo runs. The digits matrices are tiny, so one thread avoids the synchronisation
    #: overhead, which dominates on a busy machine; ``None`` keeps PyTorch's setting.
    cpu_threads: int | None = 1


def scenario(dataset: str = "digits", *, quick: bool = False, new_width: int | None = None) -> DemoConfig:
    """The default configuration for ``dataset`` (``quick``: fewer epochs, for tests)."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {dataset!r}")
    if dataset == "digits":
        cfg = DemoConfig()
    elif dataset == "text":
        if new_width is not None:
            raise ValueError("new_width applies to the image datasets; the text encoders' widths are fixed "
                             "by the shipped embeddings")
        cfg = DemoConfig(dataset="text", width=384, map_epochs=15, map_batch=256, band_steps=25, hard_bias=True)
    else:
        cfg = DemoConfig(dataset="fashion-mnist", width=64, hidden=192, model_epochs=5, model_batch=128,
                         map_epochs=10, map_batch=256, max_train=12000, max_eval=5000,
                         query_fraction=0.2, band_steps=150, cpu_threads=None)
    if quick:
        cfg.model_epochs = max(2, cfg.model_epochs // 4)
        cfg.map_epochs = max(3, cfg.map_epochs // 4)
        cfg.band_steps = max(20, cfg.band_steps // 4)
        cfg.lams = (0.0, 1.0, 4.0)
        cfg.band_eps = (0.05, 0.5, 3.0)
        if dataset == "text":      # each band step is an SVD of a 384 x 384 matrix
            cfg.band_steps = 5
    if new_width is not None:
        if isinstance(new_width, bool) or not isinstance(new_width, int) or new_width <= 0:
            raise ValueError(f"new_width must be a positive integer, got {new_width!r}")
        cfg.new_width = new_width
    return cfg


# ----------------------------------------------------------------------------------------------- models
class MLP(nn.Module):
    """Feature extractor ``depth`` × (Linear, ReLU) → Linear(width) plus a linear classifier head."""

    def __init__(self, in_features: int, hidden: int, depth: int, width: int, n_classes: int) -> None:
        super().__init__()
        layers, d = [], in_features
        for _ in range(depth):
            layers += [nn.Linear(d, hidden), nn.ReLU()]
            d = hidden
        layers.append(nn.Linear(d, width))
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    @torch.no_grad()
    def embed(self, x: torch.Tensor, batch: int = 4096) -> torch.Tensor:
        """L2-normalised embeddings (float32)."""
        outs = [self.body(x[i:i + batch]) for i in range(0, x.shape[0], batch)]
        return nn.functional.normalize(torch.cat(outs), dim=1)


def _train_classifier(model: MLP, X: torch.Tensor, y: torch.Tensor, cfg: DemoConfig, seed: int) -> MLP:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.model_lr)
    n = X.shape[0]
    model.train()
    for _ in range(cfg.model_epochs):
        perm = torch.randperm(n, generator=g).to(X.device)
        for s in range(0, n, cfg.model_batch):
            idx = perm[s:s + cfg.model_batch]
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ----------------------------------------------------------------------------------------------- band maps
def _clip_sv(W: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    U, s, Vh = torch.linalg.svd(W, full_matrices=False)
    return (U * s.clamp(lo, hi)) @ Vh


def fit_band_path(X: torch.Tensor, Y: torch.Tensor, eps_values, steps: int = 200) -> list:
    r"""Affine maps :math:`xW + b` minimising :math:`\tfrac1n\lVert XW + \mathbf 1b - Y\rVert_F^2` subject to
    :math:`\sigma_i(W)\in[\sqrt{\max(0, 1-\varepsilon)}, \sqrt{1+\varepsilon}]` (spectral
    :math:`\lVert W^\top W - I\rVert_2\le\varepsilon` for square/expanding ``W``; docs/math.md §5), for increasing ε.

    The bias is optimal in closed form (:math:`b = \mu_Y - \mu_X W`), so the problem is solved on centred
    data. Start: the least-squares map with its singular values clipped (exact when :math:`X^\top X = cI`).
    Then ``steps`` projected-gradient steps of size :math:`1/L`, :math:`L = 2\sigma_{max}(X_c^\top X_c)/n`,
    with the clip as projection; each band after the first also considers the previous band's solution as
    a start (it is feasible there) and keeps the better start, so the fitted error is non-increasing in ε.
    Returns a list of ``(eps, W (p×q), b (q,), mse)`` in float64, ``eps_values`` sorted ascending.
    """
    X64, Y64 = X.double(), Y.double()
    mx, my = X64.mean(0), Y64.mean(0)
    Xc, Yc = X64 - mx, Y64 - my
    n = Xc.shape[0]
    XtX, XtY = Xc.mT @ Xc / n, Xc.mT @ Yc / n
    L = 2 * float(torch.linalg.eigvalsh(XtX)[-1])
    W_ls = torch.linalg.lstsq(XtX, XtY).solution

    def mse(W):
        return float(((Xc @ W - Yc) ** 2).sum() / n)

    out, prev = [], None
    for eps in sorted(float(e) for e in eps_values):
        lo, hi = math.sqrt(max(0.0, 1.0 - eps)), math.sqrt(1.0 + eps)
        W = _clip_sv(W_ls, lo, hi)
        if prev is not None and mse(prev) < mse(W):
            W = prev
        for _ in range(steps):
            W = _clip_sv(W - (2.0 / L) * (XtX @ W - XtY), lo, hi)
        prev = W
        out.append((eps, W, my - mx @ W, mse(W)))
    return out


# ----------------------------------------------------------------------------------------------- evaluation
def _retrieval(query, gallery, ql, gl) -> dict:
    acc = cmc(query, gallery, ql, gl, topk=(1, 5))
    return {"top1": float(acc[1]), "top5": float(acc[5]),
            "map": float(mean_average_precision(query, gallery, ql, gl))}


def _fit_mse(module: nn.Module, X: torch.Tensor, Y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(((module(X).double() - Y.double()) ** 2).sum(1).mean())


class _Progress:
    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total, self.i, self.t0 = enabled, total, 0, time.perf_counter()

    def step(self, msg: str) -> None:
        self.i += 1
        if self.enabled:
            print(f"[{self.i:>2}/{self.total}] {time.perf_counter() - self.t0:6.1f}s  {msg}", file=sys.stderr,
                  flush=True)


# ----------------------------------------------------------------------------------------------- main entry
def run_demo(out: str | os.PathLike = "demo-out", *, dataset: str = "digits", data_dir=None, device: str = "cpu",
             seed: int = 0, quick: bool = False, new_width: int | None = None, progress: bool = True,
             config: DemoConfig | None = None) -> dict:
    """Run the class-extension demo, write ``out/report.json`` and ``out/lambda_tradeoff.png``; return the report.

    Args:
        out: output folder (created if needed; checked for writability before any work).
        dataset: ``"digits"`` (bundled with scikit-learn, default), ``"fashion-mnist"`` (local files,
            see :mod:`relaxedortho.data`) or ``"text"`` (shipped sentence-encoder embeddings, see
            :mod:`relaxedortho.datasets`; the report adds ``old_model``, ``new_model``, ``corpus`` and
            ``relevance``).
        data_dir: folder of the Fashion-MNIST files when not in the Debian location.
        device: ``"cpu"`` or ``"cuda"`` (or ``"cuda:N"``).
        seed: seeds the split, both models and every map; the same seed gives the same report numbers on
            the same machine and device.
        quick: reduced epochs and fewer λ / ε values (for tests).
        new_width: feature width of the new model (default: the old width). When it differs the unmapped
            new/old comparison is not defined and is reported as not applicable (``null``).
        progress: print one line per stage on stderr.
        config: a full :class:`DemoConfig` (overrides ``dataset``, ``quick`` and ``new_width``).
    """
    t_start = time.perf_counter()
    cfg = config or scenario(dataset, quick=quick, new_width=new_width)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    dev = check_device(device)
    out = writable_dir(out)
    threads = torch.get_num_threads()
    if dev.type == "cpu" and cfg.cpu_threads:
        torch.set_num_threads(min(threads, cfg.cpu_threads))
    try:
        return _run(out, cfg, dev, int(seed), data_dir, progress, t_start)
    finally:
        torch.set_num_threads(threads)


def _run(out, cfg, dev, seed, data_dir, progress, t_start) -> dict:
    if cfg.dataset == "text":
        return _run_text(out, cfg, dev, seed, progress, t_start)
    from sklearn.model_selection import train_test_split

    n_maps = 4 + len(cfg.lams) + len(cfg.band_eps)
    prog = _Progress(progress, 4 + n_maps + 2)
    torch.manual_seed(seed)

    # -- data and splits
    if cfg.dataset == "digits":
        X_all, y_all = load_digits()
    else:
        Xtr, ytr = load_fashion_mnist(data_dir, "train")
        Xte, yte = load_fashion_mnist(data_dir, "test")
        X_all, y_all = np.concatenate([Xtr, Xte]), np.concatenate([ytr, yte])
    classes = np.unique(y_all)
    old_classes = tuple(int(c) for c in (cfg.old_classes or classes[: len(classes) // 2]))
    idx_tr, idx_ev = train_test_split(np.arange(len(y_all)), train_size=cfg.train_fraction, stratify=y_all,
                                      random_state=seed)
    if cfg.max_train and len(idx_tr) > cfg.max_train:
        idx_tr = train_test_split(idx_tr, train_size=cfg.max_train, stratify=y_all[idx_tr], random_state=seed)[0]
    if cfg.max_eval and len(idx_ev) > cfg.max_eval:
        idx_ev = train_test_split(idx_ev, train_size=cfg.max_eval, stratify=y_all[idx_ev], random_state=seed)[0]
    idx_g, idx_q = train_test_split(idx_ev, test_size=cfg.query_fraction, stratify=y_all[idx_ev],
                                    random_state=seed)
    X = torch.from_numpy(X_all).to(dev)
    y = torch.from_numpy(y_all).to(dev)
    tr = torch.from_numpy(np.sort(idx_tr)).to(dev)
    old_mask = torch.isin(y[tr], torch.tensor(old_classes, device=dev))
    prog.step(f"{cfg.dataset}: {len(idx_tr)} training images, {len(idx_q)} queries, {len(idx_g)} gallery "
              f"images; old classes {list(old_classes)}")

    # -- models
    torch.manual_seed(seed)
    new_w = cfg.new_width or cfg.width
    old = MLP(X.shape[1], cfg.hidden, 1, cfg.width, len(classes)).to(dev)
    _train_classifier(old, X[tr][old_mask], y[tr][old_mask], cfg, seed)
    prog.step(f"old model (1 hidden layer, width {cfg.width}) trained on {int(old_mask.sum())} images of "
              f"{len(old_classes)} classes")
    torch.manual_seed(seed + 1000)
    new = MLP(X.shape[1], cfg.hidden, 2, new_w, len(classes)).to(dev)
    _train_classifier(new, X[tr], y[tr], cfg, seed + 1000)
    prog.step(f"new model (2 hidden layers, width {new_w}) trained on {len(idx_tr)} images of all "
              f"{len(classes)} classes")

    q, g = torch.from_numpy(idx_q).to(dev), torch.from_numpy(idx_g).to(dev)
    ql, gl = y[q].cpu().numpy(), y[g].cpu().numpy()
    H_new, H_old = new.embed(X[tr]), old.embed(X[tr])          # training pairs for the maps
    Q_new, Q_old, G_new, G_old = new.embed(X[q]), old.embed(X[q]), new.embed(X[g]), old.embed(X[g])
    about = {"protocol": "class extension: old model on classes {}, new model on all; cosine retrieval; "
                         "queries from held-out images, gallery from the rest".format(list(old_classes)),
             "n_train": int(len(idx_tr)), "n_query": int(len(idx_q)), "n_gallery": int(len(idx_g))}
    return _maps_and_report(out, cfg, dev, seed, prog, t_start, about, new_w, ql, gl,
                            H_new, H_old, Q_new, Q_old, G_new, G_old)


def _run_text(out, cfg, dev, seed, progress, t_start) -> dict:
    """The model-upgrade scenario on the shipped sentence-encoder embeddings (:mod:`relaxedortho.datasets`)."""
    from .datasets import load_text_embeddings

    prog = _Progress(progress, 4 + len(cfg.lams) + len(cfg.band_eps) + 4)
    torch.manual_seed(seed)
    d = load_text_embeddings()
    ql, gl = d.labels(cfg.relevance)

    def t(x):
        return torch.from_numpy(x).to(dev)

    H_new, H_old, Q_new, Q_old, G_new, G_old = map(t, (d.train_new, d.train_old, d.query_new, d.query_old,
                                                       d.gallery_new, d.gallery_old))
    cfg = replace(cfg, width=H_old.shape[1], new_width=H_new.shape[1])
    relevance = ("a query's relevant document is its own package's" if cfg.relevance == "item"
                 else "relevant documents are those of the query's Debian section")
    about = {"protocol": f"model upgrade: gallery indexed by the old encoder, queries by the new one; cosine "
                         f"retrieval of long descriptions by short descriptions; {relevance}",
             "n_train": int(H_new.shape[0]), "n_query": int(Q_new.shape[0]), "n_gallery": int(G_new.shape[0]),
             "old_model": d.old_model, "new_model": d.new_model, "corpus": d.corpus, "relevance": cfg.relevance}
    prog.step(f"text: {about['n_train']} training pairs, {about['n_query']} queries, {about['n_gallery']} gallery "
              f"documents; old {d.old_model} ({cfg.width}-d), new {d.new_model} ({cfg.new_width}-d)")
    return _maps_and_report(out, cfg, dev, seed, prog, t_start, about, cfg.new_width, ql, gl,
                            H_new, H_old, Q_new, Q_old, G_new, G_old)


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

    from .maps import AffineMap, LambdaOrthoLinear, OrthogonalLinear

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
    for i, lam in enumerate(cfg.lams):
        t = time.perf_counter()
        torch.manual_seed(seed + 10 + i)
        m = trained(LambdaOrthoLinear(new_w, cfg.width, lam=float(lam)).to(dev), 10 + i)
        record(f"lambda={lam:g}", "lambda", m, time.perf_counter() - t, lam=float(lam), solver="trained",
               **runs[id(m)])
    t = time.perf_counter()
    torch.manual_seed(seed + 2)
    m = trained(AffineMap(new_w, cfg.width).to(dev), 2)
    record("affine", "affine", m, time.perf_counter() - t, solver="trained", **runs[id(m)])  # λ = ∞
    t = time.perf_counter()
    record("least_squares", "closed_form", fit_closed_form(H_new, H_old, kind="affine").to(dev),
           time.perf_counter() - t, solver="closed form", constraint="none")
    t = time.perf_counter()
    path = fit_band_path(H_new, H_old, cfg.band_eps, steps=cfg.band_steps)
    per = (time.perf_counter() - t) / max(1, len(path))
    for eps, W, b, mse in path:
        m = AffineMap.from_matrix(W.mT.float(), b.float()).to(dev)
        record(f"band eps={eps:g}", "closed_form", m, per, band_eps=eps, solver="band path",
               constraint=f"sigma in [{math.sqrt(max(0, 1 - eps)):.3g}, {math.sqrt(1 + eps):.3g}]",
               band_objective=mse)

    # -- forward map F: old -> new-aligned space (the space of the orthogonal B)
    t = time.perf_counter()
    B = modules["orthogonal"]
    with torch.no_grad():
        target = B(H_new)
        BQ = B(Q_new)
    torch.manual_seed(seed + 3)
    F_map = AffineMap(cfg.width, cfg.width).to(dev)
    fit_alignment(F_map, H_old, target, epochs=cfg.map_epochs, batch_size=cfg.map_batch, lr=cfg.map_lr,
                  progress=False)
    with torch.no_grad():
        FG = F_map(G_old)
    fwd = _retrieval(BQ, FG, ql, gl)
    forward = {"backward_map": "orthogonal", "top1": fwd["top1"], "top5": fwd["top5"], "map": fwd["map"],
               "fit_mse_train": _fit_mse(F_map, H_old, target),
               "orthogonality_error": F_map.orthogonality_error(),
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


# ----------------------------------------------------------------------------------------------- output
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
        lines.append(f"{'B_orth(new)/F(old) forward':<44}{_fmt(f['top1'])}{_fmt(f['map'])}")
    lines.append("")
    lines.append("compatible: B(new)/old beats old/old on both CMC top-1 and mAP (Shen et al. 2020).")
    if any(e.get("converged") is False for _, e in _spectrum_rows(report)):
        lines.append("not converged: the training loss still fell by more than tol over the last epoch (more "
                     "epochs would fit better).")
    return "\n".join(lines)
