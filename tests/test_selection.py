"""Selection rules (test, val, none), the optimism table, and seeds pooled only within one training fingerprint:
all on hand-made result files, no training."""

import json
import statistics
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from rifle_bench import results, sweep, train
from rifle_bench.report import main, write_report

SELECTION_RULE = {"test": "best mean test accuracy", "val": "best mean validation accuracy"}


def write_run(sweep_dir: Path, *, test_acc: float, val_acc: float | None = None, method: str = "original",
              variant: dict | None = None, seed: int = 0, epochs: int = 4, eval_every: int = 0,
              method_options: dict | None = None, name: str | None = None) -> Path:
    """A finished run as train.run leaves it: result.json with its whole config, then COMPLETED."""
    variant = variant or {}
    val_fraction = 0.1 if val_acc is not None else 0.0
    config = {"dataset": {"name": "animals", "root": "/data/animals", "val_fraction": val_fraction},
              "model": {"name": "mobilenet_v2", "weights": "IMAGENET1K_V1"},
              "regularizer": {"name": "l2", "weight_decay": 1e-4},
              "method": {"name": method, **variant, **(method_options or {}), "grid": {key: [] for key in variant}},
              "trainer": {"epochs": epochs, "lr": 0.01, "eval_every": eval_every, "workers": None},
              "seed": seed, "paths": {"cache": "/tmp/cache"}}
    options = {**variant, **(method_options or {})}
    name = name or "_".join([method, *(f"{key}={value}" for key, value in options.items()),
                             f"e{epochs}", f"every{eval_every}", "val" if val_acc is not None else "noval",
                             f"seed{seed}"])
    run_dir = sweep_dir / name
    (run_dir / ".hydra").mkdir(parents=True)
    result = {"status": "done", "error": None, "dataset": "animals", "model": "mobilenet_v2", "regularizer": "l2",
              "method": method, "variant": variant, "seed": seed, "epochs": epochs, "test_acc": test_acc,
              "val_acc": val_acc, "n_train": 90, "n_test": 50, "config": config,
              "fingerprint": results.experiment_id(config)}
    (run_dir / "result.json").write_text(json.dumps(result))
    (run_dir / "COMPLETED").touch()
    return run_dir


def write_seeds(sweep_dir: Path, test_accs: list[float], val_accs: list[float] | None = None, **fields) -> None:
    for seed, test_acc in enumerate(test_accs):
        write_run(sweep_dir, test_acc=test_acc, val_acc=val_accs[seed] if val_accs else None, seed=seed, **fields)


def table_cells(markdown: str) -> dict[tuple[str, str], str]:
    """{(row label, column): cell} of a Markdown table with index columns Regularizer, Dataset."""
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("| ").split("|")]
    cells = {}
    for line in lines[1:]:
        row = [cell.strip() for cell in line.strip().strip("|").split("|")]
        cells |= {(row[1], column): value for column, value in zip(header[2:], row[2:])}
    return cells


def mean_of(cell: str) -> float:
    return float(cell.strip("*").split("±")[0])


ORIGINAL = dict(test=[70.0, 71.0, 72.0], val=[68.0, 69.0, 70.0])
# p=0.1 wins on the test set, p=0.5 on the validation split.
DROPOUT_LOW = dict(test=[75.0, 76.0, 77.0], val=[60.0, 61.0, 62.0])
DROPOUT_HIGH = dict(test=[72.0, 73.0, 74.5], val=[65.0, 66.0, 67.0])
RIFLE = dict(test=[74.0, 75.0, 76.0], val=[71.0, 72.0, 73.0])  # one variant only: the same under both rules


@pytest.fixture
def val_sweep(tmp_path: Path) -> Path:
    sweep_dir = tmp_path / "sweep"
    write_seeds(sweep_dir, ORIGINAL["test"], ORIGINAL["val"], method="original")
    write_seeds(sweep_dir, DROPOUT_HIGH["test"], DROPOUT_HIGH["val"], method="dropout", variant={"p": 0.5})
    write_seeds(sweep_dir, DROPOUT_LOW["test"], DROPOUT_LOW["val"], method="dropout", variant={"p": 0.1})
    write_seeds(sweep_dir, RIFLE["test"], RIFLE["val"], method="rifle", variant={"k": 3})
    return sweep_dir


def test_val_picks_the_best_validation_mean_even_where_another_variant_tests_better(val_sweep: Path, capsys):
    assert main([str(val_sweep), "--selection", "test,val"]) == 0
    printed = capsys.readouterr().out

    test_table, val_table = (val_sweep / "table1.md").read_text(), (val_sweep / "table1_val.md").read_text()
    for table, rule in ((test_table, "test"), (val_table, "val")):
        assert table.startswith(f"Table 1, selection {rule}: the variant with the {SELECTION_RULE[rule]}")
        assert table in printed
    test_cells, val_cells = table_cells(test_table), table_cells(val_table)
    assert mean_of(test_cells[("animals", "Dropout")]) == round(statistics.mean(DROPOUT_LOW["test"]), 2)
    # the validation winner is reported with its test accuracy
    assert mean_of(val_cells[("animals", "Dropout")]) == round(statistics.mean(DROPOUT_HIGH["test"]), 2)
    assert val_cells[("animals", "Original")] == test_cells[("animals", "Original")]

    table = pd.read_csv(val_sweep / "results.csv").query("table == 1 and method == 'dropout'")
    assert table.set_index("variant")[["chosen", "chosen_val"]].to_dict("index") == {
        "p=0.1": {"chosen": True, "chosen_val": False}, "p=0.5": {"chosen": False, "chosen_val": True}}
    assert table.set_index("variant")["val_mean"]["p=0.5"] == pytest.approx(statistics.mean(DROPOUT_HIGH["val"]))


def test_optimism_is_the_difference_of_the_two_tables(val_sweep: Path):
    summary = write_report([val_sweep], selections=["test", "val"])

    optimism = table_cells((val_sweep / "optimism.md").read_text())
    assert optimism == {("animals", "Original"): "+0.00", ("animals", "Dropout"): "+2.83",
                        ("animals", "RIFLE"): "+0.00"}
    test_cells = table_cells((val_sweep / "table1.md").read_text())
    val_cells = table_cells((val_sweep / "table1_val.md").read_text())
    for (row, column), text in optimism.items():
        assert float(text) == pytest.approx(mean_of(test_cells[(row, column)]) - mean_of(val_cells[(row, column)]),
                                            abs=0.011)
    dropout = summary.optimism.set_index("method")["optimism"]["dropout"]
    assert dropout == pytest.approx(statistics.mean(DROPOUT_LOW["test"]) - statistics.mean(DROPOUT_HIGH["test"]))
    assert {"optimism.md", "optimism.tex", "table1_val.tex"} <= {path.name for path in summary.written}


def test_ties_go_to_the_first_grid_value(tmp_path: Path):
    # equal validation and test means; the larger value is written first, and k=10 sorts after k=2 by value
    write_seeds(tmp_path, [80.0, 82.0], [70.0, 72.0], method="rifle", variant={"k": 10})
    write_seeds(tmp_path, [82.0, 80.0], [72.0, 70.0], method="rifle", variant={"k": 2})
    write_seeds(tmp_path, [81.0, 81.0], [71.0, 71.0], method="rifle", variant={"k": 3})
    write_report([tmp_path], selections=["test", "val"])
    chosen = pd.read_csv(tmp_path / "results.csv").query("table == 1").set_index("variant")
    assert list(chosen.index) == ["k=2", "k=3", "k=10"]
    assert list(chosen["chosen"]) == [True, False, False]
    assert list(chosen["chosen_val"]) == [True, False, False]


def test_none_reports_every_variant(val_sweep: Path):
    summary = write_report([val_sweep], selections=["none"])
    table = (val_sweep / "table1_none.md").read_text()
    assert table.startswith("Table 1, selection none: every variant")
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in table.splitlines()
            if line.startswith("| ") and "Regularizer" not in line]
    assert [row[2:4] for row in rows] == [["Original", "-"], ["Dropout", "p=0.1"], ["", "p=0.5"], ["RIFLE", "k=3"]]
    assert [mean_of(row[4]) for row in rows] == [round(statistics.mean(accs["test"]), 2)
                                                 for accs in (ORIGINAL, DROPOUT_LOW, DROPOUT_HIGH, RIFLE)]
    assert mean_of(rows[2][5]) == round(statistics.mean(DROPOUT_HIGH["val"]), 2)
    assert not (val_sweep / "table1.md").exists() and not (val_sweep / "optimism.md").exists()
    assert "\\cline" not in (val_sweep / "table1_none.tex").read_text()
    assert summary.unavailable == {}


def test_without_validation_numbers_val_is_unavailable_not_an_error(tmp_path: Path, capsys):
    write_seeds(tmp_path, ORIGINAL["test"], method="original")
    write_seeds(tmp_path, DROPOUT_LOW["test"], method="dropout", variant={"p": 0.1})

    assert main([str(tmp_path), "--selection", "test,val"]) == 0
    printed = capsys.readouterr().out
    assert "Selection val unavailable: no complete run has a validation accuracy; train with " \
           "dataset.val_fraction > 0" in printed
    assert (tmp_path / "table1.md").exists()
    assert not (tmp_path / "table1_val.md").exists() and not (tmp_path / "optimism.md").exists()
    assert pd.read_csv(tmp_path / "results.csv")["chosen_val"].isna().all()

    default = write_report([tmp_path])  # by default val is added only where it can apply
    assert default.unavailable == {} and "unavailable" not in default.markdown


def test_the_sweeps_closing_report_has_the_val_tables(val_sweep: Path, tmp_path: Path, capsys):
    sweep.report(val_sweep, [], [])
    printed = capsys.readouterr().out
    assert "Table 1, selection val:" in printed and "Optimism:" in printed

    plain = tmp_path / "plain"
    write_seeds(plain, ORIGINAL["test"], method="original")
    sweep.report(plain, [], [])
    printed = capsys.readouterr().out
    assert "Table 1, selection test:" in printed and "selection val" not in printed


def test_a_rerun_with_eval_every_adds_no_seed(tmp_path: Path, capsys):
    write_seeds(tmp_path, ORIGINAL["test"], method="original")
    write_seeds(tmp_path, ORIGINAL["test"], method="original", eval_every=1)  # same experiment: eval_every aside

    summary = write_report([tmp_path], expected_seeds=3)

    row = pd.read_csv(tmp_path / "results.csv").query("method == 'original'")
    assert list(row["n"]) == [3]
    assert table_cells(summary.markdown) == {("animals", "Original"): "**71.00±1.00**"}  # no †(n/e), no [setting]
    assert len(summary.duplicates) == 3 and all("every1" in path.name for path in summary.duplicates)
    main([str(tmp_path)])
    assert "3 duplicate run(s) of an experiment and seed already counted" in capsys.readouterr().out


def test_runs_of_different_epochs_are_never_averaged(tmp_path: Path):
    write_seeds(tmp_path, [60.0, 61.0, 62.0], method="original", epochs=2)
    write_seeds(tmp_path, [70.0, 71.0, 72.0], method="original", epochs=4)
    write_seeds(tmp_path, [73.0, 74.0, 75.0], method="dropout", variant={"p": 0.1}, epochs=4)

    summary = write_report([tmp_path])

    results_csv = pd.read_csv(tmp_path / "results.csv")
    assert results_csv.columns[3] == "setting"
    assert results_csv[["setting", "method", "n", "mean"]].values.tolist() == [
        ["trainer.epochs=2", "original", 3, 61.0], ["trainer.epochs=4", "original", 3, 71.0],
        ["trainer.epochs=4", "dropout", 3, 74.0]]
    cells = table_cells(summary.markdown)
    assert cells[("animals [trainer.epochs=2]", "Original")] == "**61.00±1.00**"
    assert cells[("animals [trainer.epochs=4]", "Original")] == "71.00±1.00"
    assert cells[("animals [trainer.epochs=2]", "Dropout")] == ""
    assert "[key=value]: runs that differ in that setting, never pooled" in summary.markdown


def test_a_method_option_outside_the_grid_makes_its_own_variant(tmp_path: Path):
    write_seeds(tmp_path, [80.0, 81.0], method="rifle", variant={"k": 3}, method_options={"reset_momentum": False})
    write_seeds(tmp_path, [78.0, 79.0], method="rifle", variant={"k": 3}, method_options={"reset_momentum": True})
    write_report([tmp_path])
    rows = pd.read_csv(tmp_path / "results.csv").query("table == 1")
    assert rows[["variant", "n", "chosen"]].values.tolist() == [
        ["k=3,reset_momentum=False", 2, True], ["k=3,reset_momentum=True", 2, False]]


def test_seeds_run_in_different_places_pool_as_one_experiment(tmp_path: Path):
    for seed, (test_acc, root, threads, device) in enumerate([(70.0, "/data/animals", 2, "auto"),
                                                              (71.0, "/cluster/data/animals", 8, "cuda"),
                                                              (72.0, "/data/animals", 1, "cpu")]):
        run_dir = write_run(tmp_path, test_acc=test_acc, seed=seed)
        result = json.loads((run_dir / "result.json").read_text())
        result["config"]["dataset"]["root"] = root
        result["config"]["trainer"] |= {"threads": threads, "device": device}
        result["fingerprint"] = results.experiment_id(result["config"])
        (run_dir / "result.json").write_text(json.dumps(result))

    summary = write_report([tmp_path], expected_seeds=3)

    assert pd.read_csv(tmp_path / "results.csv")[["method", "n", "mean"]].values.tolist() == [["original", 3, 71.0]]
    assert table_cells(summary.markdown) == {("animals", "Original"): "**71.00±1.00**"}


def test_result_fingerprint_is_the_checkpoint_fingerprint_less_the_seed_and_place(compose_cfg):
    def config_of(*overrides):
        cfg = compose_cfg(*overrides)
        config = {key: OmegaConf.to_container(cfg[key], resolve=True, enum_to_str=True)  # as train.run writes it
                  if OmegaConf.is_config(cfg[key]) else cfg[key] for key in cfg if key != "hydra"}
        return cfg, config

    cfg, config = config_of("seed=3", "trainer.epochs=2")
    assert results.training_fingerprint(config) == train._fingerprint(cfg)
    # the report reads the config back from result.json and finds the id train.run stored beside it
    assert results.experiment_id(json.loads(json.dumps(config, default=str))) == results.experiment_id(config)
    same = [config_of(*overrides)[1] for overrides in
            (["seed=0", "trainer.epochs=2"], ["seed=3", "trainer.epochs=2", "trainer.eval_every=1"])]
    assert {results.experiment_id(other) for other in same} == {results.experiment_id(config)}
    assert results.experiment_id(config_of("seed=3", "trainer.epochs=4")[1]) != results.experiment_id(config)
    elsewhere = config_of("seed=3", "trainer.epochs=2", "trainer.threads=1", "trainer.device=cpu")
    assert results.experiment_id(elsewhere[1]) == results.experiment_id(config)
    assert train._fingerprint(elsewhere[0]) != train._fingerprint(cfg)  # a checkpoint resumes only where it ran


def test_runs_with_and_without_a_validation_split_are_separate_rows(val_sweep: Path):
    write_seeds(val_sweep, [90.0, 91.0, 92.0], method="original")  # the paper's protocol: nothing held out
    summary = write_report([val_sweep])

    test_cells = table_cells((val_sweep / "table1.md").read_text())
    assert test_cells[("animals [dataset.val_fraction=0.0]", "Original")] == "**91.00±1.00**"
    assert test_cells[("animals [dataset.val_fraction=0.1]", "Original")] == "71.00±1.00"
    val_table = (val_sweep / "table1_val.md").read_text()
    assert {row for row, _ in table_cells(val_table)} == {"animals [dataset.val_fraction=0.1]"}
    assert "Rows whose runs held out no validation split are left out." in val_table
    assert summary.unavailable == {}


def test_a_result_of_another_shape_is_read_by_its_fields(tmp_path: Path):
    run_dir = write_run(tmp_path, test_acc=70.0)
    result = json.loads((run_dir / "result.json").read_text())
    (run_dir / "result.json").write_text(json.dumps(result | {"config": {"oracle": {"width": 8}}}))
    assert write_report([tmp_path]).complete == 1
