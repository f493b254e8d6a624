r"""The λ trade-off: fit a λ-orthogonal map for several λ, plus the orthogonal and affine ends.

Reproduces the kind of table and plot of Ricci et al. (NeurIPS 2025, arXiv 2509.16664, Appendix E): a larger
λ fits the target better and preserves the source geometry less. For each map the table reports

- ``fit_mse``: element-wise mean squared error :math:`\frac{1}{nq}\lVert f(X) - Y\rVert_F^2` on the held-out
  rows (on the training rows when ``holdout=0``);
- ``geometry``: nearest-neighbour agreement — the share of held-out points whose nearest other point
  (Euclidean) is the same in the mapped space as in the source space (1 for an orthogonal map, with or
  without bias, up to ties; see :func:`neighbour_agreement`);
- ``orthogonality_error``: :math:`\lVert G - I\rVert_F` of the trained map;
- ``metric``: ``metric(mapped, target, labels)`` when a metric is given (or, with ``labels``, the default
  CMC top-1 of :func:`~relaxedortho.training.trainer.default_retrieval_metric`).

Each row also records, outside :data:`COLUMNS`, the map's start (``init``: the name of the data-driven start or
``"warm start"``), ``converged`` and ``epochs_run`` from its :class:`~relaxedortho.training.TrainHistory`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from .._checks import as_float_tensor, check_nonnegative
from .data import RowArray, check_same_length
from .initialization import check_init
from .precision import resolve_device
from .trainer import default_retrieval_metric, fit_alignment

COLUMNS = ("map", "lam", "fit_mse", "geometry", "orthogonality_error", "metric")


def neighbour_agreement(source: torch.Tensor, mapped: torch.Tensor, chunk: int = 2048) -> float:
    r"""Share of rows whose nearest other row (Euclidean) is the same in ``source`` and in ``mapped``.

    .. math:: \frac1n \sum_i \mathbb 1\big[\arg\min_{j\ne i} \lVert x_i - x_j\rVert
              = \arg\min_{j\ne i}\lVert f(x_i) - f(x_j)\rVert\big]

    Computed in float64, in chunks of rows (memory :math:`O(\text{chunk}\cdot n)`). A measure of preserved
    geometry: an isometry (orthogonal map plus any translation) keeps every distance and scores 1 (up to
    ties); a map that distorts the geometry scores less.

    Example:
        >>> import torch
        >>> x = torch.randn(50, 6, dtype=torch.float64)
        >>> neighbour_agreement(x, 3.0 * x + 1.0)
        1.0
    """
    def nn_index(z: torch.Tensor) -> torch.Tensor:
        z = z.double()
        sq = (z * z).sum(dim=1)
        out = []
        for lo in range(0, z.shape[0], chunk):
            d = sq[lo:lo + chunk, None] + sq[None, :] - 2.0 * (z[lo:lo + chunk] @ z.T)
            rows = torch.arange(lo, min(lo + chunk, z.shape[0]), device=z.device)
            d[rows - lo, rows] = math.inf
            out.append(d.argmin(dim=1))
        return torch.cat(out)

    source = as_float_tensor(source, "source", ndim=2)
    mapped = as_float_tensor(mapped, "mapped", ndim=2)
    if source.shape[0] < 2 or source.shape[0] != mapped.shape[0]:
        raise ValueError(f"source and mapped must have the same number (>= 2) of rows, got {source.shape[0]} and "
                         f"{mapped.shape[0]}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    return float((nn_index(source) == nn_index(mapped)).double().mean())


@dataclass
class SweepTable:
    """The rows of a λ sweep (one dict per map, keys :data:`COLUMNS`), ends included."""

    rows: list[dict] = field(default_factory=list)

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
                 **fit_options: Any) -> SweepTable:
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
        lams: λ values >= 0 (``math.inf`` is allowed and equals the affine end).
        alpha: sigmoid steepness of the λ-maps (default the map's default).
        labels: class labels of the rows for the default retrieval metric (CMC top-1 of mapped source vs
            target); ``metric`` overrides it.
        lr: learning rate (default: :func:`~relaxedortho.training.learning_rate.default_lr` of the maps).
        init: the start of the maps that do not warm-start (see above).
        warm_start: start each λ > the smallest from the previous λ's trained map.
        **fit_options: passed to :func:`~relaxedortho.fit_alignment` (``amp``, ``clip_grad_norm``, ``tol``, ...).
    """
    from ..maps import AffineMap, LambdaOrthoLinear, OrthogonalLinear

    device = resolve_device(device)  # before any data is read
    check_init(init)
    if isinstance(lams, (str, bytes)) or not hasattr(lams, "__iter__"):
        raise TypeError(f"lams must be a sequence of λ values, got {type(lams).__name__} {lams!r} (wrap one value in "
                        f"a list)")
    lam_values = sorted(check_nonnegative(v, f"lams[{i}]", allow_inf=True) for i, v in enumerate(lams))
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
    X = arrays[0].all_rows(torch.device("cpu"), torch.float32)
    Y = arrays[1].all_rows(torch.device("cpu"), torch.float32)
    L = arrays[2].all_rows(torch.device("cpu"), None) if labels is not None else None
    train_idx, eval_idx = _split(n, holdout, seed)
    Xtr, Ytr, Xev, Yev = X[train_idx], Y[train_idx], X[eval_idx], Y[eval_idx]
    Lev = L[eval_idx] if L is not None else None
    if metric is None and labels is not None:
        metric = default_retrieval_metric
    p, q = X.shape[1], Y.shape[1]

    specs: list[tuple[str, float | None, Callable]] = []
    if ends:
        specs.append(("orthogonal", None, lambda: OrthogonalLinear(p, q, bias=bias)))
    lam_kwargs = {} if alpha is None else {"alpha": alpha}
    for lam in lam_values:
        specs.append(("lambda", lam, lambda lam=lam: LambdaOrthoLinear(p, q, bias=bias, lam=lam, **lam_kwargs)))
    if ends:
        specs.append(("affine", math.inf, lambda: AffineMap(p, q, bias=bias)))

    table = SweepTable()
    previous = None  # the last trained λ map (warm start of the next λ)
    for kind, lam, build in specs:
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
        dev = next(module.parameters()).device
        with torch.no_grad():
            mapped = module(Xev.to(dev)).float()
        yev = Yev.to(dev)
        row = {"map": kind, "lam": lam, "fit_mse": float(torch.nn.functional.mse_loss(mapped, yev)),
               "geometry": neighbour_agreement(Xev.to(dev), mapped),
               "orthogonality_error": float(module.orthogonality_error()),
               "metric": float(metric(mapped, yev, None if Lev is None else Lev.to(dev))) if metric else math.nan,
               "init": "warm start" if start == "module" and init != "module" else h.init["init"],
               "converged": h.converged, "epochs_run": h.epochs}
        table.rows.append(row)
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
