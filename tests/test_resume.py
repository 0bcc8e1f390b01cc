"""A killed run resumes to the same numbers; a broken checkpoint costs a restart, never a crash; a finished run
drops its checkpoint unless asked to keep it."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from conftest import TINY, run_cli
from rifle_bench import checkpoint
from rifle_bench.checkpoint import CheckpointWriter, load_checkpoint

# RIFLE re-initializes the head at epoch 3 of 4: the resumed part needs the restored RNG and schedule.
# One thread: fast on a busy machine, and the same float reduction order in every run.
RUN = [*TINY, "trainer.epochs=4", "method=rifle", "method.k=1", "trainer.threads=1"]


def trajectory(run_dir) -> list[dict]:
    """metrics.csv without its timing column: what must not depend on interruptions."""
    with open(run_dir / "metrics.csv") as file:
        return [{key: value for key, value in row.items() if key != "epoch_s"} for row in csv.DictReader(file)]


def final_acc(run_dir) -> float:
    return json.loads((run_dir / "result.json").read_text())["test_acc"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of the same configuration, which keeps its checkpoint."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    cache = tmp_path_factory.getbasetemp() / "image-cache"  # conftest's cache: its fixture is per test
    run_cli(*RUN, "trainer.keep_checkpoint=true", f"hydra.run.dir={run_dir}", cwd=run_dir.parent,
            env={"RIFLE_BENCH_CACHE": str(cache)})
    return run_dir


def test_a_killed_run_resumes_and_ends_with_the_numbers_of_an_uninterrupted_one(reference, tmp_path):
    run_dir = tmp_path / "run"
    run = subprocess.Popen([sys.executable, "-m", "rifle_bench.cli", *RUN, f"hydra.run.dir={run_dir}"], cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoint.pt").exists():
        assert run.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.01)
    run.send_signal(signal.SIGKILL)
    run.wait()
    epochs_done = len(trajectory(run_dir))
    assert 1 <= epochs_done < 4 and not (run_dir / "COMPLETED").exists()

    resumed = run_cli(*RUN, f"hydra.run.dir={run_dir}", cwd=tmp_path)

    assert f"after epoch {epochs_done}" in resumed.stdout + resumed.stderr
    assert trajectory(run_dir) == trajectory(reference)
    assert final_acc(run_dir) == final_acc(reference)
    assert (run_dir / "COMPLETED").exists() and not (run_dir / "checkpoint.pt").exists()


def test_a_truncated_checkpoint_is_reported_and_the_run_starts_over(reference, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    checkpoint = (reference / "checkpoint.pt").read_bytes()
    (run_dir / "checkpoint.pt").write_bytes(checkpoint[: len(checkpoint) // 2])

    completed = run_cli(*RUN, f"hydra.run.dir={run_dir}", cwd=tmp_path)

    assert "unreadable" in completed.stdout + completed.stderr and "starting over" in completed.stdout + completed.stderr
    (kept,) = run_dir.glob("checkpoint.pt.corrupt-*")  # set aside with its path reported, never deleted
    assert kept.read_bytes() == checkpoint[: len(checkpoint) // 2] and str(kept) in completed.stdout + completed.stderr
    assert trajectory(run_dir) == trajectory(reference)
    assert final_acc(run_dir) == final_acc(reference)
    assert not (run_dir / "checkpoint.pt").exists()  # dropped once complete: a sweep's disk use stays bounded


def test_keep_checkpoint_keeps_it_once_the_run_is_complete(reference):
    assert (reference / "COMPLETED").exists() and (reference / "checkpoint.pt").exists()


def test_a_checkpoint_holds_the_state_when_it_was_saved_although_training_goes_on(tmp_path, monkeypatch):
    trained_on, write = threading.Event(), checkpoint._write
    monkeypatch.setattr(checkpoint, "_write", lambda *args: trained_on.wait(10) and write(*args))
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    saved = {key: value.clone() for key, value in model.state_dict().items()}
    momentum = optimizer.state[model.weight]["momentum_buffer"].clone()
    with CheckpointWriter(tmp_path) as checkpoints:
        checkpoints.save(model, optimizer, [{"epoch": 1}], 0.0, {"run": 1})
        for _ in range(3):  # the next epoch trains before the checkpoint is written
            optimizer.step()
        trained_on.set()
    assert not torch.equal(model.weight, saved["weight"])

    restored = torch.nn.Linear(4, 3)
    restored_optimizer = torch.optim.SGD(restored.parameters(), lr=0.1, momentum=0.9)
    state = load_checkpoint(tmp_path, restored, restored_optimizer, {"run": 1})
    assert state["rows"] == [{"epoch": 1}]
    assert all(torch.equal(restored.state_dict()[key], value) for key, value in saved.items())
    assert torch.equal(restored_optimizer.state[restored.weight]["momentum_buffer"], momentum)


def test_a_failed_checkpoint_write_fails_the_run_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with CheckpointWriter(tmp_path) as checkpoints:
        checkpoints.save(model, optimizer, [{"epoch": 1}], 0.0, {})
    previous = (tmp_path / "checkpoint.pt").read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"), CheckpointWriter(tmp_path) as checkpoints:
        checkpoints.save(model, optimizer, [{"epoch": 1}, {"epoch": 2}], 0.0, {})
    assert (tmp_path / "checkpoint.pt").read_bytes() == previous
