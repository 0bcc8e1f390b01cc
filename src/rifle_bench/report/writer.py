"""write_report: read the runs below some sweep directories, write results.csv and the tables of each selection rule."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from rifle_bench.report import figures, render
from rifle_bench.report.grouping import distinct_runs
from rifle_bench.report.records import COMPLETE, FAILED, INCOMPLETE, collect_runs, plan_cells
from rifle_bench.report.selection import SELECTIONS
from rifle_bench.report.stats import seed_expectation, variant_statistics, welch_p_values
from rifle_bench.report.tables import (TABLES, best_grid, caption, load_paper, optimism_caption, optimism_frame,
                                       optimism_grid, result_columns, results_frame, variants_grid)
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
    unavailable: dict[str, str] = field(default_factory=dict)  # selection rule -> why it could not apply
    duplicates: list[Path] = field(default_factory=list)  # runs of an experiment and seed already counted
    optimism: pd.DataFrame | None = None  # per row and method: test accuracy under `test` minus under `val`


class ReportInputError(ValueError):
    """A sweep directory that does not exist or holds no run, or an unknown selection rule."""


def parse_selections(text: str) -> list[str]:
    """``"test,val"`` -> ``["test", "val"]``, checked against the known rules."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SELECTIONS]
    if unknown or not names:
        raise ReportInputError(f"--selection={text}: unknown selection rule {', '.join(unknown) or '(none given)'}; "
                               f"expected a comma-separated list of {', '.join(SELECTIONS)}")
    return list(dict.fromkeys(names))


def write_report(sweep_dirs: list[Path], out_dir: Path | None = None, expected_seeds: int | None = None,
                 selections: list[str] | None = None) -> ReportSummary:
    """Write results.csv and, per selection rule, table{N}[_rule].md/.tex for the runs below ``sweep_dirs``.

    ``selections`` (names in ``selection.SELECTIONS``) defaults to ``test``, plus ``val`` when some run has a
    validation accuracy. The ``test`` tables are table{N}.md/.tex; with both ``test`` and ``val``, optimism.md/.tex
    compares them. A rule that cannot apply (``val`` without validation numbers) is reported, not an error.
    """
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
    runs, duplicates = distinct_runs(records)
    variants = variant_statistics(runs, seed_expectation(records, cells, expected_seeds))
    unavailable = {name: reason for name, selection in SELECTIONS.items()
                   if (reason := selection.unavailable(variants)) is not None}
    for name, selection in SELECTIONS.items():
        chosen = selection.choose(variants) if name not in unavailable else pd.Series(False, index=variants.index)
        variants[f"chosen_{name}"] = chosen
        variants[f"p_value_{name}"] = welch_p_values(variants, chosen)
    if selections is None:
        selections = ["test"] + (["val"] if "val" not in unavailable else [])
    requested = [SELECTIONS[name] for name in selections]

    paper = load_paper()
    results = results_frame(variants.drop(columns="accuracies"), paper)
    written = [out_dir / "results.csv"]
    write_atomic(written[0], _results_csv(results, val_available="val" not in unavailable))

    settings = results["setting"].ne("").any()
    markdown_parts = []
    for selection in requested:
        if selection.name in unavailable:
            markdown_parts.append(f"Selection {selection.name} unavailable: {unavailable[selection.name]}.\n")
            continue
        for table in TABLES:
            grid = (variants_grid(results, table, selection) if selection.reports_variants
                    else best_grid(results, paper, table, selection))
            if grid is None:
                continue
            index_names = ["Regularizer", "Dataset", "Method", "Variant"][:grid.index.nlevels]
            stem = f"table{table.number}" + ("" if selection.name == "test" else f"_{selection.name}")
            mixed = mixed_numerics(runs, table)
            markdown_parts.append(render.markdown(grid, index_names, caption(
                table, selection, render.MARKDOWN, numbered=True, settings=settings) + mixed))
            latex = render.latex(grid, caption(table, selection, render.LATEX, numbered=False, settings=settings)
                                 + mixed, label=f"tab:rifle-bench-{stem.replace('_', '-')}")
            written += _write_pair(out_dir / stem, markdown_parts[-1], latex)

    optimism = None
    names = [selection.name for selection in requested]
    if "test" in names and "val" in names and "val" not in unavailable:
        optimism = optimism_frame(variants, "test", "val")
        grid = optimism_grid(optimism)
        if grid is not None:
            test, val = SELECTIONS["test"], SELECTIONS["val"]
            markdown_parts.append(render.markdown(grid, ["Regularizer", "Dataset"],
                                                  optimism_caption(render.MARKDOWN, True, test, val)))
            latex = render.latex(grid, optimism_caption(render.LATEX, False, test, val),
                                 label="tab:rifle-bench-optimism")
            written += _write_pair(out_dir / "optimism", markdown_parts[-1], latex)

    written += figures.write_figures(runs, results, "chosen_test", out_dir)
    counts = {status: sum(record.status == status for record in records) for status in (COMPLETE, FAILED, INCOMPLETE)}
    return ReportSummary(
        complete=counts[COMPLETE],
        failed=counts[FAILED],
        incomplete=counts[INCOMPLETE],
        missing=sum(cell["dir"].resolve() not in found for cell in cells),
        failures=[(record.run_dir, record.error or "no reason recorded")
                  for record in records if record.status == FAILED],
        markdown="\n".join(markdown_parts),
        written=written,
        unavailable={name: reason for name, reason in unavailable.items() if name in names},
        duplicates=[record.run_dir for record in duplicates],
        optimism=optimism,
    )


def mixed_numerics(runs: pd.DataFrame, table) -> str:
    """A footnote for a table whose cells were trained in different arithmetic (fp32, bf16 autocast, TF32)."""
    counts = runs[runs["method"].isin(table.methods)]["numerics"].fillna("unrecorded").value_counts()
    if len(counts) < 2:
        return ""
    listed = ", ".join(f"{kind} ({count} runs)" for kind, count in sorted(counts.items()))
    return (f" Mixed numerics: its runs trained in {listed}; the paper's are fp32 without TF32 "
            f"(trainer=paper), so differences may come from precision, not only from the methods.")


def _results_csv(results: pd.DataFrame, val_available: bool) -> str:
    results = results.assign(chosen=results["chosen_test"],
                             chosen_val=results["chosen_val"] if val_available else pd.NA)
    return results[result_columns(results)].to_csv(index=False)


def _write_pair(stem: Path, markdown: str, latex: str) -> list[Path]:
    paths = [stem.with_suffix(".md"), stem.with_suffix(".tex")]
    for path, text in zip(paths, (markdown, latex)):
        write_atomic(path, text)
    return paths
