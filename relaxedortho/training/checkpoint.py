r"""Checkpoints that resume training exactly.

A checkpoint holds everything the next step depends on: the model's ``state_dict``, the optimizer's and the
gradient scaler's state, the random number generators' states (torch CPU and CUDA; the trainers use no
Python or NumPy randomness), the position in the data (epoch and batch; the order of an epoch is a function
of the seed, :func:`~relaxedortho.training.data.epoch_order`), the running sums of the current epoch,
the history and the early-stopping state. Resuming from it gives bitwise the same final weights as an
uninterrupted run with the same seed and settings.

Files are plain dicts of tensors, numbers and strings (``torch.load(weights_only=True)`` reads them), written
to a temporary name and renamed, so an interruption during a save never leaves a broken file.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from ..serialization import read_payload, write_payload

FORMAT = "relaxedortho-checkpoint"
VERSION = 1


def _plain(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().as_subclass(torch.Tensor).clone().cpu()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


def rng_state() -> dict:
    """The torch CPU and (initialised) CUDA generator states."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {"torch": torch.get_rng_state(), "cuda": list(cuda)}


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Write ``state`` (a dict) to ``path`` atomically (temporary file, then :func:`os.replace`), creating
    missing folders; an :class:`OSError` naming the file when it cannot be written."""
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    write_payload({"format": FORMAT, "version": VERSION, **_plain(state)}, path, "training checkpoint",
                  make_dirs=True)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``: no code is unpickled).

    Raises the errors of :func:`relaxedortho.load`: an :class:`OSError` for a missing, unreadable or folder
    path, a :class:`ValueError` for an empty, truncated, corrupted or foreign file, each naming the file.
    """
    state = read_payload(path, "training checkpoint", map_location)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{os.fspath(path)} is not a relaxedortho training checkpoint")
    return state


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``optimizer.load_state_dict(state)``, keeping Python-number entries (geoopt's ``step`` counters) Python
    numbers: PyTorch turns them into float32 tensors, which changes geoopt's bias corrections in the last bits."""
    optimizer.load_state_dict(state)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    saved_ids = [i for g in state["param_groups"] for i in g["params"]]
    for pid, p in zip(saved_ids, params):
        for key, value in state["state"].get(pid, {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                optimizer.state[p][key] = value
