"""Every bad input ends in one line naming the key, the expectation and the fix, exit code 2, no traceback,
and nothing written; legal but suspicious values are warnings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from rifle_bench import cli
from conftest import TINY, run_cli

NO_GPU = not torch.cuda.is_available()

# (overrides, substrings the error line must contain: the key=value, then the expectation)
BAD_INPUTS = [
    # the observations
    (["trainer.epochs=0"], ["trainer.epochs=0", "expected an integer >= 1"]),
    (["trainer.epochs=-3"], ["trainer.epochs=-3", "expected an integer >= 1"]),
    (["trainer.batch_size=0"], ["trainer.batch_size=0", "expected an integer >= 1"]),
    (["trainer.lr=abc"], ["trainer.lr=abc", "expected a number"]),
    (["seed=abc"], ["seed=abc", "expected an integer"]),
    (["paths.cache=/proc/nope"], ["paths.cache=/proc/nope", "expected a writable directory"]),
    (["method=cyclic_lr", "method.n_cycles=0"], ["method.n_cycles=0", "expected an integer >= 1"]),
    (["trainer.schedule=step"], ["trainer.schedule=step", "expected one of cosine, constant"]),
    (["method=disturb_label", "method.alpha=2"], ["method.alpha=2", "expected 0 <= p <= 1"]),
    (["regularizer=l2sp", "regularizer.alpha=-1"], ["regularizer.alpha=-1", "expected a finite number >= 0"]),
    (["trainer.eval_every=-1"], ["trainer.eval_every=-1", "expected an integer >= 0"]),
    # types, unknown keys and options, typos
    (["trainer.epoch=3"], ["trainer.epoch=3", "unknown key", "did you mean epochs?"]),
    (["dataset=cubb"], ["dataset=cubb", "expected one of aircraft, animals", "did you mean cub?"]),
    (["model=resnet34"], ["model=resnet34", "expected one of mobilenet_v2, resnet18, resnet50"]),
    (["methd=rifle"], ["methd=rifle", "unknown key", "did you mean method?"]),
    (["method=rifle", "method.kk=2"], ["method.kk=2", "unknown key", "did you mean k?"]),
    (["trainer.precision=fp16"], ["trainer.precision=fp16", "expected one of fp32, bf16, auto"]),
    (["trainer.compile=maybe"], ["trainer.compile=maybe", "expected true or false"]),
    (["regularizer=l2sp", "regularizer.beta=abc"], ["regularizer.beta=abc", "expected a number"]),
    # ranges and relations
    (["trainer.lr=-0.1"], ["trainer.lr=-0.1", "expected a finite number > 0"]),
    (["trainer.lr=nan"], ["trainer.lr=nan", "expected a finite number > 0"]),
    (["trainer.momentum=1.5"], ["trainer.momentum=1.5", "expected 0 <= momentum < 1"]),
    (["method=dropout", "method.p=1.0"], ["method.p=1.0", "expected 0 <= p < 1"]),
    (["method=cnn_dropout", "method.p=-0.1"], ["method.p=-0.1", "expected 0 <= p < 1"]),
    (["method=rifle", "method.k=0"], ["method.k=0", "expected an integer >= 1"]),
    (["method=rifle", "method.k=20"], ["method.k=20", "21 periods do not fit in trainer.epochs=12"]),
    (["method=rifle_a", "method.init=xavier"], ["method.init=xavier", "expected default"]),
    (["trainer.crop=100"], ["trainer.crop=100", "expected crop <= resize (72)"]),
    (["dataset.val_fraction=1.5"], ["dataset.val_fraction=1.5", "expected 0 <= val_fraction < 1"]),
    (["dataset.num_classes=1"], ["dataset.num_classes=1", "expected an integer >= 2"]),
    (["trainer.workers=0"], ["trainer.workers=0", "expected null (automatic) or an integer >= 1"]),
    (["dataset.train_per_class=900", "dataset.test_per_class=200"],
     ["dataset.train_per_class=900", "expected train_per_class + test_per_class <= 1000"]),
    # paths and weights files
    (["dataset.root=/nonexistent/data"], ["dataset.root=/nonexistent/data", "expected the folder that holds"]),
    (["model.weights=/nonexistent/w.pth"], ["model.weights=/nonexistent/w.pth", "no such file"]),
    (["model.weights=IMAGENET1K_V9"], ["model.weights=IMAGENET1K_V9", "did you mean IMAGENET1K_V2?"]),
]


def refuse(args: list[str], cwd: Path, capsys, monkeypatch) -> str:
    """Run the console script in this process; return its one error line (after checking the exit code)."""
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", ["rifle-bench", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    captured = capsys.readouterr()
    assert exit_info.value.code == 2, captured
    assert "Traceback" not in captured.err + captured.out
    lines = [line for line in captured.err.splitlines() if line.startswith("rifle-bench: error: ")]
    assert lines, captured.err
    return "\n".join(lines)


@pytest.mark.parametrize("overrides, expected", BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_input_is_one_line_naming_key_and_expectation(overrides, expected, tmp_path, capsys, monkeypatch):
    message = refuse(overrides, tmp_path, capsys, monkeypatch)
    assert message.count("\n") == 0
    for part in expected:
        assert part in message, message
    assert list(tmp_path.iterdir()) == [], "a refused configuration must not create a run directory"


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
def test_cuda_on_a_machine_without_gpu(tmp_path, capsys, monkeypatch):
    message = refuse(["trainer.device=cuda"], tmp_path, capsys, monkeypatch)
    assert "trainer.device=cuda: no CUDA device is available here; expected auto or cpu" in message


def test_weights_files_that_are_not_checkpoints_of_the_model(tmp_path, capsys, monkeypatch):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    message = refuse([f"model.weights={garbage}"], tmp_path, capsys, monkeypatch)
    assert f"model.weights={garbage}: not a readable PyTorch checkpoint" in message
    other = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), other)
    message = refuse([f"model.weights={other}"], tmp_path, capsys, monkeypatch)
    assert "not a mobilenet_v2 checkpoint" in message and "expected a readable checkpoint of mobilenet_v2" in message
    assert refuse(["model=resnet18", f"model.weights={garbage}"], tmp_path, capsys, monkeypatch)


def test_a_sweep_with_invalid_cells_lists_them_all_and_writes_nothing(tmp_path, capsys, monkeypatch):
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    (sweep_dir / "plan.json").write_text("{}")  # a sweep directory that already holds results
    before = sorted(p.name for p in sweep_dir.iterdir())
    message = refuse(["-m", "method=rifle,cyclic_lr", "trainer.epochs=2", "seed=0,1",
                      f"hydra.sweep.dir={sweep_dir}"], tmp_path, capsys, monkeypatch)
    lines = message.splitlines()
    # rifle k=2 and k=3 (3 and 4 periods) and cyclic_lr n_cycles=3, 4 cannot fit 2 epochs, for both seeds.
    assert len(lines) == 9
    assert "cell animals/mobilenet_v2/l2/rifle(k=3)/seed=1: method.k=3: 4 periods do not fit" in message
    assert "cell animals/mobilenet_v2/l2/cyclic_lr(n_cycles=4)/seed=0: method.n_cycles=4" in message
    assert "8 cell(s) of this sweep are invalid; nothing was launched or written" in lines[-1]
    assert sorted(p.name for p in sweep_dir.iterdir()) == before
    assert (sweep_dir / "plan.json").read_text() == "{}"


def test_the_natural_sweep_syntax_pins_a_grid_parameter(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["rifle-bench", "-m", "method=rifle,rifle_a,rifle_b", "method.k=3",
                                      "hydra.sweeper.dry_run=true"])
    cli.main()
    output = capsys.readouterr().out
    cells = [line.split()[1] for line in output.splitlines() if line.startswith("  new ")]
    assert cells == [f"animals/mobilenet_v2/l2/{name}(k=3)/seed=0" for name in ("rifle", "rifle_a", "rifle_b")]
    monkeypatch.setattr(sys, "argv", ["rifle-bench", "-m", "method=rifle,rifle_a", "method.k=1,3",
                                      "hydra.sweeper.dry_run=true"])
    cli.main()
    cells = [line.split()[1] for line in capsys.readouterr().out.splitlines() if line.startswith("  new ")]
    assert cells == [f"animals/mobilenet_v2/l2/{name}(k={k})/seed=0" for name in ("rifle", "rifle_a") for k in (1, 3)]
    message = refuse(["-m", "method=rifle,dropout", "method.k=3"], tmp_path, capsys, monkeypatch)
    assert "method 'dropout' has no parameter 'k' (its parameters: p)" in message


def test_verbose_shows_the_traceback(tmp_path):
    completed = run_cli("trainer.epochs=0", "--verbose", cwd=tmp_path, check=False)
    assert completed.returncode != 0 and "Traceback" in completed.stderr
    completed = run_cli("trainer.epochs=0", cwd=tmp_path, check=False)
    assert completed.returncode == 2
    assert completed.stderr.strip() == ("rifle-bench: error: trainer.epochs=0: out of range; expected an integer "
                                        ">= 1; train for at least one epoch")


def test_legal_but_suspicious_values_are_warned_in_the_log_and_result(tmp_path):
    run_cli(*TINY, "trainer.epochs=1", "trainer.batch_size=64", "trainer.lr=1.5", "hydra.run.dir=run",
            cwd=tmp_path)
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert any("an epoch is a single step" in warning for warning in result["warnings"])
    assert any("trainer.lr=1.5 is above 1" in warning for warning in result["warnings"])
    assert "an epoch is a single step" in (tmp_path / "run" / "cli.log").read_text()


def test_help_lists_the_groups_and_their_options_without_schemas(tmp_path):
    completed = subprocess.run([sys.executable, "-m", "rifle_bench.cli", "--help"], cwd=tmp_path, text=True,
                               capture_output=True, env={**os.environ}, timeout=120)
    assert completed.returncode == 0
    assert "method: cnn_dropout, cyclic_lr, disturb_label, dropconnect, dropout" in completed.stdout
    assert "trainer: default, fast, paper" in completed.stdout
    assert "_schema" not in completed.stdout
