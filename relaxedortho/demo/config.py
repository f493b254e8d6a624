"""Sizes and schedules of the demo's scenarios: :class:`DemoConfig` and :func:`scenario`."""
from __future__ import annotations

from dataclasses import dataclass, field

from .._checks import check_int
from ..data import DATASETS

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
    #: iteration limit of the band solver (:func:`~relaxedortho.demo.fit_band_path`)
    band_steps: int = 5000
    #: relative KKT residual at which the band solver stops. Measured on the digits features (cond(XᵀX) ≈ 2.5e5):
    #: 300–1700 iterations per band, fit within 3e-6 (relative) of a solve to 1e-8; the projected gradient of
    #: earlier releases stopped after 200 steps 0.3–5 % above the optimum
    band_tol: float = 1e-5
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
        # each band-solver iteration is an eigendecomposition of a 384 x 384 Gram: tol 1e-3 takes 55-290
        # iterations per band (fits within 3e-5, relative, of a solve to 1e-4), about 10 s for three bands on a
        # busy CPU; the demo stops at 30 iterations and reports a band that did not reach tol as not converged
        cfg = DemoConfig(dataset="text", width=384, map_epochs=15, map_batch=256, hard_bias=True, band_tol=1e-3,
                         band_steps=30)
    else:
        cfg = DemoConfig(dataset="fashion-mnist", width=64, hidden=192, model_epochs=5, model_batch=128,
                         map_epochs=10, map_batch=256, max_train=12000, max_eval=5000,
                         query_fraction=0.2, cpu_threads=None)
    if quick:
        cfg.model_epochs = max(2, cfg.model_epochs // 4)
        cfg.map_epochs = max(3, cfg.map_epochs // 4)
        cfg.lams = (0.0, 1.0, 4.0)
        cfg.band_eps = (0.05, 0.5, 3.0)
    if new_width is not None:
        cfg.new_width = check_int(new_width, "new_width")
    return cfg
