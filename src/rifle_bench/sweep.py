"""The cells of a `rifle-bench -m` sweep, their run directories, plan.json and the closing report.

A cell is one job: one (dataset, model, regularizer, method, variant, seed). A method config's `grid` names the
parameters a sweep expands; a parameter the user sets (`method.p=0.2`) is pinned instead, for the methods that
have it. The Hydra plugin `hydra_plugins.rifle_bench_sweeper` drives these functions.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import DictConfig

from rifle_bench.results import RESULT_FILE, is_complete, write_atomic

COMPLETE, FAILED, INCOMPLETE, NEW = "complete", "failed", "incomplete", "new"
PLAN_FILE = "plan.json"
# Config choices that name a cell; each is read once per distinct choice, since composing a config is slow.
FACTORS = ("dataset", "model", "regularizer", "method", "seed")
MAX_NAME_BYTES = 255  # a file name, on every common file system


@dataclass
class Cell:
    overrides: list[str]  # the job's overrides, as typed on a command line
    name: str  # its run directory, below the sweep directory
    dataset: str
    model: str
    regularizer: str
    method: str
    variant: dict
    seed: int

    def describe(self) -> str:
        variant = ",".join(f"{key}={value}" for key, value in self.variant.items())
        method = f"{self.method}({variant})" if variant else self.method
        return f"{self.dataset}/{self.model}/{self.regularizer}/{method}/seed={self.seed}"

    def job_overrides(self) -> list[str]:
        # hydra.* overrides set the job's config without showing in its task overrides.
        return [*self.overrides, f"hydra.sweep.subdir='{self.name}'"]


def combinations(overrides: list[Override], parse: Callable[[list[str]], list[Override]]) -> list[list[Override]]:
    """Every combination of the overrides' values, as Hydra's basic sweeper forms them (a later key wins)."""
    axes: dict[str, list[Override]] = {}
    for override in overrides:
        key = override.get_key_element()
        if not override.is_sweep_override():
            axes[key] = [override]
        elif override.is_discrete_sweep():
            axes[key] = parse([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            raise HydraException(f"{override.input_line}: the rifle sweeper takes lists (a,b) and ranges, "
                                 f"not intervals")
    return [list(combination) for combination in itertools.product(*axes.values())]


def _is_method_setting(override: Override) -> bool:
    return (override.key_or_group.startswith("method.")
            and not (override.is_add() or override.is_force_add() or override.is_delete()))


def _parameter(setting: Override) -> str:
    return setting.key_or_group.split(".")[1]  # method.p -> p


def cell_name(overrides: list[tuple[str, str]], exclude_keys: list[str]) -> str:
    """`key=value` of each (key, override) pair not excluded, sorted by key and joined with `,`; file-name safe."""
    lines = [line for key, line in sorted(overrides) if key not in exclude_keys]
    name = re.sub(r"[^\w.,=+-]", "_", ",".join(lines)) or "defaults"
    if len(name.encode()) > MAX_NAME_BYTES:
        name = f"{name[:200]}-{hashlib.sha1(name.encode()).hexdigest()[:12]}"
    return name


def plan_cells(overrides: list[Override], parse: Callable[[list[str]], list[Override]],
               compose: Callable[[list[str]], DictConfig], exclude_keys: list[str]) -> list[Cell]:
    """The sweep's cells, each method expanded into its grid variants except for the parameters set by the user."""
    factors: dict[tuple[str, str | None], object] = {}
    settings_given, settings_pinned = set(), set()
    cells = []
    for combination in combinations(overrides, parse):
        settings = [override for override in combination if _is_method_setting(override)]
        base = [override for override in combination if not _is_method_setting(override)]
        choices = {factor: next((o.input_line for o in base if o.key_or_group == factor), None)
                   for factor in FACTORS}
        if any(choice not in factors for choice in choices.items()):
            cfg = compose([override.input_line for override in base])
            factors.update({(factor, choice): cfg[factor] for factor, choice in choices.items()})
        dataset, model, regularizer, method, seed = (factors[choice] for choice in choices.items())

        pinned = [override for override in settings if _parameter(override) in method]
        settings_given.update(override.input_line for override in settings)
        settings_pinned.update(override.input_line for override in pinned)
        pinned_values = {_parameter(override): override.value() for override in pinned}
        grid = method.get("grid") or {}
        free = {param: values for param, values in grid.items() if param not in pinned_values}
        given = [(override.key_or_group, override.input_line) for override in base + pinned]
        for values in itertools.product(*free.values()):
            chosen = {**pinned_values, **dict(zip(free, values))}
            job = given + [(f"method.{param}", f"method.{param}={json.dumps(chosen[param])}") for param in free]
            cells.append(Cell(
                overrides=[line for _, line in job], name=cell_name(job, exclude_keys),
                dataset=dataset.name, model=model.name, regularizer=regularizer.name, method=method.name,
                variant={param: chosen[param] for param in grid}, seed=seed,
            ))

    unused = sorted(settings_given - settings_pinned)
    if unused:
        methods = ", ".join(sorted({cell.method for cell in cells}))
        raise HydraException(f"{', '.join(unused)}: no method of this sweep ({methods}) has that parameter")
    return cells


def run_status(run_dir: Path) -> str:
    if is_complete(run_dir):
        return COMPLETE
    try:
        failed = json.loads((run_dir / RESULT_FILE).read_text()).get("status") == "failed"
    except (OSError, ValueError):
        failed = False
    return FAILED if failed else INCOMPLETE if run_dir.exists() else NEW


def describe_plan(sweep_dir: Path, cells: list[Cell], statuses: list[str], list_cells: bool) -> str:
    """The cells' count and dimensions, how many are complete (skipped) or will run, and optionally each cell."""
    def count(noun: str, values) -> str:
        n = len(set(values))
        return f"{n} {noun}{'s' if n != 1 else ''}"

    dimensions = " x ".join([count("dataset", (c.dataset for c in cells)), count("model", (c.model for c in cells)),
                             count("regularizer", (c.regularizer for c in cells)),
                             count("method variant", ((c.method, *c.variant.items()) for c in cells)),
                             count("seed", (c.seed for c in cells))])
    counts = Counter(statuses)
    lines = [f"Sweep {sweep_dir}: {len(cells)} cells ({dimensions})",
             f"  {counts[COMPLETE]} complete (skipped), {counts[FAILED]} failed (re-run), "
             f"{counts[INCOMPLETE]} incomplete (re-run), {counts[NEW]} new"]
    if list_cells:
        lines += [f"  {status:<10} {cell.describe():<60} {cell.name}" for cell, status in zip(cells, statuses)]
    return "\n".join(lines)


def write_plan(sweep_dir: Path, cells: list[Cell]) -> None:
    """plan.json: the cells the sweep asks for, so that the report can tell which never started."""
    plan = {"seeds": sorted({cell.seed for cell in cells}),
            "cells": [{"dir": cell.name, "dataset": cell.dataset, "model": cell.model, "regularizer": cell.regularizer,
                       "method": cell.method, "variant": cell.variant, "seed": cell.seed} for cell in cells]}
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(sweep_dir / PLAN_FILE, json.dumps(plan, indent=1) + "\n")


def report(sweep_dir: Path, cells: list[Cell], statuses_before: list[str]) -> int:
    """Print the tables of the sweep directory and the cells' counts; return how many cells failed."""
    # Imported here: Hydra imports every plugin module (and so this one) at the start of any run.
    from rifle_bench.report import ReportInputError, write_report

    statuses = [run_status(sweep_dir / cell.name) for cell in cells]
    counts = Counter(statuses)
    skipped = statuses_before.count(COMPLETE)
    try:
        summary = write_report([sweep_dir])
    except ReportInputError as error:
        print(f"No report: {error}", flush=True)
    else:
        print(summary.markdown or "No complete run yet: no table.")
        for run_dir, reason in summary.failures:
            print(f"[FAILED] {run_dir}: {reason}")
        print(f"Report: {', '.join(path.name for path in summary.written)} in {sweep_dir}")
    print(f"Sweep {sweep_dir}: {len(cells)} cells: {counts[COMPLETE]} complete ({skipped} skipped, "
          f"{counts[COMPLETE] - skipped} run now), {counts[FAILED]} failed, "
          f"{counts[INCOMPLETE] + counts[NEW]} incomplete", flush=True)
    return counts[FAILED]
