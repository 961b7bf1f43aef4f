"""Bundled and local data sets, all returned as ``(train, test)`` :class:`TensorDataset` pairs."""

from penjing.data.digits import digits
from penjing.data.local import cifar10, mnist
from penjing.data.registry import get_data, validation_split

__all__ = ["cifar10", "digits", "get_data", "mnist", "validation_split"]
