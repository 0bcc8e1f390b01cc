"""The real training loop, checked against DESIGN.md's formulas: the learning rate each optimizer group held in
every epoch of every method, L2-SP's pull towards the pre-trained weights, and the numerics a run records."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from conftest import TINY
from rifle_bench import models, regularizers, train

BASE_LR, EPOCHS = 0.01, 4


def cosine(epoch: int, epochs: int) -> float:
    return 0.5 * BASE_LR * (1 + math.cos(math.pi * epoch / epochs))


def restarted(epoch: int, epochs: int, periods: int) -> float:
    length = epochs // periods
    start = min(epoch // length, periods - 1) * length
    end = start + length if start + length < epochs and epoch // length < periods - 1 else epochs
    return 0.5 * BASE_LR * (1 + math.cos(math.pi * (epoch - start) / (end - start)))


# method -> (its overrides, backbone lr of epoch e, head lr of epoch e), for E = 4 epochs
SCHEDULES = {
    "original": ([], cosine, cosine),
    "dropout": ([], cosine, cosine),
    "dropconnect": ([], cosine, cosine),
    "cnn_dropout": ([], cosine, cosine),
    "stochastic_depth": ([], cosine, cosine),
    "disturb_label": ([], cosine, cosine),
    "cyclic_lr": (["method.n_cycles=2"], lambda e, n: restarted(e, n, 2), lambda e, n: restarted(e, n, 2)),
    "rifle": (["method.k=1"], cosine, lambda e, n: restarted(e, n, 2)),
    "rifle_a": (["method.k=1"], cosine, cosine),
    "rifle_b": (["method.k=1"], cosine, lambda e, n: restarted(e, n, 2)),
}


def read_metrics(run_dir):
    with open(run_dir / "metrics.csv") as file:
        return list(csv.DictReader(file))


@pytest.mark.parametrize("method", SCHEDULES)
def test_each_group_holds_its_designed_learning_rate_in_every_epoch(method, compose_cfg, tmp_path):
    overrides, backbone, head = SCHEDULES[method]
    cfg = compose_cfg(*TINY, f"method={method}", *overrides, f"trainer.epochs={EPOCHS}", "dataset.train_per_class=2",
                      "trainer.batch_size=20")
    train.run(cfg, tmp_path)
    rows = read_metrics(tmp_path)
    assert len(rows) == EPOCHS
    for epoch, row in enumerate(rows):
        assert abs(float(row["lr_backbone"]) - backbone(epoch, EPOCHS)) < 1e-9, (method, epoch, row)
        assert abs(float(row["lr_head"]) - head(epoch, EPOCHS)) < 1e-9, (method, epoch, row)


def test_the_named_groups_hold_the_backbone_and_the_head():
    model = models.build("resnet18", 5, None)
    for regularizer in (regularizers.L2(), regularizers.L2SP()):
        groups = {group["name"]: group["params"] for group in regularizer.param_groups(model)}
        assert [id(p) for p in groups["head"]] == [id(p) for p in model.head.parameters()]
        assert [id(p) for p in groups["backbone"]] == [id(p) for p in model.backbone.parameters()]


def test_l2sp_pulls_towards_the_pretrained_weights_inside_the_loop(compose_cfg, tmp_path):
    """A real run: L2-SP ends measurably closer to w0 than L2 (same seed, same data), and its penalty column is
    alpha/2 ||w - w0||^2 + beta/2 ||w_head||^2 recomputed from the weights it saved."""
    alpha, beta = 2.0, 0.5
    common = [*TINY, "trainer.epochs=2", "trainer.lr=0.05", "trainer.keep_checkpoint=true"]
    runs = {}
    for name, extra in (("l2", ["regularizer=l2"]),
                        ("l2sp", ["regularizer=l2sp", f"regularizer.alpha={alpha}", f"regularizer.beta={beta}"])):
        run_dir = tmp_path / name
        run_dir.mkdir()
        train.run(compose_cfg(*common, *extra), run_dir)
        runs[name] = (torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"], read_metrics(run_dir))
    start = models.build("mobilenet_v2", 10, "IMAGENET1K_V1").backbone.state_dict()

    def drift(state):
        return sum(float((state[f"backbone.{k}"].double() - w0.double()).square().sum())
                   for k, w0 in start.items() if w0.is_floating_point())

    assert drift(runs["l2sp"][0]) < 0.5 * drift(runs["l2"][0])
    state, rows = runs["l2sp"]
    parameters = dict(models.build("mobilenet_v2", 10, "IMAGENET1K_V1").named_parameters())
    backbone = sum(float((state[k].double() - parameters[k].detach().double()).square().sum())
                   for k in parameters if k.startswith("backbone."))
    head = sum(float(state[k].double().square().sum()) for k in parameters if k.startswith("head."))
    assert float(rows[-1]["penalty"]) == pytest.approx(0.5 * alpha * backbone + 0.5 * beta * head, rel=1e-4)
    assert float(runs["l2"][1][-1]["penalty"]) == 0.0


def test_a_run_records_its_numerics(compose_cfg, tmp_path):
    result = train.run(compose_cfg(*TINY, "trainer.epochs=1", "trainer=paper", "trainer.resize=36",
                                   "trainer.crop=32"), tmp_path)
    assert (result["precision"], result["tf32"]) == ("fp32", False)
    assert result["config"]["trainer"]["precision"] == "fp32" and result["config"]["trainer"]["tf32"] is False
