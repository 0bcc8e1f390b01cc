import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import StochasticDepth as DropPath

from rifle_bench.config import require
from rifle_bench.methods.base import Method

MODES = ("batch", "row")


class ResidualWithDrop(nn.Module):
    """A residual block whose residual branch is kept with probability `survival` in training.

    mode "batch" (Huang et al. 2016): one draw per forward pass decides for the whole mini-batch; a dropped branch
    is not computed at all, and at evaluation the branch is scaled by `survival`.
    mode "row" (torchvision's `StochasticDepth(p, "row")`): one draw per example, the kept branches scaled by
    1/survival in training, the plain block at evaluation.
    Holds the original block, so parameter names and pre-trained weights are unchanged underneath.
    """

    def __init__(self, block: nn.Module, survival: float, mode: str = "batch"):
        super().__init__()
        if not isinstance(block, (BasicBlock, Bottleneck, InvertedResidual)):
            raise TypeError(f"stochastic depth does not know the residual branch of {type(block).__name__}")
        self.block, self.survival, self.mode = block, survival, mode
        self.drop = DropPath(1.0 - survival, "row") if mode == "row" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if isinstance(self.block, InvertedResidual) or self.block.downsample is None \
            else self.block.downsample(x)
        if self.drop is not None:
            return self._merge(self.drop(self._branch(x)) + shortcut)
        if not self.training:
            return self._merge(torch.add(shortcut, self._branch(x), alpha=self.survival))
        if torch.rand(()) >= self.survival:  # drawn on the CPU: no wait for the device, even on a GPU
            out = self._merge(shortcut, inplace=False)  # the shortcut may be saved for another layer's backward
            if out.requires_grad:
                out.register_hook(self._zero_missing_gradients)
            return out
        return self._merge(self._branch(x) + shortcut)

    def _zero_missing_gradients(self, grad: torch.Tensor) -> None:
        """A skipped branch's weights get a zero gradient rather than none, so that the optimizer still applies
        momentum, weight decay and L2-SP's pull to them (as the paper's Torch code, which zeroes gradients)."""
        for parameter in self.block.parameters():
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        block = self.block
        if isinstance(block, InvertedResidual):
            return block.conv(x)
        out = block.relu(block.bn1(block.conv1(x)))
        if isinstance(block, Bottleneck):
            return block.bn3(block.conv3(block.relu(block.bn2(block.conv2(out)))))
        return block.bn2(block.conv2(out))

    def _merge(self, summed: torch.Tensor, inplace: bool = True) -> torch.Tensor:
        """What follows the addition: ResNet blocks end with a ReLU, MobileNetV2's inverted residuals do not."""
        if isinstance(self.block, InvertedResidual):
            return summed
        return F.relu(summed, inplace=inplace)


class StochasticDepth(Method):
    """Huang et al. (2016): block l of L survives with probability p_l = 1 - (l/L)(1 - p_L); p_L = `last_survival`."""

    def __init__(self, last_survival: float = 0.5, mode: str = "batch"):
        self.last_survival, self.mode = last_survival, mode

    def check(self, cfg):
        require(0 < self.last_survival <= 1, "method.last_survival", self.last_survival,
                "not a survival probability", "0 < p_L <= 1", "the paper uses 0.5")
        require(self.mode in MODES, "method.mode", self.mode, "unknown stochastic depth mode",
                "batch (one draw per block for the whole mini-batch, Huang et al.) or row (one per example, "
                "torchvision)", "use method.mode=batch")

    def survival_probabilities(self, n_blocks: int) -> list[float]:
        return [1.0 - (l / n_blocks) * (1.0 - self.last_survival) for l in range(1, n_blocks + 1)]

    def wrap_model(self, model):
        blocks = model.residual_blocks
        for path, survival in zip(blocks, self.survival_probabilities(len(blocks))):
            model.backbone.set_submodule(path, ResidualWithDrop(model.backbone.get_submodule(path), survival, self.mode))
