"""write_report: read the runs below some sweep directories and write results.csv and the tables."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rifle_bench.report import render
from rifle_bench.report.records import COMPLETE, FAILED, INCOMPLETE, collect_runs, plan_cells
from rifle_bench.report.selection import SELECTIONS
from rifle_bench.report.stats import seed_expectation, variant_statistics, welch_p_values
from rifle_bench.report.tables import RESULT_COLUMNS, TABLES, caption, load_paper, results_frame, table_grid
from rifle_bench.results import write_atomic


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

    cells = plan_cells(sweep_dirs)
    variants = variant_statistics(records, seed_expectation(records, cells, expected_seeds))
    selection = SELECTIONS["test"]
    variants["chosen"] = selection.choose(variants)
    variants["p_value"] = welch_p_values(variants, variants["chosen"])
    paper = load_paper()
    results = results_frame(variants.drop(columns="accuracies"), paper)
    several_models = results["model"].nunique(dropna=False) > 1

    csv_columns = RESULT_COLUMNS.copy()
    if several_models:
        csv_columns.insert(csv_columns.index("dataset") + 1, "model")
    written = [out_dir / "results.csv"]
    write_atomic(written[0], results[csv_columns].to_csv(index=False))

    markdown_tables = []
    for table in TABLES:
        grid = table_grid(results, paper, table, several_models)
        if grid is None:
            continue
        markdown_tables.append(render.markdown(
            grid, ["Regularizer", "Dataset"], caption(table, selection, render.MARKDOWN, numbered=True)))
        latex = render.latex(grid, caption(table, selection, render.LATEX, numbered=False),
                             label=f"tab:rifle-bench-table{table.number}")
        for path, text in ((out_dir / f"table{table.number}.md", markdown_tables[-1]),
                           (out_dir / f"table{table.number}.tex", latex)):
            write_atomic(path, text)
            written.append(path)

    counts = {status: sum(record.status == status for record in records) for status in (COMPLETE, FAILED, INCOMPLETE)}
    return ReportSummary(
        complete=counts[COMPLETE],
        failed=counts[FAILED],
        incomplete=counts[INCOMPLETE],
        missing=sum(cell["dir"].resolve() not in found for cell in cells),
        failures=[(record.run_dir, record.error or "no reason recorded")
                  for record in records if record.status == FAILED],
        markdown="\n".join(markdown_tables),
        written=written,
    )
