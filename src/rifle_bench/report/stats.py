"""Statistics over seeds: each variant's mean and std, the seeds it was asked for, Welch's test against Original."""

from __future__ import annotations

import math
import warnings
from collections import defaultdict

import pandas as pd
from scipy import stats

from rifle_bench.report.grouping import ROW_KEYS, VARIANT_KEYS
from rifle_bench.report.records import RunRecord, variant_label, variant_sort_key

SIGNIFICANCE_LEVEL = 0.05


def variant_statistics(runs: pd.DataFrame, expected_seeds_for) -> pd.DataFrame:
    """One row per variant of ``grouping.distinct_runs``: test (and validation) accuracy over seeds, in grid order
    (``variant_rank``)."""
    dicts = dict(zip(runs["variant"], runs["variant_dict"]))
    in_grid_order = sorted(dicts, key=lambda label: variant_sort_key(dicts[label]))
    variant_rank = {label: rank for rank, label in enumerate(in_grid_order)}
    summary = (
        runs.groupby(VARIANT_KEYS, dropna=False)
        .agg(n=("test_acc", "count"), mean=("test_acc", "mean"), std=("test_acc", "std"),
             accuracies=("test_acc", list), val_n=("val_acc", "count"), val_mean=("val_acc", "mean"),
             val_std=("val_acc", "std"), fingerprint=("fingerprint", "first"))
        .reset_index()
    )
    summary["variant_rank"] = summary["variant"].map(variant_rank)
    summary = summary.sort_values("variant_rank", kind="stable", ignore_index=True)
    summary["expected"] = [expected_seeds_for(row.dataset, row.regularizer, row.method, row.variant)
                           for row in summary.itertuples()]
    return summary


def seed_expectation(records: list[RunRecord], plan_cells: list[dict], expected_seeds: int | None):
    """How many seeds each variant was asked for: the argument, else the plan, else all seeds seen."""
    planned_seeds = defaultdict(set)
    for cell in plan_cells:
        key = (cell["dataset"], cell["regularizer"], cell["method"], variant_label(cell.get("variant") or {}))
        planned_seeds[key].add(cell["seed"])
    seeds_seen = len({record.seed for record in records if record.seed is not None})

    def expected_seeds_for(dataset, regularizer, method, variant):
        if expected_seeds is not None:
            return expected_seeds
        planned = planned_seeds.get((dataset, regularizer, method, variant))
        return len(planned) if planned else seeds_seen

    return expected_seeds_for


def welch_p_values(variants: pd.DataFrame, chosen: pd.Series) -> pd.Series:
    """Welch's t-test of each chosen variant's accuracies against the chosen Original of its row; NaN elsewhere."""
    originals = variants[chosen & (variants["method"] == "original")]
    original_accuracies = {tuple(row[ROW_KEYS]): row["accuracies"] for _, row in originals.iterrows()}
    return pd.Series(
        [_welch_p_value(row["accuracies"], original_accuracies.get(tuple(row[ROW_KEYS]), []))
         if is_chosen and row["method"] != "original" else math.nan
         for (_, row), is_chosen in zip(variants.iterrows(), chosen)],
        index=variants.index, dtype=float,
    )


def _welch_p_value(accuracies: list[float], baseline: list[float]) -> float:
    if len(accuracies) < 2 or len(baseline) < 2:
        return math.nan
    with warnings.catch_warnings():
        # Seeds with identical accuracies are legitimate; scipy's precision warning is noise here.
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(accuracies, baseline, equal_var=False).pvalue)
