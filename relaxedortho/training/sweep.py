r"""The λ trade-off: fit a λ-orthogonal map for several λ, plus the orthogonal and affine ends.

Reproduces the kind of table and plot of Ricci et al. (NeurIPS 2025, arXiv 2509.16664, Appendix E): a larger
λ fits the target better and preserves the source geometry less. For each map the table reports

- ``fit_mse``: the mean over rows of the squared row error :math:`\frac{1}{n}\lVert f(X) - Y\rVert_F^2`
  (:func:`~relaxedortho.metrics.fit_mse`, docs/math.md §6; before this release the sweep reported the element-wise
  mean, q times smaller) on the held-out rows (on the training rows when ``holdout=0``);
- ``geometry``: nearest-neighbour agreement — the share of held-out points whose nearest other point
  (Euclidean) is the same in the mapped space as in the source space (1 for an orthogonal map, with or
  without bias, up to ties; see :func:`neighbour_agreement`);
- ``orthogonality_error``: :math:`\lVert G - I\rVert_F` of the trained map;
- ``metric``: ``metric(mapped, target, labels)`` when a metric is given (or, with ``labels``, the default
  CMC top-1 of :func:`~relaxedortho.training.trainer.default_retrieval_metric`).

Each row also records, outside :data:`COLUMNS`, the map's start (``init``: the name of the data-driven start or
``"warm start"``), ``converged`` and ``epochs_run`` from its :class:`~relaxedortho.training.TrainHistory`, and
the seconds its training took. The table keeps the trained maps (:attr:`SweepTable.maps`), their histories and
the split (:attr:`SweepTable.train_index`, :attr:`SweepTable.eval_index`), so callers (the ``relaxedortho sweep``
command, the demo) add their own columns without training again.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from .._checks import check_nonnegative
from ..metrics.fit_error import fit_mse
from ..metrics.geometry import neighbour_agreement  # re-exported: its public home before metrics/geometry.py
from .data import RowArray, check_same_length
from .initialization import check_init
from .precision import resolve_device
from .trainer import default_retrieval_metric, fit_alignment

COLUMNS = ("map", "lam", "fit_mse", "geometry", "orthogonality_error", "metric")


@dataclass
class SweepTable:
    """The rows of a λ sweep (one dict per map, keys :data:`COLUMNS`), ends included.

    Attributes:
        rows: one dict per map, in sweep order (⊥, λ ascending, ∞).
        maps: the trained map modules, in the order of ``rows``.
        histories: their :class:`~relaxedortho.training.TrainHistory`, in the order of ``rows``.
        train_index, eval_index: the rows of the data the maps were trained and evaluated on (the same rows
            when ``holdout=0``).
    """

    rows: list[dict] = field(default_factory=list)
    maps: list = field(default_factory=list, repr=False)
    histories: list = field(default_factory=list, repr=False)
    train_index: torch.Tensor | None = field(default=None, repr=False)
    eval_index: torch.Tensor | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def column(self, name: str) -> list:
        return [r[name] for r in self.rows]

    def to_markdown(self, digits: int = 4) -> str:
        """A Markdown table; λ is ``⊥`` for the orthogonal end and ``∞`` for the affine end."""
        def fmt(key: str, v: Any) -> str:
            if key == "lam":
                return "⊥" if v is None else ("∞" if math.isinf(v) else f"{v:g}")
            if isinstance(v, float):
                return "–" if math.isnan(v) else f"{v:.{digits}g}"
            return str(v)

        head = "| " + " | ".join(COLUMNS) + " |"
        sep = "|" + "|".join("---" for _ in COLUMNS) + "|"
        body = ["| " + " | ".join(fmt(k, r[k]) for k in COLUMNS) + " |" for r in self.rows]
        return "\n".join([head, sep, *body])


def _split(n: int, holdout: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    n_eval = int(round(holdout * n))
    if holdout > 0 and (n_eval < 2 or n - n_eval < 1):
        raise ValueError(f"holdout={holdout} leaves too few rows for training or evaluation (n={n})")
    if n_eval == 0:
        return perm, perm
    return perm[n_eval:], perm[:n_eval]


def lambda_sweep(source: Any, target: Any, lams: Sequence[float], *, epochs: int = 50, batch_size: int = 256,
                 lr: float | None = None, bias: bool = True, alpha: float | None = None, holdout: float = 0.2,
                 labels: Any = None, metric: Callable | None = None, ends: bool = True, seed: int = 0,
                 device: Any = "auto", progress: bool = False, init: str = "auto", warm_start: bool = True,
                 dtype: torch.dtype = torch.float32, geometry: bool = True, **fit_options: Any) -> SweepTable:
    r"""Fit :class:`~relaxedortho.LambdaOrthoLinear` for each λ in ``lams`` (and, with ``ends``, the orthogonal
    :class:`~relaxedortho.OrthogonalLinear` and the affine :class:`~relaxedortho.AffineMap`) and tabulate.

    Every map is trained by :func:`~relaxedortho.fit_alignment` with the same data, seed, epochs, batch size
    and lr on the training rows; the table's columns are evaluated on the ``holdout`` share of rows (module
    documentation). Returns a :class:`SweepTable` ordered ⊥, λs ascending, ∞.

    Starts. The orthogonal and affine ends and the smallest λ start from the data (``init``, default
    ``"auto"``: Procrustes, least squares and the relaxed closed form at that λ; see
    :mod:`relaxedortho.training.initialization`). With ``warm_start`` (default) every larger λ starts from the
    trained map of the previous λ (a continuation path, ``init="module"`` for it): that map lies in the
    larger λ's ball, so the larger λ starts where the smaller one ended and the sweep's maps are nested the way
    the trade-off assumes — the training fit does not get worse as λ grows and the geometry is not regained,
    up to the noise of stochastic training. ``warm_start=False`` starts every λ from the data independently.

    Args:
        source, target: paired features ``n x p`` and ``n x q`` (tensors, arrays or memory maps — the sweep
            loads them whole for evaluation).
        lams: λ values >= 0; ``math.inf`` is the affine end (an :class:`~relaxedortho.AffineMap`, once, also
            with ``ends``).
        alpha: sigmoid steepness of the λ-maps (default the map's default).
        labels: class labels of the rows for the default retrieval metric (CMC top-1 of mapped source vs
            target); ``metric`` overrides it.
        lr: learning rate (default: :func:`~relaxedortho.training.learning_rate.default_lr` of the maps).
        init: the start of the maps that do not warm-start (see above).
        warm_start: start each λ > the smallest from the previous λ's trained map.
        dtype: floating type the data are loaded in and the maps trained in (default float32).
        geometry: compute the ``geometry`` column (:math:`O(n^2)` in the evaluated rows); ``False`` leaves it NaN.
        **fit_options: passed to :func:`~relaxedortho.fit_alignment` (``amp``, ``clip_grad_norm``, ``tol``, ...).
    """
    from ..maps import AffineMap, LambdaOrthoLinear, OrthogonalLinear

    device = resolve_device(device)  # before any data is read
    check_init(init)
    if isinstance(lams, (str, bytes)) or not hasattr(lams, "__iter__"):
        raise TypeError(f"lams must be a sequence of λ values, got {type(lams).__name__} {lams!r} (wrap one value in "
                        f"a list)")
    lam_values = sorted(check_nonnegative(v, f"lams[{i}]", allow_inf=True) for i, v in enumerate(lams))
    affine_end = ends or (bool(lam_values) and math.isinf(lam_values[-1]))
    lam_values = [v for v in lam_values if not math.isinf(v)]
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    if not lam_values and not ends:
        raise ValueError("nothing to sweep: lams is empty and ends=False")
    if metric is not None and not callable(metric):
        raise TypeError(f"metric must be a callable metric(mapped, target, labels) -> float, got "
                        f"{type(metric).__name__}")
    holdout = check_nonnegative(holdout, "holdout")
    if holdout >= 1:
        raise ValueError(f"holdout must be in [0, 1), got {holdout}")
    arrays = [RowArray(source, "source"), RowArray(target, "target")]
    if labels is not None:
        arrays.append(RowArray(labels, "labels", labels=True))
    n = check_same_length(arrays)
    X = arrays[0].all_rows(torch.device("cpu"), dtype)
    Y = arrays[1].all_rows(torch.device("cpu"), dtype)
    L = arrays[2].all_rows(torch.device("cpu"), None) if labels is not None else None
    train_idx, eval_idx = _split(n, holdout, seed)
    Xtr, Ytr, Xev, Yev = X[train_idx], Y[train_idx], X[eval_idx], Y[eval_idx]
    Lev = L[eval_idx] if L is not None else None
    if metric is None and labels is not None:
        metric = default_retrieval_metric
    p, q = X.shape[1], Y.shape[1]

    specs: list[tuple[str, float | None, Callable]] = []
    if ends:
        specs.append(("orthogonal", None, lambda: OrthogonalLinear(p, q, bias=bias, dtype=dtype)))
    lam_kwargs = {} if alpha is None else {"alpha": alpha}
    for lam in lam_values:
        specs.append(("lambda", lam, lambda lam=lam: LambdaOrthoLinear(p, q, bias=bias, lam=lam, dtype=dtype,
                                                                       **lam_kwargs)))
    if affine_end:
        specs.append(("affine", math.inf, lambda: AffineMap(p, q, bias=bias, dtype=dtype)))

    table = SweepTable(train_index=train_idx, eval_index=eval_idx)
    previous = None  # the last trained λ map (warm start of the next λ)
    for kind, lam, build in specs:
        t = time.perf_counter()
        torch.manual_seed(seed)
        module = build()
        start = init
        if kind == "lambda" and warm_start and previous is not None:
            module.load_matrix_(previous.weight.detach(), None if previous.bias is None else previous.bias.detach())
            start = "module"
        h = fit_alignment(module, Xtr, Ytr, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
                          progress=progress, init=start, **fit_options)
        if kind == "lambda":
            previous = module
        seconds = time.perf_counter() - t
        dev = next(module.parameters()).device
        with torch.no_grad():
            mapped = module(Xev.to(dev))
        yev = Yev.to(dev)
        row = {"map": kind, "lam": lam, "fit_mse": fit_mse(mapped, yev),
               "geometry": neighbour_agreement(Xev.to(dev), mapped) if geometry else math.nan,
               "orthogonality_error": float(module.orthogonality_error()),
               "metric": float(metric(mapped, yev, None if Lev is None else Lev.to(dev))) if metric else math.nan,
               "init": "warm start" if start == "module" and init != "module" else h.init["init"],
               "converged": h.converged, "epochs_run": h.epochs, "seconds": round(seconds, 3)}
        table.rows.append(row)
        table.maps.append(module)
        table.histories.append(h)
    return table


def plot_tradeoff(table: SweepTable, path: Any = None, *, title: str | None = None):
    """Plot the sweep like the paper's Appendix E: fit (held-out MSE) and preserved geometry against λ.

    The x axis lists the maps in order ⊥, λ values, ∞; the left axis the held-out MSE, the right axis the
    neighbour agreement (and the metric, when the table has one), with ‖G − I‖_F annotated. matplotlib is
    imported here, with the non-interactive Agg backend when none is chosen yet. Saves to ``path`` when
    given; returns the figure.
    """
    if not isinstance(table, SweepTable):
        raise TypeError(f"table must be the SweepTable of lambda_sweep, got {type(table).__name__}")
    if not len(table):
        raise ValueError("table is empty")
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    labels = ["⊥" if r["lam"] is None else ("∞" if math.isinf(r["lam"]) else f"{r['lam']:g}") for r in table]
    xs = list(range(len(labels)))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.8 * len(xs) + 2), 3.6))
    ax.plot(xs, table.column("fit_mse"), "o-", color="tab:blue", label="held-out MSE (fit)")
    ax.set_xlabel("λ")
    ax.set_ylabel("held-out MSE", color="tab:blue")
    ax.set_xticks(xs, labels)
    ax2 = ax.twinx()
    ax2.plot(xs, table.column("geometry"), "s--", color="tab:red", label="NN agreement (geometry)")
    metric = table.column("metric")
    if not all(isinstance(m, float) and math.isnan(m) for m in metric):
        ax2.plot(xs, metric, "^:", color="tab:green", label="metric")
    ax2.set_ylabel("geometry / metric", color="tab:red")
    for x, r in zip(xs, table):
        ax.annotate(f"{r['orthogonality_error']:.2g}", (x, r["fit_mse"]), textcoords="offset points",
                    xytext=(0, 6), ha="center", fontsize=7)
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="best")
    ax.set_title(title or "λ trade-off (labels: ‖G − I‖_F)")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
