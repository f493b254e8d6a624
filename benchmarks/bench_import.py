"""Import time of relaxedortho against ``import torch``, interleaved in one run.

Each case is a fresh ``python -c "..."`` subprocess, timed wall-clock from start to exit (interpreter start-up
included, the same for every case). The cases run in rounds (torch, relaxedortho, first use, torch, ...; the
order rotates each round) so that a slow phase of a shared machine hits all of them; the script prints each
case's median and the ratio of medians to ``import torch``.

- ``import torch``: the baseline;
- ``import relaxedortho``: the package alone (its ``__init__`` imports its subpackages lazily, PEP 562);
- ``first use``: what a first script pays: the maps, the trainer and the closed forms resolved.

Examples::

    python benchmarks/bench_import.py                   # 5 rounds
    python benchmarks/bench_import.py --rounds 9 --json import.json

Issue 12 target 3: ``import relaxedortho`` <= 1.5x ``import torch`` (median of 5).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASES = {
    "import torch": "import torch",
    "import relaxedortho": "import relaxedortho",
    "first use": ("import relaxedortho as ro; ro.OrthogonalLinear, ro.LambdaOrthoLinear, ro.AffineMap, "
                  "ro.fit_alignment, ro.fit_closed_form, ro.lambda_init, ro.metrics.cmc, ro.losses.backward_loss"),
}


def time_case(code: str, python: str) -> float:
    """Wall-clock seconds of ``python -c code`` (fails loudly if the import fails)."""
    t0 = time.perf_counter()
    subprocess.run([python, "-c", code], check=True, cwd=ROOT)
    return time.perf_counter() - t0


def measure(rounds: int, python: str = sys.executable, cases: dict[str, str] | None = None) -> dict:
    """Interleaved rounds of every case; returns the per-case times, medians and ratios to the first case."""
    cases = CASES if cases is None else cases
    names = list(cases)
    for name in names:  # warm the file-system cache: the first run of each would otherwise pay for it
        time_case(cases[name], python)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(time_case(cases[name], python))
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    base = names[0]
    return {"rounds": rounds, "python": python, "times_s": times, "median_s": medians,
            "ratio_to_" + base.replace(" ", "_"): {name: medians[name] / medians[base] for name in names}}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median over them)")
    p.add_argument("--json", type=str, default=None, metavar="PATH", help="also write the results as JSON")
    a = p.parse_args(argv)
    if a.rounds < 1:
        p.error(f"--rounds must be >= 1, got {a.rounds}")
    res = measure(a.rounds)
    ratios = res["ratio_to_import_torch"]
    print(f"{a.rounds} interleaved rounds, wall-clock per fresh interpreter (start-up included)")
    print(f"{'case':22s} {'median s':>9s} {'min s':>7s} {'max s':>7s} {'ratio':>7s}")
    for name, ts in res["times_s"].items():
        print(f"{name:22s} {res['median_s'][name]:9.2f} {min(ts):7.2f} {max(ts):7.2f} {ratios[name]:6.2f}x")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
