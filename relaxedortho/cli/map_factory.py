"""The map factory of ``relaxedortho fit``: one map of the spectrum from a kind and a solver, with the
command's one-line errors and warnings."""
from __future__ import annotations

import contextlib
import sys
import warnings
from typing import Callable

from .errors import CLIError
from .inputs import _backends

MAP_KINDS = ("orthogonal", "lambda", "affine", "band")


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


@contextlib.contextmanager
def _training_errors(lr: float | None, default_lr: Callable[[], float]):
    """A diverged or non-finite training run as a :class:`CLIError` whose advice names the command's options
    (the library's names Python arguments)."""
    from ..training import NonFiniteLossError, TrainingDivergedError

    try:
        yield
    except TrainingDivergedError as exc:
        h = exc.history
        raise CLIError(f"training diverged: the last epoch's mean loss ({h.loss[-1]:.4g}) is far above the "
                       f"initial loss ({h.initial_loss:.4g}); no map is saved. Use a smaller --lr (now {h.lr:g}; "
                       f"try {h.lr / 10:g}) or rescale the data") from None
    except NonFiniteLossError as exc:
        now = lr if lr is not None else default_lr()
        raise CLIError(f"training failed: the loss became NaN or Inf at step {exc.step}; no map is saved. Use a "
                       f"smaller --lr (now {now:g}; try {now / 10:g}) or rescale the data") from None


def build_map(kind: str, solver: str, X, Y, *, lam: float = 1.0, eps: float = 0.5, bias: bool | None = None,
              epochs: int = 100, batch_size: int = 256, lr: float | None = None, seed: int = 0, progress: bool = False,
              band_steps: int | None = None, init: str = "auto", tol: float | None = 1e-4, start=None):
    """Fit a map ``X → Y`` of ``kind`` by ``solver`` (``"closed"`` or ``"trained"``); returns the module.

    Band maps are :func:`~relaxedortho.closed_form.fit_closed_form` ``kind="relaxed_band"`` (``band_steps``: its
    iteration limit, default the solver's). Trained maps start from ``init`` (:func:`relaxedortho.training.initialization.initialize_map`), or from the
    weight and bias of ``start`` (a trained map of the same shape: the warm start of a λ sweep)."""
    import torch

    from ..maps import AffineMap, LambdaOrthoLinear, OrthogonalLinear

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
        # band: the band-constrained relaxed Procrustes (docs/math.md §5)
        from ..exceptions import ConvergenceWarning

        iterations = {} if band_steps is None else {"max_iter": band_steps}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            m = fit_closed_form(X, Y, kind="relaxed_band", epsilon=eps, center=bias is not False, **iterations)
        for w in caught:
            if issubclass(w.category, ConvergenceWarning):
                print(f"relaxedortho: warning: the band solver stopped at its iteration limit before its tolerance "
                      f"({' '.join(str(w.message).split())})", file=sys.stderr)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return m
    torch.manual_seed(seed)
    if kind == "orthogonal":
        module = OrthogonalLinear(p, q, bias=bool(bias), dtype=X.dtype, device=X.device)
    elif kind == "lambda":
        module = LambdaOrthoLinear(p, q, bias=bias is not False, lam=lam, dtype=X.dtype, device=X.device)
    else:
        module = AffineMap(p, q, bias=bias is not False, dtype=X.dtype, device=X.device)
    if start is not None:
        with torch.no_grad():
            module.load_matrix_(start.weight.detach(), None if start.bias is None or module.bias is None
                                else start.bias.detach())
        init = "module"
    from ..exceptions import ConvergenceWarning

    with _training_errors(lr, lambda: _default_lr(module)), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)  # said on stderr as a one-line warning, below
        h = fit_alignment(module, X, Y, epochs=epochs, batch_size=batch_size, lr=lr, progress=progress,
                          init=init, tol=tol)
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            print(f"relaxedortho: warning: the {kind} map did not converge in {epochs} epochs (the loss still fell "
                  f"by more than --tol={h.tol:g} per epoch before the learning-rate decay); use more --epochs or a "
                  f"larger --lr (now {h.lr:g})", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    module._train_history = h  # read by _fit_summary
    return module


def _default_lr(module) -> float:
    from ..training.learning_rate import default_lr

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
