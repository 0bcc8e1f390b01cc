"""`rifle-bench`: one fine-tuning run per Hydra job (`-m` sweeps a grid)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import time
import traceback
from pathlib import Path

import hydra
import psutil
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from rifle_bench import methods
from rifle_bench.config import ConfigError, register, validate
from rifle_bench.errors import ConfigRefused, user_error_lines
from rifle_bench.data.sources import DatasetError
from rifle_bench.models import WeightsNotFound
from rifle_bench.resources import gpu_of_its_own, use_cpu_threads
from rifle_bench.results import is_complete, versions, write_atomic, write_result
from rifle_bench.train import TrainingDiverged, finish, run

CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")
register()
# Errors whose message says everything the user needs: shown without a traceback.
USER_ERRORS = (DatasetError, WeightsNotFound, TrainingDiverged, ValueError)
log = logging.getLogger("rifle_bench")
_process_started: float | None = psutil.Process().create_time()


def describe(cfg: DictConfig) -> str:
    variant = ",".join(f"{k}={v}" for k, v in methods.variant(cfg.method).items())
    method = f"{cfg.method.name}({variant})" if variant else cfg.method.name
    return f"{cfg.dataset.name}/{cfg.model.name}/{cfg.regularizer.name}/{method}/seed={cfg.seed}"


def failed_run(cfg: DictConfig, run_dir: Path, error: str) -> dict:
    """The result.json of a run that failed: its reason and the keys that say which cell it is."""
    return {"status": "failed", "error": error, "run_dir": str(run_dir),
            "dataset": cfg.dataset.name, "model": cfg.model.name, "regularizer": cfg.regularizer.name,
            "method": cfg.method.name, "variant": methods.variant(cfg.method), "seed": cfg.seed,
            "epochs": cfg.trainer.epochs, "test_acc": None, "versions": versions()}


def run_job(cfg: DictConfig) -> dict | None:
    """Run one job in Hydra's output directory: skip it if already complete, record a failure instead of raising."""
    global _process_started
    # The first job of a process pays for interpreter and library start-up; later jobs (basic launcher) don't.
    started, _process_started = _process_started or time.time(), None
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    name = describe(cfg)
    if multirun and is_complete(run_dir):
        print(f"[skip] {name}: already complete in {run_dir}", flush=True)
        return None
    try:
        # Again here: a sweep's cells were checked where it was submitted, the machine only now.
        warnings = validate(cfg, machine=True)
        for warning in warnings:
            log.warning(warning)
        threads = use_cpu_threads(cfg.trainer.threads)
        with gpu_of_its_own(cfg.trainer.device):
            result = run(cfg, run_dir, started=time.perf_counter() - (time.time() - started))
    except Exception as error:
        failure = failed_run(cfg, run_dir, f"{type(error).__name__}: {error}")
        write_atomic(run_dir / "error.log", traceback.format_exc())
        write_result(run_dir, failure)
        print(f"[FAILED] {name}: {failure['error']} (details: {run_dir / 'error.log'})", file=sys.stderr, flush=True)
        if not multirun:
            if isinstance(error, ConfigError):
                print(f"rifle-bench: error: {error}", file=sys.stderr)
                raise SystemExit(2)
            if not isinstance(error, USER_ERRORS):
                traceback.print_exc()
            raise SystemExit(1)
        return failure
    result["wall_s"] = round(time.time() - started, 3)
    result["warnings"] = warnings
    result["cpu_threads"] = threads
    finish(run_dir, result, keep_checkpoint=cfg.trainer.keep_checkpoint)
    print(f"[done] {name}: test_acc {result['test_acc']:.2f}%  train {result['train_s']:.0f}s  "
          f"total {result['wall_s']:.0f}s  -> {run_dir}", flush=True)
    return result


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def hydra_app(cfg: DictConfig) -> None:
    run_job(cfg)


def main() -> None:
    """The console script: Hydra's app, with configuration mistakes shown as one line and exit code 2."""
    argv = sys.argv[1:]
    verbose = "--verbose" in argv or os.environ.get("HYDRA_FULL_ERROR") == "1"
    argv = [arg for arg in argv if arg != "--verbose"]
    if "-m" in argv or "--multirun" in argv:
        argv = pin_method_parameters(argv)
    sys.argv = [sys.argv[0], *argv]
    full_error = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises instead of printing; the one-line form is made below
    try:
        try:
            if "--help" in argv or "-h" in argv:
                _print_help()
            else:
                hydra_app()
        except ConfigRefused as refused:
            raise refused.__cause__ from None
    except Exception as error:
        lines = None if verbose else user_error_lines(error, argv)
        if lines is None:
            raise
        for line in lines:
            print(f"rifle-bench: error: {line}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        if full_error is None:
            del os.environ["HYDRA_FULL_ERROR"]
        else:
            os.environ["HYDRA_FULL_ERROR"] = full_error


def _print_help() -> None:
    """Hydra's --help, without the schemas that share the groups' folders (they are not options to choose)."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            hydra_app()
    finally:
        print(re.sub(r"\w+_schema(, )?", "", buffer.getvalue()).replace(", \n", "\n"), end="")


_SWEEP_VALUE = re.compile(r"^\w+\(.*\)$|,")  # choice(...), range(...), glob(...) or a,b,c


def pin_method_parameters(argv: list[str]) -> list[str]:
    """`method.k=3` in a sweep becomes `method.k=choice(3)`: Hydra would otherwise set it on the primary config,
    whose method (original) has no k, before the sweeper could pin it on each swept method that has."""
    pinned = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.startswith("method.") and value and not _SWEEP_VALUE.search(value):
            arg = f"{key}=choice({value})"
        pinned.append(arg)
    return pinned


if __name__ == "__main__":
    main()
