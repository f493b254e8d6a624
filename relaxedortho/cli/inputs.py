"""Reading the inputs of a command: feature and label files, the device, output places, progress lines."""
from __future__ import annotations

import os
import sys

from .errors import CLIError

def _check_output_file(path: str) -> str:
    """Fail early when ``path``'s folder is missing or not writable, or ``path`` is a folder."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise CLIError(f"output {path} is a folder; give a file name")
    if not os.path.isdir(folder):
        raise CLIError(f"output folder {folder} does not exist")
    from ..files import probe_writable

    try:
        probe_writable(folder)
    except OSError as exc:
        raise CLIError(f"cannot write to output folder {folder}: {exc.strerror or exc}") from None
    return path


def _device(name: str):
    from .._checks import check_device

    try:
        return check_device(name)
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def _tensor(arr, device, dtype=None):
    import numpy as np
    import torch

    a = np.asarray(arr)
    if dtype is None:
        dtype = torch.float64 if a.dtype == np.float64 else torch.float32
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    a = np.array(a, dtype=np_dtype, order="C", copy=True)  # reads a memory-mapped file once, writable
    return torch.from_numpy(a).to(device=device)


def _backends():
    """The library's fitting and metric functions, imported when a command runs (keeps ``--help`` fast)."""
    from ..closed_form import fit_closed_form
    from ..metrics import cmc, mean_average_precision
    from ..training import fit_alignment

    return fit_closed_form, fit_alignment, cmc, mean_average_precision


def _log(args, msg: str) -> None:
    if not getattr(args, "quiet", False):
        print(msg, file=sys.stderr, flush=True)


def _load_pair(args, device):
    """Source and target features (paired rows), validated; optional labels."""
    from ..data import load_features, load_labels

    X = load_features(args.source, "source features")
    Y = load_features(args.target, "target features")
    if X.shape[0] != Y.shape[0]:
        raise CLIError(f"source and target must have the same number of rows (paired items): {args.source} has "
                       f"{X.shape[0]}, {args.target} has {Y.shape[0]}")
    if X.shape[0] < 2:
        raise CLIError("need at least 2 paired rows to fit a map")
    labels = load_labels(args.labels, X.shape[0]) if getattr(args, "labels", None) else None
    return _tensor(X, device), _tensor(Y, device, dtype=_tensor(X, "cpu").dtype), labels


def _loo_retrieval(A, B, labels, limit: int = 2000) -> dict:
    """Cross retrieval of rows of ``A`` against rows of ``B`` (paired), leaving the paired item out."""
    _, _, cmc, mean_average_precision = _backends()
    n = min(A.shape[0], limit)
    lab = labels[:n]
    acc = cmc(A[:n], B[:n], lab, lab, topk=(1, 5), leave_one_out=True)
    return {"top1": float(acc[1]), "top5": float(acc[5]),
            "map": float(mean_average_precision(A[:n], B[:n], lab, lab, leave_one_out=True)), "n": n}
