"""`ResNetEncoder`: a torchvision ResNet body mapping images in [0, 1] to feature vectors."""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models

from encoders.config import EncoderConfig
from encoders.freezing import FrozenParts, frozen_modules
from encoders.weights import resolve_body_state

_BUILDERS = {"resnet18": models.resnet18, "resnet34": models.resnet34, "resnet50": models.resnet50}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class SpatialSoftmax(nn.Module):
    """robomimic-style keypoints: softmax over space, expected (x, y) per keypoint."""

    def __init__(self, in_channels: int, num_keypoints: int) -> None:
        super().__init__()
        self.keypoints = nn.Conv2d(in_channels, num_keypoints, kernel_size=1)
        self.out_dim = 2 * num_keypoints

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """B x C x H x W feature map -> B x 2K keypoint coordinates in [-1, 1]."""
        logits = self.keypoints(features)
        b, k, h, w = logits.shape
        attention = logits.flatten(2).softmax(dim=-1).view(b, k, h, w)
        ys = torch.linspace(-1.0, 1.0, h, device=features.device, dtype=attention.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=features.device, dtype=attention.dtype)
        x = (attention.sum(dim=2) * xs).sum(dim=-1)
        y = (attention.sum(dim=3) * ys).sum(dim=-1)
        return torch.stack([x, y], dim=-1).flatten(1)


class ResNetEncoder(nn.Module):
    """Images B x C x H x W (float, [0, 1]) -> B x out_dim features.

    `.backbone` is the torchvision body without its fc layer. With pretrained weights the
    input is normalised with the ImageNet statistics; 1-channel input uses their mean over
    RGB for both adapters, which is what makes `1ch_conv` compute exactly `repeat3` at init.
    The parts `cfg.freeze_mode` freezes stay in eval mode; `frozen_state_names()` lists
    their tensors (the `HasFrozenState` contract).
    """

    def __init__(self, cfg: EncoderConfig, in_channels: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.in_channels = in_channels
        self._check_channels(cfg.input_adapter, in_channels)

        body = _BUILDERS[cfg.arch](weights=None)
        del body.fc  # the body ends at the pooled features; no dead classifier parameters
        state, self.weights_source = resolve_body_state(cfg.arch, cfg.weights)
        if state is not None:
            body.load_state_dict(_fit_conv1(state, body), strict=False)
            _check_complete(body, state, self.weights_source)
        self.pretrained = state is not None
        if cfg.input_adapter == "1ch_conv":
            body.conv1 = _one_channel_conv1(body.conv1)
        self.backbone = body

        if self.pretrained:
            mean = torch.tensor(_IMAGENET_MEAN)
            std = torch.tensor(_IMAGENET_STD)
            if in_channels == 1:
                mean, std = mean.mean().reshape(1), std.mean().reshape(1)
        else:
            mean, std = torch.full((in_channels,), 0.5), torch.full((in_channels,), 0.5)
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, -1, 1, 1), persistent=False)

        body_dim = 2048 if cfg.arch == "resnet50" else 512
        self.pool: nn.Module
        if cfg.pooling == "spatial_softmax":
            self.pool = SpatialSoftmax(body_dim, cfg.num_keypoints)
            self.out_dim = self.pool.out_dim
        else:
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.out_dim = body_dim

        self.frozen_parts = FrozenParts.freeze(self, frozen_modules(body, cfg.freeze_mode))
        self._prefix_blocks = _FROZEN_BLOCKS[cfg.freeze_mode](len(self._blocks()))
        self._fixed = self.features_are_fixed

    @property
    def is_frozen(self) -> bool:
        """True when the whole body is frozen (the pooling may still train)."""
        return self.cfg.freeze_mode == "all"

    @property
    def features_are_fixed(self) -> bool:
        """True when nothing in the encoder trains: its features depend on the input alone.

        (freeze_mode=all with a spatial-softmax pool still trains the pool: not fixed.)
        """
        frozen = set(self.frozen_state_names())
        return all(name in frozen for name, _ in self.named_parameters())

    def frozen_state_names(self) -> list[str]:
        """State-dict names (relative to this encoder) of the frozen parameters and buffers."""
        return self.frozen_parts.state_names(self)

    @staticmethod
    def _check_channels(adapter: str, in_channels: int) -> None:
        needed = {"repeat3": 1, "1ch_conv": 1, "none": 3}[adapter]
        if in_channels != needed:
            hint = "input_adapter=none" if in_channels == 3 else "input_adapter=repeat3 or 1ch_conv"
            raise ValueError(
                f"input_adapter={adapter} expects {needed}-channel images but the observation "
                f"has {in_channels} channel(s); use {hint}"
            )

    def train(self, mode: bool = True) -> ResNetEncoder:
        """Switch modes, keeping the frozen parts (and their BatchNorm) in eval mode."""
        super().train(mode)
        self.frozen_parts.keep_eval(self)
        return self

    # ----- the frozen prefix and the trainable suffix -------------------------------------
    # forward = from_prefix(frozen_prefix(images)). What the frozen prefix computes depends
    # on the image alone, so callers that see an image more than once (PPO's epochs over a
    # rollout, fbc's passes over a dataset) compute it once and keep it; the update then
    # runs only the suffix. With the whole encoder frozen the prefix is the pooled feature
    # vector; with until_layer3 / last_block it is the feature map entering the trainable
    # blocks; with none it is the normalised image (nothing worth keeping).

    def _blocks(self) -> list[nn.Module]:
        """The body in order: the stem's four modules, layer1-3, layer4's blocks one by one."""
        b = self.backbone
        return [b.conv1, b.bn1, b.relu, b.maxpool, b.layer1, b.layer2, b.layer3, *b.layer4]

    @property
    def caches_prefix(self) -> bool:
        """Whether the frozen prefix does work worth caching (freeze_mode is not none)."""
        return self._prefix_blocks > 0

    def frozen_prefix(self, images: torch.Tensor) -> torch.Tensor:
        """B x C x H x W in [0, 1] -> what the frozen part of the encoder computes."""
        # Again here: a .train() on the body itself bypasses our override, and a frozen BN
        # layer left in train mode would update its running statistics in this forward.
        self.frozen_parts.keep_eval(self)
        x = (images - self.mean) / self.std
        if self.cfg.input_adapter == "repeat3":
            x = x.expand(-1, 3, -1, -1)
        for block in self._blocks()[: self._prefix_blocks]:
            x = block(x)
        return self.pool(x) if self._fixed else x

    def from_prefix(self, prefix: torch.Tensor) -> torch.Tensor:
        """frozen_prefix's output -> B x out_dim features (runs the trainable suffix)."""
        if self._fixed:
            return prefix
        for block in self._blocks()[self._prefix_blocks :]:
            prefix = block(prefix)
        return self.pool(prefix)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """B x C x H x W in [0, 1] -> B x out_dim."""
        return self.from_prefix(self.frozen_prefix(images))


# How many leading blocks of `_blocks()` (of n) each freeze mode freezes: the stem is four
# modules, then layer1-3, then layer4's blocks. Matches encoders/freezing.frozen_modules.
_FROZEN_BLOCKS = {
    "none": lambda n: 0,
    "all": lambda n: n,
    "until_layer3": lambda n: 7,
    "last_block": lambda n: n - 1,
}


def _fit_conv1(state: dict[str, torch.Tensor], body: nn.Module) -> dict[str, torch.Tensor]:
    """Source conv1 of 1 input channel into a 3-channel body: repeat it / 3 (sum preserved)."""
    weight = state.get("conv1.weight")
    if weight is not None and weight.shape[1] == 1 and body.conv1.weight.shape[1] == 3:
        state = {**state, "conv1.weight": weight.repeat(1, 3, 1, 1) / 3}
    return state


def _one_channel_conv1(conv: nn.Conv2d) -> nn.Conv2d:
    """conv1 for 1-channel input whose filters are the RGB filters summed over channels.

    For a grey image g, the RGB conv applied to (g, g, g) is sum_c W_c * g = (sum_c W_c) * g:
    the same output at a third of the multiply-adds. A random new conv1 (the reference
    design) throws the pretrained first layer away, and freezing it keeps it random.
    """
    new = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False)
    with torch.no_grad():
        new.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
    return new


def _check_complete(body: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Every body tensor must come from the source, or the "pretrained" body is partly random."""
    missing = [
        k for k in body.state_dict() if k not in state and not k.endswith("num_batches_tracked")
    ]
    if missing:
        raise ValueError(
            f"weights from {source} lack {len(missing)} body tensors, e.g. {missing[0]}"
        )
