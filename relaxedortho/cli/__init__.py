r"""The ``relaxedortho`` command line: the demo, and alignment of your own embeddings without writing Python.

Subcommands (``relaxedortho SUBCOMMAND --help`` is the full manual of each):

- ``demo``: backward-compatible retrieval on real data across the spectrum of maps (:mod:`relaxedortho.demo`).
- ``fit``: fit a map from source features to target features (closed form or trained) and save it.
- ``eval``: retrieval and compatibility metrics of a saved map on query/gallery feature files.
- ``sweep``: a λ sweep of λ-orthogonal maps, as JSON and a plot.
- ``transfer-demo``: the cross-model task-vector transfer demo (:mod:`relaxedortho.transfer`, when installed).
- ``compat-bench``: the compatible-learning methods of the field side by side on one protocol
  (:mod:`relaxedortho.compat`).

Bad input (missing or unreadable files, mismatched rows, wrong label counts, NaN/Inf, data too large for the
dtype, an output place that cannot be written) and failed fits (a diverged or non-finite training loss, a
failed factorization) end with one line on stderr and exit status 1, never a traceback, and write no output;
outputs are written to a temporary name and renamed, so nothing half-written is left behind. Usage errors
exit with status 2. An unexpected internal error is also reported in one line (exit status 1); set the
environment variable ``RELAXEDORTHO_TRACEBACK=1`` to see its traceback.

The package: ``parser.py`` (the argument parser), ``arguments.py`` (argument types, help formatter), ``inputs.py``
(files, device, progress), ``map_factory.py`` (:func:`build_map`), one module per subcommand group (``fit.py``,
``evaluate.py``, ``sweep.py``, ``demos.py``) and ``errors.py`` (:class:`CLIError`, exit statuses).
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

from .arguments import FORMATS_HELP
from .demos import cmd_compat_bench, cmd_demo, cmd_transfer_demo
from .errors import EXIT_ERROR, CLIError, _is_library_error
from .evaluate import cmd_eval
from .fit import cmd_fit
from .map_factory import MAP_KINDS, build_map
from .parser import build_parser
from .sweep import cmd_sweep

__all__ = ["main", "build_parser", "build_map", "CLIError", "EXIT_ERROR", "MAP_KINDS", "FORMATS_HELP", "cmd_fit",
           "cmd_eval", "cmd_sweep", "cmd_demo", "cmd_compat_bench", "cmd_transfer_demo"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``relaxedortho`` console script; returns the exit status.

    Every error ends as one line on stderr, ``relaxedortho COMMAND: error: ...``, and exit status 1 (usage
    errors: argparse's message and status 2). Errors that are not bad input or a failed fit are bugs: they are
    reported as "internal error" in one line too, with their traceback when ``RELAXEDORTHO_TRACEBACK=1``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"relaxedortho {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        if not _is_library_error(exc):
            if os.environ.get("RELAXEDORTHO_TRACEBACK") == "1":
                raise
            msg = (f"internal error ({type(exc).__name__}: {msg}); please report it, with the output of the "
                   f"command run again with RELAXEDORTHO_TRACEBACK=1")
        print(f"relaxedortho {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_ERROR
