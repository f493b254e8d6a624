r"""The class-extension protocol on which :mod:`relaxedortho.compat` compares the compatible-learning methods.

As in BCT (Shen et al., CVPR 2020), FCT (Ramanujan et al., CVPR 2022), BT² (Zhou et al., CVPR 2023) and OCA
(Ricci et al., 2024):

1. Images (scikit-learn's bundled 8×8 digits, or Fashion-MNIST 28×28 from local files; :mod:`relaxedortho.data`)
   are split, stratified, into a training set and a held-out set; the held-out images into a **gallery**
   and **queries**.
2. An **old** model (:class:`SmallCNN`) is trained on the training images of the *old classes* (default: the
   first half of the classes) and frozen. A **new** model (another seed, more channels, a wider hidden layer
   and a wider embedding) is trained on all training images and frozen. Embeddings are the L2-normalised
   outputs of the layer before the classifier.
3. Retrieval is by cosine similarity (CMC top-1/top-5 and mAP, :mod:`relaxedortho.metrics`, docs/math.md §7):
   old/old (old queries, old gallery), new/new, and for each method *new→old*: the method's query against the
   gallery that was embedded by the old model (mapped or untouched, as the method prescribes). A method is
   **compatible** when new→old beats old/old on CMC top-1 and on mAP (the empirical criterion of Shen et al.).

:func:`build_protocol` returns a :class:`ClassExtension` holding the data, both frozen models, the features
every method needs and :meth:`ClassExtension.retrieval`.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..training.minibatch import train_classifier

__all__ = ["ProtocolConfig", "protocol_config", "SmallCNN", "ClassExtension", "build_protocol",
           "resolve_dataset"]

DATASETS = ("auto", "digits", "fashion-mnist")


@dataclass
class ProtocolConfig:
    """Sizes and schedules of the protocol (see :func:`protocol_config` for the defaults per dataset)."""

    dataset: str = "digits"
    old_width: int = 32                 #: embedding width of the old model
    new_width: int = 64                 #: embedding width of the new model (and of OCA's and BT²'s backbones)
    old_channels: tuple = (8, 16)       #: channels of the old CNN's two convolutions
    new_channels: tuple = (16, 32)      #: channels of the new CNN's two convolutions
    old_hidden: int = 64                #: hidden units of the old CNN's fully connected layer
    new_hidden: int = 128               #: hidden units of the new CNN's fully connected layer
    epochs: int = 30                    #: epochs of every model training (old, new, BCT, OCA, BT²)
    lr: float = 3e-3
    batch_size: int = 64
    map_epochs: int = 40                #: epochs of every map (λ pair, FCT, FastFill)
    map_lr: float = 3e-3
    map_batch: int = 128
    fct_hidden: int = 256               #: inner width of the FCT / FastFill transformation
    lam: float = 1.0                    #: λ of the λ-orthogonal backward map
    bt2_extra: int = 8                  #: extra dimensions of BT²
    train_fraction: float = 0.6
    query_fraction: float = 0.3
    max_train: int | None = None
    max_eval: int | None = None
    old_classes: tuple = field(default_factory=tuple)
    #: CPU threads while the protocol runs (small matrices: one thread avoids the synchronisation overhead on a
    #: busy machine); ``None`` keeps PyTorch's setting
    cpu_threads: int | None = 1


def protocol_config(dataset: str = "digits", *, quick: bool = False) -> ProtocolConfig:
    """The default :class:`ProtocolConfig` for ``dataset`` (``"digits"`` or ``"fashion-mnist"``); ``quick``
    shortens every schedule (a smoke test that still shows the ranking's main features)."""
    if dataset not in DATASETS[1:]:
        raise ValueError(f"dataset must be 'digits' or 'fashion-mnist', got {dataset!r}")
    if dataset == "digits":
        cfg = ProtocolConfig()
        if quick:
            cfg.epochs, cfg.map_epochs = 12, 15
    else:
        cfg = ProtocolConfig(dataset="fashion-mnist", old_width=64, new_width=128, old_channels=(16, 32),
                             new_channels=(32, 64), old_hidden=128, new_hidden=256, epochs=6, batch_size=128,
                             map_epochs=20, map_batch=256, fct_hidden=512, bt2_extra=16, max_train=12000,
                             max_eval=5000, query_fraction=0.2, cpu_threads=None)
        if quick:
            cfg.epochs, cfg.map_epochs, cfg.max_train, cfg.max_eval = 2, 6, 3000, 1500
    return cfg


def resolve_dataset(dataset: str, data_dir=None, *, quick: bool = False) -> tuple[str, str | None]:
    """``(dataset, note)``: ``"auto"`` becomes ``"fashion-mnist"`` when its files are found (and not ``quick``),
    else ``"digits"``; ``note`` says why, or is ``None``."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    if dataset != "auto":
        return dataset, None
    if quick:
        return "digits", "--quick with dataset 'auto' uses the bundled digits"
    from ..data import fashion_mnist_dir

    try:
        fashion_mnist_dir(data_dir)
    except FileNotFoundError as exc:
        return "digits", f"Fashion-MNIST not found, the bundled digits are used instead ({exc})"
    return "fashion-mnist", None


class SmallCNN(nn.Module):
    """Two 3×3 convolutions (ReLU, 2×2 max-pool) → a hidden layer → a ``width``-dimensional embedding, and a
    linear classifier ``head`` on the embedding.

    :meth:`features` is the raw embedding (the classifier's input), :meth:`embed` its L2-normalised version
    (the retrieval feature).
    """

    def __init__(self, side: int, channels: tuple, hidden: int, width: int, n_classes: int) -> None:
        super().__init__()
        c1, c2 = channels
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(c2 * (side // 4) ** 2, hidden), nn.ReLU(), nn.Linear(hidden, width))
        self.head = nn.Linear(width, n_classes)
        self.width = width

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The raw embedding (before normalisation)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.head(self.body(x))

    @torch.no_grad()
    def embed(self, x: torch.Tensor, batch: int = 2048) -> torch.Tensor:
        """L2-normalised embeddings, computed in batches without gradients."""
        return nn.functional.normalize(batched(self.features, x, batch), dim=1)


def batched(fn, x: torch.Tensor, batch: int = 2048) -> torch.Tensor:
    """``fn`` applied to slices of ``batch`` rows of ``x`` under :func:`torch.no_grad`, concatenated."""
    with torch.no_grad():
        return torch.cat([fn(x[i:i + batch]) for i in range(0, x.shape[0], batch)])


@dataclass
class ClassExtension:
    """The protocol's data, frozen models and features (built by :func:`build_protocol`).

    Features are L2-normalised rows: ``*_old`` from the old model, ``*_new`` from the new model; ``train`` are
    the training images (what every map is fitted on), ``query`` and ``gallery`` the held-out images.
    ``X``, ``y`` hold every image (``(n, 1, side, side)`` float32) and label; ``train``, ``query``,
    ``gallery`` index them.
    """

    cfg: ProtocolConfig
    seed: int
    device: torch.device
    X: torch.Tensor
    y: torch.Tensor
    train: torch.Tensor
    query: torch.Tensor
    gallery: torch.Tensor
    classes: tuple
    old_classes: tuple
    old_model: SmallCNN
    new_model: SmallCNN
    train_old: torch.Tensor
    train_new: torch.Tensor
    query_old: torch.Tensor
    query_new: torch.Tensor
    gallery_old: torch.Tensor
    gallery_new: torch.Tensor
    seconds: dict = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        """Number of classes (the new model's)."""
        return len(self.classes)

    @property
    def query_labels(self) -> np.ndarray:
        return self.y[self.query].cpu().numpy()

    @property
    def gallery_labels(self) -> np.ndarray:
        return self.y[self.gallery].cpu().numpy()

    @property
    def train_labels(self) -> torch.Tensor:
        return self.y[self.train]

    def old_label_index(self, labels: torch.Tensor) -> torch.Tensor:
        """Position of each label in :attr:`old_classes` (−1 for a class the old model does not know)."""
        return _position_in(labels, self.old_classes, int(self.y.max()) + 1)

    def retrieval(self, query: torch.Tensor, gallery: torch.Tensor) -> dict:
        """CMC top-1, top-5 and mAP of ``query`` (rows of the query images) against ``gallery`` (rows of the
        gallery images), cosine similarity."""
        from ..metrics import cmc, mean_average_precision

        ql, gl = self.query_labels, self.gallery_labels
        acc = cmc(query, gallery, ql, gl, topk=(1, 5))
        return {"top1": float(acc[1]), "top5": float(acc[5]),
                "map": float(mean_average_precision(query, gallery, ql, gl))}

    def top1_by_group(self, query: torch.Tensor, gallery: torch.Tensor) -> dict:
        """CMC top-1 of the queries of the old classes and of the new classes separately (whole gallery):
        ``{"old_classes": ..., "new_classes": ...}``."""
        from ..metrics import cmc

        ql, gl = self.query_labels, self.gallery_labels
        old = np.isin(ql, self.old_classes)
        out = {}
        for name, mask in (("old_classes", old), ("new_classes", ~old)):
            idx = torch.from_numpy(np.nonzero(mask)[0]).to(query.device)
            out[name] = float(cmc(query[idx], gallery, ql[mask], gl, topk=(1,))[1])
        return out


def _position_in(labels: torch.Tensor, subset: tuple, n: int) -> torch.Tensor:
    lut = torch.full((n,), -1, dtype=torch.int64, device=labels.device)
    lut[torch.tensor(subset, device=labels.device)] = torch.arange(len(subset), device=labels.device)
    return lut[labels]


def _load(dataset: str, data_dir) -> tuple[np.ndarray, np.ndarray, int]:
    from ..data import load_digits, load_fashion_mnist

    if dataset == "digits":
        X, y = load_digits()
        return X, y, 8
    Xtr, ytr = load_fashion_mnist(data_dir, "train")
    Xte, yte = load_fashion_mnist(data_dir, "test")
    return np.concatenate([Xtr, Xte]), np.concatenate([ytr, yte]), 28


def _progress(enabled: bool, t0: float, msg: str) -> None:
    if enabled:
        print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def build_protocol(cfg: ProtocolConfig, *, seed: int = 0, data_dir=None, device: str | torch.device = "cpu",
                   progress: bool = False) -> ClassExtension:
    """Load the data, split it, train and freeze the old and the new model, and embed every split.

    Args:
        cfg: sizes and schedules (:func:`protocol_config`).
        seed: seeds the split and both models (the new model uses ``seed + 1000``).
        data_dir: folder of the Fashion-MNIST files (default: the Debian package's place).
        device: where models train and features live.
        progress: one line per stage on stderr.
    """
    from .._checks import check_device, check_int
    from ..data import class_extension_split

    seed = check_int(seed, "seed", minimum=0)
    dev = check_device(device)
    t0 = time.perf_counter()
    X_all, y_all, side = _load(cfg.dataset, data_dir)
    classes = tuple(int(c) for c in np.unique(y_all))
    old_classes = tuple(int(c) for c in (cfg.old_classes or classes[: len(classes) // 2]))
    if not set(old_classes) < set(classes):
        raise ValueError(f"old_classes must be a proper subset of the classes {list(classes)}, got "
                         f"{list(old_classes)}")
    idx_tr, idx_q, idx_g = class_extension_split(y_all, train_fraction=cfg.train_fraction,
                                                 query_fraction=cfg.query_fraction, seed=seed,
                                                 max_train=cfg.max_train, max_eval=cfg.max_eval)
    X = torch.from_numpy(X_all.reshape(-1, 1, side, side)).to(dev)
    y = torch.from_numpy(y_all).to(dev)
    tr, q, g = (torch.from_numpy(np.sort(i)).to(dev) for i in (idx_tr, idx_q, idx_g))
    _progress(progress, t0, f"{cfg.dataset}: {len(tr)} training images, {len(q)} queries, {len(g)} gallery "
                            f"images; old classes {list(old_classes)}")
    pos = _position_in(y[tr], old_classes, int(y.max()) + 1)
    X_old, y_old = X[tr][pos >= 0], pos[pos >= 0]
    seconds = {}

    t = time.perf_counter()
    torch.manual_seed(seed)
    old = SmallCNN(side, cfg.old_channels, cfg.old_hidden, cfg.old_width, len(old_classes)).to(dev)
    train_classifier(old, X_old, y_old, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=seed)
    seconds["old_model"] = time.perf_counter() - t
    _progress(progress, t0, f"old model (channels {cfg.old_channels}, width {cfg.old_width}) trained on "
                            f"{len(y_old)} images of {len(old_classes)} classes")
    t = time.perf_counter()
    torch.manual_seed(seed + 1000)
    new = SmallCNN(side, cfg.new_channels, cfg.new_hidden, cfg.new_width, len(classes)).to(dev)
    train_classifier(new, X[tr], y[tr], epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=seed + 1000)
    seconds["new_model"] = time.perf_counter() - t
    _progress(progress, t0, f"new model (channels {cfg.new_channels}, width {cfg.new_width}) trained on "
                            f"{len(tr)} images of {len(classes)} classes")
    return ClassExtension(cfg, int(seed), dev, X, y, tr, q, g, classes, old_classes, old, new,
                          old.embed(X[tr]), new.embed(X[tr]), old.embed(X[q]), new.embed(X[q]),
                          old.embed(X[g]), new.embed(X[g]), seconds)
