"""The `rifle` sweeper: Hydra's basic sweeper, plus what a rifle-bench sweep needs (see rifle_bench.sweep).

Before launching it expands each method into its grid, names each cell's directory from its overrides, prints how
many cells are complete (skipped) or to run, and writes plan.json; after the jobs, even failed ones, it writes
and prints the report (not when the launcher only submits them: hydra.launcher.wait=false).
`hydra.sweeper.dry_run=true` lists the cells and stops. Expansion happens here, before any launcher sees a job,
so every launcher (basic, submitit local or SLURM) works unchanged.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from rifle_bench.errors import InvalidCells
from rifle_bench.sweep import COMPLETE, invalid_cells, describe_plan, plan_cells, report, run_status, write_plan


@dataclass
class RifleSweeperConf:
    _target_: str = "hydra_plugins.rifle_bench_sweeper.rifle_sweeper.RifleSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, str]] = None
    dry_run: bool = False  # list the cells and their status, launch nothing
    # Per method, the grid this sweep expands instead of the method's own (a preset narrows rifle_a to {k: [3]})
    grids: Optional[Dict[str, Dict[str, List[Any]]]] = None


ConfigStore.instance().store(group="hydra/sweeper", name="rifle", node=RifleSweeperConf, provider="rifle_bench")


class RifleSweeper(BasicSweeper):
    def __init__(self, max_batch_size: Optional[int], params: Optional[Dict[str, str]] = None,
                 dry_run: bool = False, grids: Optional[Dict[str, Dict[str, List[Any]]]] = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.dry_run = dry_run
        self.grids = OmegaConf.to_container(OmegaConf.create(grids or {}))

    def sweep(self, arguments: List[str]) -> Any:
        loader = self.hydra_context.config_loader
        parser = OverridesParser.create(config_loader=loader)
        cells = plan_cells(
            parser.parse_overrides(self._parse_config() + list(arguments)),
            parse=parser.parse_overrides,
            compose=lambda overrides: loader.load_sweep_config(self.config, overrides),
            exclude_keys=list(self.config.hydra.job.config.override_dirname.exclude_keys),
            grids=self.grids,
        )
        problems = invalid_cells(cells, parse=parser.parse_overrides,
                                 compose=lambda overrides: loader.load_sweep_config(self.config, overrides))
        if problems:
            raise InvalidCells(problems)  # before anything is written or launched
        sweep_dir = Path(self.config.hydra.sweep.dir)
        statuses = [run_status(sweep_dir / cell.name) for cell in cells]
        print(describe_plan(sweep_dir, cells, statuses, list_cells=self.dry_run), flush=True)
        if self.dry_run:
            return []

        write_plan(sweep_dir, cells, list(arguments))
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        to_run = [cell.job_overrides(sweep_dir) for cell, status in zip(cells, statuses) if status != COMPLETE]
        # Unlike the basic sweeper, no job is composed twice beforehand (that costs ~0.3 s a job): planning
        # composed one job of each dataset, model, regularizer, method and seed already.
        self.overrides = list(self.split_overrides_to_chunks(to_run, self.max_batch_size)) if to_run else []
        returns, launched = [], 0
        try:
            while not self.is_done():
                batch = self.get_job_batch()
                returns.append(self.launcher.launch(batch, initial_job_idx=launched))
                launched += len(batch)
        finally:
            # A detached launcher (hydra.launcher.wait=false) returns once its jobs are submitted: nothing to report yet.
            detached = launched > 0 and getattr(self.launcher, "detached", False)
            failed = 0 if detached else report(sweep_dir, cells, statuses)
        if detached:
            return returns
        for job in (job for batch in returns for job in batch):
            _ = job.return_value  # re-raises an exception that escaped a job, as the basic sweeper does
        if failed:
            raise SystemExit(f"{failed} of {len(cells)} cells failed (listed above): "
                             f"run the same command again to re-run them")
        return returns
