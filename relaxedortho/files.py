"""Writing files the one way the project writes them: atomically, with errors that name the file.

Every file relaxedortho writes (a saved map, a training checkpoint, accumulated moments, a demo or benchmark
report, a plot) goes through :func:`atomic_write`: the bytes go to a temporary name in the destination's own
folder, which :func:`os.replace` then renames over the destination. A rename within one file system is atomic, so
an interrupted write (a crash, a full disk, Ctrl-C) leaves either the old file or the new one, never a partial
file; the temporary file is removed on every failure.

File-system failures raise an :class:`OSError` of the matching subclass (``FileNotFoundError``,
``IsADirectoryError``, ``PermissionError``, ...) whose one-line message names the file and what it was to hold.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import uuid
from typing import Any, BinaryIO, Callable

__all__ = ["atomic_write", "write_text", "write_json", "write_torch", "save_figure", "writable_dir",
           "probe_writable", "jsonable"]


def _path(path: Any, what: str) -> str:
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path of the {what} must be a str or os.PathLike, got {type(path).__name__}")
    return os.fspath(path)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None], what: str = "file", *,
                 make_dirs: bool = False) -> str:
    """Call ``write(fh)`` on a binary file handle and put the result at ``path`` atomically.

    Args:
        path: destination file.
        write: writes the whole content to the open binary handle it is given.
        what: what the file holds, for error messages (``"map"``, ``"training checkpoint"``, ...).
        make_dirs: create missing folders instead of raising :class:`FileNotFoundError`.

    Returns:
        ``path`` as a string.

    Raises:
        TypeError: ``path`` is not a ``str``/``os.PathLike``.
        OSError: the subclass of the failure, with a message that names the file and ``what``.
    """
    path = _path(path, what)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write the {what} to {path}: it is a folder; give a file name")
    if not make_dirs and not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write the {what} to {path}: the folder {folder} does not exist")
    tmp = None
    try:
        if make_dirs:
            os.makedirs(folder, exist_ok=True)
        # a fresh temporary name created with the permissions a plain open() gives (0o666 minus the umask;
        # tempfile.mkstemp would make every saved file private, 0o600)
        tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except OSError as exc:
        reason = exc.strerror or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise type(exc)(f"cannot write the {what} to {path}: {reason}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_text(path: str | os.PathLike, text: str, what: str = "file", *, make_dirs: bool = False) -> str:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")), what, make_dirs=make_dirs)


def write_json(path: str | os.PathLike, obj: Any, what: str = "report", *, make_dirs: bool = False) -> str:
    """Write ``jsonable(obj)`` as indented JSON (with a final newline) to ``path`` atomically."""
    return write_text(path, json.dumps(jsonable(obj), indent=2) + "\n", what, make_dirs=make_dirs)


def write_torch(path: str | os.PathLike, payload: Any, what: str = "file", *, make_dirs: bool = False) -> str:
    """Write ``payload`` with :func:`torch.save` to ``path`` atomically (see :func:`atomic_write`)."""
    import torch

    return atomic_write(path, lambda fh: torch.save(payload, fh), what, make_dirs=make_dirs)


def save_figure(fig: Any, path: str | os.PathLike, what: str = "plot", **savefig_kwargs: Any) -> str:
    """Save a matplotlib figure as PNG to ``path`` atomically (``savefig_kwargs`` go to ``fig.savefig``)."""
    return atomic_write(path, lambda fh: fig.savefig(fh, format="png", **savefig_kwargs), what)


def probe_writable(folder: str | os.PathLike) -> None:
    """Create and remove a temporary file in ``folder``; raises :class:`OSError` when it cannot be written."""
    fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=os.fspath(folder))
    os.close(fd)
    os.remove(probe)


def writable_dir(out: str | os.PathLike) -> str:
    """Create the output folder ``out`` if needed and check that it can be written, before any long work.

    Returns ``out`` as a string; raises :class:`OSError` ``"cannot write to output folder OUT: reason"``.
    """
    out = _path(out, "output folder")
    try:
        os.makedirs(out, exist_ok=True)
        probe_writable(out)
    except OSError as exc:
        raise OSError(f"cannot write to output folder {out}: {exc.strerror or exc}") from None
    return out


def jsonable(obj: Any) -> Any:
    """``obj`` with what JSON cannot hold made plain: tuples as lists, NumPy scalars as Python numbers, ±inf as
    the strings ``"inf"``/``"-inf"`` (NaN stays NaN, which :func:`json.dumps` writes as ``NaN``)."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "shape", None) == ():   # NumPy / 0-d tensor scalars
        obj = obj.item()
    if isinstance(obj, float) and math.isinf(obj):
        return "inf" if obj > 0 else "-inf"
    return obj
