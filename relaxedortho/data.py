r"""Datasets for the demo and feature-file loading for the command line.

Two image datasets, both local (nothing is downloaded):

- ``"digits"``: scikit-learn's bundled handwritten digits (UCI ML optical recognition of handwritten digits,
  Alpaydin & Kaynak 1998; 1797 images of 8×8 pixels, 10 classes), shipped inside scikit-learn.
- ``"fashion-mnist"``: Fashion-MNIST (Xiao, Rasul & Vollgraf 2017; 70 000 images of 28×28 pixels, 10
  classes) read from its four IDX files. The Debian package ``dataset-fashion-mnist`` installs them in
  :data:`FASHION_MNIST_DIRS` (``/usr/share/datasets/fashion-mnist``); give ``data_dir`` for any other place.
  Files may be gzip-compressed (``*.gz``, as shipped) or not.

Pixels are scaled to :math:`[0, 1]` and returned as float32 rows; labels as int64.

Feature files (:func:`load_features`) hold one 2-D floating array of embeddings, one row per item:

=============  ================================================================================
``x.npy``      a NumPy array, opened memory-mapped (``mmap_mode="r"``), so large files are not read
               into memory before they are needed
``x.npz``      an archive with exactly one array, or ``x.npz:key`` to name the array
``x.pt``       a :class:`torch.Tensor` saved with :func:`torch.save` (read with ``weights_only=True``),
               or a dict of tensors with ``x.pt:key``
=============  ================================================================================

Label files (:func:`load_labels`) hold one integer label per row: the same formats, or a text file
(``.txt``/``.csv``/``.tsv``, one label per line; a line with several columns is refused, not cut).
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

#: Where the Debian package ``dataset-fashion-mnist`` puts the Fashion-MNIST files.
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)

#: IDX file stems of Fashion-MNIST (identical to the original MNIST naming).
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

DATASETS = ("digits", "fashion-mnist", "text")

FEATURE_SUFFIXES = (".npy", ".npz", ".pt", ".pth")
LABEL_SUFFIXES = FEATURE_SUFFIXES + (".txt", ".csv", ".tsv")


class DataFileError(ValueError):
    """A data or feature file is missing, unreadable or inconsistent (the message names the file)."""


# --------------------------------------------------------------------------------------------- splits
def class_extension_split(labels, *, train_fraction: float, query_fraction: float, seed: int,
                          max_train: int | None = None, max_eval: int | None = None
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The stratified split of the class-extension protocol (Shen et al., CVPR 2020; Ricci et al., arXiv
    2509.16664): training rows (for the models and the maps) and held-out rows, the held-out rows split into a
    gallery and a query set; each step stratified by label (scikit-learn's ``train_test_split``, ``random_state
    = seed``). ``max_train`` / ``max_eval`` cap the training and held-out rows (a further stratified draw).

    Returns ``(train, query, gallery)`` row indices (NumPy, in the order ``train_test_split`` gives them), used
    by the demo and :mod:`relaxedortho.compat`.

    Example:
        >>> tr, q, g = class_extension_split(np.repeat(np.arange(3), 10), train_fraction=0.6, query_fraction=0.5,
        ...                                  seed=0)
        >>> len(tr), len(q), len(g), len(set(tr) | set(q) | set(g))
        (18, 6, 6, 30)
    """
    from sklearn.model_selection import train_test_split

    from ._checks import check_int

    labels = np.asarray(labels)
    seed = check_int(seed, "seed", minimum=0)
    for name, value in (("train_fraction", train_fraction), ("query_fraction", query_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
    max_train = check_int(max_train, "max_train", none_means="no cap")
    max_eval = check_int(max_eval, "max_eval", none_means="no cap")
    idx_tr, idx_ev = train_test_split(np.arange(len(labels)), train_size=train_fraction, stratify=labels,
                                      random_state=seed)
    if max_train and len(idx_tr) > max_train:
        idx_tr = train_test_split(idx_tr, train_size=max_train, stratify=labels[idx_tr], random_state=seed)[0]
    if max_eval and len(idx_ev) > max_eval:
        idx_ev = train_test_split(idx_ev, train_size=max_eval, stratify=labels[idx_ev], random_state=seed)[0]
    idx_g, idx_q = train_test_split(idx_ev, test_size=query_fraction, stratify=labels[idx_ev], random_state=seed)
    return idx_tr, idx_q, idx_g


# --------------------------------------------------------------------------------------------- datasets
def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits: ``X`` (1797 × 64, float32 in [0, 1]) and ``y`` (int64 in 0..9).

    Example:
        >>> X, y = load_digits()
        >>> X.shape, y.shape, float(X.max()), sorted(set(y.tolist())) == list(range(10))
        ((1797, 64), (1797,), 1.0, True)
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    X = (np.asarray(bunch.data, dtype=np.float32) / 16.0).astype(np.float32)
    return X, np.asarray(bunch.target, dtype=np.int64)


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format: magic 0x0000 08 ndim, big-endian uint32 sizes, uint8 data)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DataFileError(f"cannot read {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataFileError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + int(np.prod(shape)):
        raise DataFileError(f"{path} is truncated: header says shape {shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def fashion_mnist_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding the Fashion-MNIST files: ``data_dir`` if given, else the first of
    :data:`FASHION_MNIST_DIRS` that has them; raises :class:`FileNotFoundError` with instructions otherwise."""
    candidates = [Path(data_dir)] if data_dir is not None else [Path(d) for d in FASHION_MNIST_DIRS]
    needed = [s for pair in FASHION_MNIST_FILES.values() for s in pair]
    for d in candidates:
        if all(_find_idx(d, s) for s in needed):
            return d
    where = ", ".join(str(d) for d in candidates)
    missing = needed if not candidates[0].is_dir() else [s for s in needed if not _find_idx(candidates[0], s)]
    raise FileNotFoundError(
        f"Fashion-MNIST files not found in {where} (missing {', '.join(m + '[.gz]' for m in missing)}); "
        "install the Debian package dataset-fashion-mnist or pass --data-dir to the folder holding them")


def load_fashion_mnist(data_dir: str | os.PathLike | None = None, split: str = "train"
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST ``split`` (``"train"``: 60 000 rows, ``"test"``: 10 000) as ``X`` (n × 784, float32 in
    [0, 1]) and ``y`` (int64 in 0..9), from local IDX files (see :func:`fashion_mnist_dir`)."""
    if split not in FASHION_MNIST_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    d = fashion_mnist_dir(data_dir)
    img_stem, lab_stem = FASHION_MNIST_FILES[split]
    images, labels = _read_idx(_find_idx(d, img_stem)), _read_idx(_find_idx(d, lab_stem))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DataFileError(f"Fashion-MNIST {split} files in {d} do not match: images {images.shape}, "
                            f"labels {labels.shape}")
    X = images.reshape(images.shape[0], -1).astype(np.float32) / 255.0
    return X, labels.astype(np.int64)


# --------------------------------------------------------------------------------------------- feature files
def _split_key(spec: str | os.PathLike) -> tuple[Path, str | None]:
    s = os.fspath(spec)
    path, key = s, None
    if not os.path.exists(s) and ":" in s:
        head, _, tail = s.rpartition(":")
        if head and tail and os.sep not in tail:
            path, key = head, tail
    return Path(path), key


def _pick(container: dict, path: Path, key: str | None, what: str):
    names = list(container.keys())
    if key is not None:
        if key not in container:
            raise DataFileError(f"{path} has no array named {key!r} (it has: {', '.join(map(str, names)) or 'none'})")
        return container[key]
    if len(names) != 1:
        raise DataFileError(f"{path} holds {len(names)} arrays ({', '.join(map(str, names))}); "
                            f"name the {what} as {path}:KEY")
    return container[names[0]]


def _read_array(spec: str | os.PathLike, what: str, *, mmap: bool = True, text_ok: bool = False) -> np.ndarray:
    path, key = _split_key(spec)
    if not path.exists():
        raise DataFileError(f"{what} file not found: {path}")
    if not path.is_file():
        raise DataFileError(f"{what} path is not a file: {path}")
    suffix = path.suffix.lower()
    allowed = LABEL_SUFFIXES if text_ok else FEATURE_SUFFIXES
    if suffix not in allowed:
        raise DataFileError(f"{what} file {path} has an unsupported format {suffix or '(no suffix)'}; "
                            f"use one of {', '.join(allowed)}")
    try:
        if suffix == ".npy":
            if key is not None:
                raise DataFileError(f"{path} is a .npy file: it has one array, drop ':{key}'")
            return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return np.asarray(_pick({k: archive[k] for k in archive.files}, path, key, what))
        if suffix in (".pt", ".pth"):
            import torch

            obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, dict):
                obj = _pick(obj, path, key, what)
            elif key is not None:
                raise DataFileError(f"{path} holds a single {type(obj).__name__}, not a dict: drop ':{key}'")
            if not isinstance(obj, torch.Tensor):
                raise DataFileError(f"{path} must hold a torch.Tensor, got {type(obj).__name__}")
            t = obj.detach().cpu()
            if t.dtype == torch.bfloat16:
                t = t.float()
            return t.numpy()
        # text labels: one integer per line, nothing else (a second column would be silently dropped)
        labels = []
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                text = line.strip()
                if not text:
                    continue
                problem = None
                if len(text.replace("\t", ",").replace(";", ",").split(",")) != 1 or len(text.split()) != 1:
                    problem = "has several columns"
                else:
                    try:
                        labels.append(int(text))
                    except ValueError:
                        problem = "is"
                if problem:
                    raise DataFileError(f"{what} file {path} must hold one integer per line (a label); line "
                                        f"{lineno} {problem} {text[:40]!r}")
        return np.array(labels, dtype=np.int64)
    except DataFileError:
        raise
    except Exception as exc:  # NumPy/torch/zip raise many types for corrupt files
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataFileError(f"cannot read {what} file {path}: {msg[:200]}") from None


def load_features(spec: str | os.PathLike, what: str = "features", *, mmap: bool = True) -> np.ndarray:
    """Read a 2-D floating array of features (rows = items) from ``spec`` (see the module documentation).

    ``.npy`` files stay memory-mapped when ``mmap`` is true. Raises :class:`DataFileError` (a
    :class:`ValueError`) naming the file when it is missing, unreadable, not 2-D, not floating, or holds
    NaN/Inf (checked in chunks, so a memory-mapped file is never read whole at once).
    """
    arr = _read_array(spec, what, mmap=mmap)
    path = _split_key(spec)[0]
    if arr.ndim != 2:
        raise DataFileError(f"{what} in {path} must be a 2-D array (rows = items), got shape {arr.shape}")
    if arr.dtype.kind != "f":
        raise DataFileError(f"{what} in {path} must hold floating-point numbers, got dtype {arr.dtype}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataFileError(f"{what} in {path} is empty (shape {arr.shape})")
    step = max(1, (1 << 22) // max(1, arr.shape[1]))
    for start in range(0, arr.shape[0], step):
        if not np.isfinite(arr[start:start + step]).all():
            raise DataFileError(f"{what} in {path} contain NaN or Inf values")
    return arr


def load_labels(spec: str | os.PathLike, n: int | None = None, what: str = "labels") -> np.ndarray:
    """Read one integer label per row from ``spec`` (``.npy``, ``.npz[:key]``, ``.pt[:key]`` or a text file with
    one label per line) as int64; with ``n``, check that there are exactly ``n`` labels."""
    arr = np.asarray(_read_array(spec, what, mmap=False, text_ok=True))
    path = _split_key(spec)[0]
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DataFileError(f"{what} in {path} must be 1-D (one label per row), got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or not np.all(arr == np.round(arr)):
            raise DataFileError(f"{what} in {path} must be integers")
    elif arr.dtype.kind not in "iub":
        raise DataFileError(f"{what} in {path} must be integers, got dtype {arr.dtype}")
    if n is not None and arr.shape[0] != n:
        raise DataFileError(f"{what} in {path} has {arr.shape[0]} labels but the features have {n} rows")
    return arr.astype(np.int64)
