"""The MLP-oracle study (Sec. 4.6.2): determinism per seed, the OT distance, and the table/figure of a sweep."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from scipy.optimize import linear_sum_assignment

from rifle_bench.cli import CONFIG_DIR
from rifle_bench.config import ConfigError
from rifle_bench.oracle import cli, experiment
from rifle_bench.oracle.config import validate
from rifle_bench.oracle.report import FILES, write_report
from rifle_bench.results import mark_completed, write_result

# A few seconds per seed: 100 samples per task, 10 + 8 epochs, 1 re-init (periods of 4 epochs).
SMALL = ["data.n_source=100", "data.n_target=100", "data.n_test=200", "teacher.epochs=10", "finetune.epochs=8",
         "finetune.k=1", "teacher.batch_size=20", "finetune.batch_size=20"]


@pytest.fixture(autouse=True)
def torch_threads_restored():
    """A run sets torch's thread count (threads=1); later tests of the session keep their own."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def compose_oracle(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="oracle", overrides=list(overrides))


def test_each_seed_gives_the_same_result_twice_and_seeds_differ():
    torch.set_num_threads(1)  # as a job does (threads=1)
    results = {}
    for seed in (0, 1):
        cfg = compose_oracle(*SMALL, f"seed={seed}")
        validate(cfg)
        first, second = experiment.run(cfg), experiment.run(cfg)
        assert first == second
        results[seed] = first[0]["methods"]
    assert results[0]["l2"]["test_mse"] != results[1]["l2"]["test_mse"]
    assert results[0]["rifle"]["ot"] != results[1]["rifle"]["ot"]


def test_the_arms_differ_only_by_rifle():
    cfg = compose_oracle(*SMALL, "methods=[l2,rifle,rifle_a]")
    result, log = experiment.run(cfg)
    log = pd.DataFrame(log)
    l2, rifle, rifle_a = (log[log["stage"] == name].set_index("epoch") for name in ("l2", "rifle", "rifle_a"))
    assert l2["head_reinit"].sum() == 0 and rifle["head_reinit"].tolist() == [0, 0, 0, 0, 1, 0, 0, 0]
    assert rifle_a["head_reinit"].equals(rifle["head_reinit"])
    # Same mini-batches and same start: before the re-init, RIFLE-A (no cyclic lr) is exactly L2.
    assert np.array_equal(l2.loc[1:4, "train_mse"], rifle_a.loc[1:4, "train_mse"])
    assert rifle.loc[5, "lr_head"] == pytest.approx(cfg.finetune.lr) and rifle.loc[5, "lr_hidden"] < cfg.finetune.lr
    assert len({round(result["methods"][name]["test_mse"], 12) for name in ("l2", "rifle", "rifle_a")}) == 3


def test_oracles_share_their_first_layer():
    cfg = compose_oracle(*SMALL)
    tasks = experiment.make_tasks(cfg.data, torch.Generator().manual_seed(0))
    source, target = tasks.source_oracle, tasks.target_oracle
    assert target.hidden.weight.shape == (50, 100) and target.head.weight.shape == (1, 50)
    assert torch.equal(source.hidden.weight, target.hidden.weight)
    assert not torch.equal(source.head.weight, target.head.weight)
    with torch.no_grad():
        x, y = tasks.test
        assert torch.equal(target(x), y)  # clean test labels by default
        for oracle, (x, y) in ((source, tasks.source), (target, tasks.target)):
            assert (y - oracle(x)).std() == pytest.approx(cfg.data.noise_std, rel=0.2)


@pytest.mark.parametrize("metric", ["sqeuclidean", "euclidean"])
def test_ot_distance_is_zero_only_between_the_same_hidden_units(metric):
    weights = torch.randn(50, 100, generator=torch.Generator().manual_seed(0)) / 10
    assert experiment.ot_distance(weights, weights.clone(), metric) == pytest.approx(0.0, abs=1e-12)
    permuted = weights[torch.randperm(50, generator=torch.Generator().manual_seed(1))]
    assert experiment.ot_distance(permuted, weights, metric) == pytest.approx(0.0, abs=1e-12)
    moved = weights.clone()
    moved[7] += 0.05
    assert experiment.ot_distance(moved, weights, metric) > 0
    other = torch.randn(50, 100, generator=torch.Generator().manual_seed(2)) / 10
    distance = experiment.ot_distance(other, weights, metric)
    # Equal-size uniform measures: the exact OT cost is the mean cost of the best one-to-one assignment.
    cost = torch.cdist(other.double(), weights.double()).numpy() ** (2 if metric == "sqeuclidean" else 1)
    rows, cols = linear_sum_assignment(cost)
    assert distance == pytest.approx(cost[rows, cols].mean(), rel=1e-9)
    assert experiment.ot_distance(weights, other, metric) == pytest.approx(distance, rel=1e-9)


def test_ot_distance_with_unit_norm_ignores_the_scale_of_units():
    weights = torch.randn(50, 100, generator=torch.Generator().manual_seed(0))
    scaled = weights * torch.rand(50, 1, generator=torch.Generator().manual_seed(1)).add(0.5)
    assert experiment.ot_distance(scaled, weights, normalize=True) == pytest.approx(0.0, abs=1e-12)
    assert experiment.ot_distance(scaled, weights) > 0


def test_out_of_range_values_are_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^finetune\.k=8: 9 periods do not fit in finetune\.epochs=8; expected"):
        validate(compose_oracle(*SMALL, "finetune.k=8"))
    with pytest.raises(ConfigError, match=r"^teacher\.momentum=1\.0: "):
        validate(compose_oracle("teacher.momentum=1.0"))


@pytest.mark.parametrize("override, message", [
    ("ot.metric=cosine", "ot.metric=cosine: not a valid choice; expected one of sqeuclidean, euclidean; "),
    ("finetune.k=40", "finetune.k=40: 41 periods do not fit in finetune.epochs=40; expected k <= 39; "),
])
def test_a_bad_value_is_one_line_exit_code_2_and_no_run_directory(override, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["rifle-bench-oracle", override])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"rifle-bench-oracle: error: {message}") and len(error.splitlines()) == 1
    assert not (tmp_path / "outputs").exists()


def _hand_made_run(path, seed: int, l2: tuple[float, float], rifle: tuple[float, float], setting: str = "",
                   complete: bool = True):
    path.mkdir(parents=True)
    write_result(path, {"status": "done", "seed": seed, "setting": setting, "ot_cost": "sqeuclidean",
                        "methods": {"l2": {"test_mse": l2[0], "ot": l2[1]}, "rifle": {"test_mse": rifle[0],
                                                                                      "ot": rifle[1]}},
                        "references": {"ot_init": 0.6, "ot_teacher": 0.55 + seed / 100}})
    if complete:
        mark_completed(path)


def test_the_table_and_figure_come_from_the_finished_runs(tmp_path):
    _hand_made_run(tmp_path / "seed=0", 0, l2=(0.03, 0.50), rifle=(0.02, 0.49))
    _hand_made_run(tmp_path / "seed=1", 1, l2=(0.05, 0.52), rifle=(0.06, 0.47))
    _hand_made_run(tmp_path / "seed=2", 2, l2=(9.0, 9.0), rifle=(9.0, 9.0), complete=False)  # still running
    _hand_made_run(tmp_path / "finetune.k=2,seed=0", 0, l2=(0.04, 0.51), rifle=(0.01, 0.40), setting="finetune.k=2")

    report = write_report(tmp_path)

    assert all((tmp_path / name).stat().st_size > 0 for name in FILES)
    assert report.skipped == [str(tmp_path / "seed=2")]
    summary = report.summary.set_index(["setting", "method"])
    assert summary.loc[("", "l2"), "n"] == 2
    assert summary.loc[("", "l2"), "test_mse_mean"] == pytest.approx(0.04)
    assert summary.loc[("", "l2"), "test_mse_std"] == pytest.approx(np.std([0.03, 0.05], ddof=1))
    assert summary.loc[("", "rifle"), "ot_mean"] == pytest.approx(0.48)
    assert summary.loc[("", "rifle"), "test_mse_below_l2"] == "1/2"
    assert summary.loc[("", "rifle"), "ot_below_l2"] == "2/2"
    assert summary.loc[("", "teacher"), "ot_mean"] == pytest.approx(0.555)
    assert summary.loc[("finetune.k=2", "rifle"), "n"] == 1
    assert summary.loc[("", "rifle"), "paper_test_mse"] == experiment.PAPER["rifle"]["test_mse"]
    assert report.plotted[("", "test_mse")] == pytest.approx({"l2": 0.04, "rifle": 0.04})
    assert report.plotted[("finetune.k=2", "ot")] == pytest.approx({"l2": 0.51, "rifle": 0.40, "init": 0.6,
                                                                    "teacher": 0.55})
    assert "teacher" not in report.plotted[("", "test_mse")]
    table = (tmp_path / "oracle_table.md").read_text()
    assert "| finetune.k=2 | L2 + RIFLE | 1 | 1.00e-02 |" in table
    assert "1 unfinished or failed run(s) left out" in table
    assert r"0.4800 $\pm$ 0.0141" in (tmp_path / "oracle_table.tex").read_text()
    csv = pd.read_csv(tmp_path / "oracle_table.csv", keep_default_na=False)
    assert len(csv) == 8  # 2 settings x (l2, rifle, init, teacher)


def test_a_seed_sweep_ends_with_its_table_and_figure(tmp_path, monkeypatch, capsys):
    sweep = tmp_path / "sweep"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["rifle-bench-oracle", "-m", "seed=0,1", *SMALL, f"hydra.sweep.dir={sweep}"])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    cli.main()
    assert "HYDRA_FULL_ERROR" not in os.environ  # restored: later runs of this process keep the one-line errors
    assert all((sweep / name).exists() for name in FILES)
    results = [json.loads(path.read_text()) for path in sorted(sweep.glob("*/result.json"))]
    assert [r["seed"] for r in results] == [0, 1] and {r["setting"] for r in results} == {",".join(sorted(SMALL))}
    summary = pd.read_csv(sweep / "oracle_table.csv", keep_default_na=False).set_index("method")
    for method in ("l2", "rifle"):
        assert summary.loc[method, "n"] == 2
        assert summary.loc[method, "ot_mean"] == pytest.approx(np.mean([r["methods"][method]["ot"] for r in results]))
    assert "| L2 + RIFLE | 2 |" in capsys.readouterr().out
