"""Reference models, sized for the bundled 8x8 digits (and any other input size)."""

from penjing.models.lenet import LeNet5, LeNet300
from penjing.models.registry import MODELS, get_model, pretrained
from penjing.models.resnet import SmallResNet

__all__ = ["MODELS", "LeNet300", "LeNet5", "SmallResNet", "get_model", "pretrained"]
