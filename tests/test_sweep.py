"""Sweeps: grid expansion, one directory per cell, finished cells skipped, dry runs, the report at the end."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.callbacks import Callbacks
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.errors import HydraException
from hydra.types import HydraContext

from conftest import TINY, run_cli
from rifle_bench.cli import CONFIG_DIR, run_job
from rifle_bench.sweep import cell_name

ONE_EPOCH = [override for override in TINY if not override.startswith("trainer.epochs=")] + ["trainer.epochs=1"]
# Two methods x two seeds; `choice(0.5)` pins dropout's p without touching original, which has no p.
SWEEP = [*ONE_EPOCH, "method=original,dropout", "method.p=choice(0.5)", "seed=0,1"]


def expected_name(*overrides: str) -> str:
    return ",".join(sorted([*ONE_EPOCH, *overrides], key=lambda line: line.split("=")[0]))


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    """The working directory of one real sweep of SWEEP, and what it printed."""
    cwd = tmp_path_factory.mktemp("sweep")
    # The same cache as conftest's isolated_cache, which a module fixture cannot use.
    cache = tmp_path_factory.getbasetemp() / "image-cache"
    return cwd, run_cli("-m", *SWEEP, cwd=cwd, env={"RIFLE_BENCH_CACHE": str(cache)})


def test_sweep_runs_each_cell_in_its_own_directory_and_ends_with_the_tables(finished_sweep):
    cwd, completed = finished_sweep
    sweep_dir = cwd / "outputs" / "sweeps" / "sweep"
    names = {expected_name(f"method={method}", *pin, f"seed={seed}")
             for method, pin in (("original", []), ("dropout", ["method.p=0.5"])) for seed in (0, 1)}
    assert {path.name for path in sweep_dir.iterdir() if path.is_dir()} == names
    for name in names:
        assert json.loads((sweep_dir / name / "result.json").read_text())["status"] == "done"

    plan = json.loads((sweep_dir / "plan.json").read_text())
    assert plan["seeds"] == [0, 1]
    assert sorted((cell["method"], json.dumps(cell["variant"]), cell["seed"]) for cell in plan["cells"]) == [
        ("dropout", '{"p": 0.5}', 0), ("dropout", '{"p": 0.5}', 1), ("original", "{}", 0), ("original", "{}", 1)]
    assert {cell["dir"] for cell in plan["cells"]} == names

    assert "4 cells (1 dataset x 1 model x 1 regularizer x 2 method variants x 2 seeds)" in completed.stdout
    assert completed.stdout.count("[done]") == 4
    for report_file in ("results.csv", "table1.md", "table1.tex"):
        assert (sweep_dir / report_file).exists()
    assert "| Original" in completed.stdout and "| Dropout" in completed.stdout
    assert "4 cells: 4 complete (0 skipped, 4 run now), 0 failed, 0 incomplete" in completed.stdout


def test_the_same_command_again_trains_nothing(finished_sweep):
    cwd, _ = finished_sweep
    results = sorted((cwd / "outputs" / "sweeps" / "sweep").glob("*/result.json"))
    mtimes = [path.stat().st_mtime_ns for path in results]
    completed = run_cli("-m", *SWEEP, cwd=cwd)
    assert "4 complete (skipped), 0 failed (re-run), 0 incomplete (re-run), 0 new" in completed.stdout
    assert "4 complete (4 skipped, 0 run now)" in completed.stdout
    assert "[done]" not in completed.stdout and "Launching" not in completed.stdout + completed.stderr
    assert [path.stat().st_mtime_ns for path in results] == mtimes
    assert "| Original" in completed.stdout


def test_a_failed_cell_is_named_and_the_table_still_written(finished_sweep):
    cwd, _ = finished_sweep
    sweep_dir = cwd / "outputs" / "sweeps" / "sweep"
    (sweep_dir / "table1.md").unlink()
    # One epoch cannot hold 4 cycles: that cell fails; original's cell is the finished one, not re-run.
    completed = run_cli("-m", *ONE_EPOCH, "method=original,cyclic_lr", "method.n_cycles=choice(4)", "seed=0",
                        cwd=cwd, check=False)
    assert completed.returncode == 1
    assert "1 complete (skipped), 0 failed (re-run), 0 incomplete (re-run), 1 new" in completed.stdout
    failed = sweep_dir / expected_name("method=cyclic_lr", "method.n_cycles=4", "seed=0")
    assert f"[FAILED] {failed.relative_to(cwd)}: ValueError: 4 periods do not fit in 1 epochs" in completed.stdout
    assert "2 cells: 1 complete (1 skipped, 0 run now), 1 failed" in completed.stdout
    assert "1 of 2 cells failed" in completed.stderr
    assert "| Original" in (sweep_dir / "table1.md").read_text()


def dry_run(*overrides: str) -> None:
    """`rifle-bench -m OVERRIDES hydra.sweeper.dry_run=true`, in this process: Hydra's multirun set-up, in short."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    plain = [override.input_line for override in parsed if not override.is_sweep_override()]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        config = compose("config", overrides=[*plain, "hydra.sweeper.dry_run=true"], return_hydra_config=True)
        context = HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=Callbacks(config))
        sweeper = Plugins.instance().instantiate_sweeper(config=config, hydra_context=context, task_function=run_job)
        assert sweeper.sweep(arguments=list(overrides)) == []


def listed_cells(output: str) -> list[str]:
    return [line.split()[1] for line in output.splitlines() if line.startswith("  new ")]


def test_dry_run_lists_each_method_expanded_into_its_grid_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    dry_run("method=dropout,rifle", "seed=0")
    output = capsys.readouterr().out
    assert "Sweep outputs/sweeps/sweep: 6 cells" in output
    assert listed_cells(output) == [f"animals/mobilenet_v2/l2/{variant}/seed=0" for variant in (
        "dropout(p=0.1)", "dropout(p=0.2)", "dropout(p=0.5)", "rifle(k=1)", "rifle(k=2)", "rifle(k=3)")]
    assert "method=rifle,method.k=2,seed=0" in output
    assert list(tmp_path.iterdir()) == []


def test_a_parameter_given_by_the_user_is_not_expanded(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    dry_run("method=dropout,rifle", "method.p=choice(0.2)", "seed=0")
    assert listed_cells(capsys.readouterr().out) == [
        "animals/mobilenet_v2/l2/dropout(p=0.2)/seed=0",
        *[f"animals/mobilenet_v2/l2/rifle(k={k})/seed=0" for k in (1, 2, 3)]]
    dry_run("method=dropout", "method.p=0.2", "seed=0,1")
    assert listed_cells(capsys.readouterr().out) == [f"animals/mobilenet_v2/l2/dropout(p=0.2)/seed={seed}"
                                                     for seed in (0, 1)]
    with pytest.raises(HydraException, match=r"method.k=2: no method of this sweep \(dropout, original\) has"):
        dry_run("method=original,dropout", "method.k=choice(2)")


@pytest.mark.parametrize("experiment, sweep_dir, dimensions", [
    ("table1", "paper", "1800 cells (9 datasets x 1 model x 2 regularizers x 20 method variants x 5 seeds)"),
    ("table2", "paper", "810 cells (9 datasets x 1 model x 2 regularizers x 9 method variants x 5 seeds)"),
    ("demo", "demo", "48 cells (1 dataset x 1 model x 1 regularizer x 16 method variants x 3 seeds)"),
])
def test_presets_plan_the_paper_tables(experiment, sweep_dir, dimensions, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    dry_run(f"experiment={experiment}")
    output = capsys.readouterr().out
    assert f"Sweep outputs/sweeps/{sweep_dir}: {dimensions}" in output
    model = "mobilenet_v2" if experiment == "demo" else "resnet50"
    assert all(f"/{model}/" in cell for cell in listed_cells(output))


def test_cell_names_are_sorted_safe_file_names():
    overrides = [("seed", "seed=0"), ("dataset.root", "dataset.root=/data/my cub"), ("method.k", "method.k=2"),
                 ("method", "method=rifle"), ("trainer.device", "trainer.device=cuda")]
    assert cell_name(overrides, exclude_keys=["trainer.device"]) == (
        "dataset.root=_data_my_cub,method=rifle,method.k=2,seed=0")
    assert cell_name([], exclude_keys=[]) == "defaults"
    long_name = cell_name([(f"key{i}", f"key{i}={'x' * 20}") for i in range(20)], exclude_keys=[])
    assert len(long_name.encode()) <= 255
    assert long_name != cell_name([(f"key{i}", f"key{i}={'x' * 20}") for i in range(21)], exclude_keys=[])
