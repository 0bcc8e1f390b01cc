"""Each method pinned to the paper's exact behaviour (DESIGN.md section 3), on both backbone families."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torchvision.models.resnet import BasicBlock
from torchvision.ops import StochasticDepth as DropPath

from rifle_bench import methods, models
from rifle_bench.cli import CONFIG_DIR
from rifle_bench.methods.base import Method, cosine, cyclic_cosine, period_starts
from rifle_bench.methods.cnn_dropout import CNNDropout
from rifle_bench.methods.cyclic_lr import CyclicLR
from rifle_bench.methods.disturb_label import DisturbLabel
from rifle_bench.methods.dropconnect import DropConnect, DropConnectLinear
from rifle_bench.methods.dropout import Dropout
from rifle_bench.methods.rifle import Rifle
from rifle_bench.methods.stochastic_depth import ResidualWithDrop, StochasticDepth
from rifle_bench.regularizers import L2SP

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


def trained_resnet18():
    """A ResNet-18 classifier after one SGD step (momentum buffers exist, BN statistics moved) and its optimizer."""
    torch.manual_seed(0)
    model = tiny_model("resnet18")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_rifle_reinit_resets_weight_and_bias_like_a_fresh_linear_touches_no_backbone_state_keeps_momentum():
    model, optimizer = trained_resnet18()
    with torch.no_grad():
        model.head.weight.fill_(3.0)
        model.head.bias.fill_(3.0)
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}  # parameters and BN statistics
    assert Rifle(k=1).start_epoch(1, 2, model, optimizer)
    bound = 1 / math.sqrt(model.head.in_features)  # nn.Linear.reset_parameters: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    for parameter in (model.head.weight, model.head.bias):
        assert parameter.abs().max() <= bound and parameter.std() > bound / 4
    backbone_after = model.backbone.state_dict()
    assert all(torch.equal(value, backbone_after[key]) for key, value in backbone_before.items())
    assert "momentum_buffer" in optimizer.state[model.head.weight]


def test_rifle_reset_momentum_and_gaussian_init_options():
    model, optimizer = trained_resnet18()
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    Rifle(k=1, init="gaussian", init_std=0.001, reset_momentum=True).start_epoch(1, 2, model, optimizer)
    assert model.head.weight not in optimizer.state and model.head.bias not in optimizer.state
    assert model.head.weight.std().item() == pytest.approx(0.001, rel=0.2)
    assert torch.count_nonzero(model.head.bias) == 0
    backbone_after = model.backbone.state_dict()
    assert all(torch.equal(value, backbone_after[key]) for key, value in backbone_before.items())
    assert all(p in optimizer.state for p in model.backbone.parameters())


# --- dropout family --------------------------------------------------------------------------------------

@pytest.mark.parametrize("backbone", BACKBONES)
def test_dropout_sits_on_the_fc_input(backbone):
    model = tiny_model(backbone)
    Dropout(p=0.2).wrap_model(model)
    assert isinstance(model.head_input, nn.Dropout) and model.head_input.p == 0.2


def dropconnect_masks(p: float, examples: int = 256, inputs: int = 20, outputs: int = 8):
    """The keep-masks a training forward pass drew, read back exactly from its outputs, and the layer.

    With W[o, i] = 2^i, b[o] = 2^inputs and every input 1, output (b, o) times (1-p) is the integer whose bits are
    the mask of example b on row o of [W b]: bit i for weight (o, i), bit `inputs` for the bias."""
    linear = nn.Linear(inputs, outputs)
    with torch.no_grad():
        linear.weight.copy_(2.0 ** torch.arange(inputs).expand(outputs, inputs))
        linear.bias.fill_(2.0 ** inputs)
    layer = DropConnectLinear(linear, p).train()
    out = layer(torch.ones(examples, inputs))
    bits = torch.round(out * (1 - p)).long()
    assert torch.allclose(out, bits / (1 - p))  # each kept weight scaled by exactly 1/(1-p)
    assert 0 <= bits.min() and bits.max() < 2 ** (inputs + 1)
    return (bits.unsqueeze(-1) >> torch.arange(inputs + 1)) & 1, out, layer


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropconnect_draws_a_mask_per_example_over_weights_and_bias(p):
    torch.manual_seed(0)
    keep, _, _ = dropconnect_masks(p)  # examples x outputs x (inputs + bias)
    assert keep.float().mean().item() == pytest.approx(1 - p, abs=0.02)
    # Each weight and the bias, seen across the examples, is kept with probability 1-p: a mask shared by the
    # mini-batch keeps every weight for all examples or for none, an unmasked bias keeps it for all.
    per_connection = keep.float().mean(0)
    assert per_connection.min() > 1 - p - 0.25 and per_connection.max() < 1 - p + 0.25
    assert keep[..., -1].float().mean().item() == pytest.approx(1 - p, abs=0.03)
    # Connections, not inputs, are dropped: one example's input is kept for some outputs and dropped for others.
    weights = keep[..., :-1]
    same_for_all_outputs = (weights.amin(1) == weights.amax(1)).float().mean().item()
    assert same_for_all_outputs < 0.2


def test_dropconnect_backward_follows_each_examples_mask():
    torch.manual_seed(0)
    keep, out, layer = dropconnect_masks(0.5, examples=32)
    out.sum().backward()
    # d(sum of outputs)/dW[o, i] = 1/(1-p) * sum over examples of mask * input (inputs are 1); the bias likewise.
    expected = keep.sum(0).float() / 0.5
    assert torch.equal(layer.weight.grad, expected[:, :-1]) and torch.equal(layer.bias.grad, expected[:, -1])


def test_dropconnect_is_the_plain_layer_at_eval():
    torch.manual_seed(0)
    linear = nn.Linear(64, 10)
    layer = DropConnectLinear(linear, 0.5).eval()
    x = torch.randn(16, 64)
    assert torch.equal(layer(x), nn.functional.linear(x, linear.weight, linear.bias))


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

def test_stochastic_depth_survival_falls_linearly_from_block_1_to_one_half_at_block_L():
    survival = StochasticDepth().survival_probabilities(16)  # ResNet-50 has 16 bottleneck blocks
    assert survival == pytest.approx([1 - (l / 16) * 0.5 for l in range(1, 17)])
    assert survival[0] == pytest.approx(1 - 0.5 / 16) and survival[-1] == 0.5


def wrapped_blocks(model: models.Classifier) -> list[ResidualWithDrop]:
    return [model.backbone.get_submodule(path) for path in model.residual_blocks]


@pytest.mark.parametrize("mode", ["batch", "row"])
@pytest.mark.parametrize("backbone, n_blocks", [("resnet50", 16), ("resnet18", 8), ("mobilenet_v2", 10)])
def test_stochastic_depth_wraps_every_residual_block_in_order(backbone, n_blocks, mode):
    model = tiny_model(backbone)
    StochasticDepth(mode=mode).wrap_model(model)
    blocks = wrapped_blocks(model)
    assert len(blocks) == n_blocks == sum(isinstance(m, ResidualWithDrop) for m in model.modules())
    assert [b.survival for b in blocks] == pytest.approx([1 - (l / n_blocks) * 0.5 for l in range(1, n_blocks + 1)])
    assert all(b.mode == mode for b in blocks)
    if mode == "row":
        assert all(isinstance(b.drop, DropPath) and b.drop.mode == "row" and b.drop.p == pytest.approx(1 - b.survival)
                   for b in blocks)


@pytest.fixture
def one_thread():
    """Hundreds of tiny forward passes: several threads would spend their time waking each other up."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("survival", [0.5, 0.9])
def test_stochastic_depth_batch_mode_runs_the_branch_with_the_survival_probability(survival, one_thread):
    torch.manual_seed(0)
    block = BasicBlock(2, 2)
    runs = []
    block.conv1.register_forward_hook(lambda *_: runs.append(1))
    wrapped = ResidualWithDrop(block, survival, mode="batch").train()
    steps = 400
    with torch.no_grad():
        for _ in range(steps):
            wrapped(torch.randn(2, 2, 2, 2))
    assert len(runs) / steps == pytest.approx(survival, abs=4 * math.sqrt(survival * (1 - survival) / steps))


def resnet_block_parts(block, x):
    """(residual branch, shortcut) of a torchvision BasicBlock in its current mode, from its own layers."""
    branch = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x)))))
    return branch, x if block.downsample is None else block.downsample(x)


def test_stochastic_depth_batch_mode_keeps_or_drops_the_branch_for_the_whole_mini_batch_unscaled():
    torch.manual_seed(0)
    block = tiny_model("resnet18").backbone.layer2[0]  # has a downsampling shortcut
    x = torch.randn(8, 64, 8, 8)
    wrapped = ResidualWithDrop(block, survival=0.5, mode="batch").train()
    with torch.no_grad():
        branch, shortcut = resnet_block_parts(block, x)
        kept, dropped = torch.relu(branch + shortcut), torch.relu(shortcut)
        outcomes = []
        for _ in range(24):
            out = wrapped(x)
            rows_kept = [torch.allclose(o, k, atol=1e-5) for o, k in zip(out, kept)]
            rows_dropped = [torch.allclose(o, d, atol=1e-5) for o, d in zip(out, dropped)]
            assert all(a != b for a, b in zip(rows_kept, rows_dropped))  # each row is one of the two
            assert all(rows_kept) or all(rows_dropped)  # one decision for the whole mini-batch
            outcomes.append(all(rows_kept))
    assert 3 < sum(outcomes) < 21


def test_stochastic_depth_row_mode_gates_each_example_and_scales_kept_branches_by_1_over_survival():
    torch.manual_seed(0)
    block = tiny_model("resnet18").backbone.layer1[0]
    x = torch.randn(64, 64, 4, 4)
    wrapped = ResidualWithDrop(block, survival=0.5, mode="row").train()
    with torch.no_grad():
        branch, shortcut = resnet_block_parts(block, x)
        out = wrapped(x)
    kept = [torch.allclose(o, k, atol=1e-5) for o, k in zip(out, torch.relu(branch / 0.5 + shortcut))]
    dropped = [torch.allclose(o, d, atol=1e-5) for o, d in zip(out, torch.relu(shortcut))]
    assert all(a != b for a, b in zip(kept, dropped)) and 16 < sum(kept) < 48


@pytest.mark.parametrize("backbone", BACKBONES)
def test_stochastic_depth_batch_mode_scales_each_branch_by_its_survival_at_test_time(backbone):
    torch.manual_seed(0)
    # Reference: the plain network with each residual branch's last BatchNorm (affine at eval) multiplied by p_l.
    plain = tiny_model(backbone).eval()
    reference, wrapped = tiny_model(backbone).eval(), tiny_model(backbone)
    reference.load_state_dict(plain.state_dict())
    wrapped.load_state_dict(plain.state_dict())
    StochasticDepth(mode="batch").wrap_model(wrapped)
    wrapped.eval()
    for path, block in zip(reference.residual_blocks, wrapped_blocks(wrapped)):
        original = reference.backbone.get_submodule(path)
        last_bn = original.conv[-1] if hasattr(original, "conv") else getattr(original, "bn3", original.bn2)
        with torch.no_grad():
            last_bn.weight.mul_(block.survival)
            last_bn.bias.mul_(block.survival)
    x = torch.randn(2, 3, 32, 32)

    def relative_difference(a, b):  # of the features: a random-init MobileNetV2's are ~1e-9
        return ((a - b).norm() / b.norm()).item()

    with torch.no_grad():
        features = wrapped.backbone(x)
        assert relative_difference(features, reference.backbone(x)) < 1e-4
        assert relative_difference(features, plain.backbone(x)) > 1e-2


@pytest.mark.parametrize("backbone", BACKBONES)
def test_stochastic_depth_row_mode_is_the_plain_block_at_eval(backbone):
    torch.manual_seed(0)
    plain = tiny_model(backbone).eval()
    wrapped = tiny_model(backbone)
    wrapped.load_state_dict(plain.state_dict())
    StochasticDepth(mode="row").wrap_model(wrapped)
    wrapped.eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(plain(x), wrapped(x), atol=1e-5)


@pytest.mark.parametrize("mode", ["batch", "row"])
def test_stochastic_depth_skipped_branches_still_get_weight_decay_and_the_l2sp_pull(mode):
    torch.manual_seed(0)
    model = tiny_model("resnet18")
    StochasticDepth(last_survival=1e-6, mode=mode).wrap_model(model)  # the last block is (almost surely) dropped
    l2sp = L2SP(alpha=0.1, beta=0.0)
    optimizer = torch.optim.SGD(l2sp.param_groups(model), lr=0.1, momentum=0.9)
    last = model.backbone.layer4[-1].block
    with torch.no_grad():
        last.conv2.weight.add_(1.0)  # away from w0: the pull has something to do
    before = last.conv2.weight.detach().clone()
    model.train()
    nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
    assert all(p.grad is not None for p in model.parameters())
    assert torch.count_nonzero(last.conv2.weight.grad) == 0  # the branch did not run
    l2sp.add_gradients()
    optimizer.step()
    assert torch.allclose(before - last.conv2.weight.detach(), torch.full_like(before, 0.1 * 0.1 * 1.0), atol=1e-6)


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


# --- paper grids (DESIGN.md section 3), read from the shipped configs -----------------------------------------

PAPER_GRIDS = {"original": {}, "dropout": {"p": [0.1, 0.2, 0.5]}, "dropconnect": {"p": [0.1, 0.2, 0.5]},
               "cnn_dropout": {"p": [0.1, 0.2, 0.5]}, "stochastic_depth": {}, "cyclic_lr": {"n_cycles": [2, 3, 4]},
               "disturb_label": {"alpha": [0.05, 0.1, 0.2]}, "rifle": {"k": [1, 2, 3]}, "rifle_a": {"k": [1, 2, 3]},
               "rifle_b": {"k": [1, 2, 3]}}


@pytest.mark.parametrize("key", METHOD_KEYS)
def test_each_shipped_method_config_holds_the_papers_grid(compose_cfg, key):
    assert set(METHOD_KEYS) == set(PAPER_GRIDS)
    shipped = OmegaConf.load(Path(CONFIG_DIR) / "method" / f"{key}.yaml")
    assert OmegaConf.to_container(shipped.grid) == PAPER_GRIDS[key]
    composed = compose_cfg(f"method={key}").method
    assert OmegaConf.to_container(composed.grid) == PAPER_GRIDS[key]
    assert methods.variant(composed).keys() == PAPER_GRIDS[key].keys()
