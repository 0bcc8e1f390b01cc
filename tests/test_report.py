import json
import math
import os
import statistics
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

from rifle_bench import report
from rifle_bench.report import RunRecord, collect_runs, main, variant_label, write_report


def write_run(sweep: Path, name: str, *, test_acc: float, dataset: str = "animals", regularizer: str = "l2",
              method: str = "original", variant: dict | None = None, seed: int = 0, model: str = "mobilenet_v2",
              status: str = "done", error: str | None = None, completed: bool = True) -> Path:
    run_dir = sweep / name
    (run_dir / ".hydra").mkdir(parents=True)
    result = {"status": status, "error": error, "dataset": dataset, "model": model, "regularizer": regularizer,
              "method": method, "variant": variant or {}, "seed": seed, "epochs": 40, "test_acc": test_acc,
              "n_train": 100, "n_test": 50, "wall_s": 1.0, "train_s": 0.8, "eval_s": 0.2, "versions": {}}
    (run_dir / "result.json").write_text(json.dumps(result))
    if completed:
        (run_dir / "COMPLETED").touch()
    return run_dir


def write_group(sweep: Path, accuracies: list[float], **fields) -> None:
    """One run per seed 0, 1, ... with the given accuracies, in directories named after the fields."""
    name = "_".join(variant_label(value) if key == "variant" else str(value) for key, value in fields.items())
    for seed, test_acc in enumerate(accuracies):
        write_run(sweep, f"{name}_{seed}", test_acc=test_acc, seed=seed, **fields)


def cell(accuracies: list[float]) -> str:
    return f"{statistics.mean(accuracies):.2f}±{statistics.stdev(accuracies):.2f}"


def markdown_row(markdown: str, dataset_label: str) -> list[str]:
    """Cells of the first Markdown table row whose Dataset column is ``dataset_label``."""
    for line in markdown.splitlines():
        cells = [text.strip() for text in line.strip().strip("|").split("|")]
        if len(cells) > 1 and cells[1] == dataset_label:
            return cells
    raise AssertionError(f"no row {dataset_label!r} in\n{markdown}")


def markdown_header(markdown: str) -> list[str]:
    line = next(line for line in markdown.splitlines() if line.startswith("| Regularizer"))
    return [text.strip() for text in line.strip().strip("|").split("|")]


ORIGINAL = [70.0, 71.0, 72.5]
DROPOUT_LOW = [70.0, 70.5, 71.5]  # p=0.1
DROPOUT_HIGH = [71.0, 72.0, 72.2]  # p=0.5: the best dropout variant
RIFLE = [80.0, 80.4, 80.9]  # clearly better than ORIGINAL


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    sweep = tmp_path / "sweep"
    write_group(sweep, ORIGINAL, method="original")
    write_group(sweep, DROPOUT_LOW, method="dropout", variant={"p": 0.1})
    write_group(sweep, DROPOUT_HIGH, method="dropout", variant={"p": 0.5})
    write_group(sweep, RIFLE, method="rifle", variant={"k": 3})
    return sweep


def results_row(results: pd.DataFrame, **where) -> pd.Series:
    selected = results
    for column, value in where.items():
        selected = selected[selected[column] == value]
    assert len(selected) == 1, selected
    return selected.iloc[0]


def test_variant_label():
    assert variant_label({}) == "-"
    assert variant_label({"p": 0.1}) == "p=0.1"
    assert variant_label({"k": 3, "alpha": 0.05}) == "alpha=0.05,k=3"


def test_means_stds_and_chosen_variant(sweep: Path):
    write_report([sweep])
    results = pd.read_csv(sweep / "results.csv")

    assert list(results.columns) == report.RESULT_COLUMNS
    for method, variant, accuracies, chosen in [
        ("original", "-", ORIGINAL, True),
        ("dropout", "p=0.1", DROPOUT_LOW, False),
        ("dropout", "p=0.5", DROPOUT_HIGH, True),
        ("rifle", "k=3", RIFLE, True),
    ]:
        row = results_row(results, table=1, method=method, variant=variant)
        assert row["n"] == len(accuracies)
        assert row["mean"] == pytest.approx(statistics.mean(accuracies), abs=1e-12)
        assert row["std"] == pytest.approx(statistics.stdev(accuracies), abs=1e-12)
        assert row["chosen"] == chosen
    # rifle is in both tables; rifle_a/rifle_b have no runs, so table 2 holds rifle only; no related method ran,
    # so there is no table 3
    assert sorted(results["table"]) == [1, 1, 1, 1, 2]
    assert results_row(results, table=2, method="rifle")["mean"] == pytest.approx(statistics.mean(RIFLE))


def test_tie_goes_to_first_variant_in_numeric_order(tmp_path: Path):
    write_group(tmp_path, [75.0, 76.0], method="cyclic_lr", variant={"n_cycles": 10})
    write_group(tmp_path, [76.0, 75.0], method="cyclic_lr", variant={"n_cycles": 2})
    write_report([tmp_path])
    results = pd.read_csv(tmp_path / "results.csv")
    assert list(results["variant"]) == ["n_cycles=2", "n_cycles=10"]
    assert list(results["chosen"]) == [True, False]


def test_markdown_cells_bold_and_welch_mark(sweep: Path):
    summary = write_report([sweep])
    markdown = (sweep / "table1.md").read_text()
    assert summary.markdown.startswith(markdown)

    assert markdown_header(markdown) == ["Regularizer", "Dataset", "Original", "Dropout", "RIFLE"]
    assert markdown_row(markdown, "animals") == [
        "L2", "animals", cell(ORIGINAL), cell(DROPOUT_HIGH), f"**{cell(RIFLE)}***"]
    # the marks follow the statistics: Welch's p of the two sides of each mark
    assert stats.ttest_ind(RIFLE, ORIGINAL, equal_var=False).pvalue < 0.05
    assert stats.ttest_ind(DROPOUT_HIGH, ORIGINAL, equal_var=False).pvalue > 0.05
    assert "Welch" in markdown.splitlines()[0] and "best mean" in markdown.splitlines()[0]


def test_bold_is_per_row_and_regularizer_block(tmp_path: Path):
    write_group(tmp_path, [70.0, 71.0], regularizer="l2", method="original")
    write_group(tmp_path, [60.0, 61.0], regularizer="l2", method="dropout", variant={"p": 0.1})
    write_group(tmp_path, [50.0, 51.0], regularizer="l2sp", method="original")
    write_group(tmp_path, [55.0, 56.0], regularizer="l2sp", method="dropout", variant={"p": 0.1})
    markdown = write_report([tmp_path]).markdown
    rows = [[text.strip() for text in line.split("|")[1:-1]] for line in markdown.splitlines() if "animals" in line]
    assert rows == [["L2", "animals", "**70.50±0.71**", "60.50±0.71*"],
                    ["L2-SP", "animals", "50.50±0.71", "**55.50±0.71***"]]


def test_dagger_when_fewer_seeds_than_seen(tmp_path: Path):
    write_group(tmp_path, ORIGINAL, method="original")
    write_group(tmp_path, RIFLE[:2], method="rifle", variant={"k": 1})
    markdown = write_report([tmp_path]).markdown
    assert markdown_row(markdown, "animals")[2:] == [cell(ORIGINAL), f"**{cell(RIFLE[:2])}***†(2/3)"]
    assert "†(n/e)" in markdown

    forced = write_report([tmp_path], expected_seeds=5).markdown
    assert markdown_row(forced, "animals")[2:] == [f"{cell(ORIGINAL)}†(3/5)", f"**{cell(RIFLE[:2])}***†(2/5)"]


def test_single_seed_has_no_std_and_no_welch_mark(tmp_path: Path):
    write_group(tmp_path, ORIGINAL, method="original")
    write_group(tmp_path, [90.0], method="rifle", variant={"k": 1})
    summary = write_report([tmp_path])
    assert markdown_row(summary.markdown, "animals")[3] == "**90.00±–**†(1/3)"
    assert math.isnan(pd.read_csv(tmp_path / "results.csv").query("method == 'rifle'")["std"].iloc[0])
    assert "--" in (tmp_path / "table1.tex").read_text()


def test_paper_numbers_and_delta(tmp_path: Path):
    write_group(tmp_path, [80.0, 81.0, 82.5], dataset="cub", method="rifle", variant={"k": 3})
    write_group(tmp_path, [79.0, 80.0], dataset="cub", regularizer="l2sp", method="rifle_b", variant={"k": 1})
    write_group(tmp_path, [60.0, 61.0], dataset="animals", method="rifle", variant={"k": 3})
    write_report([tmp_path])
    results = pd.read_csv(tmp_path / "results.csv")

    mean = statistics.mean([80.0, 81.0, 82.5])
    for table in (1, 2):
        row = results_row(results, table=table, dataset="cub", regularizer="l2", method="rifle")
        assert (row["paper_mean"], row["paper_std"]) == (81.13, 0.23)
        assert row["delta"] == pytest.approx(mean - 81.13)
    rifle_b = results_row(results, table=2, dataset="cub", regularizer="l2sp", method="rifle_b")
    assert (rifle_b["paper_mean"], rifle_b["paper_std"]) == (80.99, 0.31)
    assert results_row(results, table=1, dataset="animals")[["paper_mean", "delta"]].isna().all()

    table2 = (tmp_path / "table2.md").read_text()
    assert markdown_header(table2) == ["Regularizer", "Dataset", "RIFLE", "RIFLE-B"]
    assert markdown_row(table2, "CUB-200-2011 (paper)") == ["", "CUB-200-2011 (paper)", "81.13±0.23", "79.84±0.28"]
    # paper datasets come first, in the paper's order; the paper row follows our row
    datasets = [line.split("|")[2].strip() for line in table2.splitlines() if line.startswith("| ")][1:]
    assert datasets == ["CUB-200-2011", "CUB-200-2011 (paper)", "animals", "CUB-200-2011", "CUB-200-2011 (paper)"]
    assert "(paper)" not in "".join(line for line in table2.splitlines() if "animals" in line)


def test_failed_and_incomplete_runs(sweep: Path):
    write_run(sweep, "failed", test_acc=0.0, method="original", seed=0, status="failed", error="CUDA out of memory")
    write_run(sweep, "no_marker", test_acc=0.0, method="original", seed=1, completed=False)
    (sweep / "nested" / "started" / ".hydra").mkdir(parents=True)
    (sweep / "half_written").mkdir()
    (sweep / "half_written" / "result.json").write_text('{"status": "do')

    summary = write_report([sweep])

    assert (summary.complete, summary.failed, summary.incomplete, summary.missing) == (12, 1, 3, 0)
    assert summary.failures == [(sweep / "failed", "CUDA out of memory")]
    results = pd.read_csv(sweep / "results.csv")
    original = results_row(results, method="original")
    assert (original["n"], original["mean"]) == (3, pytest.approx(statistics.mean(ORIGINAL)))

    records = {record.run_dir.name: record for record in collect_runs([sweep])}
    assert isinstance(records["failed"], RunRecord)
    assert records["started"].status == report.INCOMPLETE and records["started"].test_acc is None
    assert records["no_marker"].status == report.INCOMPLETE
    assert records["failed"].status == report.FAILED
    assert records["original_0"].status == report.COMPLETE and records["original_0"].test_acc == ORIGINAL[0]


def test_plan_defines_expected_seeds_and_missing_cells(tmp_path: Path):
    write_group(tmp_path, [70.0, 72.0], method="original")
    (tmp_path / "queued" / ".hydra").mkdir(parents=True)
    cells = [{"dir": f"original_{seed}", "dataset": "animals", "regularizer": "l2", "method": "original",
              "variant": {}, "seed": seed} for seed in range(2)]
    cells += [{"dir": name, "dataset": "animals", "regularizer": "l2", "method": "original", "variant": {},
               "seed": seed} for name, seed in [("queued", 2), ("never_started", 3)]]
    (tmp_path / "plan.json").write_text(json.dumps({"cells": cells}))

    summary = write_report([tmp_path])

    assert (summary.complete, summary.incomplete, summary.missing) == (2, 1, 1)
    assert markdown_row(summary.markdown, "animals")[2] == "**71.00±1.41**†(2/4)"


def test_several_sweep_dirs_and_out_dir(tmp_path: Path):
    first, second, out = tmp_path / "a", tmp_path / "b", tmp_path / "report"
    write_group(first, ORIGINAL[:2], method="original")
    write_run(second, "late_seed", test_acc=ORIGINAL[2], method="original", seed=2)

    summary = write_report([first, second, first], out_dir=out)  # a repeated sweep counts once

    assert summary.complete == 3
    row = results_row(pd.read_csv(out / "results.csv"), method="original")
    assert (row["n"], row["mean"]) == (3, pytest.approx(statistics.mean(ORIGINAL)))
    assert not (first / "results.csv").exists()
    write_report([first, second])
    assert (first / "results.csv").exists()


def test_several_models_get_their_own_rows(tmp_path: Path):
    write_group(tmp_path, [70.0, 71.0], method="original", model="mobilenet_v2", dataset="cub")
    write_group(tmp_path, [80.0, 81.0], method="original", model="resnet50", dataset="cub")
    summary = write_report([tmp_path])
    results = pd.read_csv(tmp_path / "results.csv")
    assert list(results["model"]) == ["mobilenet_v2", "resnet50"]
    assert results.columns[3] == "model"
    assert markdown_row(summary.markdown, "CUB-200-2011 (resnet50)")[2] == "**80.50±0.71**"
    assert markdown_row(summary.markdown, "CUB-200-2011 (paper)")[2] == "80.45±0.35"
    assert "CUB-200-2011 (mobilenet\\_v2)" in (tmp_path / "table1.tex").read_text()


def test_a_table_whose_runs_mix_numerics_says_so(tmp_path: Path):
    sweep = tmp_path / "sweep"
    write_group(sweep, [80.0, 81.0], method="original")
    write_group(sweep, [82.0, 83.0], method="rifle", variant={"k": 3})
    assert "Mixed numerics" not in (write_report([sweep]), (sweep / "table1.md").read_text())[1]
    for run_dir in sweep.glob("rifle*"):
        result = json.loads((run_dir / "result.json").read_text())
        (run_dir / "result.json").write_text(json.dumps(result | {"precision": "bf16", "tf32": True}))
    write_report([sweep])
    for table in ("table1.md", "table1.tex"):
        assert "Mixed numerics: its runs trained in bf16+TF32 (2 runs), unrecorded (2 runs)" in (sweep / table).read_text()
    assert "Mixed numerics" not in (sweep / "table2.md").read_text()  # RIFLE's runs alone are all bf16+TF32


def test_latex_is_booktabs_and_ascii(sweep: Path):
    write_group(sweep, RIFLE[:2], dataset="cub", method="rifle", variant={"k": 3})
    write_report([sweep])
    latex = (sweep / "table1.tex").read_text()
    for command in ("\\begin{table}", "\\caption{", "\\label{tab:rifle-bench-table1}", "\\toprule",
                    "\\midrule", "\\bottomrule", "\\end{table}"):
        assert command in latex
    assert "\\cline" not in latex
    assert latex.isascii()
    assert f"\\textbf{{{statistics.mean(RIFLE):.2f}$\\pm${statistics.stdev(RIFLE):.2f}}}$^{{*}}$" in latex
    assert "$^\\dagger$(2/3)" in latex


def test_outputs_written_and_empty_table_skipped(sweep: Path):
    summary = write_report([sweep])
    names = {"results.csv", "table1.md", "table1.tex", "table2.md", "table2.tex",
             "figure_table1.png", "figure_table1.pdf", "figure_table2.png", "figure_table2.pdf"}
    assert {path.name for path in summary.written} == names
    assert not [path for path in sweep.iterdir() if path.name.startswith(".")]  # no temporary file left

    only_table1 = sweep.parent / "only_table1"
    write_group(only_table1, ORIGINAL, method="original")
    written = {path.name for path in write_report([only_table1]).written}
    assert written == {"results.csv", "table1.md", "table1.tex", "figure_table1.png", "figure_table1.pdf"}
    assert not (only_table1 / "table2.md").exists()


def test_write_is_atomic(sweep: Path, monkeypatch):
    (sweep / "results.csv").write_text("old")

    def crash(source, destination):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        write_report([sweep])
    assert (sweep / "results.csv").read_text() == "old"
    assert not [path for path in sweep.iterdir() if path.name.startswith(".")]


def test_cli_prints_tables_counts_and_failures(sweep: Path, capsys):
    write_run(sweep, "failed", test_acc=0.0, status="failed", error="dataset root not found")
    out = sweep.parent / "out"

    assert main([str(sweep), "--out", str(out), "--expected-seeds", "3"]) == 0

    printed = capsys.readouterr().out
    assert printed.index("| Regularizer") < printed.index("complete: 12  failed: 1  incomplete: 0  missing: 0")
    assert f"FAILED {sweep / 'failed'}: dataset root not found" in printed
    assert (out / "table1.md").exists()


def test_cli_exit_code_2_for_missing_or_empty_dirs(tmp_path: Path, sweep: Path, capsys):
    with pytest.raises(SystemExit) as missing:
        main([str(sweep), str(tmp_path / "nope")])
    assert missing.value.code == 2
    assert "does not exist" in capsys.readouterr().err

    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as empty:
        main([str(tmp_path / "empty")])
    assert empty.value.code == 2
    assert "contains no runs" in capsys.readouterr().err


def test_only_failed_runs_still_reports(tmp_path: Path, capsys):
    write_run(tmp_path, "failed", test_acc=0.0, status="failed", error="boom")
    assert main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "complete: 0  failed: 1  incomplete: 0  missing: 0" in printed
    assert list(pd.read_csv(tmp_path / "results.csv").columns) == report.RESULT_COLUMNS
