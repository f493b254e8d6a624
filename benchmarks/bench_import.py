"""Import time of relaxedortho against ``import torch``, interleaved in one run.

Each case is a fresh ``python -c "..."`` subprocess, timed wall-clock from start to exit (interpreter start-up
included, the same for every case). The cases run in rounds (torch, relaxedortho, first use, torch, ...; the
order rotates each round) so that a slow phase of a shared machine hits all of them; the script prints each
case's median and the ratio of medians to ``import torch``.

- ``import torch``: the baseline;
- ``import relaxedortho``: the package alone (its ``__init__`` imports its subpackages lazily, PEP 562);
- ``first use``: what a first script pays: the maps, the trainer and the closed forms resolved.

``--compare DIR`` adds the two relaxedortho cases run from another source tree (``PYTHONPATH=DIR``, e.g. an
export of the main branch), interleaved in the same rounds, for a before/after table.

Examples::

    python benchmarks/bench_import.py                   # 5 rounds
    python benchmarks/bench_import.py --rounds 9 --json import.json
    git archive main | tar -x -C /tmp/main-src && python benchmarks/bench_import.py --compare /tmp/main-src

Issue 12 target 3: ``import relaxedortho`` <= 1.5x ``import torch`` (median of 5).
"""
from __future__ import annotations

import argparse
import json
import os
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


def time_case(code: str, python: str, source: str | None = None) -> float:
    """Wall-clock seconds of ``python -c code``, importing relaxedortho from ``source`` when given (fails loudly
    if the import fails)."""
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join([source, *filter(None, [env.get("PYTHONPATH")])])
        code = f"import relaxedortho, sys; assert relaxedortho.__file__.startswith({source!r}); {code}"
    t0 = time.perf_counter()
    subprocess.run([python, "-c", code], check=True, cwd=ROOT if source is None else source, env=env)
    return time.perf_counter() - t0


def measure(rounds: int, python: str = sys.executable, cases: dict[str, str] | None = None,
            compare: str | None = None) -> dict:
    """Interleaved rounds of every case; returns the per-case times, medians and ratios to the first case."""
    cases = dict(CASES if cases is None else cases)
    sources = dict.fromkeys(cases)
    if compare is not None:
        compare = os.path.abspath(compare)
        for name in list(cases)[1:]:
            cases[f"{name} [compare]"], sources[f"{name} [compare]"] = cases[name], compare
    names = list(cases)
    for name in names:  # warm the file-system cache: the first run of each would otherwise pay for it
        time_case(cases[name], python, sources[name])
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(time_case(cases[name], python, sources[name]))
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    base = names[0]
    return {"rounds": rounds, "python": python, "compare": compare, "times_s": times, "median_s": medians,
            "ratio_to_" + base.replace(" ", "_"): {name: medians[name] / medians[base] for name in names}}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median over them)")
    p.add_argument("--json", type=str, default=None, metavar="PATH", help="also write the results as JSON")
    p.add_argument("--compare", type=str, default=None, metavar="DIR",
                   help="also time the relaxedortho cases from this source tree (PYTHONPATH=DIR)")
    a = p.parse_args(argv)
    if a.rounds < 1:
        p.error(f"--rounds must be >= 1, got {a.rounds}")
    if a.compare is not None and not os.path.isfile(os.path.join(a.compare, "relaxedortho", "__init__.py")):
        p.error(f"--compare: no relaxedortho package in {a.compare!r}")
    res = measure(a.rounds, compare=a.compare)
    ratios = res["ratio_to_import_torch"]
    print(f"{a.rounds} interleaved rounds, wall-clock per fresh interpreter (start-up included)")
    if a.compare:
        print(f"[compare]: relaxedortho from {res['compare']}")
    print(f"{'case':32s} {'median s':>9s} {'min s':>7s} {'max s':>7s} {'ratio':>7s}")
    for name, ts in res["times_s"].items():
        print(f"{name:32s} {res['median_s'][name]:9.2f} {min(ts):7.2f} {max(ts):7.2f} {ratios[name]:6.2f}x")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
