"""The encoder's configuration: one frozen dataclass, validated when built.

The Literal aliases (`Arch`, `InputAdapter`, `FreezeMode`, `Pooling`) are what other
configs use for fields that hold these choices, so tyro offers the same choices there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Arch = Literal["resnet18", "resnet34", "resnet50"]
InputAdapter = Literal["repeat3", "1ch_conv", "none"]
FreezeMode = Literal["none", "all", "until_layer3", "last_block"]
Pooling = Literal["avg", "spatial_softmax"]

ARCHS: tuple[str, ...] = get_args(Arch)
INPUT_ADAPTERS: tuple[str, ...] = get_args(InputAdapter)
FREEZE_MODES: tuple[str, ...] = get_args(FreezeMode)
POOLINGS: tuple[str, ...] = get_args(Pooling)
NAMED_WEIGHTS = ("auto", "imagenet", "random")


@dataclass(frozen=True)
class EncoderConfig:
    """A torchvision ResNet body, its weights, its input adapter and what of it is frozen."""

    arch: Arch = "resnet18"
    """ResNet body: resnet18 / resnet34 (512 features) or resnet50 (2048)."""
    weights: str = "auto"
    """auto (ImageNet if cached, else random with a warning) | imagenet | random | PATH."""
    input_adapter: InputAdapter = "none"
    """1-channel images: repeat3 (repeat to RGB) or 1ch_conv (conv1 summed over RGB)."""
    freeze_mode: FreezeMode = "none"
    """none | all | until_layer3 (layer4 trains) | last_block (only layer4[-1] trains)."""
    pooling: Pooling = "avg"
    """Global average pooling, or robomimic-style spatial-softmax keypoints."""
    num_keypoints: int = 32
    """Keypoints of the spatial softmax (features = 2 x num_keypoints)."""

    def __post_init__(self) -> None:
        # tyro enforces the Literals on the command line; code that builds a config by
        # hand gets the same one-line error here.
        for name, value, allowed in (
            ("arch", self.arch, ARCHS),
            ("input_adapter", self.input_adapter, INPUT_ADAPTERS),
            ("freeze_mode", self.freeze_mode, FREEZE_MODES),
            ("pooling", self.pooling, POOLINGS),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
        if not self.weights:
            raise ValueError(f"weights must be one of {', '.join(NAMED_WEIGHTS)} or a PATH, got ''")
        if self.num_keypoints < 1:
            raise ValueError(f"num_keypoints must be >= 1, got {self.num_keypoints}")
