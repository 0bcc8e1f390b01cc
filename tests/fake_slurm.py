"""A one-node SLURM for tests: sbatch, srun, sacct, squeue, scancel and scontrol, as far as submitit uses them.

`python fake_slurm.py install BIN_DIR` writes the executables; they keep the queue's state in $FAKE_SLURM_DIR.
sbatch runs each task of a job array at once, in the background, with the SLURM_* variables a real node sets.
Events for tests, each "TASK:GLOB": it happens to array task TASK once a file matches GLOB.
  FAKE_SLURM_PREEMPT  SIGTERM then SIGUSR2 to the job step, as SLURM does; if the job asks `scontrol requeue`,
                      it runs again
  FAKE_SLURM_OOM      SIGKILL to the job step, which ends in state OUT_OF_MEMORY
"""

from __future__ import annotations

import glob
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = ("sbatch", "srun", "sacct", "squeue", "scancel", "scontrol")
NODE = "fakenode1"


def state_dir() -> Path:
    return Path(os.environ["FAKE_SLURM_DIR"])


def install(bin_dir: Path) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    for command in COMMANDS:
        executable = bin_dir / command
        executable.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).resolve()}" {command} "$@"\n')
        executable.chmod(0o755)


def sbatch(script_path: str) -> None:
    script = Path(script_path).read_text()  # submitit renames the file once sbatch returns
    options = dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(.*))?$", script, re.MULTILINE))
    counter = state_dir() / "last_job_id"
    job_id = int(counter.read_text()) + 1 if counter.exists() else 1000
    counter.write_text(str(job_id))
    (state_dir() / f"{job_id}.sh").write_text(script)
    array = re.match(r"0-(\d+)", options.get("array", ""))
    tasks = [str(task) for task in range(int(array.group(1)) + 1)] if array else [""]
    for task in tasks:
        set_state(task_key(job_id, task), "PENDING")
        subprocess.Popen([sys.executable, __file__, "_node", str(job_id), task], start_new_session=True,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"Submitted batch job {job_id}")


def node(job_id: str, task: str) -> None:
    """Run one task of a batch job until it ends without asking to be requeued."""
    key = task_key(job_id, task)
    script = state_dir() / f"{job_id}.sh"
    options = dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(.*))?$", script.read_text(), re.MULTILINE))
    env = {**os.environ, "SLURM_JOB_ID": job_id, "SLURM_NTASKS": "1", "SLURM_JOB_NUM_NODES": "1",
           "SLURM_NODEID": "0", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_JOB_NODELIST": NODE,
           "SLURM_CPUS_PER_TASK": options.get("cpus-per-task", "1")}
    if task:
        env |= {"SLURM_ARRAY_JOB_ID": job_id, "SLURM_ARRAY_TASK_ID": task}
    preempt, out_of_memory = (event_for(task, variable) for variable in ("FAKE_SLURM_PREEMPT", "FAKE_SLURM_OOM"))
    for restart in range(10):
        set_state(key, "RUNNING")
        output = expand(options["output"], env)
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        with open(output, "a") as log:
            job = subprocess.Popen(["bash", str(script)], env=env | {"SLURM_RESTART_COUNT": str(restart)},
                                   stdout=log, stderr=subprocess.STDOUT)
            if restart == 0 and (preempt or out_of_memory):
                while job.poll() is None and not glob.glob(preempt or out_of_memory):
                    time.sleep(0.05)
                if job.poll() is None:
                    step = int((state_dir() / f"{key}.step").read_text())
                    for event_signal in (signal.SIGTERM, signal.SIGUSR2) if preempt else (signal.SIGKILL,):
                        os.kill(step, event_signal)
            returncode = job.wait()
        requeue = state_dir() / f"{key}.requeue"
        if not requeue.exists():
            break
        requeue.unlink()
        set_state(key, "REQUEUED")
    if out_of_memory:
        set_state(key, "OUT_OF_MEMORY")
    elif get_state(key) != "CANCELLED":
        set_state(key, "COMPLETED" if returncode == 0 else "FAILED")


def event_for(task: str, variable: str) -> str | None:
    """The file glob that triggers the event of `variable` for this task, if the test asked for one."""
    event_task, _, pattern = os.environ.get(variable, "").partition(":")
    return pattern if event_task == task else None


def srun(args: list[str]) -> None:
    """Run the job step in this process, its output going where submitit asked."""
    options = {}
    while args[0].startswith("--"):
        option = args.pop(0)
        options[option] = None if option == "--unbuffered" else args.pop(0)
    key = task_key(os.environ["SLURM_JOB_ID"], os.environ.get("SLURM_ARRAY_TASK_ID", ""))
    (state_dir() / f"{key}.step").write_text(str(os.getpid()))
    for option, stream in (("--output", 1), ("--error", 2)):
        if options.get(option):
            path = Path(expand(options[option], os.environ))
            path.parent.mkdir(parents=True, exist_ok=True)
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND), stream)
    os.execvp(args[0], args)


def sacct(args: list[str]) -> None:
    job_ids = [args[i + 1] for i, arg in enumerate(args) if arg == "-j"]
    print("JobID|State|NodeList")
    for key, state in all_states():
        if key.split("_")[0] in job_ids:
            print(f"{key}|{state}|{NODE}")


def squeue() -> None:
    print("JOBID PARTITION NAME USER ST TIME NODES NODELIST(REASON)")
    for key, state in all_states():
        if state in ("PENDING", "RUNNING", "REQUEUED"):
            print(f"{key} fake rifle-bench user {'R' if state == 'RUNNING' else 'PD'} 0:01 1 {NODE}")


def scancel(args: list[str]) -> None:
    job_id = args[0]
    for key in [key for key, _ in all_states() if job_id in (key, key.split("_")[0])]:
        step = state_dir() / f"{key}.step"
        set_state(key, "CANCELLED")
        if step.exists():
            os.kill(int(step.read_text()), signal.SIGTERM)


def scontrol(args: list[str]) -> None:
    if args[:1] != ["requeue"]:
        sys.exit(f"fake scontrol: unsupported command {args}")
    (state_dir() / f"{args[1]}.requeue").touch()


def task_key(job_id, task: str) -> str:
    return f"{job_id}_{task}" if task else str(job_id)


def expand(pattern: str, env) -> str:
    """SLURM's filename patterns: %A array job id, %a array task id, %j job id, %t task rank."""
    for placeholder, value in (("%A", env.get("SLURM_ARRAY_JOB_ID", "")), ("%a", env.get("SLURM_ARRAY_TASK_ID", "")),
                               ("%j", env["SLURM_JOB_ID"]), ("%t", "0")):
        pattern = pattern.replace(placeholder, value)
    return pattern


def set_state(key: str, state: str) -> None:
    path = state_dir() / f"{key}.state"
    path.with_suffix(".tmp").write_text(state)
    path.with_suffix(".tmp").replace(path)


def get_state(key: str) -> str:
    return (state_dir() / f"{key}.state").read_text()


def all_states() -> list[tuple[str, str]]:
    return sorted((path.name.removesuffix(".state"), path.read_text()) for path in state_dir().glob("*.state"))


if __name__ == "__main__":
    command, *arguments = sys.argv[1:]
    if command == "install":
        install(Path(arguments[0]))
    elif command == "sbatch":
        sbatch(arguments[-1])
    elif command == "_node":
        node(*arguments)
    elif command == "srun":
        srun(arguments)
    elif command in ("sacct", "scancel", "scontrol"):
        globals()[command](arguments)
    elif command == "squeue":
        squeue()
