"""Argument types, the help formatter and the shared training options of the ``relaxedortho`` subcommands."""
from __future__ import annotations

import argparse
import math

FORMATS_HELP = """\
feature files (one row per item, same row order in paired files):
  x.npy            NumPy array, opened memory-mapped
  x.npz            archive with exactly one array; x.npz:KEY names one of several
  x.pt / x.pth     torch.save'd tensor (read with weights_only=True); x.pt:KEY for a dict of tensors
label files: the same formats with integers, or .txt/.csv/.tsv with one integer label per line
"""


def _float_list(text: str) -> list[float]:
    try:
        vals = [math.inf if t.strip().lower() in ("inf", "∞") else float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers (or inf), got {text!r}") from None
    if not vals or any(math.isnan(v) or v < 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected non-negative numbers, got {text!r}")
    return vals


def _int_list(text: str) -> list[int]:
    try:
        vals = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def _int_at_least(low: int, what: str):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v
    return parse


_positive_int = _int_at_least(1, "a positive integer")


_nonneg_int = _int_at_least(0, "a non-negative integer")


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def _lam(text: str) -> float:
    vals = _float_list(text)
    if len(vals) != 1:
        raise argparse.ArgumentTypeError(f"expected one number, got {text!r}")
    return vals[0]


def _tol(text: str):
    """``--tol``: a non-negative number, or ``none`` (no stopping rule)."""
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative number or 'none', got {text!r}") from None
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a non-negative number or 'none', got {text!r}")
    return value


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the hand-wrapped descriptions and appends "(default: X)" where a default exists and the help
    text does not already state one."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("default" not in text and action.option_strings and default is not None and default is not False
                and default != argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


def _add_training_options(parser: argparse.ArgumentParser, note: str, *, epochs_help: str, seed_help: str) -> None:
    """``--epochs --batch-size --lr --seed --device`` of the subcommands that train maps (``note`` ends the help
    of the batch size and learning rate)."""
    parser.add_argument("--epochs", type=_positive_int, default=100, help=epochs_help)
    parser.add_argument("--batch-size", type=_positive_int, default=256, help="mini-batch size" + note)
    parser.add_argument("--lr", type=_positive_float, default=None,
                        help="Adam learning rate (default: 0.02/sqrt(max(in, out)), the library's default_lr)" + note)
    parser.add_argument("--init", choices=("auto", "procrustes", "module"), default="auto",
                        help="start of trained maps: the closed form of the map's constraint from the data (auto), "
                             "(centred) Procrustes for every map, or the map's own random start (module)" + note)
    parser.add_argument("--tol", type=_tol, default=1e-4,
                        help="stop when the epoch's mean loss falls by less than this (relative) in two "
                             "consecutive epochs; 'none': run every epoch" + note)
    parser.add_argument("--seed", type=_nonneg_int, default=0, help=seed_help)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
