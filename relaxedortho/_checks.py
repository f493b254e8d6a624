"""One place for input validation and its messages.

Validation happens once, at construction or data entry, never inside a hot path: a finiteness check
forces a device synchronisation and breaks ``torch.compile``.
"""
from __future__ import annotations

import math
from numbers import Real
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def tensor_from_numpy(arr: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``arr``'s memory when it is C-contiguous and writable, else over a writable contiguous
    copy (PyTorch does not support tensors over read-only arrays such as ``np.load(..., mmap_mode="r")``, and
    warns)."""
    if not (arr.flags.c_contiguous and arr.flags.writeable):
        arr = np.array(arr, order="C", copy=True)
    return torch.from_numpy(arr)


def as_float_tensor(x: Any, name: str, *, dtype: torch.dtype | None = None,
                    device: torch.device | str | None = None, ndim: int | None = None,
                    finite: bool = True, allow_half: bool = True) -> torch.Tensor:
    """Convert ``x`` (tensor, NumPy array or nested sequence) to a floating tensor and validate it.

    Raises :class:`TypeError` for non-float data (integers, booleans, complex) and :class:`ValueError`
    for a wrong number of dimensions or NaN/Inf entries, naming ``name`` in the message.
    """
    if isinstance(x, torch.Tensor):
        t = x
    elif isinstance(x, np.ndarray) or isinstance(x, (list, tuple)) or isinstance(x, np.memmap):
        arr = np.asarray(x)
        if arr.dtype.kind not in "f":
            raise TypeError(f"{name} must hold floating-point numbers, got NumPy dtype {arr.dtype}")
        t = tensor_from_numpy(arr)
    else:
        raise TypeError(f"{name} must be a torch.Tensor or a NumPy array, got {type(x).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have a floating dtype (float32 or float64), got {t.dtype}")
    if not allow_half and t.dtype in (torch.float16, torch.bfloat16):
        raise TypeError(f"{name} must be float32 or float64, got {t.dtype}")
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {tuple(t.shape)}")
    if dtype is not None or device is not None:
        t = t.to(device=device if device is not None else t.device,
                 dtype=dtype if dtype is not None else t.dtype)
    if finite and t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf values")
    return t


def check_int(value: Any, name: str, *, minimum: int = 1, none_means: str | None = None) -> int | None:
    """An integer (Python or NumPy, never a bool) ``>= minimum``, returned as ``int``; ``None`` passes through
    when ``none_means`` says what it means (it is then named in the error). Raises :class:`ValueError`."""
    if value is None and none_means is not None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        kind = {1: "a positive integer", 0: "a non-negative integer"}.get(minimum, f"an integer >= {minimum}")
        alt = f" or None ({none_means})" if none_means is not None else ""
        raise ValueError(f"{name} must be {kind}{alt}, got {value!r}")
    return int(value)


def check_matrix(t: Any, name: str) -> None:
    """A floating tensor with at least 2 dimensions (a matrix or a batch of matrices): :class:`TypeError` for
    anything else than a floating tensor, :class:`ValueError` for fewer dimensions. No data is read (no
    synchronisation; ``torch.compile`` guards on dtype and rank)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.dtype.is_floating_point:
        raise TypeError(f"{name} must have a floating dtype (float32 or float64), got {t.dtype}")
    if t.ndim < 2:
        raise ValueError(f"{name} must be a matrix (at least 2-dimensional), got shape {tuple(t.shape)}")


def check_dtype(dtype: Any, name: str = "dtype") -> None:
    """``None`` or a floating :class:`torch.dtype`, else :class:`TypeError`."""
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise TypeError(f"{name} must be a floating torch.dtype (e.g. torch.float32 or torch.float64), got {dtype!r}")


def check_features(n: Any, name: str) -> int:
    """A positive integer feature count."""
    return check_int(n, name)


def check_nonnegative(value: Any, name: str, *, allow_inf: bool = False) -> float:
    """A real number >= 0 (and finite unless ``allow_inf``)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if math.isnan(v) or v < 0 or (math.isinf(v) and not allow_inf):
        allowed = "a number >= 0" + (" (math.inf allowed)" if allow_inf else " and finite")
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return v


def check_positive(value: Any, name: str) -> float:
    """A finite real number > 0."""
    v = check_nonnegative(value, name)
    if v == 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return v


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_paired(X: torch.Tensor, Y: torch.Tensor, names: tuple[str, str] = ("X", "Y")) -> None:
    """Paired row sets: same number of rows."""
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"{names[0]} and {names[1]} must have the same number of rows (paired samples), "
                         f"got {X.shape[0]} and {Y.shape[0]}")


def check_weight_shape(weight: torch.Tensor, out_features: int, in_features: int, name: str = "weight") -> None:
    if tuple(weight.shape) != (out_features, in_features):
        raise ValueError(f"{name} must have shape (out_features, in_features) = ({out_features}, {in_features}), "
                         f"got {tuple(weight.shape)}")


def check_device(device: Any, name: str = "device", *, allow_auto: bool = False) -> torch.device:
    """``device`` as a :class:`torch.device`, checked at once rather than at the first tensor moved there.

    Raises :class:`ValueError` when it does not parse, names CUDA while PyTorch sees no CUDA GPU, names a
    CUDA index beyond the GPUs present, or names MPS where it is unavailable. With ``allow_auto``, ``None``
    and ``"auto"`` mean CUDA when available, else CPU. The one device check of the library: every
    ``device=`` argument goes through it.
    """
    if allow_auto and (device is None or (isinstance(device, str) and device == "auto")):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    hint = "use " + ("auto, " if allow_auto else "") + "cpu, cuda or cuda:N"
    if isinstance(device, bool) or not isinstance(device, (str, int, torch.device)):
        raise ValueError(f"unknown {name} {device!r}; {hint}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown {name} {device!r}; {hint}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name} {str(device)!r} requested but no CUDA GPU is available to PyTorch")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name} {str(device)!r} requested but PyTorch sees {torch.cuda.device_count()} "
                             f"CUDA GPU(s) (indices from 0)")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"{name} {str(device)!r} requested but MPS is not available to PyTorch")
    return dev


def check_bool(value: Any, name: str) -> bool:
    """``True`` or ``False`` (NumPy booleans too): a truthy string such as ``"no"`` would otherwise silently mean
    ``True``."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def as_state_dict(obj: Any, name: str) -> Mapping[str, torch.Tensor]:
    """``obj.state_dict()`` for an :class:`torch.nn.Module`, ``obj`` itself for a mapping of tensors, else a
    :class:`TypeError` naming ``name`` (and the offending key)."""
    from torch import nn

    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{name}[{key!r}] must be a torch.Tensor, got {type(value).__name__}")
        return obj
    raise TypeError(f"{name} must be an nn.Module or a state_dict (a mapping of tensors), got {type(obj).__name__}")
