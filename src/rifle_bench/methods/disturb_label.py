import torch

from rifle_bench.config import check_probability
from rifle_bench.methods.base import Method


class DisturbLabel(Method):
    """Each training label is replaced, with probability alpha, by a class drawn uniformly from all C classes
    (it may be the true one, so a label actually changes with probability alpha*(C-1)/C)."""

    def __init__(self, alpha: float):
        self.alpha = alpha

    def check(self, cfg):
        check_probability(self.alpha, "method.alpha", "the paper's grid is 0.05, 0.1, 0.2", upper_inclusive=True)

    def targets(self, labels, num_classes):
        disturbed = torch.rand(labels.shape, device=labels.device) < self.alpha
        random_labels = torch.randint(num_classes, labels.shape, device=labels.device)
        return torch.where(disturbed, random_labels, labels)
