"""One seed of the MLP-oracle study (RIFLE paper, Sec. 4.6.2).

Two oracle MLPs without biases share their first layer: h1(x) = W2^T ReLU(W1^T x) labels the source task,
h2(x) = W3^T ReLU(W1^T x) the target task. A teacher of the same shape is trained from scratch on the source
data, then fine-tuned on the target data once per method (L2, L2 + RIFLE, ...), every arm starting from the
same teacher and seeing the same mini-batches. Each arm reports its test MSE on clean h2 labels and the optimal
transport distance between its first layer and the oracle's W1.

RIFLE and its ablations are the main runner's own `Rifle` method (same re-init schedule, same cyclic head lr).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import ot
import torch
from omegaconf import DictConfig
from scipy.spatial.distance import cdist
from torch import nn

from rifle_bench.config import ConfigError
from rifle_bench.methods.base import Method, cosine
from rifle_bench.methods.rifle import Rifle

# Sec. 4.6.2 of the paper: test MSE and OT(W1 learned, W1 oracle) after fine-tuning.
PAPER = {"l2": {"test_mse": 1.16e-2, "ot": 0.1397}, "rifle": {"test_mse": 3.98e-3, "ot": 0.1198}}


class TwoLayerMLP(nn.Module):
    """h(x) = W_out^T ReLU(W1^T x), no biases. `hidden.weight` is W1^T: one row per hidden unit."""

    def __init__(self, input_dim: int, hidden: int):
        super().__init__()
        self.hidden = nn.Linear(input_dim, hidden, bias=False)
        self.head = nn.Linear(hidden, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.hidden(x))).squeeze(-1)


def method(name: str, k: int) -> Method:
    """l2: plain fine-tuning (the L2 is SGD weight decay); rifle, rifle_a, rifle_b: the runner's RIFLE."""
    if name == "l2":
        return Method()
    return Rifle(k=k, reinit=name in ("rifle", "rifle_a"), cyclic_head_lr=name in ("rifle", "rifle_b"))


@dataclass
class Tasks:
    source_oracle: TwoLayerMLP  # h1
    target_oracle: TwoLayerMLP  # h2: a copy of h1's first layer, a head of its own
    source: tuple[torch.Tensor, torch.Tensor]
    target: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]


def _draw(layer: nn.Linear, init: str, std: float, generator: torch.Generator) -> None:
    with torch.no_grad():
        if init == "linear":  # nn.Linear's default distribution, U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            bound = 1.0 / math.sqrt(layer.in_features)
            nn.init.uniform_(layer.weight, -bound, bound, generator=generator)
        else:
            nn.init.normal_(layer.weight, 0.0, std, generator=generator)


def make_tasks(data: DictConfig, generator: torch.Generator) -> Tasks:
    source_oracle = TwoLayerMLP(data.input_dim, data.hidden)
    for layer in (source_oracle.hidden, source_oracle.head):
        _draw(layer, data.oracle_init, data.oracle_std, generator)
    target_oracle = copy.deepcopy(source_oracle)  # shares W1 with the source oracle
    _draw(target_oracle.head, data.oracle_init, data.oracle_std, generator)

    def sample(oracle: TwoLayerMLP, n: int, noisy: bool) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, data.input_dim, generator=generator)
        with torch.no_grad():
            y = oracle(x)
        if noisy:
            y = y + data.noise_std * torch.randn(n, generator=generator)
        return x, y

    return Tasks(source_oracle=source_oracle, target_oracle=target_oracle,
                 source=sample(source_oracle, data.n_source, True), target=sample(target_oracle, data.n_target, True),
                 test=sample(target_oracle, data.n_test, data.test_noise))


def mse(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return nn.functional.mse_loss(model(x), y).item()


def fit(model: TwoLayerMLP, x: torch.Tensor, y: torch.Tensor, stage: DictConfig, trick: Method,
        generator: torch.Generator, stage_name: str, test: tuple[torch.Tensor, torch.Tensor] | None = None
        ) -> list[dict]:
    """Mini-batch SGD on the MSE, the lr set per epoch as in the main training loop; one log row per epoch."""
    optimizer = torch.optim.SGD([{"params": model.hidden.parameters()}, {"params": model.head.parameters()}],
                                lr=stage.lr, momentum=stage.momentum, weight_decay=stage.weight_decay)
    rows = []
    for epoch in range(stage.epochs):
        reinit = trick.start_epoch(epoch, stage.epochs, model, optimizer)
        scheduled = cosine(epoch, stage.epochs, stage.lr) if stage.schedule == "cosine" else stage.lr
        lrs = trick.learning_rates(epoch, stage.epochs, stage.lr, scheduled)
        for group, lr in zip(optimizer.param_groups, lrs):
            group["lr"] = lr
        loss_sum = 0.0
        for batch in torch.randperm(len(x), generator=generator).split(stage.batch_size):
            loss = nn.functional.mse_loss(model(x[batch]), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(batch)
        train_mse = loss_sum / len(x)
        if not math.isfinite(train_mse):
            raise ConfigError(f"{stage_name}.lr", stage.lr, f"training diverged ({stage_name} loss {train_mse} in "
                              f"epoch {epoch + 1})", "a stable run", f"lower {stage_name}.lr")
        rows.append({"epoch": epoch + 1, "lr_hidden": lrs[0], "lr_head": lrs[1], "head_reinit": int(reinit),
                     "train_mse": train_mse, "test_mse": mse(model, *test) if test else None})
    return rows


def ot_distance(weights: torch.Tensor, oracle_weights: torch.Tensor, metric: str = "sqeuclidean",
                normalize: bool = False) -> float:
    """Exact optimal transport cost between two first layers seen as point clouds of hidden units.

    Each row of an nn.Linear weight (one hidden unit's input weights, a column of the paper's W1) is a point with
    mass 1/n; the value does not depend on the order of the hidden units, which training cannot identify.
    `normalize` scales every unit to norm 1 first, ignoring the ReLU's rescaling symmetry (a unit's input
    weights times c and its output weight divided by c compute the same function).
    """
    a, b = (w.detach().double().numpy() for w in (weights, oracle_weights))
    if normalize:
        a, b = (w / np.linalg.norm(w, axis=1, keepdims=True) for w in (a, b))
    cost = cdist(a, b, metric=metric)  # exact zeros for equal units (ot.dist's expansion leaves ~1e-8 after sqrt)
    return float(ot.emd2(ot.unif(len(a)), ot.unif(len(b)), cost))


def seeds(seed: int, oracle_seed: int | None) -> dict[str, int]:
    """Independent seeds per random stream: the oracle and its data (from oracle_seed, default seed), then the
    teacher's init and mini-batch order, the fine-tuning mini-batch order (the same for every arm) and the head
    re-inits."""
    oracle_stream = np.random.SeedSequence([seed if oracle_seed is None else oracle_seed, 0])
    names = ("teacher_init", "teacher_batches", "finetune_batches", "reinit")
    training = np.random.SeedSequence([seed, 1]).spawn(len(names))
    return {"oracle": int(oracle_stream.generate_state(1)[0]),
            **{name: int(stream.generate_state(1)[0]) for name, stream in zip(names, training)}}


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def run(cfg: DictConfig) -> tuple[dict, list[dict]]:
    """Pre-train the teacher, fine-tune it once per method; returns (results, per-epoch log rows)."""
    streams = seeds(cfg.seed, cfg.oracle_seed)
    tasks = make_tasks(cfg.data, _generator(streams["oracle"]))
    oracle_w1 = tasks.target_oracle.hidden.weight

    teacher = TwoLayerMLP(cfg.data.input_dim, cfg.data.hidden)
    teacher_init = _generator(streams["teacher_init"])
    for layer in (teacher.hidden, teacher.head):
        _draw(layer, "linear", 1.0, teacher_init)
    initial_w1 = teacher.hidden.weight.detach().clone()
    log = [{"stage": "teacher", **row} for row in
           fit(teacher, *tasks.source, cfg.teacher, Method(), _generator(streams["teacher_batches"]), "teacher")]

    def distance(weights: torch.Tensor) -> float:
        return ot_distance(weights, oracle_w1, cfg.ot.metric.value, cfg.ot.normalize)

    methods = {}
    for name in (m.name for m in cfg.methods):
        student = copy.deepcopy(teacher)
        torch.manual_seed(streams["reinit"])  # nn.Linear.reset_parameters (RIFLE's re-init) draws from it
        if cfg.finetune.head_init == "random":
            student.head.reset_parameters()
        rows = fit(student, *tasks.target, cfg.finetune, method(name, cfg.finetune.k),
                   _generator(streams["finetune_batches"]), "finetune", test=tasks.test)
        log += [{"stage": name, **row} for row in rows]
        methods[name] = {"test_mse": mse(student, *tasks.test), "ot": distance(student.hidden.weight)}

    cost = cfg.ot.metric.value + (", unit-norm units" if cfg.ot.normalize else "")
    result = {"status": "done", "seed": cfg.seed, "methods": methods, "ot_cost": cost,
              # Scale of the OT values: the teacher's W1 at its random init and after source pre-training.
              "references": {"ot_init": distance(initial_w1), "ot_teacher": distance(teacher.hidden.weight),
                             "teacher_source_mse": mse(teacher, *tasks.source),
                             "target_label_var": tasks.test[1].var().item()},
              "paper": PAPER}
    return result, log
