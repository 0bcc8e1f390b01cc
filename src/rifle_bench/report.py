"""Tables 1 and 2 of the RIFLE paper, built from the files that training runs leave behind.

A run is read through its directory only: ``result.json`` and the ``COMPLETED`` marker written
after it (plus ``.hydra/`` to spot runs that have started). So the report works on any mix of
finished, failed and still running sweeps, and on several sweeps at once.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import pandas as pd
from scipy import stats

COMPLETE, FAILED, INCOMPLETE = "complete", "failed", "incomplete"

TABLE_METHODS = {
    1: {
        "original": "Original",
        "dropout": "Dropout",
        "dropconnect": "DropConn.",
        "cnn_dropout": "CNN-DrO.",
        "stochastic_depth": "StochasticD.",
        "cyclic_lr": "CyclicLR.",
        "disturb_label": "DisturbL.",
        "rifle": "RIFLE",
    },
    2: {"rifle": "RIFLE", "rifle_a": "RIFLE-A", "rifle_b": "RIFLE-B"},
}
METHOD_ORDER = list(dict.fromkeys([*TABLE_METHODS[1], *TABLE_METHODS[2]]))
REGULARIZER_LABELS = {"l2": "L2", "l2sp": "L2-SP"}
# The paper's row order; other datasets follow alphabetically under their key.
PAPER_DATASETS = {
    "cub": "CUB-200-2011",
    "aircraft": "FGVC-Aircraft",
    "flowers102": "Flowers-102",
    "dtd": "DTD",
    "indoor67": "MIT Indoor-67",
    "cars": "Stanford Cars",
    "dogs": "Stanford Dogs",
    "food101_30": "Food-101-30",
    "food101_150": "Food-101-150",
}
SIGNIFICANCE_LEVEL = 0.05
RESULT_COLUMNS = ["table", "regularizer", "dataset", "method", "variant",
                  "n", "mean", "std", "chosen", "paper_mean", "paper_std", "delta"]
_RESULT_FIELDS = ["dataset", "model", "regularizer", "method", "seed", "epochs", "test_acc",
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
    n_train: int | None = None
    n_test: int | None = None
    wall_s: float | None = None
    train_s: float | None = None
    eval_s: float | None = None
    versions: dict = field(default_factory=dict)


@dataclass
class ReportSummary:
    """Run counts of a report, its failures as (run dir, reason), its Markdown tables and the files written."""

    complete: int
    failed: int
    incomplete: int
    missing: int
    failures: list[tuple[Path, str]]
    markdown: str
    written: list[Path]


class ReportInputError(ValueError):
    """A sweep directory that does not exist or holds no run."""


def variant_label(variant: dict) -> str:
    """``{"p": 0.1}`` -> ``"p=0.1"``; keys sorted and joined with ``,``; ``"-"`` when empty."""
    if not variant:
        return "-"
    return ",".join(f"{name}={value}" for name, value in sorted(variant.items()))


def _variant_sort_key(variant: dict) -> tuple:
    # Numbers by value (k=10 after k=2), any other value by its text after the numbers.
    def orderable(value):
        is_number = isinstance(value, (int, float))
        return (not is_number, value if is_number else str(value))

    return tuple((name, orderable(value)) for name, value in sorted(variant.items()))


def _read_run(run_dir: Path) -> RunRecord:
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
    return RunRecord(
        run_dir=run_dir,
        status=status,
        error=result.get("error"),
        variant=result.get("variant") or {},
        versions=result.get("versions") or {},
        **{name: result.get(name) for name in _RESULT_FIELDS},
    )


def _find_run_dirs(sweep_dir: Path) -> list[Path]:
    markers = [*sweep_dir.glob("**/result.json"), *sweep_dir.glob("**/.hydra")]
    return sorted({marker.parent for marker in markers})


def collect_runs(sweep_dirs: list[Path]) -> list[RunRecord]:
    """Every run directory below the sweep directories, each once even if the sweeps overlap."""
    run_dirs: dict[Path, Path] = {}
    for sweep_dir in sweep_dirs:
        for run_dir in _find_run_dirs(Path(sweep_dir)):
            run_dirs.setdefault(run_dir.resolve(), run_dir)
    return [_read_run(run_dir) for run_dir in run_dirs.values()]


def _plan_cells(sweep_dirs: list[Path]) -> list[dict]:
    """The cells of every sweep's plan.json, with ``dir`` made a path below its sweep."""
    cells = []
    for sweep_dir in sweep_dirs:
        plan_path = Path(sweep_dir) / "plan.json"
        if plan_path.exists():
            for cell in json.loads(plan_path.read_text())["cells"]:
                cells.append({**cell, "dir": Path(sweep_dir) / cell["dir"]})
    return cells


def _load_paper() -> pd.DataFrame:
    package = resources.files("rifle_bench.paper")
    tables = []
    for name in ("paper_table1.csv", "paper_table2.csv"):
        with package.joinpath(name).open() as csv_file:
            tables.append(pd.read_csv(csv_file))
    return pd.concat(tables, ignore_index=True).rename(columns={"mean": "paper_mean", "std": "paper_std"})


def _welch_p_value(accuracies: list[float], baseline: list[float]) -> float:
    if len(accuracies) < 2 or len(baseline) < 2:
        return math.nan
    with warnings.catch_warnings():
        # Seeds with identical accuracies are legitimate; scipy's precision warning is noise here.
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(accuracies, baseline, equal_var=False).pvalue)


def _variant_statistics(records: list[RunRecord], expected_seeds_for) -> pd.DataFrame:
    """One row per (model, dataset, regularizer, method, variant) over the complete runs."""
    complete = [record for record in records if record.status == COMPLETE]
    runs = pd.DataFrame(
        [{"model": record.model, "dataset": record.dataset, "regularizer": record.regularizer,
          "method": record.method, "variant": variant_label(record.variant), "test_acc": record.test_acc}
         for record in complete],
        columns=["model", "dataset", "regularizer", "method", "variant", "test_acc"],
    )
    variants = {variant_label(record.variant): record.variant for record in complete}
    variant_rank = {label: rank for rank, label in
                    enumerate(sorted(variants, key=lambda label: _variant_sort_key(variants[label])))}
    summary = (
        runs.groupby(["model", "dataset", "regularizer", "method", "variant"], dropna=False)["test_acc"]
        .agg(n="count", mean="mean", std="std", accuracies=list)
        .reset_index()
    )
    summary["variant_rank"] = summary["variant"].map(variant_rank)
    summary = summary.sort_values("variant_rank", kind="stable", ignore_index=True)
    # idxmax keeps the first maximum, so a tie goes to the first variant in sorted order.
    best = summary.groupby(["model", "dataset", "regularizer", "method"], dropna=False)["mean"].idxmax()
    summary["chosen"] = summary.index.isin(best)
    summary["expected"] = [expected_seeds_for(row.dataset, row.regularizer, row.method, row.variant)
                           for row in summary.itertuples()]

    originals = summary[summary["chosen"] & (summary["method"] == "original")]
    original_accuracies = {
        (row.model, row.dataset, row.regularizer): row.accuracies for row in originals.itertuples()
    }
    summary["p_value"] = [
        _welch_p_value(row.accuracies, original_accuracies.get((row.model, row.dataset, row.regularizer), []))
        if row.chosen and row.method != "original" else math.nan
        for row in summary.itertuples()
    ]
    return summary.drop(columns="accuracies")


def _seed_expectation(records: list[RunRecord], plan_cells: list[dict], expected_seeds: int | None):
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


def _in_display_order(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    preferred = {"regularizer": list(REGULARIZER_LABELS), "dataset": list(PAPER_DATASETS), "method": METHOD_ORDER}

    def rank(column: pd.Series) -> pd.Series:
        first = [value for value in preferred.get(column.name, []) if value in set(column)]
        rest = sorted(set(column) - set(first))
        return column.map({value: position for position, value in enumerate(first + rest)})

    return frame.sort_values(by, key=rank)


def _results_frame(statistics: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """The tidy results: each variant under every table that shows its method, with the paper's number."""
    per_table = [statistics[statistics["method"].isin(methods)].assign(table=table)
                 for table, methods in TABLE_METHODS.items()]
    results = pd.concat(per_table, ignore_index=True).merge(
        paper, how="left", on=["table", "regularizer", "dataset", "method"])
    results["delta"] = results["mean"] - results["paper_mean"]
    return _in_display_order(results, ["table", "regularizer", "dataset", "model", "method", "variant_rank"])


class _Cell(NamedTuple):
    mean: float
    std: float
    bold: bool = False
    significant: bool = False
    seeds_short: tuple[int, int] | None = None  # (n, expected) when fewer seeds than asked for


def _cell_markdown(cell: _Cell | None) -> str:
    if cell is None:
        return ""
    text = f"{cell.mean:.2f}±{'–' if math.isnan(cell.std) else f'{cell.std:.2f}'}"
    if cell.bold:
        text = f"**{text}**"
    if cell.significant:
        text += "*"
    if cell.seeds_short:
        text += "†({}/{})".format(*cell.seeds_short)
    return text


def _cell_latex(cell: _Cell | None) -> str:
    if cell is None:
        return ""
    text = f"{cell.mean:.2f}$\\pm${'--' if math.isnan(cell.std) else f'{cell.std:.2f}'}"
    if cell.bold:
        text = f"\\textbf{{{text}}}"
    if cell.significant:
        text += "$^{*}$"
    if cell.seeds_short:
        text += "$^\\dagger$({}/{})".format(*cell.seeds_short)
    return text


def _table_grid(results: pd.DataFrame, paper: pd.DataFrame, table: int, several_models: bool) -> pd.DataFrame | None:
    """Cells of one table: rows (regularizer label, dataset label), columns = method labels."""
    chosen = results[(results["table"] == table) & results["chosen"]].copy()
    if chosen.empty:
        return None
    row_keys = ["regularizer", "dataset", "model"]
    chosen["bold"] = chosen["mean"] == chosen.groupby(row_keys, dropna=False)["mean"].transform("max")
    methods = [method for method in TABLE_METHODS[table] if method in set(chosen["method"])]
    paper_cells = {(row.regularizer, row.dataset, row.method): _Cell(row.paper_mean, row.paper_std)
                   for row in paper[paper["table"] == table].itertuples()}
    labels = [TABLE_METHODS[table][method] for method in methods]

    rows: dict[tuple[str, str], list[_Cell | None]] = {}
    for (regularizer, dataset), dataset_rows in chosen.groupby(["regularizer", "dataset"], sort=False):
        block = REGULARIZER_LABELS.get(regularizer, regularizer)
        name = PAPER_DATASETS.get(dataset, dataset)
        for model, model_rows in dataset_rows.groupby("model", sort=False, dropna=False):
            by_method = {row.method: row for row in model_rows.itertuples()}
            label = f"{name} ({model})" if several_models else name
            rows[(block, label)] = [_our_cell(by_method[method]) if method in by_method else None
                                    for method in methods]
        paper_row = [paper_cells.get((regularizer, dataset, method)) for method in methods]
        if any(paper_row):
            rows[(block, f"{name} (paper)")] = paper_row

    columns = {label: [cells[position] for cells in rows.values()] for position, label in enumerate(labels)}
    return pd.DataFrame(columns, index=pd.MultiIndex.from_tuples(list(rows)), dtype=object)


def _our_cell(row) -> _Cell:
    return _Cell(row.mean, row.std, row.bold, row.p_value < SIGNIFICANCE_LEVEL,
                 (row.n, row.expected) if row.n < row.expected else None)


def _caption(table: int, latex: bool) -> str:
    if latex:  # LaTeX numbers the table itself
        number, pm, star, dagger, percent = "", "$\\pm$", "$^{*}$", "$^\\dagger$", "\\%"
        p_below = f"$p < {SIGNIFICANCE_LEVEL}$"
    else:
        number, pm, star, dagger, percent = f"Table {table}: ", "±", "*", "†", "%"
        p_below = f"p < {SIGNIFICANCE_LEVEL}"
    subject = ("algorithmic regularizers" if table == 1 else
               "RIFLE and its ablations (RIFLE-A: re-initialization only, RIFLE-B: cyclic FC learning rate only)")
    return (
        f"{number}Top-1 test accuracy ({percent}) after the last epoch of {subject}, mean{pm}std over seeds. "
        f"For each method the hyper-parameter variant with the best mean is reported, as in the paper "
        f"(every variant is in results.csv). Bold: best mean of the row. "
        f"{star}: differs from Original by Welch's t-test, {p_below}. "
        f"{dagger}(n/e): only n of the e requested seeds are complete. "
        f"(paper) rows: the numbers printed in the paper (ResNet-50)."
    )


def _pipe_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]

    def line(cells):
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths)) + " |"

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(header), rule, *map(line, rows)])


def _markdown(grid: pd.DataFrame, table: int) -> str:
    rows, previous_block = [], None
    for (block, label), cells in zip(grid.index, grid.itertuples(index=False)):
        rows.append([block if block != previous_block else "", label, *map(_cell_markdown, cells)])
        previous_block = block
    body = _pipe_table(["Regularizer", "Dataset", *grid.columns], rows)
    return f"{_caption(table, latex=False)}\n\n{body}\n"


def _latex(grid: pd.DataFrame, table: int) -> str:
    text_grid = grid.apply(lambda column: column.map(_cell_latex))  # DataFrame.map needs pandas 2.1
    latex = text_grid.style.format_index(escape="latex", axis=0).to_latex(
        caption=_caption(table, latex=True),
        label=f"tab:rifle-bench-table{table}",
        position_float="centering",
        hrules=True,
        multirow_align="naive",  # no multirow package needed: the block label on its first row only
        clines="skip-last;data",
    )
    # Styler separates the blocks with \cline; booktabs wants \midrule, and no rule above \bottomrule.
    cline = f"\\cline{{1-{grid.shape[1] + 2}}}\n"
    return latex.replace(cline + "\\bottomrule", "\\bottomrule").replace(cline, "\\midrule\n")


def _write_atomic(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False,
                                     encoding="utf-8") as temporary:
        temporary.write(text)
    try:
        os.replace(temporary.name, path)
    except BaseException:
        os.unlink(temporary.name)
        raise


def write_report(sweep_dirs: list[Path], out_dir: Path | None = None,
                 expected_seeds: int | None = None) -> ReportSummary:
    """Write results.csv, table{1,2}.md and table{1,2}.tex for the runs below ``sweep_dirs``."""
    sweep_dirs = [Path(sweep_dir) for sweep_dir in sweep_dirs]
    if not sweep_dirs:
        raise ReportInputError("no sweep directory given")
    for sweep_dir in sweep_dirs:
        if not sweep_dir.is_dir():
            raise ReportInputError(f"{sweep_dir} does not exist or is not a directory")
    records = collect_runs(sweep_dirs)
    found = {record.run_dir.resolve() for record in records}
    for sweep_dir in sweep_dirs:
        if not any(run_dir.is_relative_to(sweep_dir.resolve()) for run_dir in found):
            raise ReportInputError(f"{sweep_dir} contains no runs (no result.json or .hydra/ below it)")
    out_dir = Path(out_dir) if out_dir is not None else sweep_dirs[0]
    out_dir.mkdir(parents=True, exist_ok=True)

    plan_cells = _plan_cells(sweep_dirs)
    statistics = _variant_statistics(records, _seed_expectation(records, plan_cells, expected_seeds))
    paper = _load_paper()
    results = _results_frame(statistics, paper)
    several_models = results["model"].nunique(dropna=False) > 1

    csv_columns = RESULT_COLUMNS.copy()
    if several_models:
        csv_columns.insert(csv_columns.index("dataset") + 1, "model")
    written = [out_dir / "results.csv"]
    _write_atomic(written[0], results[csv_columns].to_csv(index=False))

    markdown_tables = []
    for table in TABLE_METHODS:
        grid = _table_grid(results, paper, table, several_models)
        if grid is None:
            continue
        markdown_tables.append(_markdown(grid, table))
        for path, text in ((out_dir / f"table{table}.md", markdown_tables[-1]),
                           (out_dir / f"table{table}.tex", _latex(grid, table))):
            _write_atomic(path, text)
            written.append(path)

    counts = {status: sum(record.status == status for record in records) for status in (COMPLETE, FAILED, INCOMPLETE)}
    return ReportSummary(
        complete=counts[COMPLETE],
        failed=counts[FAILED],
        incomplete=counts[INCOMPLETE],
        missing=sum(cell["dir"].resolve() not in found for cell in plan_cells),
        failures=[(record.run_dir, record.error or "no reason recorded")
                  for record in records if record.status == FAILED],
        markdown="\n".join(markdown_tables),
        written=written,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rifle-bench-report",
        description="Build the RIFLE paper's Tables 1 and 2 (results.csv, table*.md, table*.tex) from sweep directories.",
    )
    parser.add_argument("sweep_dirs", nargs="+", type=Path, metavar="SWEEP_DIR")
    parser.add_argument("--out", type=Path, default=None, help="where to write the report (default: the first SWEEP_DIR)")
    parser.add_argument("--expected-seeds", type=int, default=None, metavar="N",
                        help="seeds each variant should have (default: plan.json, else every seed seen)")
    args = parser.parse_args(argv)
    if args.expected_seeds is not None and args.expected_seeds < 1:
        parser.error("--expected-seeds must be at least 1")
    try:
        summary = write_report(args.sweep_dirs, args.out, args.expected_seeds)
    except ReportInputError as error:
        parser.error(str(error))  # exits with status 2

    print(summary.markdown or "No complete runs yet.\n")
    print(f"complete: {summary.complete}  failed: {summary.failed}  "
          f"incomplete: {summary.incomplete}  missing: {summary.missing}")
    for run_dir, error in summary.failures:
        print(f"FAILED {run_dir}: {error}")
    print(f"report written to {summary.written[0].parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
