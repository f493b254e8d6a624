"""Saving and loading maps in a safe format (``torch.load(weights_only=True)`` reads it).

A saved file is a dict ``{"format": "relaxedortho-map", "version": 1, "class": name, "config": {...},
"dtype": name, "state_dict": {...}, "checksum": hex}`` of plain tensors, strings and numbers; ``checksum`` is the
SHA-256 of the class, config, dtype and every tensor's bytes, so a file corrupted inside its data is refused
rather than loaded with other weights (files without it, from earlier versions, load unchecked). Plain
``torch.save(module)`` pickles the class itself, which fails for parametrized modules and cannot be read with
``weights_only=True``.

Every failure is one exception whose message names the file: an :class:`OSError` subclass for the file system (a
missing file or folder, a folder where a file is expected, no permission), a :class:`ValueError` for contents
that are not a map (an empty, truncated or corrupted file, pickled Python objects, damaged or non-finite
entries). Pickled objects are never unpickled: that can run arbitrary code.
"""
from __future__ import annotations

import hashlib
import math
import os
import pickle
import warnings
from typing import Any

import torch
from torch import nn

FORMAT = "relaxedortho-map"
VERSION = 1


def _plain(t: torch.Tensor) -> torch.Tensor:
    return t.detach().as_subclass(torch.Tensor).clone().cpu()


def _encode(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return value


def _decode(key: str, value: Any) -> Any:
    if value == "inf" and key == "lam":
        return math.inf
    return value


def checksum(name: str, config: dict, dtype: str, state: dict) -> str:
    """SHA-256 (hex) of a map file's class name, config, dtype and tensors (keys, dtypes, shapes and bytes)."""
    h = hashlib.sha256(repr((name, sorted(config.items()), dtype)).encode())
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(repr((key, str(t.dtype), tuple(t.shape))).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _path(path: Any, what: str) -> str:
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path of the {what} must be a str or os.PathLike, got {type(path).__name__}")
    return os.fspath(path)


def _first_line(exc: BaseException) -> str:
    """The first sentence of an exception's message (PyTorch's archive errors go on for a paragraph)."""
    text = str(exc).strip()
    return text.splitlines()[0].split(". ")[0].rstrip(".")[:160] if text else type(exc).__name__


def write_payload(payload: dict, path: Any, what: str, *, make_dirs: bool = False) -> None:
    """Write ``payload`` with :func:`torch.save` to ``path`` atomically (:func:`relaxedortho.files.atomic_write`:
    an interrupted write never leaves a partial file).

    File-system failures raise an :class:`OSError` of the matching subclass whose message names the file (and
    the ``what`` it was to hold); ``make_dirs`` creates missing folders instead of failing.
    """
    from .files import write_torch

    write_torch(_path(path, what), payload, what, make_dirs=make_dirs)


def read_payload(path: Any, what: str, map_location: Any = "cpu") -> Any:
    """Read a file written by :func:`write_payload` with ``torch.load(weights_only=True)`` (no code is unpickled).

    Raises :class:`FileNotFoundError`, :class:`IsADirectoryError` or :class:`PermissionError` (the file system)
    and :class:`ValueError` (an empty, truncated or corrupted file, pickled Python objects, an unknown or absent
    ``map_location`` device), each naming the file.
    """
    from ._checks import check_device

    path = _path(path, what)
    if isinstance(map_location, (str, torch.device)):
        map_location = check_device(map_location, "map_location")
    elif map_location is not None:
        raise TypeError(f"map_location must be None, a device name or a torch.device, got "
                        f"{type(map_location).__name__}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} file not found: {path}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a folder, not a {what} file")
    try:
        if os.path.getsize(path) == 0:
            raise ValueError(f"{path} is empty (0 bytes), not a {what} file")
        with open(path, "rb") as fh, warnings.catch_warnings():
            # a corrupted archive can make torch warn (e.g. about its pickle protocol) before it fails
            warnings.simplefilter("ignore")
            return torch.load(fh, map_location=map_location, weights_only=True)
    except OSError as exc:
        raise type(exc)(f"cannot read the {what} file {path}: {exc.strerror or _first_line(exc)}") from None
    except pickle.UnpicklingError as exc:
        if "weights" in str(exc).lower():  # "Weights only load failed": pickled objects beyond plain data
            raise ValueError(f"{path} holds pickled Python objects (such as a module saved with "
                             f"torch.save(module)), not a {what} file; they are not loaded because unpickling can "
                             f"run arbitrary code") from None
        raise ValueError(f"{path} is not a readable {what} file (corrupted: {_first_line(exc)})") from None
    except ValueError as exc:
        if str(exc).startswith(path):
            raise
        raise ValueError(f"{path} is not a readable {what} file (corrupted: {_first_line(exc)})") from None
    except Exception as exc:  # on arbitrary bytes torch.load raises RuntimeError, EOFError, struct.error, ...
        detail = _first_line(exc) if str(exc).strip() else "the file ends early"
        raise ValueError(f"{path} is not a readable {what} file (truncated or corrupted: {detail})") from None


def _check_finite_state(state: dict, where: str) -> None:
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{where} holds NaN or Inf values in {key}")


def save(module: nn.Module, path: str | os.PathLike) -> None:
    """Save a map of the spectrum (any :class:`~relaxedortho.maps.AlignmentMap` or a plain :class:`torch.nn.Linear`).

    The file is written to a temporary name and renamed, so an interrupted save never leaves a partial file.

    Raises:
        TypeError: ``module`` is not a map of the spectrum or an ``nn.Linear``, or ``path`` is not a path.
        ValueError: the module's weights hold NaN or Inf (a diverged map is not saved).
        OSError: ``path`` is a folder, its folder does not exist or cannot be written (the subclass says which).
    """
    from .maps import MAP_CLASSES

    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a relaxedortho map or an nn.Linear, got {type(module).__name__}")
    # parametrized modules are instances of a generated subclass ("ParametrizedOrthogonalLinear")
    name = next((c.__name__ for c in type(module).__mro__ if MAP_CLASSES.get(c.__name__) is c),
                type(module).__name__)
    if name in MAP_CLASSES:
        config = {k: _encode(v) for k, v in module.config().items()}
    elif type(module) is nn.Linear:
        config = {"in_features": module.in_features, "out_features": module.out_features,
                  "bias": module.bias is not None}
    else:
        raise TypeError(f"save() handles relaxedortho maps and nn.Linear, got {name}")
    path = _path(path, "map")
    state = module.state_dict()
    _check_finite_state(state, f"module (not saved to {path})")
    dtype = str(next(iter(state.values())).dtype).removeprefix("torch.")
    plain = {k: _plain(v) for k, v in state.items()}
    payload = {"format": FORMAT, "version": VERSION, "class": name, "config": config, "dtype": dtype,
               "state_dict": plain, "checksum": checksum(name, config, dtype, plain)}
    write_payload(payload, path, "map")


def load(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> nn.Module:
    """Load a map written by :func:`save`; it gives outputs identical to the saved one.

    Only tensors, strings and numbers are read (``torch.load(weights_only=True)``): no code is unpickled.

    Raises:
        FileNotFoundError, IsADirectoryError, PermissionError: the file is missing, a folder, or unreadable.
        ValueError: the file is empty, truncated, corrupted, holds pickled objects, is another kind of file,
            comes from a newer version, or its entries are damaged or non-finite; ``map_location`` names an
            unknown or absent device.
    """
    from .maps import MAP_CLASSES

    payload = read_payload(path, "relaxedortho map", map_location)
    path = os.fspath(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a relaxedortho map file")
    version = payload.get("version", 0)
    if not isinstance(version, int) or version > VERSION:
        raise ValueError(f"{path} was written by a newer relaxedortho (format {version!r})")
    name, config, state = payload.get("class"), payload.get("config"), payload.get("state_dict")
    if name != "Linear" and name not in MAP_CLASSES:
        raise ValueError(f"unknown map class {name!r} in {path}")
    if (not isinstance(config, dict) or not isinstance(state, dict) or not state
            or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())):
        raise ValueError(f"{path} is a damaged relaxedortho map file (its config or state_dict is missing)")
    if "checksum" in payload and payload["checksum"] != checksum(name, config, payload.get("dtype"), state):
        raise ValueError(f"{path} is corrupted: its contents do not match the checksum written with them")
    _check_finite_state(state, path)
    dtype = getattr(torch, str(payload.get("dtype", "float32")), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"{path} is a damaged relaxedortho map file (dtype {payload.get('dtype')!r})")
    config = {k: _decode(k, v) for k, v in config.items()}
    device = next(iter(state.values())).device
    try:
        if name == "Linear":
            module = nn.Linear(**config, dtype=dtype, device=device)
        else:
            module = MAP_CLASSES[name](**config, dtype=dtype, device=device)
        module.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError, KeyError, AttributeError) as exc:
        raise ValueError(f"{path} is a damaged relaxedortho map file ({_first_line(exc)})") from None
    return module
