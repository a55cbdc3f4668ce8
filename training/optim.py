"""Optimizers with named parameter groups: `backbone` and `heads`.

The backbone group holds only the trainable parameters of encoder bodies, at their own
learning rate; everything else that trains is `heads`. Frozen parameters never enter the
optimizer, and an empty backbone group is omitted rather than kept silently empty.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def backbone_modules_of(model: nn.Module) -> list[nn.Module]:
    """The bodies of every ResNetEncoder inside `model`."""
    from encoders import ResNetEncoder

    return [m.backbone for m in model.modules() if isinstance(m, ResNetEncoder)]


def split_parameters(
    model: nn.Module, backbone_modules: Iterable[nn.Module] | None = None
) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Trainable parameters split into (backbone, heads), each listed once."""
    modules = backbone_modules_of(model) if backbone_modules is None else list(backbone_modules)
    backbone_ids = {id(p) for m in modules for p in m.parameters()}
    backbone, heads = [], []
    for param in model.parameters():  # deduplicated: shared modules appear once
        if not param.requires_grad:
            continue
        (backbone if id(param) in backbone_ids else heads).append(param)
    return backbone, heads


def build_optimizer(
    model: nn.Module,
    *,
    backbone_lr: float,
    head_lr: float,
    kind: str = "adam",
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    backbone_modules: Iterable[nn.Module] | None = None,
) -> torch.optim.Optimizer:
    """Fused Adam/AdamW over named groups `backbone` (omitted when empty) and `heads`."""
    backbone, heads = split_parameters(model, backbone_modules)
    groups = []
    if backbone:
        groups.append(
            {"name": "backbone", "params": backbone, "lr": backbone_lr, "base_lr": backbone_lr}
        )
    if heads:
        groups.append({"name": "heads", "params": heads, "lr": head_lr, "base_lr": head_lr})
    if not groups:
        raise ValueError("the model has no trainable parameters; check freeze settings")
    classes = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    if kind not in classes:
        raise ValueError(f"unknown optimizer {kind!r}; choose adam or adamw")
    # Fused: one kernel per step, and it can skip a step on a device-side flag, which is
    # how training.guards holds the weights on a non-finite gradient without a host sync.
    return classes[kind](groups, eps=eps, weight_decay=weight_decay, betas=betas, fused=True)


def scale_learning_rates(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Set every group's lr to factor x its base lr (annealing / warm-up schedules)."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
