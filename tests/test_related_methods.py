"""The related methods of the seed papers: DTNH never-hurt gradients, the ImageNet FC kept, random freezing + MPI."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
import torchvision

from conftest import TINY
from rifle_bench import models, regularizers, train
from rifle_bench.report import write_report
from rifle_bench.methods.keep_imagenet_fc import KeepImagenetFC, L2NormScale
from rifle_bench.methods.random_freeze import AUTHORS_RATES, RandomFreeze, RidgeAccumulator, blend_weights
from rifle_bench.regularizers import NeverHurt


def flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def model_and_batch(num_classes=5, seed=0):
    torch.manual_seed(seed)
    model = models.build("mobilenet_v2", num_classes, weights=None)
    return model, torch.randn(6, 3, 32, 32), torch.randint(num_classes, (6,))


def sgd_steps(model, regularizer, images, labels, steps=2):
    optimizer = torch.optim.SGD(regularizer.param_groups(model), lr=0.1, momentum=0.9)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        regularizer.add_gradients()
        optimizer.step()


# --- DTNH ------------------------------------------------------------------------------------------------

def test_never_hurt_on_hand_built_2d_gradients():
    conflict = [torch.tensor([1.0, 0.0])]
    NeverHurt().combine(conflict, [torch.tensor([-1.0, 1.0])], [0])
    assert conflict[0].tolist() == [1.0, 1.0]  # g_r's part along -g_e removed
    agree = [torch.tensor([1.0, 0.0])]
    NeverHurt().combine(agree, [torch.tensor([1.0, 1.0])], [0])
    assert agree[0].tolist() == [2.0, 1.0]  # no conflict: the plain sum


def test_never_hurt_conflicting_step_is_the_projected_formula_and_orthogonal_to_the_loss_gradient():
    torch.manual_seed(0)
    loss_grads = [torch.randn(4, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)]
    reg_grads = [-2.0 * g + 0.3 * torch.randn_like(g) for g in loss_grads]  # conflict over the whole vector
    g_e, g_r = flat(loss_grads), flat(reg_grads)
    assert g_e @ g_r < 0
    expected = g_e + g_r - (g_r @ g_e) / (g_e @ g_e) * g_e
    dtnh = NeverHurt()
    combined = [g.clone() for g in loss_grads]
    dtnh.combine(combined, reg_grads, [0, 1])
    d = flat(combined)
    assert torch.allclose(d, expected, rtol=1e-12, atol=1e-12)
    assert abs(float((d - g_e) @ g_e)) < 1e-10  # the regularizer's part is orthogonal to the loss gradient
    assert float(d @ g_e) == pytest.approx(float(g_e @ g_e))  # the loss decreases as under plain ERM, to first order
    metrics = dtnh.epoch_metrics()
    assert metrics["dtnh_fired"] == 1.0
    assert metrics["dtnh_cos"] == pytest.approx(float(g_e @ g_r / (g_e.norm() * g_r.norm())), abs=1e-6)


def test_never_hurt_per_layer_projects_only_the_conflicting_layer():
    loss_grads = [torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])]
    reg_grads = [torch.tensor([-1.0, 1.0]), torch.tensor([3.0, 0.0])]  # global <g_r, g_e> = 2 > 0
    whole, per_layer = [g.clone() for g in loss_grads], [g.clone() for g in loss_grads]
    NeverHurt("global").combine(whole, reg_grads, [0, 1])
    layer = NeverHurt("layer")
    layer.combine(per_layer, reg_grads, [0, 1])
    assert [g.tolist() for g in whole] == [[0.0, 1.0], [4.0, 0.0]]  # no global conflict: plain sum
    assert [g.tolist() for g in per_layer] == [[1.0, 1.0], [4.0, 0.0]]
    assert layer.epoch_metrics()["dtnh_fired"] == 0.5  # one layer of two, in one step


def test_never_hurt_l2sp_without_conflict_steps_exactly_like_plain_l2sp():
    """Loss gradients aligned with the L2-SP gradient: DTNH's explicit gradient = the fused weight-decay path."""
    states = []
    for never_hurt in (False, True):
        model, _, _ = model_and_batch()
        model.double()
        regularizer = regularizers.L2SP(alpha=0.01, beta=1e-4, never_hurt=never_hurt)
        optimizer = torch.optim.SGD(regularizer.param_groups(model), lr=1.0, momentum=0.9)
        torch.manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        for p, w0 in zip(regularizer.backbone, regularizer.starting_point):  # g_e = 3 alpha (w - w0): along g_r
            p.grad = 3 * 0.01 * (p.detach() - w0)
        for p in model.head.parameters():
            p.grad = 3 * 1e-4 * p.detach().clone()
        regularizer.add_gradients()
        optimizer.step()
        states.append({name: p.detach().clone() for name, p in model.named_parameters()})
        if never_hurt:
            assert regularizer.epoch_metrics()["dtnh_fired"] == 0.0
    for name in states[0]:
        assert torch.allclose(states[0][name], states[1][name], rtol=1e-12, atol=1e-15), name


def test_never_hurt_l2_with_opposing_loss_gradient_keeps_only_the_orthogonal_part():
    model, _, _ = model_and_batch()
    regularizer = regularizers.L2(weight_decay=1e-4, never_hurt=True)
    groups = regularizer.param_groups(model)
    assert all(group["weight_decay"] == 0.0 for group in groups)  # DTNH computes the decay itself
    params = list(model.parameters())
    torch.manual_seed(2)
    loss_grads = [-5e-4 * p.detach() + 1e-5 * torch.randn_like(p) for p in params]
    for p, g in zip(params, loss_grads):
        p.grad = g.clone()
    regularizer.add_gradients()
    g_e, g_r = flat(loss_grads).double(), 1e-4 * flat(params).detach().double()
    d = flat([p.grad for p in params]).double()
    assert g_e @ g_r < 0
    assert torch.allclose(d, g_e + g_r - (g_r @ g_e) / (g_e @ g_e) * g_e, rtol=1e-4, atol=1e-9)
    assert abs(float((d - g_e) @ g_e)) < 1e-5 * float(g_e @ g_e)


def test_random_freeze_run_with_dtnh_logs_frozen_layers_and_fired_fraction(compose_cfg, tmp_path):
    """A real run: frozen counts follow the stretched schedule, DTNH's fired fraction is a fraction, MPI ran."""
    cfg = compose_cfg(*TINY, "method=random_freeze", "regularizer=l2sp",
                      "regularizer.never_hurt=true", "seed=3")
    result = train.run(cfg, tmp_path)
    with open(tmp_path / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    method = RandomFreeze()
    method.seed, method.layers = 3, [None] * 52  # the run seed; MobileNetV2's conv layers
    assert [int(row["frozen_count"]) for row in rows] == [0, 26]  # rates 1 and .5: the 8 stretched over 2 epochs
    assert [row["frozen_layers"] for row in rows] == [" ".join(map(str, method.frozen_layers(e, 2))) for e in range(2)]
    for row in rows:
        assert 0.0 <= float(row["dtnh_fired"]) <= 1.0 and -1.0 <= float(row["dtnh_cos"]) <= 1.0
        assert float(row["mpi_s"]) > 0
    assert 0 <= result["test_acc"] <= 100


# --- the ImageNet classification layer kept -----------------------------------------------------------

@pytest.fixture
def pretrained_file(tmp_path):
    """A stand-in for ImageNet weights: a random MobileNetV2 (1000-way classifier included), saved to a file."""
    torch.manual_seed(5)
    network = torchvision.models.mobilenet_v2()
    path = tmp_path / "pretrained.pth"
    torch.save(network.state_dict(), path)
    return network.eval(), path


def test_kept_1000_way_layer_starts_as_the_pretrained_one_and_the_backbone_ends_in_its_logits(pretrained_file):
    network, path = pretrained_file
    model = models.build("mobilenet_v2", 7, str(path))
    KeepImagenetFC(hidden=(16,)).wrap_model(model)
    source_head = model.backbone.source_head
    assert torch.equal(source_head.weight, network.classifier[1].weight)
    assert torch.equal(source_head.bias, network.classifier[1].bias)
    images = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model.backbone(images), network(images), atol=1e-5)
        assert model(images).shape == (2, 7)
    assert model.head.in_features == 16 and model.head.out_features == 7  # the target FC is still `head`


def test_l2_normalization_gives_unit_norm_times_the_scale():
    x = torch.randn(8, 1000) * 50
    assert torch.allclose(L2NormScale(1000, 1.0)(x).norm(dim=1), torch.ones(8), atol=1e-6)
    layer = L2NormScale(1000, 10.0)
    assert torch.allclose((layer(x) / layer.scale).norm(dim=1), torch.ones(8), atol=1e-6)
    assert torch.isfinite(layer(torch.zeros(2, 1000))).all()


@pytest.mark.parametrize("regularizer", [regularizers.L2(), regularizers.L2SP()], ids=["l2", "l2sp"])
def test_keep_imagenet_fc_frozen_stages_do_not_move_and_the_rest_trains(regularizer):
    model, images, labels = model_and_batch()
    method = KeepImagenetFC(freeze=2, hidden=(16,))
    method.wrap_model(model)
    frozen = {n: t.clone() for n, t in model.state_dict().items() if n.startswith("backbone.network.features.")
              and int(n.split(".")[3]) <= 3}  # the stem and MobileNetV2's first two stages: features.0-3
    later = {n: t.clone() for n, t in model.state_dict().items() if n.startswith("backbone.network.features.4.")}
    scale = model.head_input[0].scale.detach().clone()
    model.train()
    method.start_epoch(0, 2, model, None)
    sgd_steps(model, regularizer, images, labels)
    state = model.state_dict()
    assert frozen and all(torch.equal(state[n], t) for n, t in frozen.items())  # weights and BN statistics
    assert all(not torch.equal(state[n], t) for n, t in later.items() if t.is_floating_point())
    assert not torch.equal(model.head_input[0].scale, scale)  # the scale learns


# --- random freezing + Moore-Penrose FC ----------------------------------------------------------------

def freezer(seed=0, **options):
    """A RandomFreeze wrapped around a model built as train.run builds it: after torch.manual_seed(run seed)."""
    model, images, labels = model_and_batch(seed=seed)
    method = RandomFreeze(**options)
    method.wrap_model(model)
    return method, model, images, labels


def test_frozen_sets_are_reproducible_per_seed_and_counts_follow_the_stretched_schedule():
    method, _, _, _ = freezer(seed=7)
    assert len(method.layers) == 52  # every conv of MobileNetV2, each with its BatchNorm
    again, _, _, _ = freezer(seed=7)
    other, _, _, _ = freezer(seed=8)
    assert [method.frozen_layers(e, 8) for e in range(8)] == [again.frozen_layers(e, 8) for e in range(8)]
    assert [method.frozen_layers(e, 8) for e in range(8)] != [other.frozen_layers(e, 8) for e in range(8)]
    assert [len(method.frozen_layers(e, 8)) for e in range(8)] == [0, 0, 13, 13, 26, 26, 39, 39]
    assert [method.rate(e, 16) for e in range(16)] == [r for r in AUTHORS_RATES for _ in range(2)]
    assert [method.rate(e, 4) for e in range(4)] == [1.0, 0.75, 0.5, 0.25]


@pytest.mark.parametrize("regularizer", [regularizers.L2(), regularizers.L2SP(),
                                         regularizers.L2SP(never_hurt=True)], ids=["l2", "l2sp", "l2sp-dtnh"])
def test_frozen_layers_are_bit_identical_after_training_steps(regularizer):
    method, model, images, labels = freezer(seed=1)
    model.train()
    method.start_epoch(6, 8, model, None)  # rate 0.25: 39 of 52 conv layers frozen
    frozen = [m for i in method.frozen for m in method.layers[i]]
    active = [m for i, layer in enumerate(method.layers) if i not in method.frozen for m in layer]
    before = [{n: t.clone() for n, t in m.state_dict().items()} for m in frozen + active]
    sgd_steps(model, regularizer, images, labels)
    after = [m.state_dict() for m in frozen + active]
    for b, a in zip(before[:len(frozen)], after[:len(frozen)]):
        assert all(torch.equal(b[n], a[n]) for n in b)  # weights, BN weights and running statistics
    moved = [not torch.equal(b["weight"], a["weight"]) for b, a in zip(before[len(frozen):], after[len(frozen):])]
    assert sum(moved) == len(moved)
    method.start_epoch(0, 8, model, None)  # rate 1: everything trains again
    assert all(p.requires_grad for p in model.parameters())


def test_ridge_solve_equals_the_closed_form_and_lstsq():
    rng = np.random.default_rng(0)
    features, labels = rng.normal(size=(40, 6)), rng.integers(0, 3, size=40)
    targets = 2.0 * np.eye(3)[labels] - 1.0
    for c in (0.5, 1e12):
        ridge = RidgeAccumulator(6, 3, c, torch.device("cpu"), dtype=torch.float64)
        ridge.add(torch.from_numpy(features), torch.from_numpy(labels))
        closed_form = np.linalg.solve(features.T @ features + np.eye(6) / c, features.T @ targets)
        np.testing.assert_allclose(ridge.solve().numpy(), closed_form, rtol=1e-10, atol=1e-12)
    least_squares = np.linalg.lstsq(features, targets, rcond=None)[0]
    np.testing.assert_allclose(ridge.solve().numpy(), least_squares, rtol=1e-8, atol=1e-10)  # C -> infinity


def test_batch_accumulation_equals_the_one_shot_solve():
    torch.manual_seed(0)
    features, labels = torch.rand(50, 12, dtype=torch.float64), torch.randint(4, (50,))
    one_shot = RidgeAccumulator(12, 4, 2.0, torch.device("cpu"), dtype=torch.float64)
    one_shot.add(features, labels)
    batched = RidgeAccumulator(12, 4, 2.0, torch.device("cpu"), dtype=torch.float64)
    for chunk in torch.tensor_split(torch.arange(50), [3, 10, 11, 30, 44]):  # uneven batches
        batched.add(features[chunk], labels[chunk])
    assert torch.allclose(batched.solve(), one_shot.solve(), rtol=1e-12, atol=1e-12)


def test_mpi_blends_the_fc_weights_and_leaves_the_bias():
    head = torch.nn.Linear(12, 4).double()
    weight, bias = head.weight.detach().clone(), head.bias.detach().clone()
    solution = torch.randn(12, 4, dtype=torch.float64)
    blend_weights(head, solution, 0.5)
    assert torch.allclose(head.weight, 0.5 * weight + 0.5 * solution.T)
    assert torch.equal(head.bias, bias)


def test_mpi_from_training_passes_accumulates_the_features_of_each_training_forward():
    method, model, images, labels = freezer(mpi_features="train")
    features = []
    model.head.register_forward_pre_hook(lambda head, inputs: features.append(inputs[0].detach().clone()))
    expected = RidgeAccumulator(model.head.in_features, 5, 1.0, torch.device("cpu"))
    model.train()
    method.start_epoch(0, 8, model, None)
    for chunk in (slice(0, 4), slice(4, 6)):  # as the training loop: targets, then the forward pass
        method.targets(labels[chunk], 5)
        model(images[chunk])
        expected.add(features[-1], labels[chunk])
    model.eval()
    model(images)  # evaluation forwards are not training features
    assert torch.allclose(method._ridge.gram, expected.gram) and torch.allclose(method._ridge.cross, expected.cross)
    weight = model.head.weight.detach().clone()
    method.end_epoch(model, None)
    assert torch.allclose(model.head.weight, 0.5 * weight + 0.5 * expected.solve().T.float(), atol=1e-6)


# --- Table 3 -----------------------------------------------------------------------------------------------

def test_table3_shows_the_related_methods_beside_original_and_rifle_without_paper_rows(tmp_path):
    from test_report import markdown_header, markdown_row, write_group  # the report tests' run-directory fakes

    sweep = tmp_path / "sweep"
    write_group(sweep, [70.0, 71.0], dataset="cub", method="original")
    write_group(sweep, [72.0, 72.5], dataset="cub", method="rifle", variant={"k": 3})
    write_group(sweep, [73.0, 73.4], dataset="cub", method="keep_imagenet_fc", variant={"freeze": 1})
    write_group(sweep, [69.0, 70.0], dataset="cub", method="random_freeze", variant={"mpi": True})
    summary = write_report([sweep], tmp_path / "out")
    table3 = (tmp_path / "out" / "table3.md").read_text()
    assert markdown_header(table3) == ["Regularizer", "Dataset", "Original", "RIFLE", "KeepFC", "RandFreeze"]
    assert markdown_row(table3, "CUB-200-2011")[2:] == ["70.50±0.71", "72.25±0.35", "**73.20±0.28**", "69.50±0.71"]
    assert "(paper)" not in table3 and "no paper prints numbers" in table3
    table1 = (tmp_path / "out" / "table1.md").read_text()
    assert "KeepFC" not in table1 and "CUB-200-2011 (paper)" in table1  # Table 1 keeps its own columns
    assert "Table 3" in summary.markdown


def test_gradient_norm_probe_leaves_a_frozen_layer_empty():
    weights = {"stage1": torch.nn.Parameter(torch.ones(2, 2)), "stage2": torch.nn.Parameter(torch.ones(3))}
    weights["stage2"].grad = torch.full((3,), 2.0)  # stage1 frozen this epoch: no gradient
    assert train._grad_norms(weights) == {"grad_norm_stage1": None, "grad_norm_stage2": pytest.approx(3 ** 0.5 * 2)}
