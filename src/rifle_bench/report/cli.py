"""The ``rifle-bench-report`` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rifle_bench.report.selection import SELECTIONS
from rifle_bench.report.writer import ReportInputError, parse_selections, write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rifle-bench-report",
        description="Build the RIFLE paper's Tables 1 and 2 (results.csv, table*.md, table*.tex) and figures "
                    "(figure_*.png/.pdf: learning curves, gradient norms, per-table bars) from sweep directories.",
        epilog="Selection rules: " + "; ".join(f"{name}: {rule.title}" for name, rule in SELECTIONS.items()) + ".",
    )
    parser.add_argument("sweep_dirs", nargs="+", type=Path, metavar="SWEEP_DIR")
    parser.add_argument("--out", type=Path, default=None, help="where to write the report (default: the first SWEEP_DIR)")
    parser.add_argument("--expected-seeds", type=int, default=None, metavar="N",
                        help="seeds each variant should have (default: plan.json, else every seed seen)")
    parser.add_argument("--selection", default=None, metavar="RULES",
                        help=f"comma-separated selection rules, one table per rule ({', '.join(SELECTIONS)}); "
                             "test,val adds optimism.md (default: test, plus val when runs have validation accuracies)")
    args = parser.parse_args(argv)
    if args.expected_seeds is not None and args.expected_seeds < 1:
        parser.error("--expected-seeds must be at least 1")
    try:
        selections = parse_selections(args.selection) if args.selection is not None else None
        summary = write_report(args.sweep_dirs, args.out, args.expected_seeds, selections)
    except ReportInputError as error:
        parser.error(str(error))  # exits with status 2

    print(summary.markdown or "No complete runs yet.\n")
    print(f"complete: {summary.complete}  failed: {summary.failed}  "
          f"incomplete: {summary.incomplete}  missing: {summary.missing}")
    for run_dir, error in summary.failures:
        print(f"FAILED {run_dir}: {error}")
    if summary.duplicates:
        print(f"{len(summary.duplicates)} duplicate run(s) of an experiment and seed already counted, left out: "
              + ", ".join(map(str, summary.duplicates)))
    print(f"report written to {summary.written[0].parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
