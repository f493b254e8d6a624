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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainHistory":
        return cls(**{k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in d.items()})
