"""Shared test settings: tiny, fast configurations of the real code paths, and an isolated cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from rifle_bench.cli import CONFIG_DIR

# The embedded dataset at its smallest: 5 + 5 images per class, 32 px crops, two epochs.
TINY = ["dataset.train_per_class=5", "dataset.test_per_class=5", "trainer.resize=36", "trainer.crop=32",
        "trainer.batch_size=10", "trainer.epochs=2"]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """One image cache per test session (never the user's), shared by the tests and their subprocesses."""
    cache = tmp_path_factory.getbasetemp() / "image-cache"
    monkeypatch.setenv("RIFLE_BENCH_CACHE", str(cache))
    return cache


@pytest.fixture
def compose_cfg():
    def _compose(*overrides: str):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    return _compose


def run_cli(*args: str, cwd: Path, env: dict | None = None, check: bool = True, timeout: float = 600):
    """Run `rifle-bench` in a subprocess, as a user would."""
    completed = subprocess.run([sys.executable, "-m", "rifle_bench.cli", *args], cwd=cwd, capture_output=True,
                               text=True, env={**os.environ, **(env or {})}, timeout=timeout)
    if check and completed.returncode != 0:
        raise AssertionError(f"rifle-bench {' '.join(args)} exited {completed.returncode}:\n"
                             f"{completed.stdout}\n{completed.stderr}")
    return completed
