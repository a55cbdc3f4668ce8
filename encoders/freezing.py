"""Which parts of a ResNet body each freeze mode freezes, and keeping them frozen.

Frozen means two things: `requires_grad=False`, and BatchNorm layers in eval mode so that
their running statistics never move. `requires_grad=False` alone lets a BN layer in
train mode keep updating its running mean/var (and normalise with batch statistics),
which silently changes a "frozen" network.
"""

from __future__ import annotations

from torch import nn
from torchvision.models import ResNet


def frozen_modules(body: ResNet, freeze_mode: str) -> list[nn.Module]:
    """The top-level pieces of the body that `freeze_mode` freezes."""
    stem = [body.conv1, body.bn1]
    if freeze_mode == "none":
        return []
    if freeze_mode == "all":
        return [body]
    if freeze_mode == "until_layer3":
        return [*stem, body.layer1, body.layer2, body.layer3]
    if freeze_mode == "last_block":
        # Everything but the final residual block layer4[-1].
        return [*stem, body.layer1, body.layer2, body.layer3, *list(body.layer4)[:-1]]
    raise ValueError(f"unknown freeze_mode {freeze_mode!r}")


def _keep_eval(module: nn.Module, _inputs: tuple) -> None:
    # Forward pre-hook on frozen BatchNorm: whoever called .train() on whatever part of the
    # model, this layer normalises with its running statistics and never updates them.
    module.training = False


def freeze(modules: list[nn.Module]) -> list[nn.modules.batchnorm._BatchNorm]:
    """Freeze parameters and pin BatchNorm to eval mode; returns the pinned BN layers."""
    pinned = []
    for part in modules:
        for param in part.parameters():
            param.requires_grad_(False)
        for layer in part.modules():
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                layer.eval()
                layer.register_forward_pre_hook(_keep_eval)
                layer.pinned_eval = True  # read by checkpoint code to list frozen buffers
                pinned.append(layer)
    return pinned
