"""hydra-submitit-launcher's SLURM launcher, with three changes for sweeps of hundreds of jobs:

- it refuses to submit anything while the partition is unset or a setting is unknown;
- it submits a sweep larger than SLURM's default MaxArraySize (1001) as several job arrays;
- a job that SLURM ends without a result (out of memory, cancelled, node lost without requeue) becomes a failed
  cell, recorded in its run directory, instead of an exception that abandons the rest of the sweep. Running the
  same command again resumes such a cell from its last checkpoint.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.errors import CompactHydraException
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import OmegaConf

log = logging.getLogger(__name__)
MAX_ARRAY_SIZE = 1000


class LauncherConfigError(CompactHydraException):  # compact: Hydra prints the message alone
    pass


class RifleSlurmLauncher(SlurmLauncher):
    def setup(self, **kwargs: Any) -> None:
        settings = OmegaConf.structured(SlurmQueueConf).keys()
        for key in self.params:
            if key not in settings:
                raise LauncherConfigError(f"hydra.launcher.{key} is not a setting of the slurm launcher (its settings: "
                                          f"{', '.join(sorted(settings))}). Nothing was submitted.")
        if self.params.get("partition") is None:
            raise LauncherConfigError(
                "hydra.launcher.partition is not set, and the slurm launcher needs it: pass hydra.launcher.partition=NAME, "
                "or set it once with `export RIFLE_BENCH_SLURM_PARTITION=NAME`. Nothing was submitted.")
        super().setup(**kwargs)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        # The parent's launch, submitting the same job array, up to the collection of the results.
        import submitit

        assert self.config is not None
        executor = submitit.AutoExecutor(cluster="slurm", folder=self.params["submitit_folder"],
                                         slurm_max_num_timeout=self.params["max_num_timeout"])
        queue_keys = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{key if key in queue_keys else f"slurm_{key}": value
                                      for key, value in self.params.items()
                                      if key not in ("submitit_folder", "max_num_timeout")})
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        log.info(f"Submitit 'slurm' sweep output dir : {sweep_dir}")
        jobs_params = []
        for number, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{number} : {' '.join(filter_overrides(overrides))}")
            jobs_params.append((list(overrides), "hydra.sweep.dir", number, f"job_id_for_{number}", Singleton.get_state()))
        jobs = [job for start in range(0, len(jobs_params), MAX_ARRAY_SIZE)
                for job in executor.map_array(self, *zip(*jobs_params[start:start + MAX_ARRAY_SIZE]))]
        return [self._job_return(job, overrides) for job, overrides in zip(jobs, job_overrides)]

    def _job_return(self, job, overrides: Sequence[str]) -> JobReturn:
        from submitit.core.utils import FailedJobError, UncompletedJobError

        try:
            return job.results()[0]
        except (UncompletedJobError, FailedJobError):
            return self._record_failure(job, overrides)

    def _record_failure(self, job, overrides: Sequence[str]) -> JobReturn:
        """Write the run's result.json, as the job itself does for the failures it survives."""
        # Imported here: Hydra imports every plugin module at the start of any app, and these import torch.
        from rifle_bench.cli import failed_run
        from rifle_bench.results import write_result

        assert self.hydra_context is not None and self.config is not None
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        run_dir = Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
        run_dir.mkdir(parents=True, exist_ok=True)
        failure = failed_run(cfg, run_dir, f"SLURM job {job.job_id} ended ({job.state}) before the run finished; "
                                           f"its log: {job.paths.stderr}")
        write_result(run_dir, failure)
        log.error(f"[FAILED] {run_dir}: {failure['error']}")
        return JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, _return_value=failure)
