import torch

from rifle_bench.methods.base import Method


class DisturbLabel(Method):
    """Each training label is replaced, with probability alpha, by a class drawn uniformly from all C classes
    (it may be the true one, so a label actually changes with probability alpha*(C-1)/C)."""

    def __init__(self, alpha: float):
        self.alpha = alpha

    def targets(self, labels, num_classes):
        disturbed = torch.rand(labels.shape, device=labels.device) < self.alpha
        random_labels = torch.randint(num_classes, labels.shape, device=labels.device)
        return torch.where(disturbed, random_labels, labels)
