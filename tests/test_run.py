"""One run end to end: its files, determinism, the RIFLE schedule in metrics.csv, and every bad input."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch

from conftest import TINY, run_cli
from rifle_bench import train
from rifle_bench.resources import peak_rss_mb
from rifle_bench.results import COMPLETED_FILE, METRICS_COLUMNS


def read_metrics(run_dir):
    with open(run_dir / "metrics.csv") as file:
        return list(csv.DictReader(file))


def test_cli_run_writes_the_per_run_contract(tmp_path):
    run_dir = tmp_path / "run"
    completed = run_cli(*TINY, "method=rifle", "method.k=1", "trainer.epochs=4", f"hydra.run.dir={run_dir}",
                        cwd=tmp_path)
    assert "test_acc" in completed.stdout and str(run_dir) in completed.stdout
    result = json.loads((run_dir / "result.json").read_text())
    for key in ("status", "error", "dataset", "model", "regularizer", "method", "variant", "seed", "epochs",
                "test_acc", "n_train", "n_test", "wall_s", "train_s", "eval_s", "versions"):
        assert key in result, key
    assert result["status"] == "done" and result["error"] is None
    assert (result["dataset"], result["method"], result["variant"], result["seed"]) == ("animals", "rifle", {"k": 1}, 0)
    assert (result["n_train"], result["n_test"]) == (50, 50)
    assert 0 <= result["test_acc"] <= 100 and result["versions"]["torch"]
    assert (run_dir / ".hydra" / "config.yaml").exists() and (run_dir / COMPLETED_FILE).exists()
    assert not (run_dir / "checkpoint.pt").exists()
    rows = read_metrics(run_dir)
    assert list(rows[0]) == METRICS_COLUMNS
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]
    assert [r["head_reinit"] for r in rows] == ["0", "0", "1", "0"]  # k=1, E=4: re-init at the start of epoch 3
    assert [r["test_acc"] == "" for r in rows] == [True, True, True, False]  # only the final epoch is evaluated
    assert float(rows[-1]["test_acc"]) == result["test_acc"]
    assert float(rows[2]["lr_head"]) == pytest.approx(0.01) and float(rows[2]["lr_backbone"]) < 0.01


def test_same_seed_same_machine_gives_identical_metrics(compose_cfg, tmp_path):
    cfg = compose_cfg(*TINY, "method=dropout", "trainer.eval_every=1")
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    result_a, result_b = train.run(cfg, first), train.run(cfg, second)
    assert result_a["test_acc"] == result_b["test_acc"]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "epoch_s"} for r in rows]  # noqa: E731
    assert strip(read_metrics(first)) == strip(read_metrics(second))
    other = tmp_path / "c"
    other.mkdir()
    train.run(compose_cfg(*TINY, "method=dropout", "trainer.eval_every=1", "seed=1"), other)
    assert strip(read_metrics(other)) != strip(read_metrics(first))


def test_non_finite_loss_fails_the_run_and_keeps_what_was_written(tmp_path):
    run_dir = tmp_path / "run"
    completed = run_cli(*TINY, "trainer.lr=1e30", f"hydra.run.dir={run_dir}", cwd=tmp_path, check=False)
    assert completed.returncode == 1
    assert "training loss became nan" in completed.stderr and "Traceback" not in completed.stderr
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "failed" and "TrainingDiverged" in result["error"]
    assert not (run_dir / COMPLETED_FILE).exists()
    assert (run_dir / "error.log").read_text().startswith("Traceback")


def test_missing_weights_name_the_file_the_place_and_the_fix(tmp_path):
    completed = run_cli(*TINY, "model=resnet18", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, check=False,
                        env={"TORCH_HOME": str(tmp_path / "torch")})
    assert completed.returncode == 1 and "Traceback" not in completed.stderr
    message = completed.stderr
    assert "resnet18-f37072fd.pth" in message and str(tmp_path / "torch" / "hub" / "checkpoints") in message
    assert "model.weights=null" in message


def test_missing_dataset_says_what_where_and_how(tmp_path):
    (tmp_path / "nowhere").mkdir()  # a folder without the files (a missing folder is refused as configuration)
    completed = run_cli(*TINY, f"dataset.root={tmp_path / 'nowhere'}", f"hydra.run.dir={tmp_path / 'run'}",
                        cwd=tmp_path, check=False)
    assert completed.returncode == 1 and "Traceback" not in completed.stderr
    assert "animal_data_version_3.gz" in completed.stderr and "make assets" in completed.stderr


def test_unknown_group_option_lists_the_choices(tmp_path):
    completed = run_cli("method=rifle_c", cwd=tmp_path, check=False)
    assert completed.returncode != 0
    assert "rifle_c" in completed.stderr and "rifle_a" in completed.stderr and "disturb_label" in completed.stderr


def test_peak_memory_is_the_jobs_own_not_its_launchers():
    hog = torch.ones(500 * 2**18)  # 500 MB held by this process, the launcher of the next one
    child = subprocess.run([sys.executable, "-c", "from rifle_bench.resources import peak_rss_mb; print(peak_rss_mb())"],
                           capture_output=True, text=True, check=True)
    # ru_maxrss would report at least this process's memory (taken over at fork); the job itself is far smaller.
    assert 10 < float(child.stdout) < peak_rss_mb() - 400
    del hog


def test_random_init_runs_offline(compose_cfg, tmp_path):
    result = train.run(compose_cfg(*TINY, "model.weights=null", "trainer.epochs=1"), tmp_path)
    assert result["weights"] is None and result["status"] == "done"


@pytest.mark.parametrize(("options", "expected"), [
    (["trainer.compile=true"], {"compiled": False}),
    (["trainer.precision=bf16"], {"precision": "fp32"}),
    (["trainer.precision=auto"], {"precision": "fp32"}),
    (["trainer.channels_last=true"], {"channels_last": True}),
    (["trainer.channels_last=false"], {"channels_last": False}),
    (["trainer.deterministic=true"], {"deterministic": True}),
    (["trainer.workers=3"], {"workers": 3}),
    (["trainer.compile=true", "trainer.precision=bf16", "trainer.channels_last=false", "trainer.deterministic=true",
      "trainer.workers=3"], {"compiled": False, "precision": "fp32", "channels_last": False}),
])
def test_gpu_options_compose_and_fall_back_cleanly_on_cpu(compose_cfg, tmp_path, caplog, options, expected):
    cfg = compose_cfg(*TINY, "trainer.epochs=1", "trainer.device=cpu", *options)
    result = train.run(cfg, tmp_path)
    recorded = result["config"]["trainer"] | result  # what the run did, else what it was asked
    assert result["status"] == "done" and result["device"] == "cpu" and 0 <= result["test_acc"] <= 100
    assert {key: recorded[key] for key in expected} == expected
    assert ("trainer.compile=true is ignored on cpu" in caplog.text) == ("trainer.compile=true" in options)
