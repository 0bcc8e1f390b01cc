"""trainer.grad_norms: the per-stage gradient norms of the paper's Fig. 2, checked against a hand computation."""

from __future__ import annotations

import csv

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY
from rifle_bench import data, models, train
from rifle_bench.data.loader import ImageBatches

# A tiny ResNet-18 (random init, 32 px crops) whose weights move in one epoch at a constant lr.
RESNET = [*TINY, "model=resnet18", "model.weights=null", "trainer.schedule=constant", "trainer.lr=0.05"]


def read_metrics(run_dir):
    with open(run_dir / "metrics.csv") as file:
        return list(csv.DictReader(file))


def norms_by_hand(cfg, state: dict | None, epoch: int) -> dict[str, float]:
    """The cross-entropy gradient of each stage's last conv2 on the first mini-batch of `epoch`, from `state`."""
    torch.manual_seed(cfg.seed)
    splits = data.prepare(cfg.dataset, cfg.trainer.resize, cfg.paths.cache, cfg.trainer.workers)
    model = models.build("resnet18", splits.num_classes, None)
    if state is not None:
        model.load_state_dict(state)
    model.to(memory_format=torch.channels_last).train()
    batches = ImageBatches(splits.train, crop=cfg.trainer.crop, batch_size=cfg.trainer.batch_size, train=True,
                           device=torch.device("cpu"), seed=cfg.seed, channels_last=True)
    for images, labels in batches.epoch(epoch):
        F.cross_entropy(model(images), labels).backward()
        break
    backbone = model.backbone
    convs = {"layer1": backbone.layer1[1].conv2, "layer2": backbone.layer2[1].conv2,
             "layer3": backbone.layer3[1].conv2, "layer4": backbone.layer4[1].conv2}
    return {f"grad_norm_{stage}": torch.sqrt((conv.weight.grad ** 2).sum()).item() for stage, conv in convs.items()}


def test_grad_norm_columns_are_the_first_batch_gradient_before_the_update(compose_cfg, tmp_path):
    cfg = compose_cfg(*RESNET, "trainer.grad_norms=true")
    two_epochs, one_epoch = tmp_path / "two", tmp_path / "one"
    two_epochs.mkdir(), one_epoch.mkdir()
    train.run(cfg, two_epochs)
    # The same first epoch again, its checkpoint kept: the weights epoch 2 starts from.
    train.run(compose_cfg(*RESNET, "trainer.grad_norms=true", "trainer.epochs=1", "trainer.keep_checkpoint=true"),
              one_epoch)
    after_epoch_1 = torch.load(one_epoch / "checkpoint.pt", weights_only=False)["model"]

    rows = read_metrics(two_epochs)
    columns = ["grad_norm_layer1", "grad_norm_layer2", "grad_norm_layer3", "grad_norm_layer4"]
    assert [column for column in rows[0] if column.startswith("grad_norm_")] == columns
    for row, state, epoch in ((rows[0], None, 0), (rows[1], after_epoch_1, 1)):
        expected = norms_by_hand(cfg, state, epoch)
        assert {column: float(row[column]) for column in columns} == pytest.approx(expected, rel=1e-4)
    # Training moved the weights, so the two epochs' norms differ: each is taken at its own epoch's start.
    assert float(rows[0]["grad_norm_layer4"]) != pytest.approx(float(rows[1]["grad_norm_layer4"]), rel=1e-3)


def test_grad_norms_are_off_by_default_and_survive_a_wrapped_backbone(compose_cfg, tmp_path):
    off, wrapped = tmp_path / "off", tmp_path / "wrapped"
    off.mkdir(), wrapped.mkdir()
    train.run(compose_cfg(*TINY, "trainer.epochs=1"), off)
    assert not any(column.startswith("grad_norm_") for column in read_metrics(off)[0])
    assert not list(off.glob("events.out.tfevents.*"))  # logger=none by default
    # CNN-dropout wraps every stage (new module paths): the norms still come from the stages' convs.
    train.run(compose_cfg(*TINY, "trainer.epochs=1", "method=cnn_dropout", "trainer.grad_norms=true"), wrapped)
    row = read_metrics(wrapped)[0]
    norms = {column: float(value) for column, value in row.items() if column.startswith("grad_norm_")}
    assert list(norms) == [f"grad_norm_stage{n}" for n in range(1, 8)]
    assert all(norm > 0 for norm in norms.values())


def test_mobilenet_v2_probes_the_last_depthwise_conv_of_each_stage():
    model = models.build("mobilenet_v2", 10, None)
    # MobileNetV2's seven bottleneck stages end at features 1, 3, 6, 10, 13, 16, 17 (widths 16..320).
    assert list(model.stage_convs.values()) == [
        "features.1.conv.0.0", "features.3.conv.1.0", "features.6.conv.1.0", "features.10.conv.1.0",
        "features.13.conv.1.0", "features.16.conv.1.0", "features.17.conv.1.0"]
    for path in model.stage_convs.values():
        conv = model.backbone.get_submodule(path)
        assert conv.kernel_size == (3, 3) and conv.groups == conv.in_channels == conv.out_channels
