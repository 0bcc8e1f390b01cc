"""Each method pinned to the paper's exact behaviour (DESIGN.md section 3), on both backbone families."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchvision.ops import StochasticDepth as DropPath

from rifle_bench import methods, models
from rifle_bench.methods.base import Method, cosine, cyclic_cosine, period_starts
from rifle_bench.methods.cnn_dropout import CNNDropout
from rifle_bench.methods.cyclic_lr import CyclicLR
from rifle_bench.methods.disturb_label import DisturbLabel
from rifle_bench.methods.dropconnect import DropConnect, DropConnectLinear
from rifle_bench.methods.dropout import Dropout
from rifle_bench.methods.rifle import Rifle
from rifle_bench.methods.stochastic_depth import ResidualWithDrop, StochasticDepth

BACKBONES = ["mobilenet_v2", "resnet18", "resnet50"]


def tiny_model(name: str, num_classes: int = 5) -> models.Classifier:
    return models.build(name, num_classes, weights=None)


def schedule(method: Method, epochs: int, lr: float = 0.01):
    """(reinit flags, backbone lrs, head lrs) of a whole run, driving the hooks as the training loop does."""
    model = nn.Module()
    model.head = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.head.parameters(), lr=lr, momentum=0.9)
    reinits, backbone, head = [], [], []
    for epoch in range(epochs):
        reinits.append(method.start_epoch(epoch, epochs, model, optimizer))
        lrs = method.learning_rates(epoch, epochs, lr, cosine(epoch, epochs, lr))
        backbone.append(lrs[0])
        head.append(lrs[1])
    return reinits, backbone, head


# --- schedules -------------------------------------------------------------------------------------------

def test_global_cosine_matches_torch_cosine_annealing_stepped_per_epoch():
    parameter = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.01)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=40)
    for epoch in range(40):
        assert cosine(epoch, 40, 0.01) == pytest.approx(optimizer.param_groups[0]["lr"], abs=1e-12)
        optimizer.step()
        scheduler.step()


def test_period_starts_split_evenly_and_last_period_takes_the_remainder():
    assert period_starts(40, 4) == [0, 10, 20, 30]
    assert period_starts(10, 3) == [0, 3, 6]
    with pytest.raises(ValueError, match="do not fit"):
        period_starts(3, 4)


# --- RIFLE and its ablations -----------------------------------------------------------------------------

def test_rifle_k3_over_40_epochs_reinitializes_at_10_20_30_only():
    reinits, _, _ = schedule(Rifle(k=3), 40)
    assert [e for e, flag in enumerate(reinits) if flag] == [10, 20, 30]


@pytest.mark.parametrize("k, epochs, expected", [(1, 40, [20]), (2, 40, [13, 26]), (3, 10, [2, 4, 6]), (2, 7, [2, 4])])
def test_rifle_makes_exactly_k_reinits_never_inside_the_last_period(k, epochs, expected):
    reinits, _, _ = schedule(Rifle(k=k), epochs)
    assert [e for e, flag in enumerate(reinits) if flag] == expected


def test_rifle_head_lr_restarts_a_pi_cosine_each_period_and_backbone_follows_global_cosine():
    lr = 0.01
    _, backbone, head = schedule(Rifle(k=3), 40, lr)
    for epoch in range(40):
        tau = epoch % 10
        assert head[epoch] == pytest.approx(0.5 * lr * (1 + math.cos(math.pi * tau / 10)))
        assert backbone[epoch] == pytest.approx(0.5 * lr * (1 + math.cos(math.pi * epoch / 40)))
    assert head[10] == head[20] == head[30] == pytest.approx(lr)  # same base lr as the backbone, no 10x


def test_rifle_last_period_absorbs_the_remainder():
    _, _, head = schedule(Rifle(k=2), 10)  # periods start at 0, 3, 6; the last lasts 4 epochs
    assert head[6:] == pytest.approx([0.5 * 0.01 * (1 + math.cos(math.pi * tau / 4)) for tau in range(4)])


def test_rifle_a_reinitializes_without_a_head_cycle():
    reinits, backbone, head = schedule(Rifle(k=3, cyclic_head_lr=False), 40)
    assert [e for e, flag in enumerate(reinits) if flag] == [10, 20, 30]
    assert head == backbone


def test_rifle_b_cycles_the_head_lr_without_reinit():
    reinits, _, head = schedule(Rifle(k=3, reinit=False), 40)
    assert not any(reinits)
    assert head[10] == pytest.approx(0.01) and head[9] < head[0]


def test_rifle_configs_map_to_the_three_variants(compose_cfg):
    expected = {"rifle": (True, True), "rifle_a": (True, False), "rifle_b": (False, True)}
    for key, (reinit, cyclic) in expected.items():
        method = methods.build(compose_cfg(f"method={key}").method)
        assert (method.reinit, method.cyclic_head_lr, method.k) == (reinit, cyclic, 3)


def test_rifle_reinit_resets_the_head_like_a_fresh_linear_and_keeps_momentum_by_default():
    torch.manual_seed(0)
    model = tiny_model("resnet18")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    with torch.no_grad():
        model.head.weight.fill_(3.0)
    backbone_before = [p.detach().clone() for p in model.backbone.parameters()]
    assert Rifle(k=1).start_epoch(1, 2, model, optimizer)
    bound = 1 / math.sqrt(model.head.in_features)  # nn.Linear.reset_parameters: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert model.head.weight.abs().max() <= bound and model.head.weight.std() > bound / 4
    assert all(torch.equal(a, b) for a, b in zip(backbone_before, model.backbone.parameters()))
    assert "momentum_buffer" in optimizer.state[model.head.weight]


def test_rifle_reset_momentum_and_gaussian_init_options():
    model = tiny_model("resnet18")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    Rifle(k=1, init="gaussian", init_std=0.001, reset_momentum=True).start_epoch(1, 2, model, optimizer)
    assert model.head.weight not in optimizer.state
    assert model.head.weight.std().item() == pytest.approx(0.001, rel=0.2)
    assert torch.count_nonzero(model.head.bias) == 0


# --- dropout family --------------------------------------------------------------------------------------

@pytest.mark.parametrize("backbone", BACKBONES)
def test_dropout_sits_on_the_fc_input(backbone):
    model = tiny_model(backbone)
    Dropout(p=0.2).wrap_model(model)
    assert isinstance(model.head_input, nn.Dropout) and model.head_input.p == 0.2


def test_dropconnect_masks_weights_not_inputs_with_fresh_mask_per_step_and_identity_at_eval():
    torch.manual_seed(0)
    model = nn.Module()
    model.head = nn.Linear(200, 50)
    DropConnect(p=0.5).wrap_model(model)
    layer = model.head
    assert isinstance(layer, DropConnectLinear) and isinstance(layer, nn.Linear)
    x = torch.ones(1, 200)

    def effective_weight():  # W' recovered from the outputs of one batch of one-hot inputs
        return (layer(torch.eye(200)) - layer.bias).T

    layer.train()
    first, second = effective_weight(), effective_weight()
    # Every effective weight is either 0 or w/(1-p): a mask on the weights, scaled by 1/(1-p).
    scaled = layer.weight.detach() / 0.5
    for masked in (first, second):
        assert torch.all((masked == 0) | torch.isclose(masked, scaled))
        assert 0.4 < (masked == 0).float().mean() < 0.6
    assert not torch.equal(first == 0, second == 0)  # a new mask each forward pass
    # The input is not dropped: with a batch of identical inputs, each row shares one mask.
    out = layer(x.repeat(4, 1))
    assert torch.allclose(out[0], out[1])
    layer.eval()
    assert torch.allclose(layer(x), x @ layer.weight.T + layer.bias)


def test_dropconnect_keeps_the_same_parameters_for_reinit_and_regularizers():
    model = tiny_model("mobilenet_v2")
    weight = model.head.weight
    DropConnect(p=0.1).wrap_model(model)
    assert model.head.weight is weight


@pytest.mark.parametrize("backbone, n_stages", [("mobilenet_v2", 7), ("resnet18", 4), ("resnet50", 4)])
def test_cnn_dropout_follows_each_backbone_stage(backbone, n_stages):
    model = tiny_model(backbone)
    CNNDropout(p=0.2).wrap_model(model)
    drops = [m for m in model.backbone.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == n_stages and all(d.p == 0.2 for d in drops)
    for path in model.stage_ends:
        wrapped = model.backbone.get_submodule(path)
        assert isinstance(wrapped, nn.Sequential) and isinstance(wrapped[-1], nn.Dropout)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)


# --- stochastic depth ------------------------------------------------------------------------------------

def test_stochastic_depth_probabilities_rise_linearly_to_one_half():
    probabilities = StochasticDepth().drop_probabilities(16)  # ResNet-50 has 16 bottleneck blocks
    assert probabilities == pytest.approx([(l / 16) * 0.5 for l in range(1, 17)])
    assert probabilities[-1] == 0.5


@pytest.mark.parametrize("backbone, n_blocks", [("resnet50", 16), ("resnet18", 8), ("mobilenet_v2", 10)])
def test_stochastic_depth_wraps_every_residual_block_with_torchvision_op(backbone, n_blocks):
    model = tiny_model(backbone)
    StochasticDepth().wrap_model(model)
    wrapped = [m for m in model.backbone.modules() if isinstance(m, ResidualWithDrop)]
    assert len(wrapped) == n_blocks
    assert all(isinstance(w.drop, DropPath) and w.drop.mode == "row" for w in wrapped)
    assert wrapped[-1].drop.p == 0.5 and wrapped[0].drop.p == pytest.approx(0.5 / n_blocks)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_stochastic_depth_is_exact_identity_of_the_block_at_eval(backbone):
    torch.manual_seed(0)
    plain = tiny_model(backbone).eval()
    wrapped = tiny_model(backbone)
    wrapped.load_state_dict(plain.state_dict())
    StochasticDepth().wrap_model(wrapped)
    wrapped.eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(plain(x), wrapped(x), atol=1e-5)


def test_stochastic_depth_drops_whole_residual_branches_per_sample():
    block = tiny_model("resnet18").backbone.layer1[0]
    dropped = ResidualWithDrop(block, p=1.0 - 1e-9).train()  # branch always dropped: out = relu(shortcut)
    x = torch.randn(3, 64, 8, 8)
    assert torch.allclose(dropped(x), torch.relu(x))


# --- DisturbLabel and cyclic lr ---------------------------------------------------------------------------

def test_disturb_label_changes_a_label_with_probability_alpha_times_c_minus_1_over_c():
    torch.manual_seed(0)
    labels = torch.randint(10, (200_000,))
    disturbed = DisturbLabel(alpha=0.2).targets(labels, 10)
    changed = (disturbed != labels).float().mean().item()
    assert changed == pytest.approx(0.2 * 9 / 10, abs=0.004)
    replaced = disturbed[disturbed != labels]
    counts = torch.bincount(replaced, minlength=10).float()
    assert (counts / counts.mean()).sub(1).abs().max() < 0.05  # the new class is uniform


def test_cyclic_lr_restarts_the_whole_network_n_times():
    _, backbone, head = schedule(CyclicLR(n_cycles=4), 40)
    assert backbone == head
    assert [e for e in range(40) if backbone[e] == pytest.approx(0.01)] == [0, 10, 20, 30]
    assert backbone[5] == pytest.approx(cyclic_cosine(5, 40, [0, 10, 20, 30], 0.01)) == pytest.approx(0.005)


def test_original_changes_nothing():
    reinits, backbone, head = schedule(Method(), 10)
    assert not any(reinits) and backbone == head == [cosine(e, 10, 0.01) for e in range(10)]


# --- every method config builds and trains a step on every backbone ----------------------------------------

METHOD_KEYS = ["original", "dropout", "dropconnect", "cnn_dropout", "stochastic_depth", "cyclic_lr",
               "disturb_label", "rifle", "rifle_a", "rifle_b"]


@pytest.mark.parametrize("key", METHOD_KEYS)
def test_every_method_config_builds_with_its_grid(compose_cfg, key):
    cfg = compose_cfg(f"method={key}")
    method = methods.build(cfg.method)
    assert set(methods.variant(cfg.method)) == set(cfg.method.grid)
    for backbone in ("mobilenet_v2", "resnet18"):
        model = tiny_model(backbone)
        method.wrap_model(model)
        logits = model(torch.randn(2, 3, 32, 32))
        loss = nn.functional.cross_entropy(logits, method.targets(torch.tensor([0, 1]), 5))
        loss.backward()
        assert torch.isfinite(loss)
