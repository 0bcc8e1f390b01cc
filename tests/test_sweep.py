"""Sweeps: grid expansion, one directory per cell, finished cells skipped, dry runs, the report at the end."""

from __future__ import annotations

import json
from pathlib import Path

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
from rifle_bench.status import sweep_status
from rifle_bench.sweep import NEW, Cell, cell_name, describe_plan, read_plan, sweep_name, write_plan

ONE_EPOCH = [override for override in TINY if not override.startswith("trainer.epochs=")] + ["trainer.epochs=1"]
# Original, and dropout over its grid (p = 0.1, 0.2, 0.5): four cells.
SWEEP = [*ONE_EPOCH, "method=original,dropout", "seed=0"]


def expected_name(*overrides: str) -> str:
    return ",".join(sorted([*ONE_EPOCH, *overrides], key=lambda line: line.split("=")[0]))


# An ad-hoc sweep's directory is named after its overrides, sorted by key.
SWEEP_DIR = "outputs/sweeps/" + "_".join(sorted([*ONE_EPOCH, "method=original,dropout", "seed=0"])).replace(
    "=", "-").replace(",", "+")


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    """The working directory of one real sweep of SWEEP, and what it printed."""
    cwd = tmp_path_factory.mktemp("sweep")
    # The same cache as conftest's isolated_cache, which a module fixture cannot use.
    cache = tmp_path_factory.getbasetemp() / "image-cache"
    return cwd, run_cli("-m", *SWEEP, cwd=cwd, env={"RIFLE_BENCH_CACHE": str(cache)})


def test_sweep_runs_each_cell_in_its_own_directory_and_ends_with_the_tables(finished_sweep):
    cwd, completed = finished_sweep
    sweep_dir = cwd / SWEEP_DIR
    assert [path.name for path in (cwd / "outputs" / "sweeps").iterdir()] == [sweep_dir.name]
    names = {expected_name("method=original", "seed=0")} | {
        expected_name("method=dropout", f"method.p={p}", "seed=0") for p in (0.1, 0.2, 0.5)}
    assert {path.name for path in sweep_dir.iterdir() if path.is_dir()} == names
    for name in names:
        assert json.loads((sweep_dir / name / "result.json").read_text())["status"] == "done"

    plan = json.loads((sweep_dir / "plan.json").read_text())
    assert plan["seeds"] == [0]
    assert sorted((cell["method"], json.dumps(cell["variant"]), cell["seed"]) for cell in plan["cells"]) == [
        ("dropout", '{"p": 0.1}', 0), ("dropout", '{"p": 0.2}', 0), ("dropout", '{"p": 0.5}', 0),
        ("original", "{}", 0)]
    assert {cell["dir"] for cell in plan["cells"]} == names
    assert [invocation["overrides"] for invocation in plan["invocations"]] == [SWEEP]

    assert "4 cells (1 dataset x 1 model x 1 regularizer x 4 method variants x 1 seed)" in completed.stdout
    assert completed.stdout.count("[done]") == 4
    for report_file in ("results.csv", "table1.md", "table1.tex"):
        assert (sweep_dir / report_file).exists()
    assert "| Original" in completed.stdout and "| Dropout" in completed.stdout
    assert "4 cells: 4 complete (0 skipped, 4 run now), 0 failed, 0 incomplete" in completed.stdout


def test_the_same_command_again_trains_nothing(finished_sweep):
    cwd, _ = finished_sweep
    results = sorted((cwd / SWEEP_DIR).glob("*/result.json"))
    mtimes = [path.stat().st_mtime_ns for path in results]
    # The same overrides in another order name the same directory.
    completed = run_cli("-m", *reversed(SWEEP), cwd=cwd)
    assert "4 complete (skipped), 0 failed (re-run), 0 incomplete (re-run), 0 new" in completed.stdout
    assert "4 complete (4 skipped, 0 run now)" in completed.stdout
    assert "[done]" not in completed.stdout and "Launching" not in completed.stdout + completed.stderr
    assert [path.stat().st_mtime_ns for path in results] == mtimes
    assert "| Original" in completed.stdout
    assert len(read_plan(cwd / SWEEP_DIR)["invocations"]) == 2


def test_a_failed_cell_is_named_and_the_table_still_written(finished_sweep):
    cwd, _ = finished_sweep
    sweep_dir = cwd / SWEEP_DIR
    (sweep_dir / "table1.md").unlink()
    # Added to the first sweep's directory by naming it. A data folder missing on the machine that runs the job
    # (checked there, not where the sweep is submitted): that cell fails; original's cell is the finished one.
    completed = run_cli("-m", *ONE_EPOCH, "method=original", "seed=0", f"hydra.sweep.dir={SWEEP_DIR}", cwd=cwd)
    assert "1 complete (skipped), 0 failed (re-run), 0 incomplete (re-run), 0 new" in completed.stdout
    completed = run_cli("-m", *ONE_EPOCH, "method=original", "dataset.root=/nonexistent", "seed=0",
                        f"hydra.sweep.dir={SWEEP_DIR}", cwd=cwd, check=False)
    assert completed.returncode == 1
    assert "0 complete (skipped), 0 failed (re-run), 0 incomplete (re-run), 1 new" in completed.stdout
    failed = sweep_dir / expected_name("dataset.root=_nonexistent", "method=original", "seed=0")  # file-name safe
    assert (f"[FAILED] {failed.relative_to(cwd)}: ConfigError: dataset.root=/nonexistent: no such directory"
            in completed.stdout)
    assert "1 cells: 0 complete (0 skipped, 0 run now), 1 failed" in completed.stdout
    assert "1 of 1 cells failed" in completed.stderr
    assert "| Original" in (sweep_dir / "table1.md").read_text()
    # Every invocation's cells count: the four of the first sweep and the failed one.
    assert len(read_plan(sweep_dir)["cells"]) == 5 and len(read_plan(sweep_dir)["invocations"]) == 4
    status = sweep_status(sweep_dir)
    assert (status["complete"], status["failed"], status["incomplete"], status["missing"]) == (4, 1, 0, 0)


def dry_run(*overrides: str) -> None:
    """`rifle-bench -m OVERRIDES hydra.sweeper.dry_run=true`, in this process: Hydra's multirun set-up, in short."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    plain = [override.input_line for override in parsed if not override.is_sweep_override()]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        config = compose("config", overrides=[*plain, "hydra.sweeper.dry_run=true"], return_hydra_config=True)
        config.hydra.overrides.task = list(overrides)  # as in Hydra's multirun config: the sweeps too
        context = HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=Callbacks(config))
        sweeper = Plugins.instance().instantiate_sweeper(config=config, hydra_context=context, task_function=run_job)
        assert sweeper.sweep(arguments=list(overrides)) == []


def listed_cells(output: str) -> list[str]:
    return [line.split()[1] for line in output.splitlines() if line.startswith("  new ")]


def test_dry_run_lists_each_method_expanded_into_its_grid_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    dry_run("method=dropout,rifle", "seed=0")
    output = capsys.readouterr().out
    assert "Sweep outputs/sweeps/method-dropout+rifle_seed-0: 6 cells" in output
    assert listed_cells(output) == [f"animals/mobilenet_v2/l2/{variant}/seed=0" for variant in (
        "dropout(p=0.1)", "dropout(p=0.2)", "dropout(p=0.5)", "rifle(k=1)", "rifle(k=2)", "rifle(k=3)")]
    assert "method=rifle,method.k=2,seed=0" in output
    assert list(tmp_path.iterdir()) == []


def test_a_parameter_given_by_the_user_is_not_expanded(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # `rifle-bench -m method=rifle,rifle_a,rifle_b method.k=3`: the CLI hands the pin over as choice(3).
    dry_run("method=rifle,rifle_a,rifle_b", "method.k=choice(3)", "seed=0")
    assert listed_cells(capsys.readouterr().out) == [
        f"animals/mobilenet_v2/l2/{method}(k=3)/seed=0" for method in ("rifle", "rifle_a", "rifle_b")]
    dry_run("method=rifle,rifle_b", "method.k=1,3", "seed=0")
    assert listed_cells(capsys.readouterr().out) == [
        f"animals/mobilenet_v2/l2/{method}(k={k})/seed=0" for method in ("rifle", "rifle_b") for k in (1, 3)]
    dry_run("method=dropout", "method.p=0.2", "seed=0,1")
    assert listed_cells(capsys.readouterr().out) == [f"animals/mobilenet_v2/l2/dropout(p=0.2)/seed={seed}"
                                                     for seed in (0, 1)]


def test_a_pin_that_a_swept_method_lacks_names_the_method_and_its_parameters(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(HydraException, match=r"^method.k=3: method 'dropout' has no parameter 'k' \(its parameters: "
                                             r"p\); drop the pin or sweep dropout separately$"):
        dry_run("method=rifle,dropout", "method.k=choice(3)")
    with pytest.raises(HydraException, match=r"^method.p=0.2,0.5: method 'original' has no parameter 'p' \(it has "
                                             r"no parameters\); drop the pin or sweep original separately$"):
        dry_run("method=original,dropout,rifle", "method.p=0.2,0.5")
    with pytest.raises(HydraException, match=r"^method.p=0.2: method 'rifle' has no parameter 'p' \(its parameters: "
                                             r"k, .*reset_momentum.*\)"):
        dry_run("method=dropout,rifle", "method.p=choice(0.2)")
    assert list(tmp_path.iterdir()) == []


def test_combinations_naming_the_same_cell_plan_it_once(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    dry_run("method=rifle,rifle", "seed=0,0,1")
    cells = listed_cells(capsys.readouterr().out)
    assert cells == [f"animals/mobilenet_v2/l2/rifle(k={k})/seed={seed}" for seed in (0, 1) for k in (1, 2, 3)]
    dry_run("method=dropout", "method.p=0.2,0.5,0.2", "seed=0")
    assert listed_cells(capsys.readouterr().out) == [
        f"animals/mobilenet_v2/l2/dropout(p={p})/seed=0" for p in (0.2, 0.5)]


def test_plan_json_keeps_the_cells_of_every_invocation_and_status_counts_them_once(tmp_path):
    def cells(method: str, variants: list[dict], seeds: list[int]) -> list[Cell]:
        return [Cell(overrides=[], name=f"{method}-{json.dumps(variant)}-{seed}", dataset="animals",
                     model="mobilenet_v2", regularizer="l2", method=method, variant=variant, seed=seed)
                for variant in variants for seed in seeds]

    # table1-like and table2-like sweeps sharing one directory, with RIFLE's cells in both.
    rifle = cells("rifle", [{"k": 1}, {"k": 3}], [0, 1])
    write_plan(tmp_path, cells("original", [{}], [0, 1]) + rifle, ["experiment=first"])
    write_plan(tmp_path, rifle + cells("rifle_a", [{"k": 1}], [0, 1, 2]), ["experiment=second"])
    plan = read_plan(tmp_path)
    assert len(plan["cells"]) == 2 + 4 + 3 and plan["seeds"] == [0, 1, 2]
    assert [(invocation["overrides"], invocation["cells"]) for invocation in plan["invocations"]] == [
        (["experiment=first"], 6), (["experiment=second"], 7)]
    (tmp_path / rifle[0].name).mkdir()
    (tmp_path / rifle[0].name / "result.json").write_text(json.dumps({"status": "failed", "error": "boom"}))
    status = sweep_status(tmp_path)
    assert (status["complete"], status["failed"], status["missing"]) == (0, 1, 8)


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


def test_a_swept_setting_outside_the_named_dimensions_is_counted_in_the_plan():
    cells = [Cell(overrides=[f"method={method}", f"regularizer.never_hurt={never_hurt}", f"seed={seed}"],
                  name=f"{method}-{never_hurt}-{seed}", dataset="animals", model="mobilenet_v2",
                  regularizer="l2", method=method, variant={}, seed=seed)
             for method in ("original", "rifle") for never_hurt in (False, True) for seed in (0, 1, 2)]
    plan = describe_plan(Path("s"), cells, [NEW] * len(cells), list_cells=False)
    assert plan.splitlines()[0] == ("Sweep s: 12 cells (1 dataset x 1 model x 1 regularizer x 2 method variants x "
                                    "3 seeds x 2 combinations of other settings)")
    plain = describe_plan(Path("s"), cells[:3], [NEW] * 3, list_cells=False)
    assert plain.splitlines()[0] == \
        "Sweep s: 3 cells (1 dataset x 1 model x 1 regularizer x 1 method variant x 3 seeds)"


def test_a_sweep_without_a_preset_is_named_after_its_overrides_and_its_jobs_told_so():
    assert sweep_name(["seed=0,1", "method=rifle", "trainer.device=cuda", "+foo=a b", "dataset.root=/d/x"],
                      exclude_keys=["trainer.device", "experiment"]) == (
        "dataset.root-_d_x_+foo-a_b_method-rifle_seed-0+1")
    assert sweep_name(["experiment=mine", "seed=0,1"], exclude_keys=["experiment"]) == "experiment-mine_seed-0+1"
    # The CLI hands `method.k=3` over as `method.k=choice(3)`: named as typed.
    assert sweep_name(["method.k=choice(3)", "seed=range(2)", "method=glob(rifle*)"], exclude_keys=[]) == (
        "method-glob_rifle___method.k-3_seed-0+1")
    assert sweep_name([], exclude_keys=[]) == "defaults"
    cell = Cell(overrides=["seed=0"], name="seed=0", dataset="animals", model="mobilenet_v2", regularizer="l2",
                method="original", variant={}, seed=0)
    assert cell.job_overrides("outputs/sweeps/seed=0,1") == [
        "seed=0", "hydra.sweep.dir='outputs/sweeps/seed=0,1'", "hydra.sweep.subdir='seed=0'"]


def test_cell_names_are_sorted_safe_file_names():
    overrides = [("seed", "seed=0"), ("dataset.root", "dataset.root=/data/my cub"), ("method.k", "method.k=2"),
                 ("method", "method=rifle"), ("trainer.device", "trainer.device=cuda")]
    assert cell_name(overrides, exclude_keys=["trainer.device"]) == (
        "dataset.root=_data_my_cub,method=rifle,method.k=2,seed=0")
    assert cell_name([], exclude_keys=[]) == "defaults"
    long_name = cell_name([(f"key{i}", f"key{i}={'x' * 20}") for i in range(20)], exclude_keys=[])
    assert len(long_name.encode()) <= 255
    assert long_name != cell_name([(f"key{i}", f"key{i}={'x' * 20}") for i in range(21)], exclude_keys=[])
