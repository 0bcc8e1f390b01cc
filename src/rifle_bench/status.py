"""`rifle-bench-status SWEEP_DIR`: where a sweep stands, from its run directories, its plan.json and, for a
sweep submitted to SLURM, the scheduler's state of each cell's job (slurm_jobs.json)."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from rifle_bench.report import COMPLETE, FAILED, INCOMPLETE, collect_runs
from rifle_bench.slurm_jobs import GONE, GONE_REASON, LIVE_STATES, job_states, read_jobs
from rifle_bench.sweep import read_plan


def _ended_without_result(state: str) -> bool:
    """A final SLURM state other than COMPLETED: the job was cancelled, failed, ran out of memory or time, ..."""
    return state.split()[0] not in (*LIVE_STATES, "COMPLETED", "UNKNOWN")


def _job_log(sweep_dir: Path, job_id: str) -> str:
    log = sweep_dir / ".submitit" / job_id / f"{job_id}_0_log.err"
    return f"; its log: {log}" if log.exists() else ""


def sweep_status(sweep_dir: Path) -> dict:
    """Counts of complete, failed, incomplete (running, or stopped before the end) and missing cells
    (planned in plan.json but without a run directory yet), and the failed runs with their reasons.
    A cell whose SLURM job ended without a result (cancelled, out of memory, ...) is failed even when nobody
    recorded it in its run directory (a detached submission); `jobs` maps each recorded cell directory to
    (job id, state), and `scheduler_problem` says why SLURM could not be asked, if it could not."""
    records = {record.run_dir.resolve(): record for record in collect_runs([sweep_dir])}
    # plan.json holds the cells of every invocation that used this directory: the missing ones are counted once.
    planned = [sweep_dir / cell["dir"] for cell in read_plan(sweep_dir)["cells"]]
    recorded = read_jobs(sweep_dir)
    states, problem = job_states(list(recorded.values()))
    jobs = {cell_dir: (job_id, states[job_id]) for cell_dir, job_id in recorded.items()}
    ended = {}  # run dir -> reason, for the cells whose job ended without leaving a result
    for cell_dir, (job_id, state) in jobs.items():
        record = records.get((sweep_dir / cell_dir).resolve())
        if _ended_without_result(state) and (record is None or record.status == INCOMPLETE):
            what = GONE_REASON if state == GONE else f"ended ({state}) before the run finished"
            ended[(sweep_dir / cell_dir).resolve()] = f"SLURM job {job_id} {what}{_job_log(sweep_dir, job_id)}"
    return {
        "complete": sum(record.status == COMPLETE for record in records.values()),
        "failed": sum(record.status == FAILED for record in records.values()) + len(ended),
        "incomplete": sum(record.status == INCOMPLETE and run_dir not in ended for run_dir, record in records.items()),
        "missing": sum(run_dir.resolve() not in records and run_dir.resolve() not in ended for run_dir in planned),
        "failures": [(record.run_dir, record.error or "no reason recorded")
                     for record in records.values() if record.status == FAILED] + list(ended.items()),
        "jobs": jobs,
        "scheduler_problem": problem,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rifle-bench-status",
        description="Count a sweep's complete, failed, running/incomplete and missing cells; list the failures; "
                    "for a sweep submitted to SLURM, the state of its jobs.")
    parser.add_argument("sweep_dir", type=Path, metavar="SWEEP_DIR")
    parser.add_argument("--jobs", action="store_true",
                        help="list every SLURM job of the sweep (default: only those not COMPLETED)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.error(f"{args.sweep_dir} does not exist or is not a directory")
    status = sweep_status(args.sweep_dir)
    print(f"complete: {status['complete']}  failed: {status['failed']}  "
          f"running/incomplete: {status['incomplete']}  missing: {status['missing']}")
    jobs = status["jobs"]
    live = sum(state.split()[0] in LIVE_STATES for _, state in jobs.values())
    if jobs:
        counts = Counter(state for _, state in jobs.values())
        print(f"SLURM jobs: {', '.join(f'{n} {state}' for state, n in sorted(counts.items()))}")
        if status["scheduler_problem"]:
            print(f"  (SLURM could not be asked: {status['scheduler_problem']})")
        for cell_dir, (job_id, state) in sorted(jobs.items(), key=lambda item: item[1][0]):
            if args.jobs or state != "COMPLETED":
                print(f"  {job_id:<14} {state:<28} {cell_dir}")
    for run_dir, reason in status["failures"]:
        print(f"FAILED {run_dir}: {reason}")
    if live:
        print(f"{live} jobs are queued or running. `rifle-bench-report {args.sweep_dir}` writes the tables of the "
              f"cells finished so far.")
    elif status["failed"] or status["incomplete"] or status["missing"]:
        print("Once none of its jobs is running, run the sweep's command again to finish it: complete cells "
              "are skipped, the others resume from their last finished epoch.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
