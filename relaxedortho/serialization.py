"""Saving and loading maps in a safe format (``torch.load(weights_only=True)`` reads it).

A saved file is a dict ``{"format": "relaxedortho-map", "version": 1, "class": name, "config": {...},
"state_dict": {...}}`` of plain tensors, strings and numbers. Plain ``torch.save(module)`` pickles the
class itself, which fails for parametrized modules and cannot be read with ``weights_only=True``.
"""
from __future__ import annotations

import math
import os
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


def save(module: nn.Module, path: str | os.PathLike) -> None:
    """Save a map of the spectrum (any :class:`~relaxedortho.maps.AlignmentMap` or a plain :class:`torch.nn.Linear`).

    The file is written to a temporary name and renamed, so an interrupted save never leaves a partial file.
    """
    from .maps import MAP_CLASSES

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
    first = next(iter(module.state_dict().values()))
    payload = {"format": FORMAT, "version": VERSION, "class": name, "config": config,
               "dtype": str(first.dtype).removeprefix("torch."),
               "state_dict": {k: _plain(v) for k, v in module.state_dict().items()}}
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> nn.Module:
    """Load a map written by :func:`save`; it gives outputs identical to the saved one."""
    from .maps import MAP_CLASSES

    payload = torch.load(os.fspath(path), map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{os.fspath(path)} is not a relaxedortho map file")
    if payload.get("version", 0) > VERSION:
        raise ValueError(f"{os.fspath(path)} was written by a newer relaxedortho (format {payload['version']})")
    name, config = payload["class"], {k: _decode(k, v) for k, v in payload["config"].items()}
    state = payload["state_dict"]
    dtype = getattr(torch, payload.get("dtype", "float32"))
    device = next(iter(state.values())).device
    if name == "Linear":
        module = nn.Linear(**config, dtype=dtype, device=device)
    elif name in MAP_CLASSES:
        module = MAP_CLASSES[name](**config, dtype=dtype, device=device)
    else:
        raise ValueError(f"unknown map class {name!r} in {os.fspath(path)}")
    module.load_state_dict(state)
    return module
