r"""Fitting a map of the spectrum on paired features: :class:`Trainer` and :func:`fit_alignment`.

Default objective of the one-map case (a map :math:`f_\theta` from source to target):

.. math::

    \mathcal L(\theta) = \frac{1}{n\,q}\sum_{i=1}^{n}\lVert f_\theta(x_i) - y_i\rVert^2 + s^2\,R(\theta),
    \qquad s^2 = \frac{\operatorname{tr}\Sigma_y}{q},

the element-wise mean squared error over a mini-batch plus the map's own ``regularizer()`` :math:`R`
(the λ-orthogonality penalty of :class:`~relaxedortho.LambdaOrthoLinear`, Ricci et al., NeurIPS 2025,
arXiv 2509.16664, Eq. 6; zero for hard and free maps) weighted by the targets' variance per coordinate
(``regularizer_weight="auto"``): the objective of targets scaled to unit variance with the paper's weight 1, so
that the units of the data do not move the penalty's balance. The mean, not the per-sample sum, keeps the data's pull
(:math:`\pi`, in units of :math:`s^2`) below the penalty's bounded slope, so a λ-orthogonal map settles at or
*below* λ, at the deviation where the penalty's slope equals the data's pull
(:math:`\approx \lambda - \ln((1 + \alpha\lambda)/\pi)/\alpha`, :func:`~relaxedortho.penalties.lambda_equilibrium`;
with the default :math:`\alpha = \max(10, 100/\lambda)` at least :math:`0.85\lambda` for pulls down to
:math:`10^{-4}`; docs/math.md §2), not beyond it. The learning rate warms up, stays, then decays linearly to 0
(``lr_schedule="wsd"``), so that the weights returned are the optimum's, not one noisy step's.

The per-step overhead is kept small: the step's loss stays on the device (no kernel, no synchronisation
is added to the step) and the pending losses are read back together, in one synchronisation, every
``log_every`` steps, at checkpoints and at the end of each epoch; a NaN/Inf loss is located exactly among
them. Rows are gathered with one ``index_select`` per array (a view when not shuffled), from data moved to
the device once.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .._checks import FLOAT_DTYPES, check_choice, check_int, check_nonnegative, check_positive
from ..maps.optimizer_hooks import register_hard_maps
from .checkpoint import load_checkpoint, load_optimizer_state, rng_state, save_checkpoint, set_rng_state
from .data import RowArray, check_same_length, epoch_order, target_variance
from .distributed import is_distributed, rank_and_world, shard
from ..exceptions import ConvergenceWarning
from .history import TrainHistory
from .initialization import check_init, initialize_map
from .learning_rate import default_lr
from .optimizers import make_optimizer
from .precision import resolve_device, resolve_precision

HOOKS = ("on_train_begin", "on_epoch_begin", "on_step_end", "on_validation_end", "on_epoch_end", "on_train_end")


#: Default of ``divergence_factor``: a run whose last epoch ends above this multiple of the initial loss failed.
DIVERGENCE_FACTOR = 10.0

#: Share of the targets' variance below which the initial loss is floored in the divergence check.
DIVERGENCE_VARIANCE_SHARE = 1e-2

#: Default of ``warmup``: steps of linear learning-rate warm-up of the default optimizer.
DEFAULT_WARMUP = 100

#: Default of ``tol``: the relative decrease of the epoch's mean loss below which an epoch counts as converged.
DEFAULT_TOL = 1e-4

#: Share of the epochs of the decay of ``lr_schedule="wsd"``: the learning rate falls linearly to 0 over the last
#: ``ceil(DECAY_SHARE * epochs)`` planned epochs, or, when the stopping rule fires first, over that many more epochs
#: (fewer when fewer are left) before the run stops: with a decay of 20 % of the epochs *run* (one to three epochs
#: after an early stop) trained λ maps on the text embeddings ended up to 0.015 top-1 below the relaxed closed form,
#: with this one within 0.008 (60 epochs, 3 seeds).
DECAY_SHARE = 0.2

#: The smallest learning-rate factor (after the decay's end, e.g. when a finished run is resumed for more epochs).
MIN_LR_FACTOR = 1e-12

#: The values of ``lr_schedule``: the learning-rate factor after the warm-up.
LR_SCHEDULES = ("wsd", "constant")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or Inf; ``step`` names the first bad optimizer step (1-based),
    ``history`` holds the record up to the last completed epoch."""

    def __init__(self, message: str, step: int, history: TrainHistory) -> None:
        super().__init__(message)
        self.step = step
        self.history = history


class TrainingDivergedError(FloatingPointError):
    """Training ended with a loss far above where it started (``divergence_factor`` times the initial loss):
    the learning rate is too large for the data, or the data are badly scaled. ``history`` holds the record
    (``history.initial_loss`` and ``history.loss``); the module keeps the diverged weights."""

    def __init__(self, message: str, history: TrainHistory) -> None:
        super().__init__(message)
        self.history = history


def _positive_int(value: Any, name: str, *, allow_none: bool = False) -> int | None:
    """:func:`~relaxedortho._checks.check_int` (``None`` passes when ``allow_none``: the option is off)."""
    return check_int(value, name, none_means="off" if allow_none else None)


def default_retrieval_metric(mapped: torch.Tensor, target: torch.Tensor, labels: torch.Tensor | None) -> float:
    r"""CMC top-1 of the mapped queries against the target gallery (cosine similarity).

    With ``labels`` a query is correct when its nearest gallery item has its label; without, the gallery item
    paired with it (same row) is the only correct match. Uses :func:`relaxedortho.metrics.cmc`.
    """
    from .. import metrics  # imported lazily: the metrics module is optional for training

    if labels is None:
        labels = torch.arange(mapped.shape[0], device=mapped.device)
    return float(metrics.cmc(mapped, target, labels, labels, topk=(1,))[1])



@dataclass(frozen=True)
class _EpochRun:
    """What every epoch of one :meth:`Trainer.fit` call shares."""

    arrays: list
    n: int
    rank: int
    world: int
    steps: int
    order_device: torch.device
    step_hooks: list
    fingerprint: Any

class Trainer:
    r"""Mini-batch trainer of one map (subclass it for other objectives) with hooks.

    Trains ``module`` so that ``module(source) ≈ target`` under the objective of the module documentation.
    :func:`fit_alignment` is ``Trainer(module, **options).fit(source, target)``.

    Args:
        module: the map (any :class:`torch.nn.Module`; the maps of relaxedortho add their ``regularizer()``
            and report ``orthogonality_error()`` per epoch). Moved to ``device`` in place.
        epochs: passes over the data.
        batch_size: rows per optimizer step (the *global* batch under DDP; each process trains on its share).
        lr: learning rate of Adam (manifold parameters get :func:`relaxedortho.riemannian_lr`; see
            :func:`~relaxedortho.training.make_optimizer`). Default ``None``: :func:`default_lr` of the map (a
            small angle per step for near-orthogonal weights, scaled with the width; recorded as
            ``history.lr``).
        init: the start (:mod:`relaxedortho.training.initialization`): ``"auto"`` (default: the closed-form
            solution of the map's own constraint from the training data — Procrustes of the right kind for hard
            maps, the relaxed closed form at radius λ for λ maps, least squares for affine maps), ``"procrustes"``
            (the cheap start for every map) or ``"module"`` (the module's own weight). Which start was used, and
            its cost, is recorded as ``history.init``. Skipped when resuming from a checkpoint.
        tol: convergence tolerance on the relative decrease of the epoch's mean loss,
            :math:`r_e = (\mathcal L_{e-1} - \mathcal L_e)/|\mathcal L_{e-1}|` (recorded as
            ``history.relative_change``; every epoch visits the same rows, so two epoch means differ by the change
            of the map, not by the batches). :math:`\mathcal L_{-1}` is the initial loss, one batch: the first
            epoch must also fall by more than twice one step's fluctuation. An epoch with :math:`r_e \le` ``tol``
            (a rise included) is converged. Training stops (``history.stop_reason = "converged"``) after
            ``tol_patience`` consecutive converged epochs — under ``lr_schedule="wsd"`` after the decay (the
            learning rate falls linearly to 0 over ``ceil(DECAY_SHARE * epochs)`` more epochs, fewer if fewer left;
            recorded as ``history.decay_epoch``): a run stopped at full learning rate returns the weights of one
            noisy step, which on the shipped sentence embeddings cost a trained λ map up to 0.025 held-out top-1.
            The rule is judged on the epochs at full learning rate only: during a decay the loss falls because the
            step noise fades, not because the map still descends. When it runs out of epochs with each of the last
            ``tol_patience`` epochs still falling by more than ``tol``, it warns with
            :class:`~relaxedortho.ConvergenceWarning` and ``history.converged`` is ``False`` (one fall after a
            rise is the noise of a converged run, not a descent). Default 1e-4; ``None`` turns the rule and the
            warning off (``converged`` is then ``None``).
        tol_patience: consecutive converged epochs before stopping (default 2).
        warmup: steps of linear learning-rate warm-up of the default optimizer (step k uses
            :math:`\mathrm{lr}\cdot\min(1, k/\text{warmup})`; default 100; 0 turns it off; a user's optimizer
            is never changed). Adam's first steps move every entry by the full lr whatever the gradient (its
            moment estimates start from one sample), which at a data-driven start that already fits the data
            is pure damage: on an 8-d planted map it raised the loss 30-fold in the first epoch without
            warm-up, not at all with it.
        lr_schedule: the learning rate of the default optimizer after the warm-up: ``"wsd"`` (default:
            warm-up, stable, decay — constant until the stopping rule fires or the last ``ceil(DECAY_SHARE *
            epochs)`` epochs begin, then falling linearly to 0; :meth:`_lr_factor`; Hägele et al. 2024, "Scaling
            laws and compute-optimal training beyond fixed training durations") or ``"constant"``. A constant step
            leaves the weights where the last steps' gradient noise put them: on the shipped sentence embeddings
            (384-d, 3000 pairs, batch 256) trained λ maps ended up to 0.025 held-out top-1 below the relaxed closed
            form at constant lr, within 0.01 with the decay (docs/training.md). A user's optimizer is never
            changed.
        optimizer: ``None`` (the right Adam per map), a :class:`torch.optim.Optimizer` over the module's
            parameters, or a callable ``module -> Optimizer`` (e.g. ``lambda m: torch.optim.SGD(m.parameters(),
            lr=0.1)``); an optimizer that holds none of the module's parameters is refused.
        loss_fn: data loss ``loss_fn(output, target) -> scalar`` (default :func:`torch.nn.functional.mse_loss`,
            element-wise mean), computed in float32 even under mixed precision.
        regularizer_weight: weight :math:`w` >= 0 of ``module.regularizer()``, or ``"auto"`` (default): with the
            default loss, the targets' variance per coordinate :math:`s^2` (:meth:`regularizer_scale`), which makes
            the penalty's balance against the data independent of their units; 1 with any other loss (the paper's
            weight).
            Recorded as ``history.regularizer_weight``.
        weight_decay: Adam's L2 decay on free parameters (never on orthogonal factors; default 0).
        device: ``"auto"`` (CUDA when present, default), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, a device.
        amp: mixed precision: ``None`` (off, default), ``"bf16"`` (CPU or CUDA), ``"fp16"`` (CUDA, with a
            gradient scaler) or ``True`` (bf16 where supported). The regularizer stays float32.
        clip_grad_norm: clip the global gradient norm to this value (default ``None``: no clipping).
        shuffle, drop_last: batch order (a new permutation per epoch, from ``seed``) and whether to drop a
            last incomplete batch.
        seed: seeds torch's global generator at the start and the data order (default 0); ``None`` draws one.
        progress: show a tqdm progress bar (default ``True``; rank 0 only).
        log_every: synchronise the running loss (progress display and NaN check) every so many steps.
        val: validation data ``(val_source, val_target)`` or ``(val_source, val_target, val_labels)``; each
            validation records the MSE and ``metric``.
        metric: ``metric(mapped_val_source, val_target, val_labels) -> float``, higher is better. Default
            (``None``): :func:`default_retrieval_metric` (CMC top-1); ``False``: no metric (early stopping
            then watches the validation MSE).
        val_every: validate every so many epochs (default 1).
        early_stopping: patience in validations without an improvement larger than ``min_delta``
            (default ``None``: never stop early). ``restore_best`` (default ``True``) loads the best weights
            at the end.
        checkpoint: file to write checkpoints to; ``checkpoint_every``: steps between them (plus one at the
            end). ``resume=True`` continues from ``checkpoint`` when the file exists (exactly: same final
            weights as an uninterrupted run).
        check_finite: scan the data for NaN/Inf before training (default ``True``); with the default loss it
            also refuses data whose squared errors overflow the map's dtype (e.g. float32 values beyond
            about 9e18), which would otherwise stop the run with a non-finite loss at its first step.
        divergence_factor: fail when training made the objective much worse: :class:`TrainingDivergedError` is
            raised at the end when the last epoch's mean loss exceeds ``divergence_factor`` times the initial
            loss :math:`\mathcal L_0`, the loss of the first step (the untrained map on the first batch,
            recorded as ``history.initial_loss``; floored at :math:`\varepsilon_\text{dtype}` times the mean
            square of that batch's targets, so that a perfect initial fit cannot trip it on rounding noise, and
            at 1 % of their variance (:data:`DIVERGENCE_VARIANCE_SHARE`), so that the near-exact fit of a
            data-driven start cannot trip it on the step noise of a stochastic optimizer).
            Default 10 (a healthy run ends well below :math:`\mathcal L_0`); ``None`` turns the check off.
            With very small batches :math:`\mathcal L_0` is a noisy estimate: raise the factor there. With
            early stopping and ``restore_best``, the restored epoch's loss is the one compared.
        preload: move tensors and in-memory arrays to the device once (default ``True``); memory maps are
            always read lazily, a batch at a time.
        callbacks: objects with any of the methods ``on_train_begin(trainer)``, ``on_epoch_begin(trainer,
            epoch)``, ``on_step_end(trainer, step, loss)`` (``loss`` a device tensor: reading it synchronises),
            ``on_validation_end(trainer, epoch, logs)``, ``on_epoch_end(trainer, epoch, logs)``,
            ``on_train_end(trainer, history)``. Subclasses may override the same methods (without the
            ``trainer`` argument).

    Raises:
        ValueError: bad data (length mismatch, NaN/Inf, dimension mismatch with the map) or options, before
            any training step.
        TypeError: non-float data or an argument of the wrong type, before any training step.
        TrainingDivergedError: the run ended far above its initial loss (``divergence_factor``).
        NonFiniteLossError: the loss became NaN/Inf; the message names the step. A checkpoint file is never
            overwritten with weights from after that step, and its weights are loaded back into ``module``.
    """

    #: names of the positional arrays of :meth:`fit`, for error messages
    input_names: tuple[str, ...] = ("source", "target")
    #: how many of them are features (the rest are integer labels)
    num_features: int = 2

    def __init__(self, module: nn.Module, *, epochs: int, batch_size: int, lr: float | None = None,
                 optimizer: Any = None, loss_fn: Callable | None = None, regularizer_weight: Any = "auto",
                 weight_decay: float = 0.0, device: Any = "auto", amp: Any = None,
                 clip_grad_norm: float | None = None, shuffle: bool = True, drop_last: bool = False,
                 seed: int | None = 0, progress: bool = True, log_every: int = 100,
                 val: Sequence | None = None, metric: Callable | bool | None = None, val_every: int = 1,
                 early_stopping: int | None = None, min_delta: float = 0.0, restore_best: bool = True,
                 checkpoint: str | os.PathLike | None = None, checkpoint_every: int | None = None,
                 resume: bool = False, check_finite: bool = True, preload: bool = True,
                 callbacks: Sequence[Any] = (), divergence_factor: float | None = DIVERGENCE_FACTOR,
                 init: str = "auto", tol: float | None = DEFAULT_TOL, tol_patience: int = 2,
                 warmup: int = DEFAULT_WARMUP, lr_schedule: str = "wsd") -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        self.module = module
        self.epochs = _positive_int(epochs, "epochs")
        self.batch_size = _positive_int(batch_size, "batch_size")
        self.lr = check_positive(lr, "lr") if optimizer is None and lr is not None else lr
        self.init = check_init(init)
        self.tol = None if tol is None else check_nonnegative(tol, "tol")
        self.tol_patience = _positive_int(tol_patience, "tol_patience")
        self.warmup = check_int(warmup, "warmup", minimum=0)
        if not (optimizer is None or isinstance(optimizer, torch.optim.Optimizer)
                or (callable(optimizer) and not isinstance(optimizer, type))):
            what = (f"the class {optimizer.__name__} (pass an instance, or a callable module -> Optimizer)"
                    if isinstance(optimizer, type) else f"{type(optimizer).__name__} {optimizer!r}")
            raise TypeError(f"optimizer must be None (the right Adam per map, at lr), a torch.optim.Optimizer or a "
                            f"callable module -> Optimizer; got {what}")
        self.optimizer_spec = optimizer
        self.loss_fn = loss_fn if loss_fn is not None else F.mse_loss
        if not callable(self.loss_fn):
            raise TypeError("loss_fn must be callable")
        self.regularizer_weight = ("auto" if isinstance(regularizer_weight, str) and regularizer_weight == "auto"
                                   else check_nonnegative(regularizer_weight, "regularizer_weight"))
        self.lr_schedule = check_choice(lr_schedule, "lr_schedule", LR_SCHEDULES)
        self.weight_decay = check_nonnegative(weight_decay, "weight_decay")
        self.device = resolve_device(device)
        self.precision = resolve_precision(amp, self.device)
        self.clip_grad_norm = None if clip_grad_norm is None else check_positive(clip_grad_norm, "clip_grad_norm")
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self.seed = check_int(seed, "seed", minimum=0, none_means="a random seed")
        self.progress = bool(progress)
        self.log_every = _positive_int(log_every, "log_every")
        if val is not None and (not isinstance(val, (tuple, list)) or len(val) not in (2, 3)):
            raise ValueError("val must be a tuple (val_source, val_target) or (val_source, val_target, val_labels)")
        self.val = val
        if metric is not None and metric is not False and not callable(metric):
            raise TypeError("metric must be a callable metric(mapped, target, labels) -> float, None or False")
        self.metric = metric
        self.val_every = _positive_int(val_every, "val_every")
        self.early_stopping = _positive_int(early_stopping, "early_stopping", allow_none=True)
        if self.early_stopping is not None and val is None:
            raise ValueError("early_stopping needs validation data: pass val=(val_source, val_target[, labels])")
        self.min_delta = check_nonnegative(min_delta, "min_delta")
        self.restore_best = bool(restore_best)
        self.checkpoint = None if checkpoint is None else os.fspath(checkpoint)
        self.checkpoint_every = _positive_int(checkpoint_every, "checkpoint_every", allow_none=True)
        if (self.checkpoint_every is not None or resume) and self.checkpoint is None:
            raise ValueError("checkpoint_every and resume need a checkpoint file: pass checkpoint=path")
        self.resume = bool(resume)
        self.check_finite = bool(check_finite)
        self.preload = bool(preload)
        if isinstance(callbacks, (str, bytes)) or not hasattr(callbacks, "__iter__"):
            raise TypeError(f"callbacks must be a sequence of callback objects, got {type(callbacks).__name__}")
        self.callbacks = list(callbacks)
        self.divergence_factor = (None if divergence_factor is None
                                  else check_positive(divergence_factor, "divergence_factor"))
        if self.divergence_factor is not None and self.divergence_factor < 1:
            raise ValueError(f"divergence_factor must be >= 1 (a multiple of the initial loss) or None, "
                             f"got {divergence_factor!r}")
        self.model: nn.Module = module  # the module, or its DistributedDataParallel wrapper
        self.shard_scale = 1.0
        self.history = TrainHistory()
        self.optimizer: torch.optim.Optimizer | None = None
        self.step = 0
        self.epoch = 0

    # -- what subclasses change -------------------------------------------------------------------
    def check_dimensions(self, arrays: list[RowArray]) -> None:
        """Raise :class:`ValueError` when the data do not fit the map's ``in_features``/``out_features``."""
        src, tgt = arrays[0], arrays[1]
        n_in, n_out = getattr(self.module, "in_features", None), getattr(self.module, "out_features", None)
        if n_in is not None and src.dim != n_in:
            raise ValueError(f"{src.name} has {src.dim} features but the map expects in_features={n_in}")
        if n_out is not None and tgt.dim != n_out:
            raise ValueError(f"{tgt.name} has {tgt.dim} features but the map produces out_features={n_out}")

    def compute_loss(self, batch: list[torch.Tensor]) -> torch.Tensor:
        """The data loss of one (local) batch, run under autocast; scale it by ``self.shard_scale``."""
        x, y = batch[0], batch[1]
        out = self.model(x)
        if out.dtype in (torch.float16, torch.bfloat16):
            out = out.float()
        loss = self.loss_fn(out, y)
        return loss * self.shard_scale if self.shard_scale != 1.0 else loss

    def regularizer(self) -> torch.Tensor | None:
        """The module's regularizer (computed outside autocast), or ``None`` when it has none."""
        return self.module.regularizer() if self._has_regularizer else None

    def validation_outputs(self, arrays: list[RowArray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(mapped, target, labels)`` of the validation data for the loss and the metric."""
        src, tgt = arrays[0], arrays[1]
        labels = arrays[2].all_rows(self.device, None) if len(arrays) > 2 else None
        return self._map_rows(self.module, src), tgt.all_rows(self.device, torch.float32), labels

    def regularizer_scale(self, arrays: list[RowArray]) -> float:
        r"""The weight of ``regularizer_weight="auto"``: with the default loss (the element-wise mean squared error of
        this class's :meth:`compute_loss`), the targets' variance per coordinate
        :math:`s^2 = \operatorname{tr}\Sigma_y / q` over the training rows (their mean square when the variance is 0,
        1 when both are); otherwise 1.

        The data term has the units of the targets squared, the penalties of relaxedortho none
        (:math:`\lVert G - I\rVert_F` is a pure number), so a fixed weight makes the trained map depend on the units
        of the data: targets 10 times larger pull 100 times harder against the penalty. Weighting the penalty by
        :math:`s^2` is training on targets of unit variance with weight 1 (the paper's weight), whatever their
        scale: the objective is :math:`s^2(\text{MSE}/s^2 + R)`, and scaling the data by :math:`c` scales it by
        :math:`c^2` without moving its minimiser (Adam's steps still have the units of each parameter: a bias fitted to
        targets far from unit scale moves by about ``lr`` per step, which the divergence check reports). One streamed
        pass over the targets, float64, scale-safe."""
        if type(self).compute_loss is not Trainer.compute_loss or self.loss_fn is not F.mse_loss:
            return 1.0
        return target_variance(arrays[1])

    def initialize(self, arrays: list[RowArray]) -> dict:
        """Start the module from the training data (``init``;
        :func:`~relaxedortho.training.initialization.initialize_map`) and return the record kept as ``history.init``."""
        return initialize_map(self.module, arrays[0].data, arrays[1].data, init=self.init)

    def orthogonality_error(self) -> float:
        """The diagnostic recorded per epoch (NaN when the module has none)."""
        fn = getattr(self.module, "orthogonality_error", None)
        return float(fn()) if callable(fn) else math.nan

    # -- helpers -----------------------------------------------------------------------------------
    def _map_rows(self, module: nn.Module, rows: RowArray) -> torch.Tensor:
        chunk = max(4 * self.batch_size, 1024)
        outs = []
        with torch.no_grad(), self.precision.autocast():
            for lo in range(0, len(rows), chunk):
                outs.append(module(rows.rows(slice(lo, lo + chunk), self.device, self._dtype)).float())
        return torch.cat(outs)

    def _hooks(self, name: str) -> list[Callable]:
        fns = []
        own = getattr(type(self), name, None)
        if own is not None and own is not getattr(Trainer, name, None):
            fns.append(getattr(self, name))
        fns += [(lambda *a, _f=getattr(cb, name): _f(self, *a)) for cb in self.callbacks if hasattr(cb, name)]
        return fns

    def _call(self, name: str, *args: Any) -> None:
        for fn in self._hooks(name):
            fn(*args)

    # default no-op hooks (overridable)
    def on_train_begin(self) -> None: ...
    def on_epoch_begin(self, epoch: int) -> None: ...
    def on_step_end(self, step: int, loss: torch.Tensor) -> None: ...
    def on_validation_end(self, epoch: int, logs: dict) -> None: ...
    def on_epoch_end(self, epoch: int, logs: dict) -> None: ...
    def on_train_end(self, history: TrainHistory) -> None: ...

    def _prepare(self, data: Sequence[Any]) -> tuple[list[RowArray], list[RowArray] | None]:
        if len(data) != len(self.input_names) and len(data) != self.num_features:
            raise TypeError(f"fit() takes {', '.join(self.input_names)}; got {len(data)} arrays")
        arrays = [RowArray(x, name, labels=i >= self.num_features, check_finite=self.check_finite)
                  for i, (x, name) in enumerate(zip(data, self.input_names))]
        check_same_length(arrays)
        self.check_dimensions(arrays)
        val = None
        if self.val is not None:
            names = [f"val[{i}] ({n})" for i, n in enumerate(self.val_names)]
            val = [RowArray(x, name, labels=i >= 2, check_finite=self.check_finite)
                   for i, (x, name) in enumerate(zip(self.val, names))]
            check_same_length(val)
            self.check_dimensions(val)
        return arrays, val

    val_names: tuple[str, ...] = ("val_source", "val_target", "val_labels")

    def _metric_fn(self) -> Callable | None:
        if self.metric is False or self.val is None:
            return None
        if self.metric is None:
            return default_retrieval_metric
        return self.metric

    def _make_optimizer(self) -> torch.optim.Optimizer:
        spec = self.optimizer_spec
        if spec is None:
            return make_optimizer(self.module, self._lr, weight_decay=self.weight_decay)
        opt = spec if isinstance(spec, torch.optim.Optimizer) else spec(self.module)
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(f"the optimizer callable must return a torch.optim.Optimizer, got {type(opt).__name__}")
        own = {id(p) for p in self.module.parameters()}
        if not any(id(p) in own for g in opt.param_groups for p in g["params"]):
            raise ValueError("optimizer holds none of the module's parameters (was it built for another module?); "
                             "build it from module.parameters() or pass optimizer=None")
        return register_hard_maps(self.module, opt)  # the hard maps are brought back after each of its steps

    def _check_scale(self, arrays: list[RowArray]) -> None:
        """With the default (squared-error) loss, refuse features whose squares overflow the training dtype."""
        if not self.check_finite or self.loss_fn is not F.mse_loss or self._dtype not in FLOAT_DTYPES:
            return
        limit = math.sqrt(torch.finfo(self._dtype).max) / 2  # |f(x) - y| beyond this squares to inf
        for a in arrays[:self.num_features]:
            if a.max_abs is not None and a.max_abs > limit:
                raise ValueError(
                    f"{a.name} has values up to {a.max_abs:.3g}: their squared errors overflow "
                    f"{str(self._dtype).removeprefix('torch.')} (largest {torch.finfo(self._dtype).max:.3g}); rescale "
                    f"the data (e.g. divide source and target by a common scale) or train the map in float64")

    def _loss_floor(self, arrays: list[RowArray]) -> float:
        """Floor of the divergence check's reference loss, over the rows of the first batch: the rounding level
        ``eps(dtype) * mean(target**2)``, and :data:`DIVERGENCE_VARIANCE_SHARE` of the targets' variance (a
        start that fits the data almost exactly, such as the data-driven one, is not the scale of divergence)."""
        target = arrays[1].rows(slice(0, self.batch_size), torch.device("cpu"), torch.float64)
        variance = float(target.var(dim=0, unbiased=False).mean()) if target.shape[0] > 1 else 0.0
        return max(torch.finfo(self._dtype).eps * float((target * target).mean()),
                   DIVERGENCE_VARIANCE_SHARE * variance)

    def _check_divergence(self, early: dict, floor: float) -> None:
        """Raise :class:`TrainingDivergedError` when the compared epoch ends above ``divergence_factor`` times
        the initial loss (see the class documentation)."""
        h = self.history
        if self.divergence_factor is None or h.initial_loss is None or not h.loss:
            return
        restored = early.get("best_state") is not None and self.restore_best and self.early_stopping
        epoch = early["best_epoch"] if restored else len(h.loss) - 1
        final, start = h.loss[epoch], max(h.initial_loss, floor)
        if start > 0 and final > self.divergence_factor * start:  # start 0: all-zero targets fitted exactly
            lr = f"now {self._lr:g}; " if self.optimizer_spec is None else ""
            raise TrainingDivergedError(
                f"training diverged: the mean loss of epoch {epoch + 1} ({final:.4g}) is {final / start:.3g} times "
                f"the initial loss ({h.initial_loss:.4g}, the untrained map on the first batch), above "
                f"divergence_factor={self.divergence_factor:g}; the module holds the diverged weights. Use a "
                f"smaller lr ({lr}try 10 times smaller), clip_grad_norm=..., rescale the data, or pass "
                f"divergence_factor=None to accept the result", h)

    # -- checkpoints -------------------------------------------------------------------------------
    def _fingerprint(self, n: int, world: int) -> dict:
        return {"n": n, "batch_size": self.batch_size, "seed": self.seed, "shuffle": self.shuffle,
                "drop_last": self.drop_last, "world_size": world}

    def _save(self, epoch: int, batch: int, acc: torch.Tensor, fingerprint: dict, early: dict) -> None:
        rank, _ = rank_and_world()
        if rank == 0:
            save_checkpoint({"module": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                             "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                             "rng": rng_state(), "epoch": epoch, "batch": batch, "step": self.step,
                             "acc": acc, "history": self.history.to_dict(), "fingerprint": fingerprint,
                             "early": early, "decay": (*self._decay, self._decay_fired) if self._decay else None},
                            self.checkpoint)
        if is_distributed():
            torch.distributed.barrier()
        self._last_good_step = self.step

    def _load(self, fingerprint: dict) -> dict:
        state = load_checkpoint(self.checkpoint, map_location=self.device)
        if state["fingerprint"] != fingerprint:
            raise ValueError(f"checkpoint {self.checkpoint} was written by a run with other settings "
                             f"({state['fingerprint']}) than this one ({fingerprint}); cannot resume exactly")
        self.module.load_state_dict(state["module"])
        load_optimizer_state(self.optimizer, state["optimizer"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.history = TrainHistory.from_dict(state["history"])
        self.step = int(state["step"])
        self._last_good_step = self.step
        return state

    # -- the loop ----------------------------------------------------------------------------------
    def fit(self, *data: Any) -> TrainHistory:
        """Train on the paired arrays (see :attr:`input_names`) and return the :class:`TrainHistory`."""
        arrays, val = self._prepare(data)
        metric_fn = self._metric_fn()
        n = len(arrays[0])
        rank, world = rank_and_world()
        if world > 1 and self.batch_size < world:
            raise ValueError(f"batch_size ({self.batch_size}) must be at least the number of processes ({world})")
        steps_per_epoch, resuming, fingerprint = self._setup(arrays, n, world)
        warm = 1.0  # the schedule's factor now applied to the groups' learning rates
        # per-step losses stay on the device until the next flush (no per-step synchronisation or kernel)
        self._pending: tuple[list, list] = ([], [])
        # this epoch's sums of the flushed losses and regularizers (over processes), and of the squared
        # step-to-step changes of the loss, their count and the last step's loss (the noise of the epoch mean)
        acc = _new_acc()
        early = {"best": None, "best_epoch": None, "bad": 0, "best_state": None}
        start_epoch, start_batch = 0, 0
        self.step = 0
        self._last_good_step = None
        if resuming:
            state = self._load(fingerprint)
            start_epoch, start_batch = int(state["epoch"]), int(state["batch"])
            acc = [float(v) for v in state["acc"]] + _new_acc()[len(state["acc"]):]
            planned = self._decay
            if state.get("decay") is not None:
                self._decay, self._decay_fired = tuple(state["decay"][:2]), bool(state["decay"][2])
            warm = self._lr_factor(self.step - 1) if self._scheduled and self.step else 1.0  # in the loaded lrs
            if not self._decay_fired:
                self._decay = planned  # more (or fewer) epochs than the interrupted run: this run's plan
                self.history.decay_epoch = None if planned is None else planned[0] // steps_per_epoch + 1
            early = state["early"]
        floor = self._loss_floor(arrays) if self.divergence_factor is not None else 0.0
        run = _EpochRun(arrays=arrays, n=n, rank=rank, world=world, steps=steps_per_epoch,
                        order_device=arrays[0].data.device if not arrays[0].memmap else torch.device("cpu"),
                        step_hooks=self._hooks("on_step_end"), fingerprint=fingerprint)
        stopped = False
        self._call("on_train_begin")
        for epoch in range(start_epoch, self.epochs):
            self.epoch = epoch
            self._call("on_epoch_begin", epoch)
            warm = self._run_epoch(run, epoch, start_batch, warm, acc, early)
            start_batch = 0
            logs = self._record_epoch(epoch, acc, steps_per_epoch, world)
            acc = _new_acc()
            if val is not None and (epoch + 1) % self.val_every == 0:
                stopped = self._validate(epoch, val, metric_fn, early, logs)
            self._call("on_epoch_end", epoch, logs)
            if stopped:
                self.history.stopped_early = True
                self.history.stop_reason = "early_stopping"
                break
            if self._decay_fired:
                if self.step >= self._decay[0] + self._decay[1]:
                    stopped = True
                    self.history.stop_reason = "converged"
                    break
            elif (not self._decaying(self.step) and self._tol_reached(epoch)
                  and not self._start_decay(epoch, steps_per_epoch)):
                stopped = True
                self.history.stop_reason = "converged"
                break
        if val is not None and early["best_state"] is not None and self.restore_best and self.early_stopping:
            self.module.load_state_dict(early["best_state"])
        self._check_divergence(early, floor)
        self._check_convergence()
        if self.checkpoint is not None:
            self._save(self.history.epochs if not stopped else self.epochs, 0, acc, fingerprint, early)
        self._call("on_train_end", self.history)
        return self.history

    def _setup(self, arrays: list, n: int, world: int) -> tuple[int, bool, Any]:
        """Before the first step: the module on its device, the working dtype, the seed, preloading, the DDP
        wrapper, the grad scaler, the steps per epoch, the start (unless resuming), the learning rate and the
        optimizer. Returns ``(steps per epoch, resuming, the run's fingerprint)``."""
        device = self.device
        self.module.to(device)
        self._params = [p for p in self.module.parameters()]
        self._dtype = next((p.dtype for p in self._params if p.is_floating_point()), torch.float32)
        self._has_regularizer = self._module_has_regularizer()
        if self.seed is None:
            self.seed = int(torch.randint(0, 2 ** 62, (1,)))
        torch.manual_seed(self.seed)
        if self.preload:
            for a in arrays:
                a.preload(device, self._dtype)
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(self.module, device_ids=[device.index] if device.type == "cuda"
                                                 else None)
        else:
            self.model = self.module
        self.scaler = self.precision.grad_scaler()
        B = self.batch_size
        steps_per_epoch = n // B if self.drop_last else math.ceil(n / B)
        if world > 1 and n % B and n % B < world:
            steps_per_epoch = n // B  # a last batch too small to give every process a row is dropped
        if steps_per_epoch == 0:
            raise ValueError(f"no complete batch: {n} rows with batch_size={B} and drop_last=True")
        self._check_scale(arrays)
        resuming = self.resume and os.path.exists(self.checkpoint)
        if not resuming:
            self.history.init = self.initialize(arrays)
        self._lr = self.lr if self.lr is not None or self.optimizer_spec is not None else default_lr(self.module)
        self.history.lr = self._lr
        self._scheduled = self.optimizer_spec is None  # warm-up and schedule apply to the default optimizer only
        self._warmup_steps = self.warmup if self._scheduled else 0
        self._total_steps = self.epochs * steps_per_epoch
        self._steps_per_epoch = steps_per_epoch
        # the decay of "wsd": (first step, steps), planned over the last epochs; _decay_fired once the stopping rule
        # moved it earlier
        decay_epochs = math.ceil(DECAY_SHARE * self.epochs)
        self._decay = ((self._total_steps - decay_epochs * steps_per_epoch, decay_epochs * steps_per_epoch)
                       if self._scheduled and self.lr_schedule == "wsd" else None)
        self._decay_fired = False
        if self._decay is not None:
            self.history.decay_epoch = self.epochs - decay_epochs + 1
        self.history.lr_schedule = self.lr_schedule if self._scheduled else None
        self._reg_weight = (self.regularizer_scale(arrays) if self.regularizer_weight == "auto"
                            else self.regularizer_weight) if self._has_regularizer else 0.0
        self.history.regularizer_weight = self._reg_weight
        self.history.tol = self.tol
        fingerprint = self._fingerprint(n, world)
        self.optimizer = self._make_optimizer()
        return steps_per_epoch, resuming, fingerprint

    def _run_epoch(self, run: "_EpochRun", epoch: int, start_batch: int, warm: float, acc: list,
                   early: dict) -> float:
        """The optimizer steps of one epoch from batch ``start_batch`` (flushing the losses into ``acc`` and
        writing checkpoints when due); returns the warm-up factor now applied."""
        B, device = self.batch_size, self.device
        order = epoch_order(run.n, epoch, self.seed, self.shuffle)
        if order is not None:
            order = order.to(run.order_device)
        pbar = None
        if self.progress and run.rank == 0:
            from tqdm.auto import tqdm

            pbar = tqdm(total=run.steps, initial=start_batch, desc=f"epoch {epoch + 1}/{self.epochs}", leave=False,
                        dynamic_ncols=True)
        try:
            self.model.train()
            for b in range(start_batch, run.steps):
                lo, hi = b * B, min(run.n, (b + 1) * B)
                index, n_local = shard(order[lo:hi] if order is not None else slice(lo, hi), run.rank, run.world)
                self.shard_scale = n_local * run.world / (hi - lo)
                batch = [a.rows(index, device, self._dtype) for a in run.arrays]
                loss, reg, warm = self._optimizer_step(batch, self._params, warm)
                self._pending[0].append(loss.detach())
                if reg is not None:
                    self._pending[1].append(reg.detach())
                for fn in run.step_hooks:
                    fn(self.step, loss.detach())
                if pbar is not None:
                    pbar.update(1)
                due_ckpt = self.checkpoint_every is not None and self.step % self.checkpoint_every == 0
                if due_ckpt or self.step % self.log_every == 0:
                    self._flush(acc, b + 1, pbar)
                    if due_ckpt:
                        self._save(epoch, b + 1, acc, run.fingerprint, early)
            self._flush(acc, run.steps, pbar)
        finally:
            if pbar is not None:
                pbar.close()
        return warm

    def _lr_factor(self, k: int) -> float:
        r"""The factor of the default optimizer's learning rates at step ``k`` (0-based): the linear warm-up
        :math:`\min(1, (k + 1)/\text{warmup})` times, under ``lr_schedule="wsd"`` from the decay's first step
        :math:`k_0` on, the linear decay :math:`1 - (k - k_0 + \tfrac12)/D` over its :math:`D` steps (evaluated
        mid-step: never exactly 0)."""
        f = min(1.0, (k + 1) / self._warmup_steps) if self._warmup_steps else 1.0
        if self._decaying(k):
            start, length = self._decay
            f *= max(MIN_LR_FACTOR, 1.0 - (k - start + 0.5) / length)
        return f

    def _decaying(self, k: int) -> bool:
        """Whether step ``k`` lies in the decay of ``lr_schedule="wsd"``."""
        return self._decay is not None and k >= self._decay[0]

    def _start_decay(self, epoch: int, steps_per_epoch: int) -> bool:
        """When the stopping rule fires at full learning rate under ``lr_schedule="wsd"``: move the decay to the
        next ``ceil(DECAY_SHARE * epochs)`` epochs (the planned decay's length; fewer when the run has fewer left) and
        return ``True``; ``False`` when there is nothing to decay (a user's optimizer, ``lr_schedule="constant"``,
        no epoch left): the run stops now."""
        left = self.epochs - epoch - 1
        if self._decay is None or left <= 0:
            return False
        self._decay = (self.step, min(self._decay[1], left * steps_per_epoch))
        self._decay_fired = True
        self.history.decay_epoch = epoch + 2
        return True

    def _tol_reached(self, epoch: int) -> bool:
        """The stopping rule: in each of the last ``tol_patience`` epochs the loss fell by less than ``tol``; those
        epochs must lie after the warm-up (while the learning rate still grows, a flat or rising loss is the start
        of the descent, not its end: on the shipped sentence embeddings a λ map's loss rose for two epochs of the
        warm-up while the map crossed its gate, and stopping there left it at 0.6 of its equilibrium)."""
        first = epoch + 1 - self.tol_patience
        return (self.tol is not None and first >= 0 and first * self._steps_per_epoch >= self._warmup_steps
                and not any(_still_falling(self.history, e, self.tol) for e in range(first, epoch + 1)))

    def _optimizer_step(self, batch: list, params: list, warm: float):
        """One optimizer step on ``batch``: the schedule's factor of the learning rates (:meth:`_lr_factor`), the
        loss (data term under the precision's autocast, plus the weighted regularizer), backward (scaled under a
        grad scaler), gradient clipping and the step. Returns ``(loss, regularizer or None, the factor now
        applied)``."""
        self.optimizer.zero_grad(set_to_none=True)
        if self._scheduled:  # rescales: an lr set by a callback is kept
            factor = self._lr_factor(self.step)
            if factor != warm:
                for g in self.optimizer.param_groups:
                    g["lr"] = g["lr"] * (factor / warm)
                warm = factor
        with self.precision.autocast():
            loss = self.compute_loss(batch)
        reg = self.regularizer()
        if reg is not None:
            loss = loss + (reg if self._reg_weight == 1.0 else self._reg_weight * reg)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if self.clip_grad_norm is not None:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if self.clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm)
            self.optimizer.step()
        self.step += 1
        return loss, reg, warm

    def _record_epoch(self, epoch: int, acc: list, done: int, world: int) -> dict:
        """Append the epoch's means (over ``done`` steps and ``world`` processes) to the history; returns the logs
        handed to ``on_epoch_end``."""
        logs = {"loss": acc[0] / done / world, "regularizer": acc[1] / done / world,
                "orthogonality_error": self.orthogonality_error()}
        h = self.history
        h.loss.append(logs["loss"])
        h.steps_per_epoch = done
        h.loss_step_std.append(math.sqrt(acc[2] / (2 * acc[3])) if acc[3] else 0.0)
        h.relative_change.append(_relative_decrease(h, epoch))
        h.regularizer.append(logs["regularizer"])
        h.orthogonality_error.append(logs["orthogonality_error"])
        h.epochs = epoch + 1
        h.steps = self.step
        return logs

    def _check_convergence(self) -> None:
        """Record ``converged`` and ``stop_reason``; warn when the run ended with the loss still falling."""
        h = self.history
        if h.stop_reason is None:
            h.stop_reason = "epochs"
        if self.tol is None or not h.loss:
            return
        # judged on the epochs before the decay (its falls are the step noise fading, not descent)
        last = h.decay_epoch - 1 if h.decay_epoch is not None and h.decay_epoch - 1 >= 1 else len(h.loss)
        last = min(last, len(h.loss))
        falling = _consistently_falling(h, self.tol, self.tol_patience, last=last)
        h.converged = h.stop_reason == "converged" or not falling
        if falling and h.stop_reason == "epochs":
            lr = f" (now {self._lr:g})" if self.optimizer_spec is None else ""
            before = h.loss[last - 2] if last > 1 else h.initial_loss
            which = "the last epochs" if last == len(h.loss) else "the last epochs before the learning-rate decay"
            warnings.warn(
                f"training did not converge: the mean loss fell by more than tol={self.tol:g} (relative) in each of "
                f"{which} ({min(self.tol_patience, last)}), by {100 * h.relative_change[last - 1]:.3g}% in epoch "
                f"{last} ({before:.6g} -> {h.loss[last - 1]:.6g}); train more epochs or use a larger lr{lr}"
                + (", or start from the data (init='auto')" if self.init == "module" else "")
                + "; pass tol=None to accept the result", ConvergenceWarning, stacklevel=4)

    def _module_has_regularizer(self) -> bool:
        from ..maps.base import AlignmentMap

        fn = getattr(type(self.module), "regularizer", None)
        return callable(fn) and fn is not AlignmentMap.regularizer

    def _flush(self, acc: list[float], steps_done: int, pbar: Any) -> None:
        """Read the pending per-step losses (one synchronisation, summed over processes), add them to ``acc``
        in step order, stop on the first non-finite one, update the progress bar."""
        losses, regs = self._pending
        if not losses:
            return
        vals = torch.stack(losses)
        if regs:
            vals = torch.cat([vals, torch.stack(regs)])
        if is_distributed():
            torch.distributed.all_reduce(vals)
        vals = vals.tolist()
        k = len(losses)
        first_step = self.step - k + 1
        if first_step == 1 and math.isfinite(vals[0]):  # the untrained map's loss (kept by checkpoints)
            self.history.initial_loss = vals[0] / rank_and_world()[1]
        for i, v in enumerate(vals[:k]):
            if not math.isfinite(v):
                self._pending = ([], [])
                self._non_finite(first_step + i)
            acc[0] += v
            if math.isfinite(acc[4]):
                acc[2] += (v - acc[4]) ** 2 / rank_and_world()[1] ** 2
                acc[3] += 1
            acc[4] = v
        for v in vals[k:]:
            acc[1] += v
        self._pending = ([], [])
        if pbar is not None:
            world = rank_and_world()[1]
            pbar.set_postfix(loss=f"{acc[0] / max(steps_done, 1) / world:.4g}", refresh=False)

    def _non_finite(self, bad_step: int) -> None:
        msg = f"training loss became NaN or Inf at step {bad_step} (epoch {self.epoch + 1}); training stopped."
        if self._last_good_step is not None:
            state = load_checkpoint(self.checkpoint, map_location=self.device)
            self.module.load_state_dict(state["module"])
            msg += (f" The last good checkpoint {self.checkpoint} (step {self._last_good_step}) is kept and its "
                    f"weights were loaded back into the module.")
        else:
            msg += " No checkpoint was written before it (pass checkpoint= and checkpoint_every= to keep one)."
        msg += " Try a smaller lr, clip_grad_norm=..., or check the data scale."
        raise NonFiniteLossError(msg, bad_step, self.history)

    def _validate(self, epoch: int, val: list[RowArray], metric_fn: Callable | None, early: dict,
                  logs: dict) -> bool:
        self.model.eval()
        mapped, target, labels = self.validation_outputs(val)
        val_loss = float(F.mse_loss(mapped, target))
        score = float(metric_fn(mapped, target, labels)) if metric_fn is not None else math.nan
        self.model.train()
        self.history.val_loss.append(val_loss)
        self.history.val_metric.append(score)
        logs.update(val_loss=val_loss, val_metric=score)
        self._call("on_validation_end", epoch, logs)
        watched = score if metric_fn is not None else -val_loss
        if early["best"] is None or watched > early["best"] + self.min_delta:
            early.update(best=watched, best_epoch=epoch, best_score=score, bad=0)
            if self.early_stopping is not None and self.restore_best:
                early["best_state"] = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        else:
            early["bad"] += 1
        self.history.best_epoch = early["best_epoch"]
        self.history.best_metric = early.get("best_score")
        return self.early_stopping is not None and early["bad"] >= self.early_stopping


def _new_acc() -> list[float]:
    return [0.0, 0.0, 0.0, 0.0, math.nan]


def _relative_decrease(h: TrainHistory, epoch: int) -> float:
    prev = h.loss[epoch - 1] if epoch > 0 else (h.initial_loss if h.initial_loss is not None else h.loss[0])
    return (prev - h.loss[epoch]) / abs(prev) if prev != 0 else 0.0


def _still_falling(h: TrainHistory, epoch: int, tol: float) -> bool:
    """Whether the mean loss of ``epoch`` fell by more than ``tol`` (relative) from the previous epoch's. Every
    epoch visits the same rows, so two epoch means differ by the change of the map, not by the batches; the
    first epoch is compared with the initial loss, one batch, and must fall by more than twice one step's
    fluctuation too."""
    if h.relative_change[epoch] <= tol:
        return False
    if epoch > 0 or h.initial_loss is None:
        return True
    return h.initial_loss - h.loss[0] > 2.0 * h.loss_step_std[0]


def _consistently_falling(h: TrainHistory, tol: float, epochs: int, last: int | None = None) -> bool:
    """Whether each of the ``epochs`` epochs before epoch ``last`` (default: the end) fell by more than ``tol``: the
    run ended while descending (one epoch that fell by chance at the noise floor, after one that did not, does not
    count)."""
    last = len(h.loss) if last is None else last
    return all(_still_falling(h, e, tol) for e in range(max(0, last - epochs), last))


def fit_alignment(module: nn.Module, source: Any, target: Any, *, epochs: int, batch_size: int,
                  lr: float | None = None, init: str = "auto", **options: Any) -> TrainHistory:
    r"""Train ``module`` so that ``module(source) ≈ target``; return the :class:`TrainHistory`.

    Minimises the element-wise mean squared error plus ``module.regularizer()`` (weighted by the targets' variance
    per coordinate, ``regularizer_weight="auto"``) by mini-batch Adam — Riemannian Adam for geoopt manifold
    parameters (:class:`~relaxedortho.StiefelLinear`), no weight decay on orthogonal factors — from the closed-form
    solution of the map's own constraint computed from the training data (``init="auto"``:
    :mod:`relaxedortho.training.initialization`; ``init="module"`` keeps the module's weight), at
    :func:`~relaxedortho.training.learning_rate.default_lr` unless ``lr`` is given (warm-up, then constant, then a
    linear decay to 0: ``lr_schedule="wsd"``), until the epochs run out or the loss stops falling (``tol``); a run
    that ends still falling warns with :class:`~relaxedortho.ConvergenceWarning`. ``source`` (``n x in_features``)
    and ``target`` (``n x out_features``) may be tensors, NumPy arrays or memory maps. All options of
    :class:`Trainer` apply (device, ``amp``, ``lr_schedule``, ``regularizer_weight``, ``clip_grad_norm``,
    ``val``/``metric``/``early_stopping``, ``checkpoint``/``checkpoint_every``/``resume``, ``seed``, ``progress``,
    ...). Under :mod:`torch.distributed` (more than one process) it trains with
    DistributedDataParallel, each process on its share of every global batch.

    Example:
        >>> import torch, relaxedortho as ro
        >>> torch.manual_seed(0) and None
        >>> x = torch.randn(256, 4); y = x @ torch.tensor([[2.0, 0, 0, 0]] * 3).T
        >>> m = ro.AffineMap(4, 3)
        >>> h = fit_alignment(m, x, y, epochs=40, batch_size=64, lr=0.05, progress=False)
        >>> h.loss[-1] < 1e-3
        True
    """
    return Trainer(module, epochs=epochs, batch_size=batch_size, lr=lr, init=init, **options).fit(source, target)
