"""The encoder's configuration: one frozen dataclass, validated when built."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ARCHS = ("resnet18", "resnet34", "resnet50")
INPUT_ADAPTERS = ("repeat3", "1ch_conv", "none")
FREEZE_MODES = ("none", "all", "until_layer3", "last_block")
POOLINGS = ("avg", "spatial_softmax")
NAMED_WEIGHTS = ("auto", "imagenet", "random")


@dataclass(frozen=True)
class EncoderConfig:
    """A torchvision ResNet body, its weights, its input adapter and what of it is frozen."""

    arch: Literal["resnet18", "resnet34", "resnet50"] = "resnet18"
    """ResNet body: resnet18 / resnet34 (512 features) or resnet50 (2048)."""
    weights: str = "auto"
    """auto (ImageNet if cached, else random with a warning) | imagenet | random | PATH."""
    input_adapter: Literal["repeat3", "1ch_conv", "none"] = "none"
    """1-channel images: repeat3 (repeat to RGB) or 1ch_conv (conv1 summed over RGB)."""
    freeze_mode: Literal["none", "all", "until_layer3", "last_block"] = "none"
    """none | all | until_layer3 (layer4 trains) | last_block (only layer4[-1] trains)."""
    pooling: Literal["avg", "spatial_softmax"] = "avg"
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
        if self.num_keypoints < 1:
            raise ValueError(f"num_keypoints must be >= 1, got {self.num_keypoints}")
