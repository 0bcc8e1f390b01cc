"""`rifle-bench-oracle`: one seed of the MLP-oracle study per Hydra job; a multirun ends with its table and figure."""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

import hydra
import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from rifle_bench.cli import CONFIG_DIR
from rifle_bench.config import ConfigError
from rifle_bench.errors import user_error_lines
from rifle_bench.oracle import experiment
from rifle_bench.oracle.config import register, validate
from rifle_bench.oracle.report import LABELS, write_report
from rifle_bench.results import is_complete, mark_completed, versions, write_atomic, write_result

LOG_FILE = "metrics.csv"
register()


def setting(task_overrides: list[str]) -> str:
    """What distinguishes this job's cell from the default apart from its seed (empty for a plain seed sweep)."""
    return ",".join(sorted(o for o in task_overrides if o.split("=", 1)[0].lstrip("+~") != "seed"))


def run_job(cfg: DictConfig) -> dict | None:
    started, cpu_started = time.perf_counter(), time.process_time()
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if hydra_cfg.mode == RunMode.MULTIRUN and is_complete(run_dir):
        print(f"[skip] oracle seed={cfg.seed}: already complete in {run_dir}", flush=True)
        return None
    validate(cfg)
    torch.set_num_threads(cfg.threads)
    result, log = experiment.run(cfg)
    result.update(setting=setting(list(hydra_cfg.overrides.task)), run_dir=str(run_dir), threads=cfg.threads,
                  wall_s=round(time.perf_counter() - started, 3), cpu_s=round(time.process_time() - cpu_started, 3),
                  config=OmegaConf.to_container(cfg, enum_to_str=True), versions=versions())
    buffer = io.StringIO()
    pd.DataFrame(log).to_csv(buffer, index=False)
    write_atomic(run_dir / LOG_FILE, buffer.getvalue())
    write_result(run_dir, result)
    mark_completed(run_dir)
    scores = "  ".join(f"{LABELS[m]}: MSE {v['test_mse']:.2e} OT {v['ot']:.4f}" for m, v in result["methods"].items())
    print(f"[done] oracle seed={cfg.seed}: {scores}  ({result['wall_s']:.1f}s, CPU {result['cpu_s']:.1f}s) "
          f"-> {run_dir}", flush=True)
    return result


class ValidateBeforeRun(Callback):
    """Refuse a bad single-run configuration before Hydra creates its run directory (sweeps: each job).

    Hydra turns a callback's exception into a warning, so the error is printed here and the exit is explicit.
    """

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        try:
            validate(config)
        except ConfigError as error:
            print(f"rifle-bench-oracle: error: {error}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None


class OracleReport(Callback):
    """After a multirun, the table and figure of its sweep directory (every finished run there)."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        write_report(Path(config.hydra.sweep.dir))


@hydra.main(config_path=CONFIG_DIR, config_name="oracle", version_base="1.3")
def hydra_app(cfg: DictConfig) -> None:
    run_job(cfg)


def main() -> None:
    """The console script: Hydra's app, with configuration mistakes shown as one line and exit code 2."""
    argv = sys.argv[1:]
    verbose = "--verbose" in argv or os.environ.get("HYDRA_FULL_ERROR") == "1"
    sys.argv = [sys.argv[0], *(arg for arg in argv if arg != "--verbose")]
    full_error = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises instead of printing; the one-line form is made below
    try:
        hydra_app()
    except Exception as error:
        lines = None if verbose else user_error_lines(error, sys.argv[1:])
        if lines is None:
            raise
        for line in lines:
            print(f"rifle-bench-oracle: error: {line}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:  # a caller's later runs (tests in one process) keep their own mode
        if full_error is None:
            del os.environ["HYDRA_FULL_ERROR"]
        else:
            os.environ["HYDRA_FULL_ERROR"] = full_error


if __name__ == "__main__":
    main()
