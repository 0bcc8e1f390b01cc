"""logger=tensorboard: every metrics.csv column of every epoch as a TensorBoard scalar in the run directory."""

from __future__ import annotations

import csv

import pytest

from conftest import TINY
from rifle_bench import train


def test_tensorboard_scalars_equal_the_metrics_csv(compose_cfg, tmp_path):
    pytest.importorskip("tensorboard", reason="the optional tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = compose_cfg(*TINY, "method=rifle_a", "method.k=1", "trainer.eval_every=1", "trainer.grad_norms=true",
                      "logger=tensorboard")
    train.run(cfg, tmp_path)
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    with open(tmp_path / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    columns = [column for column in rows[0] if column != "epoch"]
    assert "grad_norm_stage1" in columns and "head_reinit" in columns
    assert sorted(events.Tags()["scalars"]) == sorted(columns)
    for column in columns:
        logged = {event.step: event.value for event in events.Scalars(column)}
        assert logged == pytest.approx({int(row["epoch"]): float(row[column]) for row in rows}, rel=1e-6), column
