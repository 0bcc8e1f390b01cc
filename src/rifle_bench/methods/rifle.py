import torch
from torch import nn

from rifle_bench.config import check_periods, require
from rifle_bench.methods.base import Method, cyclic_cosine, period_starts


class Rifle(Method):
    """RIFLE (Li et al., ICML 2020) and its ablations.

    Training is split into k+1 periods of E // (k+1) epochs; the FC layer is re-initialized at the start of
    each period but the first (exactly k times, never inside the last period) and, with `cyclic_head_lr`,
    its lr restarts a cosine cycle with each period while the backbone follows the global schedule.
    rifle: reinit + cyclic head lr; rifle_a: reinit only; rifle_b: cyclic head lr only.
    """

    def __init__(self, k: int, reinit: bool = True, cyclic_head_lr: bool = True, init: str = "default",
                 init_std: float = 0.01, reset_momentum: bool = False):
        self.k, self.reinit, self.cyclic_head_lr = k, reinit, cyclic_head_lr
        self.init, self.init_std, self.reset_momentum = init, init_std, reset_momentum

    def check(self, cfg):
        check_periods(self.k, "method.k", self.k + 1, cfg, "re-initialization or cycle")
        require(self.init in {"default", "gaussian"}, "method.init", self.init, "unknown initialization",
                "default (nn.Linear.reset_parameters, the authors' code) or gaussian", "use method.init=default")
        require(self.init_std > 0, "method.init_std", self.init_std, "the standard deviation must be positive",
                "a number > 0", "use e.g. 0.01")

    def period_starts(self, epochs: int) -> list[int]:
        return period_starts(epochs, self.k + 1)

    def reinit_epochs(self, epochs: int) -> list[int]:
        return self.period_starts(epochs)[1:] if self.reinit else []

    def start_epoch(self, epoch, epochs, model, optimizer):
        if epoch not in self.reinit_epochs(epochs):
            return False
        self._reinitialize(model.head)
        if self.reset_momentum:
            for parameter in model.head.parameters():
                optimizer.state.pop(parameter, None)
        return True

    def _reinitialize(self, head: nn.Linear) -> None:
        if self.init == "default":
            head.reset_parameters()
            return
        with torch.no_grad():
            head.weight.normal_(0.0, self.init_std)
            if head.bias is not None:
                head.bias.zero_()

    def learning_rates(self, epoch, epochs, base_lr, scheduled_lr):
        if not self.cyclic_head_lr:
            return scheduled_lr, scheduled_lr
        return scheduled_lr, cyclic_cosine(epoch, epochs, self.period_starts(epochs), base_lr)
