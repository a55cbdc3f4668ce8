"""Gradient-flow and frozen-weight diagnostics.

`grad_norms` answers "does the backbone receive gradient, and how much next to the
heads?"; `frozen_tensors_that_moved` answers "is what I froze still what I loaded?".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn


def grad_norms(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """L2 norm of the gradients of each named group, and of all of them (after backward)."""
    names, squares = [], []
    for group in optimizer.param_groups:
        grads = [p.grad.detach().float() for p in group["params"] if p.grad is not None]
        sq = sum((g.pow(2).sum() for g in grads), torch.zeros((), device=_device_of(group)))
        names.append(f"grad/{group.get('name', 'group')}_norm")
        squares.append(sq)
    if not squares:
        return {}
    stacked = torch.stack(squares)
    # One host transfer for all groups rather than one per group.
    values = torch.cat([stacked.sqrt(), stacked.sum().sqrt().reshape(1)]).tolist()
    return {**dict(zip(names, values[:-1], strict=True)), "grad/total_norm": values[-1]}


def _device_of(group: dict) -> torch.device:
    return group["params"][0].device if group["params"] else torch.device("cpu")


def frozen_parameter_names(model: nn.Module) -> list[str]:
    """State-dict names of frozen tensors: frozen parameters and pinned BN statistics."""
    names = [n for n, p in model.named_parameters() if not p.requires_grad]
    for module_name, module in model.named_modules():
        if getattr(module, "pinned_eval", False):
            names.extend(f"{module_name}.{b}" for b, _ in module.named_buffers(recurse=False))
    return names


def frozen_tensors_that_moved(
    state: Mapping[str, torch.Tensor],
    source: Mapping[str, torch.Tensor],
    names: Iterable[str],
) -> list[str]:
    """Names whose tensor in `state` is missing or not bit-identical to `source`."""
    moved = []
    for name in names:
        a, b = state.get(name), source.get(name)
        if a is None or b is None or a.shape != b.shape or not torch.equal(a.cpu(), b.cpu()):
            moved.append(name)
    return moved
