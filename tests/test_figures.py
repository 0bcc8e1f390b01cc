"""The report's figures from hand-made run directories: the files exist and each series comes from its own runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest

from rifle_bench.report import collect_runs, main
from rifle_bench.report.figures import plot_grad_norms, plot_learning_curves, plot_table_bars, read_metrics
from rifle_bench.report.grouping import distinct_runs

EPOCHS = 4
# Per (dataset, method): an offset that makes every run's numbers its own, so a series mixing runs shows.
OFFSETS = {("animals", "original"): 0.0, ("animals", "rifle_a"): 10.0, ("cub", "original"): 20.0,
           ("cub", "rifle_a"): 30.0}
VARIANTS = {"original": {}, "rifle_a": {"k": 1}}


def top1_train(dataset, method, seed, epoch):
    return OFFSETS[dataset, method] + seed + epoch


def top1_test(dataset, method, seed, epoch):
    return OFFSETS[dataset, method] + 40 + 2 * seed + epoch


def grad_norm(dataset, method, seed, epoch, stage):
    return (OFFSETS[dataset, method] + 1) * stage * 0.001 * (seed + 1) / epoch


def write_run(sweep: Path, dataset: str, method: str, seed: int, *, every_epoch: bool = True,
              grad_norms: bool = True) -> Path:
    run_dir = sweep / f"{dataset}_{method}_{seed}"
    (run_dir / ".hydra").mkdir(parents=True)
    rows = []
    for epoch in range(1, EPOCHS + 1):
        row = {"epoch": epoch, "head_reinit": int(method == "rifle_a" and epoch == 3),
               "train_acc": top1_train(dataset, method, seed, epoch),
               "test_acc": top1_test(dataset, method, seed, epoch) if every_epoch or epoch == EPOCHS else ""}
        if grad_norms:
            row |= {f"grad_norm_layer{stage}": grad_norm(dataset, method, seed, epoch, stage) for stage in (1, 2)}
        rows.append(row)
    with open(run_dir / "metrics.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result = {"status": "done", "error": None, "dataset": dataset, "model": "resnet50", "regularizer": "l2",
              "method": method, "variant": VARIANTS[method], "seed": seed, "epochs": EPOCHS,
              "test_acc": rows[-1]["test_acc"], "n_train": 10, "n_test": 10, "versions": {}}
    (run_dir / "result.json").write_text(json.dumps(result))
    (run_dir / "COMPLETED").touch()
    return run_dir


@pytest.fixture
def sweep(tmp_path):
    sweep = tmp_path / "sweep"
    for dataset, method in OFFSETS:
        for seed in range(3):
            write_run(sweep, dataset, method, seed)
    return sweep


def metrics_of(sweep: Path) -> pd.DataFrame:
    return read_metrics(distinct_runs(collect_runs([sweep]))[0])


def series(frame: pd.DataFrame, **where) -> pd.DataFrame:
    for column, value in where.items():
        frame = frame[frame[column] == value]
    return frame.sort_values("epoch")


def test_the_report_command_draws_every_figure_beside_the_tables(sweep, capsys):
    assert main([str(sweep)]) == 0
    for stem in ("figure_curves", "figure_grad_norms", "figure_table1", "figure_table2"):
        png, pdf = sweep / f"{stem}.png", sweep / f"{stem}.pdf"
        assert png.read_bytes().startswith(b"\x89PNG") and pdf.read_bytes().startswith(b"%PDF"), stem
    assert (sweep / "table1.md").exists()


def test_learning_curves_are_each_methods_mean_over_its_own_seeds(sweep, tmp_path):
    curves = plot_learning_curves(metrics_of(sweep), tmp_path / "curves")
    assert (tmp_path / "curves.png").exists() and (tmp_path / "curves.pdf").exists()
    assert set(zip(curves["dataset"], curves["method"])) == set(OFFSETS)
    for dataset, method in OFFSETS:
        runs = tuple(sorted(str(sweep / f"{dataset}_{method}_{seed}") for seed in range(3)))
        for split, accuracy in (("train", top1_train), ("test", top1_test)):
            line = series(curves, dataset=dataset, method=method, split=split)
            assert list(line["epoch"]) == [1, 2, 3, 4]
            # seeds 0, 1, 2: the mean is seed 1's value; the std is the seeds' spread
            assert list(line["mean"]) == [accuracy(dataset, method, 1, epoch) for epoch in range(1, 5)]
            spread = pd.Series([accuracy(dataset, method, seed, 1) for seed in range(3)]).std()
            assert line["std"].tolist() == pytest.approx([spread] * 4)
            assert set(line["runs"]) == {runs} and set(line["n"]) == {3}


def test_no_curves_without_per_epoch_test_points(tmp_path):
    sweep = tmp_path / "sweep"
    for seed in range(2):
        write_run(sweep, "animals", "original", seed, every_epoch=False, grad_norms=False)
    metrics = metrics_of(sweep)
    assert plot_learning_curves(metrics, tmp_path / "curves") is None
    assert plot_grad_norms(metrics, tmp_path / "norms") is None
    assert not list(tmp_path.glob("curves.*")) and not list(tmp_path.glob("norms.*"))


def test_grad_norm_panels_plot_each_stage_of_each_method(sweep, tmp_path):
    norms = plot_grad_norms(metrics_of(sweep), tmp_path / "norms")
    assert (tmp_path / "norms.png").exists()
    assert set(norms["stage"]) == {"layer1", "layer2"}
    for dataset, method in OFFSETS:
        for stage in (1, 2):
            line = series(norms, dataset=dataset, method=method, stage=f"layer{stage}")
            expected = [sum(grad_norm(dataset, method, seed, epoch, stage) for seed in range(3)) / 3
                        for epoch in range(1, 5)]
            assert line["mean"].tolist() == pytest.approx(expected)
            assert set(line["runs"]) == {tuple(sorted(str(sweep / f"{dataset}_{method}_{s}") for s in range(3)))}


def test_table_bars_show_the_reported_variant_and_the_papers_number(sweep, tmp_path):
    main([str(sweep)])
    results = pd.read_csv(sweep / "results.csv")
    bars = plot_table_bars(results[results["table"] == 2], "chosen", "Table 2", tmp_path / "bars")
    assert (tmp_path / "bars.png").exists()
    assert list(bars["method"]) == ["rifle_a", "rifle_a"]  # Table 2 holds RIFLE-A only in this sweep
    cub = bars[bars["dataset"] == "cub"].iloc[0]
    assert cub["mean"] == pytest.approx(top1_test("cub", "rifle_a", 1, EPOCHS))
    paper = pd.read_csv(Path(__file__).parents[1] / "src/rifle_bench/paper/paper_table2.csv")
    printed = paper[(paper["dataset"] == "cub") & (paper["method"] == "rifle_a") & (paper["regularizer"] == "l2")]
    assert cub["paper_mean"] == pytest.approx(printed["mean"].item())
    assert pd.isna(bars[bars["dataset"] == "animals"].iloc[0]["paper_mean"])  # the paper has no animals row
