"""Saving and loading :class:`~relaxedortho.closed_form.PairedMoments` (``torch.load(weights_only=True)`` reads it).

A file is a dict ``{"format": "relaxedortho-moments", "version": 1, "n": int, "dtype": str, "has_sums": bool,
"tensors": {name: float64 tensor}, "info": {...}}`` of plain tensors (on the CPU), strings, numbers and lists,
so shards accumulated by other jobs can be read without trusting them with pickle.
"""
from __future__ import annotations

import os
import torch

from ..files import write_torch
from .streaming import PairedMoments

FORMAT = "relaxedortho-moments"
VERSION = 1
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}
_TENSORS = ("shift_x", "shift_y", "sum_x", "sum_y", "cross_shifted", "gram_x_shifted", "gram_y_shifted")


def _dtype_name(dtype: torch.dtype | None) -> str | None:
    return None if dtype is None else str(dtype).removeprefix("torch.")


def save_moments(m: PairedMoments, path: str | os.PathLike) -> None:
    """Write ``m`` to ``path`` (a temporary name renamed at the end: an interrupted save leaves no partial file)."""
    if not isinstance(m, PairedMoments):
        raise TypeError(f"save_moments needs a PairedMoments, got {type(m).__name__}")
    info = {k: v for k, v in m.info.items() if isinstance(v, (bool, int, float, str))}  # plain diagnostics
    info.update({"chunks": int(m.info.get("chunks", 0)), "scaled_chunks": int(m.info.get("scaled_chunks", 0)),
                 "parts": int(m.info.get("parts", 1)), "gemm_dtype": _dtype_name(m.info.get("gemm_dtype")),
                 "shifted": [bool(v) for v in m.info.get("shifted", (False, False))]})
    payload = {"format": FORMAT, "version": VERSION, "n": int(m.n), "dtype": _dtype_name(m.dtype),
               "has_sums": bool(m.has_sums), "info": info,
               "tensors": {k: getattr(m, k).detach().to("cpu", torch.float64).clone()
                           for k in _TENSORS if getattr(m, k) is not None}}
    write_torch(path, payload, "moments file")


def load_moments(path: str | os.PathLike, device: torch.device | str | None = None) -> PairedMoments:
    """Read moments written by :func:`save_moments` (onto ``device``, default the CPU).

    Raises ``ValueError`` naming the file when it is not a moments file, is damaged or inconsistent, and
    ``OSError`` when it cannot be read.
    """
    from .._checks import check_device

    path = os.fspath(path)
    dev = torch.device("cpu") if device is None else check_device(device)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory, not a moments file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as exc:  # unpickling errors of damaged or foreign files come in many types
        raise ValueError(f"{path} is not a readable relaxedortho moments file ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a relaxedortho moments file")
    if not isinstance(payload.get("version"), int) or payload["version"] > VERSION:
        raise ValueError(f"{path} was written by a newer relaxedortho (moments format {payload.get('version')!r})")
    return PairedMoments(**_fields(payload, path, dev))


def _fields(payload: dict, path: str, dev: torch.device) -> dict:
    def bad(what: str) -> ValueError:
        return ValueError(f"{path} is a damaged moments file: {what}")

    tensors = payload.get("tensors")
    if not isinstance(tensors, dict) or not set(_TENSORS[:5]) <= set(tensors) or not set(tensors) <= set(_TENSORS):
        raise bad("the tensors are missing or unknown")
    for k, t in tensors.items():
        if not isinstance(t, torch.Tensor) or t.dtype != torch.float64:
            raise bad(f"{k} is not a float64 tensor")
    p, q = tensors["shift_x"].shape[0], tensors["shift_y"].shape[0]
    shapes = {"shift_x": (p,), "shift_y": (q,), "sum_x": (p,), "sum_y": (q,), "cross_shifted": (p, q),
              "gram_x_shifted": (p, p), "gram_y_shifted": (q, q)}
    for k, t in tensors.items():
        if tuple(t.shape) != shapes[k]:
            raise bad(f"{k} has shape {tuple(t.shape)}, expected {shapes[k]}")
    n, has_sums, dtype = payload.get("n"), payload.get("has_sums"), payload.get("dtype")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise bad(f"n = {n!r} is not a positive row count")
    if not isinstance(has_sums, bool) or dtype not in _DTYPES:
        raise bad("has_sums or dtype is missing")
    raw = payload.get("info") if isinstance(payload.get("info"), dict) else {}
    info = {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, (bool, int, float, str))}
    try:
        info.update({"chunks": int(raw.get("chunks", 0)), "scaled_chunks": int(raw.get("scaled_chunks", 0)),
                     "parts": int(raw.get("parts", 1)), "gemm_dtype": _DTYPES.get(raw.get("gemm_dtype")),
                     "shifted": tuple(bool(v) for v in raw.get("shifted", (False, False)))})
    except (TypeError, ValueError):
        raise bad("the info entries are not numbers") from None
    return {"n": n, "dtype": _DTYPES[dtype], "has_sums": has_sums, "info": info,
            **{k: t.to(dev) for k, t in tensors.items()}}
