"""The encoder core: pretrained ResNet bodies that can be frozen or fine-tuned."""

from encoders.config import Arch, EncoderConfig, FreezeMode, InputAdapter, Pooling
from encoders.freezing import FrozenParts, HasFrozenState
from encoders.resnet import ResNetEncoder
from encoders.weights import ImageNetWeightsUnavailable, imagenet_cache_file

__all__ = [
    "Arch",
    "EncoderConfig",
    "FreezeMode",
    "FrozenParts",
    "HasFrozenState",
    "ImageNetWeightsUnavailable",
    "InputAdapter",
    "Pooling",
    "ResNetEncoder",
    "imagenet_cache_file",
]
