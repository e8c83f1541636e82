"""The ``resd report`` subcommand (argument parsing only; matplotlib is imported when it runs)."""

from __future__ import annotations

import argparse
import sys


def _parse_steps(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--steps wants comma-separated step numbers, got {text!r}") from None


def _run(args: argparse.Namespace) -> int:
    from resd.report.build import write_report

    patterns = [p.strip() for group in args.metrics or [] for p in group.split(",") if p.strip()]
    try:
        page = write_report(args.run_dirs, args.out, steps=args.steps, metrics=patterns or None,
                            samples_per_step=args.samples_per_step)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {page} (plots in {page.parent / 'plots'})")
    return 0


def add_report_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``resd report`` to the ``resd`` command's subparsers."""
    parser = subparsers.add_parser(
        "report", help="write a self-contained HTML report of one run, or compare several",
        description="Write an HTML page (no server or network needed) with training and validation curves "
        "against step, rollouts and wall-clock, the playbook at chosen steps with its changes, sample "
        "rollouts and the evaluations; each plot is also saved as a PNG in plots/ next to the page. "
        "With several run directories the curves are overlaid (legend: run name).")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (several: comparison)")
    parser.add_argument("--out", help="HTML file (default: RUN_DIR/report/index.html, or "
                        "report-compare/index.html for several runs)")
    parser.add_argument("--steps", type=_parse_steps, help="steps for the playbook and samples, e.g. 1,5,10 "
                        "(default: a few evenly spaced steps and the last)")
    parser.add_argument("--metrics", action="append", metavar="PATTERNS",
                        help="comma-separated metric names or shell patterns to plot instead of the defaults, "
                        "e.g. 'reward/mean,val/pass@*' (repeatable)")
    parser.add_argument("--samples-per-step", type=int, default=4, help="sample rollouts shown per step (default 4)")
    parser.set_defaults(func=_run)
    return parser
