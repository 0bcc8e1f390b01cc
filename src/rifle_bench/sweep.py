"""The cells of a `rifle-bench -m` sweep, their run directories, plan.json and the closing report.

A cell is one job: one (dataset, model, regularizer, method, variant, seed). A method config's `grid` names the
parameters a sweep expands; a parameter the user sets (`method.p=0.2`, or `method.k=1,3` to sweep a subset) is
pinned instead, and every swept method must have it. The Hydra plugin `hydra_plugins.rifle_bench_sweeper` drives
these functions.

Where a sweep lives: a preset names its directory (`outputs/sweeps/paper`); any other sweep gets
`outputs/sweeps/<its command-line overrides, sorted by key>` (`sweep_name`), so that the same command finds its
finished cells again while different commands never share a directory. plan.json keeps the union of the cells of
every invocation that used the directory (table1 and table2 share `paper`), and the list of those invocations.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

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

    def job_overrides(self, sweep_dir: str | Path) -> list[str]:
        # hydra.* overrides set the job's config without showing in its task overrides. The sweep directory is
        # passed on: a job composing the default (`sweep_name` of the task overrides) would name it after itself.
        quoted = str(sweep_dir).replace("'", "\\'")
        return [*self.overrides, f"hydra.sweep.dir='{quoted}'", f"hydra.sweep.subdir='{self.name}'"]


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


def _override_key(line: str) -> str:
    """`+method.k=3` -> `method.k`: the key an override line sets."""
    return line.split("=", 1)[0].lstrip("+~")


def _is_named_dimension(line: str) -> bool:
    """An override of the dimensions a plan names (dataset, model, regularizer, method and its grid, seed)."""
    key = _override_key(line)
    return key in ("dataset", "model", "regularizer", "method", "seed") or key.startswith("method.")


def _is_method_setting(override: Override) -> bool:
    return (override.key_or_group.startswith("method.")
            and not (override.is_add() or override.is_force_add() or override.is_delete()))


def _parameter(setting: Override) -> str:
    return setting.key_or_group.split(".")[1]  # method.p -> p


def cell_name(overrides: list[tuple[str, str]], exclude_keys: list[str]) -> str:
    """`key=value` of each (key, override) pair not excluded, sorted by key and joined with `,`; file-name safe."""
    lines = [line for key, line in sorted(overrides) if key not in exclude_keys]
    return _fit(re.sub(r"[^\w.,=+-]", "_", ",".join(lines)) or "defaults")


def sweep_name(task_overrides: list[str], exclude_keys: list[str]) -> str:
    """The directory name of a sweep that no preset names, from its overrides as typed (sweeps included) sorted by
    key, less `exclude_keys` (they do not change results) but `experiment`: `method=a,b seed=0` gives
    `method-a+b_seed-0`, and so does `method=choice(a,b) seed=0`. No `=` or `,`, so that
    `hydra.sweep.dir=outputs/sweeps/<name>` needs no quotes."""
    parser = OverridesParser.create()

    def as_typed(line: str) -> str:
        try:
            return _as_typed(parser.parse_override(line))
        except HydraException:  # glob(...) lists a group's options only with a config loader
            return line

    excluded = [key for key in exclude_keys if key != "experiment"]
    lines = [as_typed(line) for key, line in sorted((_override_key(line), line)
                                                    for line in task_overrides) if key not in excluded]
    return _fit(re.sub(r"[^\w.+-]", "_", "_".join(lines).replace("=", "-").replace(",", "+")) or "defaults")


def _fit(name: str) -> str:
    """`name`, or if it is too long for a file name, its start and a hash of the whole."""
    if len(name.encode()) > MAX_NAME_BYTES:
        name = f"{name[:200]}-{hashlib.sha1(name.encode()).hexdigest()[:12]}"
    return name


# config.yaml: hydra.sweep.dir: outputs/sweeps/${sweep_name:${hydra.overrides.task},${...exclude_keys}}
if not OmegaConf.has_resolver("sweep_name"):
    OmegaConf.register_new_resolver("sweep_name", lambda task, exclude: sweep_name(list(task), list(exclude)))


def _as_typed(override: Override) -> str:
    """`key=a,b` for a list sweep (`method.k=choice(3)`, which the CLI makes of `method.k=3`, shows as typed)."""
    if override.is_discrete_sweep():
        return f"{override.get_key_element()}={','.join(override.sweep_string_iterator())}"
    return override.input_line


def _lacking_parameter(typed: str, method: DictConfig, parameter: str) -> HydraException:
    parameters = [key for key in method if key not in ("name", "_target_", "grid")]
    has = f"its parameters: {', '.join(parameters)}" if parameters else "it has no parameters"
    return HydraException(f"{typed}: method '{method.name}' has no parameter '{parameter}' ({has}); drop the pin "
                          f"or sweep {method.name} separately")


def plan_cells(overrides: list[Override], parse: Callable[[list[str]], list[Override]],
               compose: Callable[[list[str]], DictConfig], exclude_keys: list[str],
               grids: dict[str, dict[str, list]] | None = None) -> list[Cell]:
    """The sweep's distinct cells, each method expanded into its grid variants (`grids[method]` where given, else
    the method's own) except for the parameters set by the user (which every swept method must have).
    Combinations that name the same cell (`seed=0,0`, `method=rifle,rifle`) give it once."""
    factors: dict[tuple[str, str | None], object] = {}
    typed = {override.get_key_element(): _as_typed(override) for override in overrides}
    cells: dict[str, Cell] = {}
    for combination in combinations(overrides, parse):
        settings = [override for override in combination if _is_method_setting(override)]
        base = [override for override in combination if not _is_method_setting(override)]
        choices = {factor: next((o.input_line for o in base if o.key_or_group == factor), None)
                   for factor in FACTORS}
        if any(choice not in factors for choice in choices.items()):
            cfg = compose([override.input_line for override in base])
            factors.update({(factor, choice): cfg[factor] for factor, choice in choices.items()})
        dataset, model, regularizer, method, seed = (factors[choice] for choice in choices.items())

        for setting in settings:
            if _parameter(setting) not in method:
                raise _lacking_parameter(typed[setting.get_key_element()], method, _parameter(setting))
        pinned_values = {_parameter(override): override.value() for override in settings}
        grid = (grids or {}).get(method.name, method.get("grid") or {})
        free = {param: values for param, values in grid.items() if param not in pinned_values}
        given = [(override.key_or_group, override.input_line) for override in base + settings]
        for values in itertools.product(*free.values()):
            chosen = {**pinned_values, **dict(zip(free, values))}
            job = given + [(f"method.{param}", f"method.{param}={json.dumps(chosen[param])}") for param in free]
            name = cell_name(job, exclude_keys)
            cells.setdefault(name, Cell(
                overrides=[line for _, line in job], name=name,
                dataset=dataset.name, model=model.name, regularizer=regularizer.name, method=method.name,
                variant={param: chosen[param] for param in grid}, seed=seed,
            ))
    return list(cells.values())


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
    others = {tuple(sorted(line for line in c.overrides if not _is_named_dimension(line))) for c in cells}
    if len(others) > 1:  # e.g. regularizer.never_hurt=false,true: the dimensions above would not multiply out
        dimensions += f" x {len(others)} combinations of other settings"
    counts = Counter(statuses)
    lines = [f"Sweep {sweep_dir}: {len(cells)} cells ({dimensions})",
             f"  {counts[COMPLETE]} complete (skipped), {counts[FAILED]} failed (re-run), "
             f"{counts[INCOMPLETE]} incomplete (re-run), {counts[NEW]} new"]
    if list_cells:
        lines += [f"  {status:<10} {cell.describe():<60} {cell.name}" for cell, status in zip(cells, statuses)]
    return "\n".join(lines)


def read_plan(sweep_dir: Path) -> dict:
    """plan.json of a sweep directory: `cells` (each with its `dir`), `seeds` and `invocations`; empty if none."""
    path = Path(sweep_dir) / PLAN_FILE
    plan = json.loads(path.read_text()) if path.exists() else {}
    return {"seeds": plan.get("seeds", []), "cells": plan.get("cells", []), "invocations": plan.get("invocations", [])}


def write_plan(sweep_dir: Path, cells: list[Cell], overrides: list[str]) -> None:
    """Add this invocation's cells to plan.json (the union over every invocation that used the directory, so
    that the report and `rifle-bench-status` count every cell asked for) and record the invocation."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    # Two sweeps sharing a directory (table1 and table2 on SLURM) may start at once: merge one at a time.
    with open(sweep_dir / f".{PLAN_FILE}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        plan = read_plan(sweep_dir)
        planned = {cell["dir"]: cell for cell in plan["cells"]}
        for cell in cells:
            planned.setdefault(cell.name, {"dir": cell.name, "dataset": cell.dataset, "model": cell.model,
                                           "regularizer": cell.regularizer, "method": cell.method,
                                           "variant": cell.variant, "seed": cell.seed})
        invocation = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "overrides": list(overrides),
                      "cells": len(cells)}
        merged = {"seeds": sorted({cell["seed"] for cell in planned.values()}), "cells": list(planned.values()),
                  "invocations": [*plan["invocations"], invocation]}
        write_atomic(sweep_dir / PLAN_FILE, json.dumps(merged, indent=1) + "\n")


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


def invalid_cells(cells: list[Cell], parse: Callable[[list[str]], list[Override]],
                  compose: Callable[[list[str]], DictConfig]) -> list[tuple[str, Exception]]:
    """(cell, error) for every cell whose configuration cannot work, checked without launching anything.

    Composing a config per cell would cost minutes for Table 1's 1,800 cells, so a cell's config is assembled: the
    overrides other than group choices, seed and method settings are composed once, each group choice once, and
    each distinct assembly (seeds aside) is validated once.
    """
    from omegaconf.errors import OmegaConfBaseException

    from rifle_bench.config import ConfigError, check_seed, validate

    composed: dict[tuple[str, ...], DictConfig] = {}
    verdicts: dict[tuple[str, ...], Exception | None] = {}
    problems = []

    def compose_once(lines: tuple[str, ...]) -> DictConfig:
        if lines not in composed:
            composed[lines] = compose(list(lines))
        return composed[lines]

    for cell in cells:
        parsed = parse(cell.overrides)
        settings = [override for override in parsed if _is_method_setting(override)]
        choices = [override for override in parsed if override.key_or_group in FACTORS[:-1]]
        others = tuple(override.input_line for override in parsed
                       if override not in settings and override not in choices and override.key_or_group != "seed")
        key = others + tuple(override.input_line for override in choices + settings)
        if key not in verdicts:
            cfg = compose_once(others).copy()
            try:
                for choice in choices:
                    cfg[choice.key_or_group] = compose_once(others + (choice.input_line,))[choice.key_or_group]
                for setting in settings:
                    OmegaConf.update(cfg, setting.key_or_group, setting.value(), merge=False)
                validate(cfg, machine=False)
                verdicts[key] = None
            except ConfigError as error:
                verdicts[key] = error
            except OmegaConfBaseException as error:
                first = str(error).splitlines()[0]
                verdicts[key] = ConfigError(error.full_key or "method", error.value, first,
                                            "a value of the key's type", "fix the value on the command line")
        try:
            check_seed(cell.seed)
        except ConfigError as error:
            problems.append((cell.describe(), error))
            continue
        if verdicts[key] is not None:
            problems.append((cell.describe(), verdicts[key]))
    return problems
