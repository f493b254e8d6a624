"""The image models of the class-extension scenario: a small MLP feature extractor and its training."""
from __future__ import annotations

import torch
from torch import nn

from ..training.minibatch import train_classifier
from .config import DemoConfig


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
    """The demo's schedule for :func:`relaxedortho.training.train_classifier` (the model ends frozen)."""
    return train_classifier(model, X, y, epochs=cfg.model_epochs, batch_size=cfg.model_batch, lr=cfg.model_lr,
                            seed=seed)
