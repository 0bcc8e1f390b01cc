"""The SLURM jobs of a sweep: which job runs which cell (recorded at submission in SWEEP_DIR/slurm_jobs.json)
and what the scheduler says of them (squeue while they are queued or running, sacct once they have ended)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from rifle_bench.results import write_atomic

JOBS_FILE = "slurm_jobs.json"
# squeue's states of a job that still holds, or waits for, a place on the cluster.
LIVE_STATES = ("PENDING", "RUNNING", "REQUEUED", "COMPLETING", "CONFIGURING", "RESIZING", "SUSPENDED",
               "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "STOPPED")
_TIMEOUT_S = 30
# The state of a job neither queued nor in accounting: an array task cancelled while still pending has no
# accounting record.
GONE = "GONE"
GONE_REASON = ("left the queue without a result and without an accounting record (so does a job array task "
               "cancelled while still pending)")


def read_jobs(sweep_dir: Path) -> dict[str, str]:
    """Cell directory (relative to the sweep directory) -> the SLURM job id of its latest submission."""
    path = Path(sweep_dir) / JOBS_FILE
    return json.loads(path.read_text())["jobs"] if path.exists() else {}


def record_jobs(sweep_dir: Path, jobs: dict[str, str]) -> None:
    """Add the jobs just submitted (cell directory -> job id) to slurm_jobs.json; a cell's older job is replaced."""
    merged = read_jobs(sweep_dir) | jobs
    write_atomic(Path(sweep_dir) / JOBS_FILE, json.dumps({"jobs": merged}, indent=1, sort_keys=True) + "\n")


def _ask(command: list[str], fields: int) -> list[list[str]]:
    """The lines of a command's `|`-separated output that have that many fields; OSError if it fails."""
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=_TIMEOUT_S)
    except subprocess.TimeoutExpired as error:
        raise OSError(f"{command[0]} did not answer within {_TIMEOUT_S} s") from error
    if completed.returncode != 0:
        raise OSError(completed.stderr.strip() or f"{command[0]} exited {completed.returncode}")
    return [line.split("|") for line in completed.stdout.splitlines() if line.count("|") == fields - 1]


def _array_ids(job_ids: list[str]) -> str:
    return ",".join(sorted({job_id.split("_")[0] for job_id in job_ids}))


def queued_jobs(job_ids: list[str]) -> dict[str, str]:
    """The jobs among `job_ids` that are still queued or running, with squeue's state (and reason while pending).
    OSError if squeue cannot be run or fails."""
    if not job_ids:
        return {}
    try:
        lines = _ask(["squeue", "--noheader", "--array", "--format=%i|%T|%r", f"--jobs={_array_ids(job_ids)}"],
                     fields=3)
    except OSError as error:
        if "Invalid job id" in str(error):  # every job has left the controller's memory: none is queued
            return {}
        raise
    wanted = set(job_ids)
    return {job_id: state if state != "PENDING" or reason in ("None", "") else f"PENDING ({reason})"
            for job_id, state, reason in lines if job_id in wanted}


def job_states(job_ids: list[str]) -> tuple[dict[str, str], str | None]:
    """Each job's state: squeue's while queued or running, else sacct's (COMPLETED, FAILED, "CANCELLED by 0",
    OUT_OF_MEMORY, TIMEOUT, ...), else GONE if both answered, else UNKNOWN; and why the scheduler could not be
    asked, if it could not."""
    states, problems = {}, []
    if job_ids:
        try:
            lines = _ask(["sacct", "--noheader", "--parsable2", "--allocations", "--format=JobID,State",
                          f"--jobs={_array_ids(job_ids)}"], fields=2)
            states.update({job_id: state for job_id, state in lines})
        except OSError as error:
            problems.append(f"sacct: {error}")
        try:
            states.update(queued_jobs(job_ids))
        except OSError as error:
            problems.append(f"squeue: {error}")
    missing = "UNKNOWN" if problems else GONE
    return {job_id: states.get(job_id, missing) for job_id in job_ids}, "; ".join(problems) or None
