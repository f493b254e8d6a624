"""The record a trainer returns: per-epoch losses, diagnostics and validation results."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class TrainHistory:
    """Per-epoch record of a training run.

    Attributes:
        loss: mean total loss of each epoch (data terms + regularizer), averaged over its steps.
        regularizer: mean regularizer of each epoch (0 for hard and free maps).
        orthogonality_error: :math:`\\lVert G - I\\rVert_F` of the map at the end of each epoch (NaN when the
            module has no ``orthogonality_error``; for a B/F pair, that of the backward map B).
        val_loss, val_metric: validation MSE and metric after each validated epoch (empty without ``val``).
        steps: optimizer steps done in total.
        epochs: epochs completed.
        stopped_early: whether early stopping ended the run.
        best_epoch: epoch (0-based) of the best validation metric, or ``None``.
        best_metric: that metric, or ``None``.
        initial_loss: the loss of the first step (the untrained map on the first batch), the reference of
            the trainer's divergence check; ``None`` before the first step.
        loss_step_std: per epoch, the fluctuation of one step's loss, estimated from the step-to-step changes
            (:math:`\\sqrt{\\sum (l_{i+1} - l_i)^2 / 2m}`, insensitive to the trend); the standard error of the
            epoch's mean is this over :math:`\\sqrt{\\text{steps\\_per\\_epoch}}`.
        relative_change: per epoch, the relative decrease of the mean loss from the previous epoch (from the
            initial loss for the first), :math:`(\\mathcal L_{e-1} - \\mathcal L_e)/|\\mathcal L_{e-1}|`.
        steps_per_epoch: optimizer steps per epoch.
        converged: whether the last epoch's decrease was within the trainer's ``tol`` (or within noise);
            ``None`` when the rule is off (``tol=None``).
        stop_reason: ``"converged"`` (the stopping rule on ``tol``), ``"early_stopping"`` (validation) or
            ``"epochs"`` (all epochs run).
        tol: the trainer's convergence tolerance (``None``: off).
        lr: the learning rate used (the default's value when none was given; ``None`` with a user optimizer).
        init: the start: ``{"init": name, "seconds": s, ...}`` from
            :func:`~relaxedortho.training.initialization.initialize_map` (``None`` when resumed from a checkpoint
            written before this record existed).
        lr_schedule: the learning-rate schedule after the warm-up (``"wsd"`` or ``"constant"``; ``None`` with a
            user optimizer, which is never changed).
        decay_epoch: the first epoch (1-based) of the learning-rate decay of ``"wsd"`` (the last planned epochs, or
            those after the stopping rule fired), or ``None``.
        regularizer_weight: the weight the regularizer was added with (``regularizer_weight="auto"`` resolved;
            0 for a module without a regularizer).
    """

    loss: list[float] = field(default_factory=list)
    regularizer: list[float] = field(default_factory=list)
    orthogonality_error: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_metric: list[float] = field(default_factory=list)
    steps: int = 0
    epochs: int = 0
    stopped_early: bool = False
    best_epoch: int | None = None
    best_metric: float | None = None
    initial_loss: float | None = None
    loss_step_std: list[float] = field(default_factory=list)
    relative_change: list[float] = field(default_factory=list)
    steps_per_epoch: int = 0
    converged: bool | None = None
    stop_reason: str | None = None
    tol: float | None = None
    lr: float | None = None
    init: dict | None = None
    lr_schedule: str | None = None
    decay_epoch: int | None = None
    regularizer_weight: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainHistory":
        return cls(**{k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in d.items()})
