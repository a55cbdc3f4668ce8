"""Which parts of a ResNet body each freeze mode freezes, and keeping them frozen.

Frozen means two things: `requires_grad=False`, and the frozen modules in eval mode so
that BatchNorm running statistics never move (and dropout stays off). `requires_grad=False`
alone lets a BN layer in train mode keep updating its running mean/var (and normalise with
batch statistics), which silently changes a "frozen" network.

One mechanism does it for every owner of frozen parts (`ResNetEncoder`, compressed AD):
the owner builds a `FrozenParts` from its frozen submodules, calls `keep_eval(self)` from
its `train()` override (robomimic's `ResNet18Conv.freeze()` style) and answers
`frozen_state_names()` from `state_names(self)`. That method is the `HasFrozenState`
contract, which checkpoints read to record which tensors must never move.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import nn
from torchvision.models import ResNet


@runtime_checkable
class HasFrozenState(Protocol):
    """A module that says which of its state-dict tensors are frozen."""

    def frozen_state_names(self) -> list[str]:
        """State-dict names, relative to this module, of the tensors that never change."""
        ...


@dataclass(frozen=True)
class FrozenParts:
    """The frozen submodules of an owner module, by name relative to the owner.

    Names rather than module references: they survive `copy.deepcopy`, pickling and
    layers being swapped after construction (e.g. SyncBatchNorm conversion).
    """

    names: tuple[str, ...] = ()

    @classmethod
    def freeze(cls, owner: nn.Module, modules: Iterable[nn.Module]) -> FrozenParts:
        """Freeze these submodules of `owner`: no gradient, eval mode; returns the record."""
        name_of = {id(m): n for n, m in owner.named_modules()}
        names = []
        for module in modules:
            if id(module) not in name_of:
                raise ValueError(f"{type(module).__name__} is not a submodule of the owner")
            module.requires_grad_(False)
            module.eval()
            names.append(name_of[id(module)])
        return cls(tuple(names))

    def modules(self, owner: nn.Module) -> list[nn.Module]:
        """The frozen submodules of `owner`."""
        return [owner.get_submodule(name) for name in self.names]

    def keep_eval(self, owner: nn.Module) -> None:
        """Put the frozen submodules back in eval mode (call after `owner.train()`)."""
        for module in self.modules(owner):
            module.eval()

    def state_names(self, owner: nn.Module) -> list[str]:
        """State-dict names relative to `owner` of the frozen parameters and buffers
        (BatchNorm running statistics included)."""
        out = []
        for name in self.names:
            prefix = f"{name}." if name else ""
            out.extend(prefix + key for key in owner.get_submodule(name).state_dict(keep_vars=True))
        return out


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
