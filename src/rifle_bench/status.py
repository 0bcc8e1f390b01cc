"""`rifle-bench-status SWEEP_DIR`: where a sweep stands, from its run directories and its plan.json."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rifle_bench.report import COMPLETE, FAILED, INCOMPLETE, collect_runs


def sweep_status(sweep_dir: Path) -> dict:
    """Counts of complete, failed, incomplete (running, or stopped before the end) and missing cells
    (planned in plan.json but without a run directory yet), and the failed runs with their reasons."""
    records = collect_runs([sweep_dir])
    found = {record.run_dir.resolve() for record in records}
    plan = sweep_dir / "plan.json"
    planned = [sweep_dir / cell["dir"] for cell in json.loads(plan.read_text())["cells"]] if plan.exists() else []
    return {
        "complete": sum(record.status == COMPLETE for record in records),
        "failed": sum(record.status == FAILED for record in records),
        "incomplete": sum(record.status == INCOMPLETE for record in records),
        "missing": sum(run_dir.resolve() not in found for run_dir in planned),
        "failures": [(record.run_dir, record.error or "no reason recorded")
                     for record in records if record.status == FAILED],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rifle-bench-status",
        description="Count a sweep's complete, failed, running/incomplete and missing cells; list the failures.")
    parser.add_argument("sweep_dir", type=Path, metavar="SWEEP_DIR")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.error(f"{args.sweep_dir} does not exist or is not a directory")
    status = sweep_status(args.sweep_dir)
    print(f"complete: {status['complete']}  failed: {status['failed']}  "
          f"running/incomplete: {status['incomplete']}  missing: {status['missing']}")
    for run_dir, reason in status["failures"]:
        print(f"FAILED {run_dir}: {reason}")
    if status["failed"] or status["incomplete"] or status["missing"]:
        print("Once none of its jobs is running, run the sweep's command again to finish it: complete cells "
              "are skipped, the others resume from their last finished epoch.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
