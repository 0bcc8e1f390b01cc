"""The cluster path without a cluster: submitit's SLURM executor against a fake SLURM (a job array, one job
preempted and requeued), the local parallel launcher, `rifle-bench-status`, and launcher misconfiguration."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
from pathlib import Path

import joblib
import pytest
import torch

import fake_slurm
from conftest import TINY, run_cli
from rifle_bench.resources import gpu_of_its_own
from rifle_bench.status import main as status_main
from rifle_bench.status import sweep_status

FAST = [*TINY, "trainer.threads=1"]


@pytest.fixture
def slurm(tmp_path, monkeypatch):
    """Environment with the fake SLURM commands first on PATH; kills whatever its jobs still run afterwards."""
    state = tmp_path / "slurm-state"
    state.mkdir()
    fake_slurm.install(tmp_path / "bin")
    monkeypatch.delenv("RIFLE_BENCH_SLURM_PARTITION", raising=False)
    yield {"PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}", "FAKE_SLURM_DIR": str(state)}
    for step in state.glob("*.step"):
        try:
            os.kill(int(step.read_text()), signal.SIGKILL)
        except ProcessLookupError:
            pass


def results(sweep: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(sweep.glob("*/result.json"))]


def test_slurm_job_array_through_submitit_a_preempted_job_resumes_and_a_killed_one_fails_alone(tmp_path, slurm):
    sweep = tmp_path / "sweep"
    # Array task 0 runs seed 0 and task 1 seed 1; once their first checkpoint exists, task 0 is preempted
    # (SIGTERM, SIGUSR2) and task 1 is killed by the out-of-memory killer.
    env = slurm | {"FAKE_SLURM_PREEMPT": f"0:{sweep}/*seed=0*/checkpoint.pt",
                   "FAKE_SLURM_OOM": f"1:{sweep}/*seed=1*/checkpoint.pt"}
    completed = run_cli("-m", *FAST, "trainer.epochs=3", "seed=0,1", "hydra/launcher=slurm",
                        "hydra.launcher.partition=fake", "hydra.launcher.cpus_per_task=1", f"hydra.sweep.dir={sweep}",
                        cwd=tmp_path, env=env, check=False)

    assert "1 complete" in completed.stdout and "1 failed" in completed.stdout  # the sweep's closing report
    [done, killed] = results(sweep)
    assert (done["status"], done["seed"], done["cpu_threads"]) == ("done", 0, 1)  # threads: SLURM_CPUS_PER_TASK
    assert (killed["status"], killed["seed"]) == ("failed", 1) and "OUT_OF_MEMORY" in killed["error"]
    assert (Path(killed["run_dir"]) / "checkpoint.pt").exists()  # the same command resumes it
    script = next((sweep / ".submitit").glob("*/*_submission.sh")).read_text()
    for line in ("#SBATCH --array=0-1%2", "#SBATCH --partition=fake", "#SBATCH --gpus-per-node=1", "#SBATCH --requeue"):
        assert line in script
    squeue = subprocess.run(["squeue"], env=os.environ | slurm, capture_output=True, text=True, check=True)
    assert squeue.stdout.splitlines()[1:] == []  # nothing left in the queue

    preempted = "".join(path.read_text() for path in (sweep / ".submitit" / "1000_0").glob("*_log.*"))
    assert "this job is preempted" in preempted and "Requeued job 1000_0" in preempted
    assert "resuming" in preempted and "after epoch" in preempted and "Job completed successfully" in preempted


def test_local_parallel_sweep_isolates_a_failing_cell_and_status_counts_every_kind_of_cell(tmp_path, capsys,
                                                                                           monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # else the workers inherit it instead of their share
    sweep = tmp_path / "sweep"
    completed = run_cli("-m", *TINY, "trainer.epochs=1", f"dataset.root={Path.home() / '.cache/rifle_bench/assets/animal_mnist'},/nonexistent", "hydra/launcher=local",
                        "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}", cwd=tmp_path, check=False)
    assert "1 complete" in completed.stdout and "1 failed" in completed.stdout
    [done] = [result for result in results(sweep) if result["status"] == "done"]
    assert done["cpu_threads"] == max(1, joblib.cpu_count() // 2)  # its share: cores // n_jobs
    # A cell still running (or killed: no result yet), and one planned but not started.
    (sweep / "running" / ".hydra").mkdir(parents=True)
    plan = json.loads((sweep / "plan.json").read_text())
    plan["cells"].append({**plan["cells"][0], "dir": "not-started"})
    (sweep / "plan.json").write_text(json.dumps(plan))

    status = sweep_status(sweep)

    assert {key: status[key] for key in ("complete", "failed", "incomplete", "missing")} == \
        {"complete": 1, "failed": 1, "incomplete": 1, "missing": 1}
    [(failed_dir, reason)] = status["failures"]
    assert "nonexistent" in failed_dir.name and "dataset.root=/nonexistent: no such directory" in reason
    assert status_main([str(sweep)]) == 0
    printed = capsys.readouterr().out
    assert "complete: 1  failed: 1  running/incomplete: 1  missing: 1" in printed and f"FAILED {failed_dir}" in printed


def test_parallel_jobs_on_a_machine_with_several_gpus_take_one_each(tmp_path, monkeypatch):
    chosen = []
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    with gpu_of_its_own("auto"), gpu_of_its_own("cuda"), gpu_of_its_own("auto"):  # three jobs at once
        pass
    with gpu_of_its_own("auto"), gpu_of_its_own("cpu"):  # the first slot is free again; a CPU job takes none
        pass
    assert chosen == [0, 1, 0, 0]


@pytest.mark.parametrize("override, named", [
    (None, "hydra.launcher.partition is not set"),
    ("hydra.launcher.partiton=gpu", "partiton"),  # a typo of a key: Hydra's own check
    ("+hydra.launcher.gpus=2", "hydra.launcher.gpus is not a setting"),  # a key added: the launcher's check
])
def test_launcher_misconfiguration_fails_before_anything_is_submitted(tmp_path, slurm, override, named):
    args = ["-m", *FAST, "hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path / 'sweep'}", *([override] if override else [])]
    completed = run_cli(*args, cwd=tmp_path, env=slurm, check=False)

    assert completed.returncode != 0 and named in completed.stderr
    assert not list(Path(slurm["FAKE_SLURM_DIR"]).iterdir())  # sbatch never ran
    assert not (tmp_path / "sweep").exists()  # nor did the sweep start


def test_small_sweep_through_submitit_local_completes_with_its_tables(tmp_path):
    sweep = tmp_path / "sweep"
    run_cli("-m", *FAST, "trainer.epochs=1", "seed=0,1", "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert [(r["status"], r["seed"]) for r in results(sweep)] == [("done", 0), ("done", 1)]
    assert list((sweep / ".submitit").glob("*/*_log.out"))  # the jobs ran through submitit's executor
    assert (sweep / "results.csv").exists() and (sweep / "table1.md").exists()
