"""Which complete runs are seeds of one experiment, and where each experiment goes in the tables.

A run counts once per (fingerprint, seed): a re-run of the same experiment (say with ``trainer.eval_every=1``,
which does not change training) adds no seed. Runs that differ in any other setting are never pooled:
- a difference outside the method's section (``trainer.epochs=2`` vs ``4``, ``regularizer.alpha``, ...)
  splits the table row, and ``setting`` names the differing keys and their values;
- a difference inside the method's section beyond its grid parameters (``method.reset_momentum``) makes
  another variant, whose label names that key.
"""

from __future__ import annotations

import json

import pandas as pd

from rifle_bench.report.records import COMPLETE, RunRecord, variant_label

TABLE_ROW = ["model", "dataset", "regularizer"]
ROW_KEYS = [*TABLE_ROW, "setting"]  # the runs that differ only in method, variant and seed
VARIANT_KEYS = [*ROW_KEYS, "method", "variant"]
RUN_COLUMNS = [*VARIANT_KEYS, "variant_dict", "seed", "test_acc", "val_acc", "fingerprint", "numerics", "run_dir"]
_ABSENT = "(absent)"  # a key one run's config has and another's lacks (written by another version)


def distinct_runs(records: list[RunRecord]) -> tuple[pd.DataFrame, list[RunRecord]]:
    """The complete runs, one per (fingerprint, seed), with their table coordinates; and the duplicates left out.
    Of duplicates the first run directory in path order counts."""
    kept: dict[tuple, RunRecord] = {}
    duplicates = []
    for record in sorted((record for record in records if record.status == COMPLETE),
                         key=lambda record: str(record.run_dir)):
        if kept.setdefault((record.fingerprint, record.seed), record) is not record:
            duplicates.append(record)
    runs = list(kept.values())
    settings = _row_settings(runs)
    variants = _variants(runs, settings)
    frame = pd.DataFrame(
        [{"model": run.model, "dataset": run.dataset, "regularizer": run.regularizer, "setting": setting,
          "method": run.method, "variant": variant_label(variant), "variant_dict": variant, "seed": run.seed,
          "test_acc": run.test_acc, "val_acc": run.val_acc, "fingerprint": run.fingerprint,
          "numerics": run.numerics, "run_dir": run.run_dir}
         for run, setting, variant in zip(runs, settings, variants)],
        columns=RUN_COLUMNS,
    )
    return frame, duplicates


def _row_settings(runs: list[RunRecord]) -> list[str]:
    """Per run, the non-method settings that differ between the runs of its table row, as ``key=value, ...``."""
    rows: dict[tuple, list[int]] = {}
    for position, run in enumerate(runs):
        rows.setdefault((run.model, run.dataset, run.regularizer), []).append(position)
    labels = [""] * len(runs)
    for positions in rows.values():
        members = [runs[position].settings for position in positions]
        keys = [key for key in _differing_keys(members) if not key.startswith("method.")]
        for position, settings in zip(positions, members):
            labels[position] = ", ".join(f"{key}={_value(settings, key)}" for key in keys)
    return labels


def _variants(runs: list[RunRecord], settings: list[str]) -> list[dict]:
    """Per run, its grid variant, plus any other method setting that differs between runs of that variant."""
    groups: dict[tuple, list[int]] = {}
    for position, (run, setting) in enumerate(zip(runs, settings)):
        key = (run.model, run.dataset, run.regularizer, setting, run.method, variant_label(run.variant))
        groups.setdefault(key, []).append(position)
    variants = [dict(run.variant) for run in runs]
    for positions in groups.values():
        members = [runs[position].settings for position in positions]
        for key in _differing_keys(members):
            name = key.removeprefix("method.")
            for position, settings in zip(positions, members):
                variants[position][name] = _value(settings, key)
    return variants


def _differing_keys(members: list[dict]) -> list[str]:
    keys = sorted({key for settings in members for key in settings})
    return [key for key in keys if len({json.dumps(_value(settings, key), default=str) for settings in members}) > 1]


def _value(settings: dict, key: str):
    return settings.get(key, _ABSENT)
