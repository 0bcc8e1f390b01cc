"""L2 and L2-SP exactly as the authors' code: weight decay 1e-4 everywhere, or the starting-point penalty."""

from __future__ import annotations

import pytest
import torch

from rifle_bench import models, regularizers


def make_model():
    torch.manual_seed(0)
    return models.build("resnet18", 4, weights=None)


def regularized_step(model, regularizer, lr=1.0):
    """One SGD step with a zero data gradient: the update is the regularizer's gradient alone, times lr."""
    optimizer = torch.optim.SGD(regularizer.param_groups(model), lr=lr, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    regularizer.add_gradients()
    optimizer.step()


def test_l2sp_gradient_is_alpha_w_minus_w0_on_backbone_and_beta_w_on_head_with_no_decay_on_top(compose_cfg):
    model = make_model().double()  # float64: the check measures the update, not fp32 rounding
    regularizer = regularizers.build(compose_cfg("regularizer=l2sp").regularizer)
    assert (regularizer.alpha, regularizer.beta) == (0.01, 1e-4)
    names = [name for name, _ in model.named_parameters()]
    optimizer_groups = regularizer.param_groups(model)  # w0 = the weights now
    w0 = {name: p.detach().clone() for name, p in model.named_parameters()}
    with torch.no_grad():  # move away from the starting point, as training does
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    # autograd's gradient of the documented penalty, term by term
    penalty = 0.5 * 0.01 * sum(((p - w0[n]) ** 2).sum() for n, p in model.named_parameters() if n.startswith("backbone."))
    penalty = penalty + 0.5 * 1e-4 * sum((p ** 2).sum() for n, p in model.named_parameters() if n.startswith("head."))
    expected = dict(zip(names, torch.autograd.grad(penalty, list(model.parameters()))))
    assert regularizer.penalty() == pytest.approx(penalty.item(), rel=1e-9)

    optimizer = torch.optim.SGD(optimizer_groups, lr=1.0, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    regularizer.add_gradients()
    optimizer.step()
    for name, p in model.named_parameters():
        update = before[name] - p.detach()
        closed_form = 1e-4 * before[name] if name.startswith("head.") else 0.01 * (before[name] - w0[name])
        assert torch.allclose(update, closed_form, rtol=1e-9, atol=1e-12), name
        assert torch.allclose(update, expected[name], rtol=1e-9, atol=1e-12), name


def test_l2sp_starting_point_covers_every_backbone_parameter_batchnorm_included():
    model = make_model()
    regularizer = regularizers.L2SP()
    regularizer.param_groups(model)
    bn_weights = [p for n, p in model.named_parameters() if "bn" in n]
    assert bn_weights and all(any(p is q for q in regularizer.backbone) for p in bn_weights)
    assert len(regularizer.starting_point) == len(list(model.backbone.parameters()))


def test_l2sp_leaves_the_pretrained_weights_where_they_are():
    model = make_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    regularized_step(model, regularizers.L2SP())
    for name, p in model.named_parameters():  # at w = w0 the backbone feels no pull; the head decays by beta
        expected = before[name] * (1 - 1e-4) if name.startswith("head.") else before[name]
        assert torch.allclose(p, expected, atol=1e-7), name


def test_l2_decays_every_parameter_by_1e_4(compose_cfg):
    regularizer = regularizers.build(compose_cfg("regularizer=l2").regularizer)
    assert regularizer.weight_decay == 1e-4
    model = make_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    regularized_step(model, regularizer)
    for name, p in model.named_parameters():
        assert torch.allclose(p, before[name] * (1 - 1e-4)), name


def test_l2sp_alpha_and_beta_are_configurable(compose_cfg):
    regularizer = regularizers.build(compose_cfg("regularizer=l2sp", "regularizer.alpha=0.1",
                                                 "regularizer.beta=0.01").regularizer)
    assert (regularizer.alpha, regularizer.beta) == (0.1, 0.01)
