"""The files of one run directory, the contract between a run and the sweep/report layers.

  metrics.csv   one row per finished epoch
  result.json   final metrics, config keys, timings, versions; status "done" or "failed" with its reason
  checkpoint.pt the state at the last finished epoch (while the run is incomplete)
  COMPLETED     empty marker, written last: its presence means result.json holds a finished run
Every file is written atomically (a temporary file in the same directory, then os.replace).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path

METRICS_FILE = "metrics.csv"
RESULT_FILE = "result.json"
CHECKPOINT_FILE = "checkpoint.pt"
COMPLETED_FILE = "COMPLETED"
# The columns every run writes, first; methods and options add their own after these (see `metrics_columns`).
# Trainer keys that say how a run is watched, stored or parallelized, not what it trains.
_NOT_TRAINING_KEYS = ("workers", "checkpoint", "keep_checkpoint", "eval_every", "grad_norms")  # measure, not shape
_TRAINING_SECTIONS = ("dataset", "model", "regularizer", "method")
_PLACE_KEYS = (("dataset", "root"), ("trainer", "device"), ("trainer", "threads"))
METRICS_COLUMNS = ["epoch", "lr_backbone", "lr_head", "head_reinit", "train_loss", "train_acc", "test_acc",
                   "penalty", "epoch_s"]


def training_fingerprint(config: dict) -> dict:
    """Everything that shapes a run's training trajectory, from its resolved config (result.json's "config"):
    the dataset, model, regularizer, method and trainer sections, less the trainer keys that do not change what is
    trained, and the seed. A checkpoint resumes only under an equal fingerprint; the report pools as seeds of one
    experiment only runs whose fingerprints are equal but for the seed."""
    trainer = {key: value for key, value in config["trainer"].items() if key not in _NOT_TRAINING_KEYS}
    return {key: config[key] for key in _TRAINING_SECTIONS} | {"trainer": trainer, "seed": config["seed"]}


def experiment_fingerprint(config: dict) -> dict:
    """The training fingerprint less the seed and the place a run ran in (its data folder, device, CPU threads):
    what the seeds of one experiment share, wherever each ran. A checkpoint needs the place too (it resumes
    bit-identically only there); the report pools across places, and footnotes mixed numerics."""
    fingerprint = training_fingerprint(config)
    del fingerprint["seed"]
    for section, key in _PLACE_KEYS:
        fingerprint[section] = {k: v for k, v in fingerprint[section].items() if k != key}
    return fingerprint


def experiment_id(config: dict) -> str:
    """A hash of the experiment fingerprint (result.json's "fingerprint"): the seeds of one experiment share it."""
    settings = json.dumps(experiment_fingerprint(config), sort_keys=True, default=str)
    return hashlib.sha1(settings.encode()).hexdigest()[:16]


def write_atomic(path: Path, data: bytes | str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data.encode() if isinstance(data, str) else data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def metrics_columns(rows: list[dict]) -> list[str]:
    """The standard columns, then every other key of the rows in the order it first appears."""
    extra = [key for row in rows for key in row if key not in METRICS_COLUMNS]
    return METRICS_COLUMNS + list(dict.fromkeys(extra))


def set_aside(path: Path) -> Path:
    """Rename a corrupt file or folder out of the way (never delete it: it may be evidence, or recoverable)."""
    target = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    path.rename(target)
    return target


def write_metrics(run_dir: Path, rows: list[dict]) -> None:
    columns = metrics_columns(rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if row.get(key) is None else row[key] for key in columns})
    write_atomic(Path(run_dir) / METRICS_FILE, buffer.getvalue())


def write_result(run_dir: Path, result: dict) -> None:
    write_atomic(Path(run_dir) / RESULT_FILE, json.dumps(result, indent=2, default=str) + "\n")


def mark_completed(run_dir: Path) -> None:
    write_atomic(Path(run_dir) / COMPLETED_FILE, "")


def is_complete(run_dir: Path) -> bool:
    run_dir = Path(run_dir)
    if not (run_dir / COMPLETED_FILE).exists():
        return False
    try:
        return json.loads((run_dir / RESULT_FILE).read_text()).get("status") == "done"
    except (OSError, ValueError):
        return False


def versions() -> dict[str, str]:
    import hydra
    import numpy
    import torch
    import torchvision

    import rifle_bench

    return {"rifle_bench": rifle_bench.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "hydra": hydra.__version__, "numpy": numpy.__version__,
            "platform": platform.platform()}
