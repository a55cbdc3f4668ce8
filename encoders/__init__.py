"""The encoder core: pretrained ResNet bodies that can be frozen or fine-tuned."""

from encoders.config import EncoderConfig
from encoders.resnet import ResNetEncoder
from encoders.weights import ImageNetWeightsUnavailable, imagenet_cache_file

__all__ = ["EncoderConfig", "ImageNetWeightsUnavailable", "ResNetEncoder", "imagenet_cache_file"]
