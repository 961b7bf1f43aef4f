"""Data sets by name, as recipes and the command line refer to them."""

from __future__ import annotations

from torch.utils.data import TensorDataset


def get_data(spec: str) -> tuple[TensorDataset, TensorDataset]:
    """``"digits"`` (bundled), ``"mnist:PATH"`` or ``"cifar10:PATH"`` -> ``(train, test)``."""
    from penjing.data import cifar10, digits, mnist

    name, _, path = spec.partition(":")
    if name == "digits":
        return digits()
    if name in {"mnist", "cifar10"}:
        if not path:
            raise ValueError(f"data {spec!r}: give the folder, e.g. '{name}:/data/{name}'")
        return mnist(path) if name == "mnist" else cifar10(path)
    raise ValueError(f"unknown data set {spec!r}: use 'digits', 'mnist:PATH' or 'cifar10:PATH'")
