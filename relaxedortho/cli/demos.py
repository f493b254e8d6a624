"""``relaxedortho demo``, ``compat-bench`` and ``transfer-demo``: the demos of the library, run and printed."""
from __future__ import annotations

import os


def _print_report(table: str, report: dict) -> None:
    """A demo's table, then where its report and plot went and how long it took."""
    print(table)
    print(f"\nReport: {report['files']['report']}\nPlot:   {report['files']['plot']}\n"
          f"({report['seconds_total']:.1f} s)")


def cmd_demo(args) -> int:
    """``relaxedortho demo``: run :func:`relaxedortho.demo.run_demo` and print its table."""
    from ..demo import format_table, run_demo

    report = run_demo(args.out, dataset=args.dataset, data_dir=args.data_dir, device=args.device, seed=args.seed,
                      quick=args.quick, new_width=args.new_width, progress=not args.quiet)
    _print_report(format_table(report), report)
    return 0


def cmd_compat_bench(args) -> int:
    """``relaxedortho compat-bench``: run :func:`relaxedortho.compat.bench.run_compat_bench` and print its table."""
    from ..compat.bench import format_table, run_compat_bench

    report = run_compat_bench(args.out, dataset=args.dataset, quick=args.quick, seed=args.seed,
                              data_dir=args.data_dir, device=args.device, progress=not args.quiet)
    _print_report(format_table(report), report)
    return 0


def cmd_transfer_demo(args) -> int:
    """``relaxedortho transfer-demo``: run :func:`relaxedortho.transfer.run_transfer_demo`."""
    from ..files import writable_dir
    from ..transfer import run_transfer_demo

    writable_dir(args.out)
    run_transfer_demo(args.out, seed=args.seed, quick=args.quick, progress=not args.quiet)
    print(f"Report: {os.path.join(args.out, 'report.json')}")
    return 0
