"""Gradient-flow and frozen-weight diagnostics.

`grad_norms` answers "does the backbone receive gradient, and how much next to the
heads?"; `frozen_tensors_that_moved` answers "is what I froze still what I loaded?".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from encoders.freezing import HasFrozenState


def grad_norms(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """L2 norm of the gradients of each named group, and of all of them (after backward).

    0-d tensors on the parameters' device: reading them is left to whoever logs them,
    so that a training step needs no host sync.
    """
    norms: dict[str, torch.Tensor] = {}
    for group in optimizer.param_groups:
        norms[f"grad/{group.get('name', 'group')}_norm"] = tensor_grad_norms(group).float().norm()
    if not norms:
        return {}
    norms["grad/total_norm"] = torch.stack(list(norms.values())).norm()
    return norms


def tensor_grad_norms(group: dict) -> torch.Tensor:
    """The L2 norm of each gradient in a parameter group (one fused kernel); empty if none."""
    grads = [p.grad.detach() for p in group["params"] if p.grad is not None]
    if not grads:
        device = group["params"][0].device if group["params"] else torch.device("cpu")
        return torch.zeros(0, device=device)
    return torch.stack(torch._foreach_norm(grads))


def frozen_parameter_names(model: nn.Module) -> list[str]:
    """State-dict names of frozen tensors, in state-dict order: every parameter without
    gradient, and what each `HasFrozenState` module inside says is frozen (the buffers of
    its frozen parts, e.g. BatchNorm running statistics, included)."""
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    for module_name, module in model.named_modules():
        if isinstance(module, HasFrozenState):
            prefix = f"{module_name}." if module_name else ""
            frozen.update(prefix + name for name in module.frozen_state_names())
    return [name for name in model.state_dict(keep_vars=True) if name in frozen]


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
