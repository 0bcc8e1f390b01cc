"""Freezing parts of a backbone: no gradient, hence no update (SGD skips a parameter without one), and
BatchNorm statistics kept (its layer in eval mode, re-applied each epoch after the loop's `model.train()`)."""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def set_frozen(modules: list[nn.Module], frozen: bool) -> None:
    """Freeze or unfreeze the modules' own parameters (not their children's); frozen BatchNorm goes to eval."""
    for module in modules:
        for parameter in module.parameters(recurse=False):
            parameter.requires_grad_(not frozen)
        if frozen and isinstance(module, _BatchNorm):
            module.eval()


def conv_layers(backbone: nn.Module) -> list[list[nn.Module]]:
    """The backbone's conv layers in forward order, each with the BatchNorm that normalizes its output
    (the next BatchNorm registered before the next conv, as torchvision's ResNets and MobileNets are built)."""
    layers: list[list[nn.Module]] = []
    for module in backbone.modules():
        if isinstance(module, nn.Conv2d):
            layers.append([module])
        elif isinstance(module, _BatchNorm) and layers and len(layers[-1]) == 1:
            layers[-1].append(module)
    return layers


def leading_modules(backbone: nn.Module, last: str) -> list[nn.Module]:
    """Every module of the backbone up to and including the submodule at path `last` (registration order =
    forward order for torchvision's ResNets and MobileNets)."""
    named = list(backbone.named_modules())
    end = max(i for i, (name, _) in enumerate(named) if name == last or name.startswith(f"{last}."))
    return [module for _, module in named[:end + 1]]
