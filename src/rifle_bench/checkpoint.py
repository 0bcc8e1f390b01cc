"""Per-epoch checkpoints, so a killed or preempted run resumes where it stopped and ends with the same numbers.

A checkpoint holds the model, the optimizer (momentum buffers), the metrics so far and every RNG state.
The learning rates and the methods' schedules are functions of the epoch, and the data order of an epoch
depends only on (seed, epoch), so nothing else is needed to continue the exact trajectory.
"""

from __future__ import annotations

import io
import logging
import random
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from rifle_bench.results import CHECKPOINT_FILE, set_aside, write_atomic

log = logging.getLogger(__name__)


class CheckpointWriter:
    """Saves a checkpoint after each epoch without holding up training.

    `save` copies the state to host memory (the live tensors keep training) and returns; a background thread
    serializes it and writes it atomically. One write is in flight at most: the next `save`, and leaving the
    `with` block, wait for it and re-raise its error. A run killed mid-write keeps the previous checkpoint.
    """

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.run_dir, self.enabled = Path(run_dir), enabled
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="checkpoint") if enabled else None
        self._pending: Future | None = None

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        if self._thread:
            try:
                self.wait()
            finally:
                self._thread.shutdown()

    def save(self, model, optimizer, rows: list[dict], eval_s: float, fingerprint: dict) -> None:
        if not self.enabled:
            return
        self.wait()
        state = {
            "fingerprint": fingerprint, "rows": list(rows), "eval_s": eval_s,
            "model": _to_host(model.state_dict()), "optimizer": _to_host(optimizer.state_dict()),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        }
        self._pending = self._thread.submit(_write, self.run_dir / CHECKPOINT_FILE, state)

    def wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()


def _to_host(state):
    """A copy of a state dict's tensors in CPU memory, detached from the ones training updates."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {key: _to_host(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_to_host(value) for value in state)
    return state


def _write(path: Path, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(path, buffer.getvalue())


def load_checkpoint(run_dir: Path, model, optimizer, fingerprint: dict) -> dict | None:
    """Restore the last checkpoint of `run_dir` into model and optimizer; None when there is nothing to resume.

    A checkpoint that cannot be read, or that was written for another configuration, is reported and
    ignored: the run starts over rather than crash or continue someone else's trajectory.
    """
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        rng, matches = state["rng"], state["fingerprint"] == fingerprint
    except Exception as error:  # a truncated or corrupt file fails in many ways (zip, pickle, key errors)
        kept = set_aside(path)
        log.warning("checkpoint %s is unreadable (%s): kept as %s, starting over from scratch", path, error, kept)
        return None
    if not matches:
        log.warning("checkpoint %s was written for another configuration: starting over", path)
        return None
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    log.info("resuming %s after epoch %d", run_dir, len(state["rows"]))
    return state
