"""How a command fails: :class:`CLIError` (one line on stderr, exit status 1) and which exceptions count as
bad input or a failed fit."""
from __future__ import annotations

import sys

EXIT_ERROR = 1


class CLIError(Exception):
    """A user-facing error: printed as one line on stderr, exit status 1."""


def _is_library_error(exc: BaseException) -> bool:
    """Errors that report bad input or a failed fit (printed as they are): :class:`CLIError`, data-file and
    value errors, file-system errors, arithmetic failures (a non-finite or diverged training loss) and failed
    factorizations (:class:`torch.linalg.LinAlgError`)."""
    if isinstance(exc, (CLIError, OSError, ValueError, ArithmeticError)):
        return True
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(exc, torch.linalg.LinAlgError)
