"""L2 and L2-SP exactly as the authors' code: weight decay 1e-4 everywhere, or the starting-point penalty."""

from __future__ import annotations

import pytest
import torch

from rifle_bench import models, regularizers


def make_model():
    torch.manual_seed(0)
    return models.build("resnet18", 4, weights=None)


def test_l2sp_gradient_is_alpha_w_minus_w0_on_backbone_and_beta_w_on_head(compose_cfg):
    model = make_model()
    regularizer = regularizers.build(compose_cfg("regularizer=l2sp").regularizer)
    assert (regularizer.alpha, regularizer.beta, regularizer.weight_decay) == (0.01, 1e-4, 0.0)
    regularizer.attach(model)
    w0 = {name: p.detach().clone() for name, p in model.named_parameters()}
    with torch.no_grad():  # move away from the starting point, as training does
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    # The gradient added equals autograd's gradient of the documented penalty, term by term.
    penalty = 0.5 * 0.01 * sum(((p - w0[n]) ** 2).sum() for n, p in model.named_parameters() if n.startswith("backbone."))
    penalty = penalty + 0.5 * 1e-4 * sum((p ** 2).sum() for n, p in model.named_parameters() if n.startswith("head."))
    expected = dict(zip([n for n, _ in model.named_parameters()], torch.autograd.grad(penalty, list(model.parameters()))))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    regularizer.add_gradients()
    for name, p in model.named_parameters():
        closed_form = 1e-4 * p.detach() if name.startswith("head.") else 0.01 * (p.detach() - w0[name])
        assert torch.allclose(p.grad, closed_form, rtol=1e-6, atol=1e-9), name
        assert torch.allclose(p.grad, expected[name], rtol=1e-5, atol=1e-9), name
    assert regularizer.penalty() == pytest.approx(float(penalty), rel=1e-4)  # fp32 sums in another order


def test_l2sp_includes_batchnorm_parameters_in_the_starting_point():
    model = make_model()
    regularizer = regularizers.L2SP()
    regularizer.attach(model)
    bn_weights = [p for n, p in model.named_parameters() if "bn" in n]
    assert bn_weights and all(any(p is q for q in regularizer.backbone) for p in bn_weights)


def test_l2sp_applies_no_weight_decay_and_l2_decays_every_parameter(compose_cfg):
    l2 = regularizers.build(compose_cfg("regularizer=l2").regularizer)
    assert l2.weight_decay == 1e-4
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0, weight_decay=l2.weight_decay)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in model.named_parameters():  # a zero-gradient step shrinks every parameter by lr * 1e-4
        assert torch.allclose(p, before[name] * (1 - 1e-4)), name


def test_l2sp_alpha_and_beta_are_configurable(compose_cfg):
    regularizer = regularizers.build(compose_cfg("regularizer=l2sp", "regularizer.alpha=0.1",
                                                 "regularizer.beta=0.01").regularizer)
    assert (regularizer.alpha, regularizer.beta) == (0.1, 0.01)
