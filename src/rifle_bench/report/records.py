"""Run directories read as records: what one training run left behind, and what its sweep planned.

A run is read through its directory only: ``result.json`` and the ``COMPLETED`` marker written
after it (plus ``.hydra/`` to spot runs that have started).

Runs are seeds of one experiment when their experiment fingerprints (``results.experiment_fingerprint``:
everything that shapes the trajectory, as checkpoints match it, less the seed and where the run ran) are equal.
A record keeps that fingerprint flat (``settings``, e.g. ``{"trainer.epochs": 2, ...}``) and as a hash.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from rifle_bench.results import experiment_fingerprint, experiment_id

COMPLETE, FAILED, INCOMPLETE = "complete", "failed", "incomplete"

_TRAINING_CONFIG_KEYS = {"dataset", "model", "regularizer", "method", "trainer", "seed"}
_RESULT_FIELDS = ["dataset", "model", "regularizer", "method", "seed", "epochs", "test_acc", "val_acc",
                  "n_train", "n_test", "wall_s", "train_s", "eval_s"]


@dataclass
class RunRecord:
    """One run directory. Result fields are None while a run has not written result.json."""

    run_dir: Path
    status: str  # COMPLETE, FAILED or INCOMPLETE
    error: str | None = None
    dataset: str | None = None
    model: str | None = None
    regularizer: str | None = None
    method: str | None = None
    variant: dict = field(default_factory=dict)
    seed: int | None = None
    epochs: int | None = None
    test_acc: float | None = None
    val_acc: float | None = None  # None when the run held out no validation split
    n_train: int | None = None
    n_test: int | None = None
    wall_s: float | None = None
    train_s: float | None = None
    eval_s: float | None = None
    versions: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)  # the experiment fingerprint, flat
    fingerprint: str | None = None  # its hash: equal for the seeds of one experiment
    numerics: str | None = None  # the arithmetic it trained in: "fp32", "bf16", "fp32+TF32", ...


def variant_label(variant: dict) -> str:
    """``{"p": 0.1}`` -> ``"p=0.1"``; keys sorted and joined with ``,``; ``"-"`` when empty."""
    if not variant:
        return "-"
    return ",".join(f"{name}={value}" for name, value in sorted(variant.items()))


def variant_sort_key(variant: dict) -> tuple:
    """Grid order: numbers by value (k=10 after k=2), any other value by its text after the numbers."""
    def orderable(value):
        is_number = isinstance(value, (int, float))
        return (not is_number, value if is_number else str(value))

    return tuple((name, orderable(value)) for name, value in sorted(variant.items()))


def read_run(run_dir: Path) -> RunRecord:
    try:
        result = json.loads((run_dir / "result.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or caught mid-write
        return RunRecord(run_dir=run_dir, status=INCOMPLETE)
    if result.get("status") == "failed":
        status = FAILED
    elif result.get("status") == "done" and (run_dir / "COMPLETED").exists():
        status = COMPLETE
    else:
        status = INCOMPLETE
    settings, fingerprint = _training_settings(result)
    return RunRecord(
        run_dir=run_dir,
        status=status,
        error=result.get("error"),
        variant=result.get("variant") or {},
        versions=result.get("versions") or {},
        settings=settings,
        fingerprint=fingerprint,
        numerics=numerics(result),
        **{name: result.get(name) for name in _RESULT_FIELDS},
    )


def numerics(result: dict) -> str | None:
    """The precision a run trained in, as its result.json records it (absent from early results)."""
    if result.get("precision") is None:
        return None
    return result["precision"] + ("+TF32" if result.get("tf32") else "")


def _training_settings(result: dict) -> tuple[dict, str]:
    """The flat experiment fingerprint and its hash. A result without a training config (written by
    hand, by an early version, or by another app) is known by its fields: dataset, model, regularizer, method,
    variant and epochs."""
    config = result.get("config")
    if isinstance(config, dict) and _TRAINING_CONFIG_KEYS <= config.keys():
        return _flatten(experiment_fingerprint(config)), experiment_id(config)
    settings = {"dataset.name": result.get("dataset"), "model.name": result.get("model"),
                "regularizer.name": result.get("regularizer"), "method.name": result.get("method"),
                **{f"method.{name}": value for name, value in (result.get("variant") or {}).items()},
                "trainer.epochs": result.get("epochs")}
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return settings, result.get("fingerprint") or digest


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _find_run_dirs(sweep_dir: Path) -> list[Path]:
    markers = [*sweep_dir.glob("**/result.json"), *sweep_dir.glob("**/.hydra")]
    return sorted({marker.parent for marker in markers})


def collect_runs(sweep_dirs: list[Path]) -> list[RunRecord]:
    """Every run directory below the sweep directories, each once even if the sweeps overlap."""
    run_dirs: dict[Path, Path] = {}
    for sweep_dir in sweep_dirs:
        for run_dir in _find_run_dirs(Path(sweep_dir)):
            run_dirs.setdefault(run_dir.resolve(), run_dir)
    return [read_run(run_dir) for run_dir in run_dirs.values()]


def plan_cells(sweep_dirs: list[Path]) -> list[dict]:
    """The cells of every sweep's plan.json, with ``dir`` made a path below its sweep."""
    cells = []
    for sweep_dir in sweep_dirs:
        plan_path = Path(sweep_dir) / "plan.json"
        if plan_path.exists():
            for cell in json.loads(plan_path.read_text())["cells"]:
                cells.append({**cell, "dir": Path(sweep_dir) / cell["dir"]})
    return cells
