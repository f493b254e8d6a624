r"""The backward-compatible B/F pair objective (Ricci et al., NeurIPS 2025, arXiv 2509.16664, Sec. 3).

Old features :math:`h_\text{old}` (:math:`d_\text{old}`), new features :math:`h_\text{new}`
(:math:`d_\text{new}`), frozen backbones. The backward map :math:`B` takes new features to the old space,
the forward map :math:`F` takes old features to the new-aligned (B's output) space:

.. math::

    L_B = \lVert B(h_\text{new}) - h_\text{old}\rVert^2,\qquad
    L_F = \lVert F(h_\text{old}) - B(h_\text{new})\rVert^2,

    L_C = C\big(F(h_\text{old}), B(h_\text{new})\big) + C\big(F(h_\text{old}), h_\text{old}\big),

    \mathcal L = w_1 L_F + w_2 L_B + w_3 L_C + L_\lambda(B) \;(+\,R(F)),

with :math:`C` the supervised contrastive loss on L2-normalised features (CLIP-style without labels) and
:math:`L_\lambda` B's regularizer. Under DDP the contrastive terms see the whole global batch through
:func:`~relaxedortho.training.gather_with_grad`.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from .._checks import check_nonnegative, check_positive
from .data import RowArray
from .distributed import gather_with_grad
from .history import TrainHistory
from .initialization import initialize_map
from .trainer import Trainer


class PairMaps(nn.Module):
    """The two maps of the pair as one module: ``forward(h_new, h_old) -> (B(h_new), F(h_old))``."""

    def __init__(self, backward_map: nn.Module, forward_map: nn.Module) -> None:
        for name, m in (("backward_map", backward_map), ("forward_map", forward_map)):
            if not isinstance(m, nn.Module):
                raise TypeError(f"{name} must be a torch.nn.Module (a map of the spectrum), got {type(m).__name__}")
        super().__init__()
        self.backward_map = backward_map
        self.forward_map = forward_map

    def forward(self, h_new: torch.Tensor, h_old: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.backward_map(h_new), self.forward_map(h_old)

    def regularizer(self) -> torch.Tensor:
        """Sum of the maps' regularizers (B's :math:`L_\\lambda`, and F's if it has one)."""
        terms = [m.regularizer() for m in (self.backward_map, self.forward_map) if hasattr(m, "regularizer")]
        return sum(terms[1:], terms[0]) if terms else torch.zeros(())

    def orthogonality_error(self) -> float:
        """That of the backward map B."""
        fn = getattr(self.backward_map, "orthogonality_error", None)
        return float(fn()) if callable(fn) else float("nan")


#: The callables a ``losses`` object of :class:`PairTrainer` provides.
LOSS_NAMES = ("backward_loss", "forward_loss", "supervised_contrastive")


def _default_losses() -> Any:
    from .. import losses

    return losses


class PairTrainer(Trainer):
    r"""Trainer of a backward map B and a forward map F on ``(h_new, h_old[, labels])`` (module doc).

    Args:
        backward_map: B, ``d_new -> d_old`` (e.g. :class:`~relaxedortho.LambdaOrthoLinear` with λ = 12, or a
            hard orthogonal map when adapting on the backbone's own training distribution).
        forward_map: F, ``d_old -> d_old``.
        weights: :math:`(w_1, w_2, w_3)` of :math:`L_F, L_B, L_C` (default ``(1, 1, 1)``); ``w_3 = 0`` skips
            the contrastive terms.
        temperature: of the contrastive loss (default 0.07).
        losses: an object (or dict) with ``backward_loss(b_new, h_old)``, ``forward_loss(f_old, b_new)`` and
            ``supervised_contrastive(a, b, labels_a, labels_b=None, temperature=...)``; default
            :mod:`relaxedortho.losses`, imported when training starts.
        **options: those of :class:`Trainer`. ``val`` is ``(val_new, val_old[, val_labels])``; the metric
            compares ``B(val_new)`` (queries) with ``val_old`` (gallery): backward compatibility.
    """

    input_names = ("new_features", "old_features", "labels")
    val_names = ("val_new", "val_old", "val_labels")
    num_features = 2

    def __init__(self, backward_map: nn.Module, forward_map: nn.Module, *, weights=(1.0, 1.0, 1.0),
                 temperature: float = 0.07, losses: Any = None, **options: Any) -> None:
        super().__init__(PairMaps(backward_map, forward_map), **options)
        if len(tuple(weights)) != 3:
            raise ValueError(f"weights must be (w1, w2, w3) for (L_F, L_B, L_C), got {weights!r}")
        self.weights = tuple(check_nonnegative(w, f"weights[{i}]") for i, w in enumerate(weights))
        self.temperature = check_positive(temperature, "temperature")
        if losses is not None:
            missing = [n for n in LOSS_NAMES if not callable(losses.get(n) if isinstance(losses, dict)
                                                              else getattr(losses, n, None))]
            if missing:
                raise TypeError(f"losses must be an object or dict with the callables {', '.join(LOSS_NAMES)}; "
                                f"{type(losses).__name__} lacks {', '.join(missing)}")
        self._losses_spec = losses

    def check_dimensions(self, arrays: list[RowArray]) -> None:
        new, old = arrays[0], arrays[1]
        b, f = self.module.backward_map, self.module.forward_map
        for m, name, arr, attr in ((b, "backward_map", new, "in_features"), (b, "backward_map", old, "out_features"),
                                   (f, "forward_map", old, "in_features"), (f, "forward_map", old, "out_features")):
            size = getattr(m, attr, None)
            if size is not None and arr.dim != size:
                raise ValueError(f"{arr.name} has {arr.dim} features but {name}.{attr} = {size}")

    def initialize(self, arrays: list[RowArray]) -> dict:
        """The data-driven start of both maps (``init``; :func:`~relaxedortho.training.initialization.initialize_map`):
        B from ``(h_new, h_old)``, then F from ``(h_old, B(h_new))`` (B's start applied chunk by chunk, so large
        or memory-mapped data are streamed). Returns ``{"backward": record, "forward": record, "init": ...}``."""
        new, old = arrays[0], arrays[1]
        back = initialize_map(self.module.backward_map, new.data, old.data, init=self.init)
        b_map = self.module.backward_map
        dev, dtype = self.device, self._dtype

        def chunks():
            step = max(1, (1 << 22) // max(new.dim, old.dim))
            with torch.no_grad():
                for lo in range(0, len(new), step):
                    yield (old.rows(slice(lo, lo + step), dev, dtype),
                           b_map(new.rows(slice(lo, lo + step), dev, dtype)).to(dtype))

        fwd = initialize_map(self.module.forward_map, chunks(), None, init=self.init)
        return {"init": f"backward: {back['init']}, forward: {fwd['init']}", "backward": back, "forward": fwd,
                "seconds": back["seconds"] + fwd["seconds"]}

    def fit(self, new_features: Any, old_features: Any, labels: Any = None) -> TrainHistory:
        """Train B and F on paired new/old features (and class labels for the supervised contrastive term)."""
        spec = self._losses_spec if self._losses_spec is not None else _default_losses()
        self._losses = SimpleNamespace(**spec) if isinstance(spec, dict) else spec
        data = (new_features, old_features) if labels is None else (new_features, old_features, labels)
        return super().fit(*data)

    def compute_loss(self, batch: list[torch.Tensor]) -> torch.Tensor:
        h_new, h_old = batch[0], batch[1]
        labels = batch[2] if len(batch) > 2 else None
        b_new, f_old = self.model(h_new, h_old)
        b_new, f_old = b_new.float(), f_old.float()
        h_old = h_old.float()
        w1, w2, w3 = self.weights
        loss = w1 * self._losses.forward_loss(f_old, b_new) + w2 * self._losses.backward_loss(b_new, h_old)
        if self.shard_scale != 1.0:
            loss = loss * self.shard_scale
        if w3:
            fa, bn, ho = gather_with_grad(f_old), gather_with_grad(b_new), gather_with_grad(h_old)
            lab = gather_with_grad(labels) if labels is not None else None
            c = self._losses.supervised_contrastive
            lc = (c(fa, bn, lab, lab, temperature=self.temperature)
                  + c(fa, ho, lab, lab, temperature=self.temperature))
            loss = loss + w3 * lc
        return loss

    def validation_outputs(self, arrays: list[RowArray]):
        labels = arrays[2].all_rows(self.device, None) if len(arrays) > 2 else None
        return (self._map_rows(self.module.backward_map, arrays[0]), arrays[1].all_rows(self.device, torch.float32),
                labels)


def fit_pair(backward_map: nn.Module, forward_map: nn.Module, new_features: Any, old_features: Any,
             labels: Any = None, *, epochs: int, batch_size: int, lr: float | None = None, init: str = "auto",
             **options: Any) -> TrainHistory:
    r"""Train the B/F pair of backward-compatible alignment (:class:`PairTrainer`) and return its history.

    Objective :math:`w_1 L_F + w_2 L_B + w_3 L_C + L_\lambda` (arXiv 2509.16664, Sec. 3; Adam at lr 1e-3 there;
    default here :func:`~relaxedortho.training.learning_rate.default_lr` of the wider map). ``init="auto"``
    (default) starts B and F from the closed forms of their constraints (:meth:`PairTrainer.initialize`), which
    minimise :math:`L_B` and :math:`L_F`; ``"module"`` keeps the maps' own weights.
    """
    return PairTrainer(backward_map, forward_map, epochs=epochs, batch_size=batch_size, lr=lr, init=init,
                       **options).fit(new_features, old_features, labels)
