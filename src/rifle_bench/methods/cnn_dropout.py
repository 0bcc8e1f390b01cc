from torch import nn

from rifle_bench.config import check_probability
from rifle_bench.methods.base import Method


class CNNDropout(Method):
    """Dropout on the feature maps after each stage of the backbone (element-wise, or whole channels)."""

    def __init__(self, p: float, channelwise: bool = False):
        self.p, self.channelwise = p, channelwise

    def check(self, cfg):
        check_probability(self.p, "method.p", "the paper's grid is 0.1, 0.2, 0.5")

    def wrap_model(self, model):
        drop = nn.Dropout2d if self.channelwise else nn.Dropout
        for path in model.stage_ends:
            stage = model.backbone.get_submodule(path)
            model.backbone.set_submodule(path, nn.Sequential(stage, drop(self.p)))
