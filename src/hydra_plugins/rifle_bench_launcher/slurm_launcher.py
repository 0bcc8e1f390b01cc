"""hydra-submitit-launcher's SLURM launcher, with these changes for sweeps of hundreds of jobs:

- it refuses to submit anything while the partition is unset, a setting is unknown, or a cell to run still has
  a job queued or running from an earlier submission;
- it submits a sweep larger than SLURM's default MaxArraySize (1001) as several job arrays, and records which
  job runs which cell in SWEEP_DIR/slurm_jobs.json (read by `rifle-bench-status`);
- a job that SLURM ends without a result (out of memory, cancelled, node lost without requeue) becomes a failed
  cell, recorded in its run directory, instead of an exception that abandons the rest of the sweep. Running the
  same command again resumes such a cell from its last checkpoint;
- `wait: false` submits and returns at once: the jobs write their results, `rifle-bench-report` makes the tables;
- `gpus_per_node: 0` asks for no GPU (no --gpus-per-node option), as for a CPU partition.
"""

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.errors import CompactHydraException
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import OmegaConf

from rifle_bench.slurm_jobs import GONE_REASON, queued_jobs, read_jobs, record_jobs

log = logging.getLogger(__name__)
MAX_ARRAY_SIZE = 1000
GONE_AFTER_S = 30  # a job neither queued nor in accounting this long has ended without a trace
# Settings of this launcher that are not sbatch options.
OWN_SETTINGS = ("submitit_folder", "max_num_timeout", "wait")


# (No `from __future__ import annotations` in this module: Hydra loads plugin modules outside sys.modules, where
# a dataclass with string annotations fails to build.)
@dataclass
class RifleSlurmQueueConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.rifle_bench_launcher.slurm_launcher.RifleSlurmLauncher"
    wait: bool = True  # false: submit, print the job ids and the follow-up commands, and exit


ConfigStore.instance().store(group="hydra/launcher", name="rifle_slurm_schema", node=RifleSlurmQueueConf,
                             provider="rifle_bench")


class LauncherConfigError(CompactHydraException):  # compact: Hydra prints the message alone
    pass


class RifleSlurmLauncher(SlurmLauncher):
    def setup(self, **kwargs: Any) -> None:
        settings = OmegaConf.structured(RifleSlurmQueueConf).keys()
        for key in self.params:
            if key not in settings:
                raise LauncherConfigError(f"hydra.launcher.{key} is not a setting of the slurm launcher (its settings: "
                                          f"{', '.join(sorted(settings))}). Nothing was submitted.")
        if self.params.get("partition") is None:
            raise LauncherConfigError(
                "hydra.launcher.partition is not set, and the slurm launcher needs it: pass hydra.launcher.partition=NAME, "
                "or set it once with `export RIFLE_BENCH_SLURM_PARTITION=NAME`. Nothing was submitted.")
        super().setup(**kwargs)

    @property
    def detached(self) -> bool:
        """Whether launch() returns once the jobs are submitted, without their results."""
        return not self.params.get("wait", True)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        # The parent's launch, submitting the same job array, up to the collection of the results.
        import submitit

        assert self.config is not None
        executor = submitit.AutoExecutor(cluster="slurm", folder=self.params["submitit_folder"],
                                         slurm_max_num_timeout=self.params["max_num_timeout"])
        queue_keys = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{key if key in queue_keys else f"slurm_{key}": value
                                      for key, value in self.params.items()
                                      if key not in OWN_SETTINGS and not (key == "gpus_per_node" and value == 0)})
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        cell_dirs = [_cell_dir(overrides, number) for number, overrides in enumerate(job_overrides, initial_job_idx)]
        _refuse_cells_still_queued(sweep_dir, cell_dirs)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        log.info(f"Submitit 'slurm' sweep output dir : {sweep_dir}")
        jobs_params = []
        for number, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{number} : {' '.join(filter_overrides(overrides))}")
            jobs_params.append((list(overrides), "hydra.sweep.dir", number, f"job_id_for_{number}", Singleton.get_state()))
        jobs = []
        for start in range(0, len(jobs_params), MAX_ARRAY_SIZE):
            jobs += executor.map_array(self, *zip(*jobs_params[start:start + MAX_ARRAY_SIZE]))
            record_jobs(sweep_dir, {cell_dir: job.job_id for cell_dir, job in zip(cell_dirs[start:], jobs[start:])})
        arrays = sorted({job.job_id.split("_")[0] for job in jobs}, key=int)
        submitted = (f"Submitted {len(jobs)} cells as SLURM job array{'s' if len(arrays) > 1 else ''} "
                     f"{', '.join(arrays)} (jobs {jobs[0].job_id} to {jobs[-1].job_id})")
        if self.detached:
            print(f"{submitted}, without waiting for them (hydra.launcher.wait=false).\n"
                  f"Sweep directory: {sweep_dir}\n"
                  f"Progress:  rifle-bench-status {sweep_dir}\n"
                  f"Tables:    rifle-bench-report {sweep_dir}   (at any time: the cells finished so far, the others "
                  f"marked)", flush=True)
            return [JobReturn(overrides=list(overrides), status=JobStatus.UNKNOWN) for overrides in job_overrides]
        log.info(submitted)
        gone = _wait_for(jobs)
        return [self._record_failure(job, overrides, GONE_REASON) if job.job_id in gone
                else self._job_return(job, overrides) for job, overrides in zip(jobs, job_overrides)]

    def _job_return(self, job, overrides: Sequence[str]) -> JobReturn:
        from submitit.core.utils import FailedJobError, UncompletedJobError

        try:
            return job.results()[0]
        except (UncompletedJobError, FailedJobError):
            return self._record_failure(job, overrides, f"ended ({job.state}) before the run finished")

    def _record_failure(self, job, overrides: Sequence[str], what: str) -> JobReturn:
        """Write the run's result.json, as the job itself does for the failures it survives."""
        # Imported here: Hydra imports every plugin module at the start of any app, and these import torch.
        from rifle_bench.cli import failed_run
        from rifle_bench.results import write_result

        assert self.hydra_context is not None and self.config is not None
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        run_dir = Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
        run_dir.mkdir(parents=True, exist_ok=True)
        failure = failed_run(cfg, run_dir, f"SLURM job {job.job_id} {what}; its log: {job.paths.stderr}")
        write_result(run_dir, failure)
        log.error(f"[FAILED] {run_dir}: {failure['error']}")
        return JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, _return_value=failure)


def _cell_dir(overrides: Sequence[str], number: int) -> str:
    """The job's run directory below the sweep directory: hydra.sweep.subdir if the sweeper set it (the rifle
    sweeper does), else Hydra's default, the job number."""
    for line in overrides:
        if line.startswith("hydra.sweep.subdir="):
            return str(OverridesParser.create().parse_overrides([line])[0].value())
    return str(number)


def _refuse_cells_still_queued(sweep_dir: Path, cell_dirs: list[str]) -> None:
    """Two jobs of one cell would write one run directory at once: refuse to submit while an earlier job of a
    cell to run is still queued or running (a detached submission, or one whose command was killed)."""
    earlier = read_jobs(sweep_dir)
    earlier_jobs = [earlier[cell_dir] for cell_dir in cell_dirs if cell_dir in earlier]
    try:
        queued = queued_jobs(earlier_jobs)
    except OSError as error:
        raise LauncherConfigError(f"cannot ask SLURM whether this sweep's earlier jobs still run (squeue: {error}). "
                                  f"Nothing was submitted.") from error
    if queued:
        listed = ", ".join(f"{job_id} {state}" for job_id, state in list(queued.items())[:5])
        raise LauncherConfigError(
            f"{len(queued)} cells of this sweep still have SLURM jobs queued or running ({listed}"
            f"{', ...' if len(queued) > 5 else ''}): wait for them (rifle-bench-status {sweep_dir}) or cancel them "
            f"(scancel JOBID), then run the same command again. Nothing was submitted.")


def _wait_for(jobs: list) -> set[str]:
    """Wait until every job is done, as submitit's job.results() does, and return the ids of those that left the
    queue without a trace: no result and no accounting record, as a job array task cancelled while still pending
    leaves it (submitit, which knows job states from sacct only, would wait for such a job forever)."""
    gone: set[str] = set()
    unknown_since: dict[str, float] = {}
    while waiting := [job for job in jobs if job.job_id not in gone and not job.done()]:
        unknown = [job.job_id for job in waiting if job.state == "UNKNOWN"]
        try:
            queued = queued_jobs(unknown)
        except OSError:  # squeue failed this time: assume nothing
            queued = dict.fromkeys(unknown)
        now = time.monotonic()
        unknown_since = {job_id: unknown_since.get(job_id, now) for job_id in unknown if job_id not in queued}
        gone.update(job_id for job_id, since in unknown_since.items() if now - since >= GONE_AFTER_S)
        time.sleep(2)
    return gone
