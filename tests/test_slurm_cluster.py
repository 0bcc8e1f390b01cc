"""The SLURM launcher against a real one-node Slurm cluster (`sudo scripts/local_slurm.sh up`; .ci/run starts
one): a sweep, a requeued (preempted) cell, a cancelled and a failing cell, a sweep larger than the array
parallelism, and a detached submission. Skipped, with the reason, where no such cluster runs.

On a failure, pytest shows the end of every daemon's log (printed by the `cluster_logs` fixture)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY, run_cli

pytestmark = pytest.mark.slurm

LOG_DIR = Path(os.environ.get("LOCAL_SLURM_DIR", "/var/tmp/rifle-bench-slurm")) / "log"
ON_CLUSTER = ["hydra/launcher=slurm", "hydra.launcher.partition=cpu", "hydra.launcher.gpus_per_node=0",
              "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10"]
TWO_SEEDS = [*TINY, "seed=0,1"]
JOB_WAIT_S = 240


def _cluster_problem() -> str | None:
    """Why no job could run on partition `cpu` with accounting, or None."""
    if shutil.which("sbatch") is None:
        return "sbatch is not installed"
    answers = []
    for command, what in ((["sinfo", "--noheader", "--partition=cpu", "--format=%T"], "partition cpu"),
                          (["sacct", "--noheader", "--allocations", "--starttime=now"], "accounting (sacct)")):
        try:
            completed = subprocess.run(command, capture_output=True, text=True, timeout=20)
        except subprocess.TimeoutExpired:
            return f"{what}: {command[0]} did not answer within 20 s"
        if completed.returncode != 0:
            return f"{what}: {completed.stderr.strip()}"
        answers.append(completed.stdout.split())
    node_states = answers[0]
    if not any(state.startswith(("idle", "mixed", "allocated")) for state in node_states):
        return f"the node of partition cpu is not usable: {' '.join(node_states) or 'no node'}"
    return None


@pytest.fixture(scope="module")
def cluster():
    problem = _cluster_problem()
    if problem:
        pytest.skip(f"no Slurm cluster to test against ({problem}): `sudo scripts/local_slurm.sh up` starts one "
                    f"on this machine (.ci/run does)")


@pytest.fixture(autouse=True)
def cluster_logs(cluster, tmp_path):
    """After each test: cancel what its sweeps left queued, and print the daemons' logs (shown on failure)."""
    yield
    for jobs_file in tmp_path.rglob("slurm_jobs.json"):
        arrays = {job_id.split("_")[0] for job_id in json.loads(jobs_file.read_text())["jobs"].values()}
        subprocess.run(["scancel", *arrays], capture_output=True)
    for daemon in ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd"):
        log = LOG_DIR / f"{daemon}.log"
        if log.exists():
            print(f"--- the end of {log}")
            print("\n".join(log.read_text(errors="replace").splitlines()[-10:]))


def slurm_jobs(sweep: Path) -> dict[str, str]:
    return json.loads((sweep / "slurm_jobs.json").read_text())["jobs"]


def sacct(job_id: str, *options: str) -> list[list[str]]:
    """sacct's JobID|State|Start|End of a job (or array), straight from the accounting database."""
    lines = subprocess.run(["sacct", "--noheader", "--parsable2", "--allocations", *options,
                            "--format=JobID,State,Start,End", f"--jobs={job_id}"],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    return [line.split("|") for line in lines]


def settled_sacct(job_id: str, rows: int, *options: str) -> list[list[str]]:
    """sacct once it holds `rows` records, none of them pending or running: slurmctld hands a job's final record
    to slurmdbd asynchronously, so accounting may lag the job's end by seconds."""
    def settled():
        records = sacct(job_id, *options)
        done = len(records) >= rows and all(state not in ("PENDING", "RUNNING") for _, state, _, _ in records)
        return records if done else None
    return wait_for(settled, f"the accounting records of job {job_id}", timeout=60)


def wait_until_off_the_queue(job_ids: list[str], timeout: float = JOB_WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    arrays = ",".join(sorted({job_id.split("_")[0] for job_id in job_ids}))
    while subprocess.run(["squeue", "--noheader", f"--jobs={arrays}"], capture_output=True, text=True).stdout.strip():
        assert time.monotonic() < deadline, f"jobs {arrays} still queued after {timeout} s"
        time.sleep(1)


def wait_for(condition, what: str, timeout: float = JOB_WAIT_S):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.2)
    return value


def results(sweep: Path) -> dict[str, dict]:
    return {path.parent.name: json.loads(path.read_text()) for path in sorted(sweep.glob("*/result.json"))}


def command(name: str) -> str:
    """A console script of this installation (rifle-bench-status, rifle-bench-report)."""
    return str(Path(sys.executable).parent / name)


def status_of(sweep: Path) -> str:
    return subprocess.run([command("rifle-bench-status"), "--jobs", str(sweep)], capture_output=True, text=True,
                          check=True).stdout


def planned_cells(sweep: Path) -> list[str]:
    return [cell["dir"] for cell in json.loads((sweep / "plan.json").read_text())["cells"]]


@pytest.fixture(scope="module")
def attached_sweep(cluster, tmp_path_factory):
    """Two cells (seeds 0 and 1) through the slurm launcher, one at a time, the command waiting for them."""
    sweep = tmp_path_factory.mktemp("attached") / "sweep"
    env = {"RIFLE_BENCH_CACHE": str(tmp_path_factory.getbasetemp() / "image-cache")}
    completed = run_cli("-m", *TWO_SEEDS, *ON_CLUSTER, "hydra.launcher.array_parallelism=1",
                        f"hydra.sweep.dir={sweep}", cwd=sweep.parent, env=env)
    return sweep, completed


def test_a_sweep_runs_on_the_cluster_writes_its_tables_and_status_shows_its_jobs(attached_sweep):
    sweep, completed = attached_sweep

    assert "2 complete (0 skipped, 2 run now), 0 failed" in completed.stdout
    assert [(r["status"], r["seed"], r["cpu_threads"]) for r in results(sweep).values()] == \
        [("done", 0, 1), ("done", 1, 1)]  # one thread each: SLURM_CPUS_PER_TASK
    assert (sweep / "results.csv").exists() and (sweep / "table1.md").exists()
    script = next((sweep / ".submitit").glob("*/*_submission.sh")).read_text()
    for line in ("#SBATCH --partition=cpu", "#SBATCH --cpus-per-task=1", "#SBATCH --mem=1GB",
                 "#SBATCH --requeue"):
        assert line in script
    assert "--gpus-per-node" not in script  # gpus_per_node=0: no GPU asked of a CPU partition
    jobs = slurm_jobs(sweep)
    assert sorted(jobs) == sorted(results(sweep))  # each cell's job, recorded at submission
    [array] = {job_id.split("_")[0] for job_id in jobs.values()}
    assert sorted((job_id, state) for job_id, state, _, _ in settled_sacct(array, len(jobs))) == \
        sorted((job_id, "COMPLETED") for job_id in jobs.values())
    status = status_of(sweep)
    assert "complete: 2  failed: 0  running/incomplete: 0  missing: 0" in status
    assert "SLURM jobs: 2 COMPLETED" in status
    for cell, job_id in jobs.items():
        assert any(line.split()[:2] == [job_id, "COMPLETED"] and line.endswith(cell) for line in status.splitlines())


def test_a_requeued_job_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_run(cluster, tmp_path):
    # Long enough to be interrupted: submitit bypasses the SIGTERM of a requeue, so the job trains on until
    # SLURM's SIGKILL (KillWait plus srun's grace, ~7 s here); 7 epochs (~15 s) after the first outlast that.
    cell = [*TINY, "dataset.train_per_class=30", "trainer.epochs=8"]
    sweep = tmp_path / "sweep"
    sweep_command = subprocess.Popen(
        [sys.executable, "-m", "rifle_bench.cli", "-m", *cell, *ON_CLUSTER, f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # The same cell, uninterrupted and outside SLURM, with the job's thread count, meanwhile.
    reference = subprocess.Popen([sys.executable, "-m", "rifle_bench.cli", *cell, "trainer.threads=1",
                                  f"hydra.run.dir={tmp_path / 'reference'}"],
                                 cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    [job_id] = wait_for(lambda: (sweep / "slurm_jobs.json").exists() and slurm_jobs(sweep).values(), "submission")
    wait_for(lambda: list(sweep.glob("*/checkpoint.pt")), "the first epoch's checkpoint")
    subprocess.run(["scontrol", "requeue", job_id], check=True)  # what a preemption with PreemptMode=REQUEUE does
    output, _ = sweep_command.communicate(timeout=JOB_WAIT_S)
    reference_output, _ = reference.communicate(timeout=JOB_WAIT_S)

    assert sweep_command.returncode == 0, output
    assert reference.returncode == 0, reference_output
    states = [state for _, state, _, _ in settled_sacct(job_id, 2, "--duplicates")]
    assert states == ["REQUEUED", "COMPLETED"]  # SLURM ran it twice
    logs = "".join(path.read_text() for path in (sweep / ".submitit" / job_id).glob("*_log.*"))
    assert "resuming" in logs and "after epoch" in logs, f"the job was not interrupted before it finished:\n{logs}"
    [(run_name, resumed)] = results(sweep).items()
    uninterrupted = json.loads((tmp_path / "reference" / "result.json").read_text())
    for key in ("test_acc", "train_acc", "cpu_threads"):
        assert resumed[key] == uninterrupted[key], key

    def metrics(run_dir: Path) -> list[str]:  # every column but the epoch's duration
        lines = (run_dir / "metrics.csv").read_text().splitlines()
        drop = lines[0].split(",").index("epoch_s")
        return [",".join(value for i, value in enumerate(line.split(",")) if i != drop) for line in lines]

    assert metrics(sweep / run_name) == metrics(tmp_path / "reference")
    assert len(metrics(sweep / run_name)) == 9  # header + 8 epochs


def test_a_cancelled_and_a_failing_cell_leave_the_others_running_and_a_rerun_runs_only_them(cluster, tmp_path,
                                                                                          compose_cfg):
    good = compose_cfg().dataset.root
    later = tmp_path / "later"  # a bad dataset root, until the data appear there before the re-run
    sweep = tmp_path / "sweep"
    arguments = ["-m", *TINY, f"dataset.root={later},{good}", "seed=0,1", *ON_CLUSTER, f"hydra.sweep.dir={sweep}"]
    first = subprocess.Popen([sys.executable, "-m", "rifle_bench.cli", *arguments], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    jobs = wait_for(lambda: (sweep / "slurm_jobs.json").exists() and slurm_jobs(sweep), "submission")
    *bad_root_cells, done_cell, cancelled_cell = planned_cells(sweep)  # bad root seeds 0, 1; good root seeds 0, 1
    # The array's last task, still pending behind the first two: cancelled, it leaves no accounting record.
    subprocess.run(["scancel", jobs[cancelled_cell]], check=True)
    output, _ = first.communicate(timeout=JOB_WAIT_S)

    assert first.returncode != 0 and "3 of 4 cells failed" in output, output
    runs = results(sweep)
    assert {cell: run["status"] for cell, run in runs.items()} == \
        {done_cell: "done", cancelled_cell: "failed", **{cell: "failed" for cell in bad_root_cells}}
    cancelled = runs[cancelled_cell]["error"]
    assert f"SLURM job {jobs[cancelled_cell]} " in cancelled
    assert "CANCELLED" in cancelled or "without an accounting record" in cancelled
    assert all(str(later) in runs[cell]["error"] for cell in bad_root_cells)
    assert "†(1/2)" in (sweep / "table1.md").read_text()  # the good row's cancelled seed is marked
    status = status_of(sweep)
    assert "complete: 1  failed: 3" in status
    assert f"FAILED {sweep / cancelled_cell}: SLURM job {jobs[cancelled_cell]} " in status
    assert all(f"FAILED {sweep / cell}: " in status for cell in bad_root_cells) and str(later) in status

    done_result = (sweep / done_cell / "result.json").read_bytes()
    later.symlink_to(good, target_is_directory=True)
    rerun = run_cli(*arguments, cwd=tmp_path)

    assert "1 complete (skipped), 3 failed (re-run)" in rerun.stdout
    assert "4 complete (1 skipped, 3 run now), 0 failed" in rerun.stdout
    assert (sweep / done_cell / "result.json").read_bytes() == done_result
    rerun_jobs = slurm_jobs(sweep)
    assert rerun_jobs[done_cell] == jobs[done_cell]  # not submitted again
    assert all(rerun_jobs[cell] != jobs[cell] for cell in jobs if cell != done_cell)
    assert "†(1/2)" not in (sweep / "table1.md").read_text()  # both seeds of both rows complete


def test_a_sweep_larger_than_the_array_parallelism_queues_and_completes(attached_sweep):
    sweep, completed = attached_sweep  # two cells, array_parallelism=1

    assert "2 complete (0 skipped, 2 run now), 0 failed" in completed.stdout
    assert "#SBATCH --array=0-1%1" in next((sweep / ".submitit").glob("*/*_submission.sh")).read_text()
    [array] = {job_id.split("_")[0] for job_id in slurm_jobs(sweep).values()}
    [(_, first_state, _, first_end), (_, second_state, second_start, _)] = sorted(settled_sacct(array, 2))
    assert first_state == second_state == "COMPLETED"
    assert second_start >= first_end  # one at a time, although the node has room for two


def test_a_detached_sweep_returns_at_once_and_its_report_matches_the_attached_run(attached_sweep, tmp_path):
    attached, _ = attached_sweep
    sweep = tmp_path / "sweep"
    arguments = ["-m", *TWO_SEEDS, *ON_CLUSTER, "hydra.launcher.wait=false", f"hydra.sweep.dir={sweep}"]
    # Held in the queue until released below: a command that waited for its jobs would never return.
    completed = run_cli(*arguments, "+hydra.launcher.additional_parameters.hold=true", cwd=tmp_path)

    jobs = slurm_jobs(sweep)
    assert len(jobs) == 2 and all(job_id in completed.stdout for job_id in jobs.values())
    for follow_up in (f"rifle-bench-status {sweep}", f"rifle-bench-report {sweep}"):
        assert follow_up in completed.stdout
    assert "Report:" not in completed.stdout and not (sweep / "results.csv").exists()  # no closing report
    status = status_of(sweep)
    assert "complete: 0  failed: 0  running/incomplete: 0  missing: 2" in status
    for job_id in jobs.values():  # the scheduler's word, and why the job waits
        assert any(line.split()[:3] == [job_id, "PENDING", "(JobHeldUser)"] for line in status.splitlines())
    again = run_cli(*arguments, cwd=tmp_path, check=False)  # the same cells again, while still queued
    assert again.returncode != 0 and "2 cells of this sweep still have SLURM jobs queued or running" in again.stderr
    assert slurm_jobs(sweep) == jobs  # nothing submitted twice

    [array] = {job_id.split("_")[0] for job_id in jobs.values()}
    subprocess.run(["scontrol", "release", array], check=True)
    wait_until_off_the_queue(list(jobs.values()))
    assert "complete: 2  failed: 0" in status_of(sweep)
    report = subprocess.run([command("rifle-bench-report"), str(sweep)], capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    assert (sweep / "results.csv").read_text() == (attached / "results.csv").read_text()
    assert (sweep / "table1.md").read_text() == (attached / "table1.md").read_text()
