import torch
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import StochasticDepth as DropPath

from rifle_bench.methods.base import Method


class ResidualWithDrop(nn.Module):
    """A residual block whose residual branch is dropped per sample ("row") with probability `p` in training.

    Holds the original block, so parameter names and pre-trained weights are unchanged underneath.
    """

    def __init__(self, block: nn.Module, p: float):
        super().__init__()
        if not isinstance(block, (BasicBlock, Bottleneck, InvertedResidual)):
            raise TypeError(f"stochastic depth does not know the residual branch of {type(block).__name__}")
        self.block, self.drop = block, DropPath(p, "row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        block = self.block
        if isinstance(block, InvertedResidual):
            return x + self.drop(block.conv(x))
        shortcut = block.downsample(x) if block.downsample is not None else x
        out = block.relu(block.bn1(block.conv1(x)))
        if isinstance(block, Bottleneck):
            out = block.relu(block.bn2(block.conv2(out)))
            out = block.bn3(block.conv3(out))
        else:
            out = block.bn2(block.conv2(out))
        return block.relu(self.drop(out) + shortcut)


class StochasticDepth(Method):
    """Huang et al. (2016): block l of L is dropped with probability (l/L)*(1-p_L); p_L = survival of the last."""

    def __init__(self, last_survival: float = 0.5):
        self.last_survival = last_survival

    def drop_probabilities(self, n_blocks: int) -> list[float]:
        return [(l / n_blocks) * (1.0 - self.last_survival) for l in range(1, n_blocks + 1)]

    def wrap_model(self, model):
        for path, p in zip(model.residual_blocks, self.drop_probabilities(len(model.residual_blocks))):
            model.backbone.set_submodule(path, ResidualWithDrop(model.backbone.get_submodule(path), p))
