"""Data sets by name, as recipes and the command line refer to them."""

from __future__ import annotations

import torch
from torch.utils.data import Subset, TensorDataset

SOURCES = "'digits', 'mnist:PATH', 'cifar10:PATH', 'imagefolder:PATH' or 'tensors:FILE'"


def get_data(spec: str, *, image_size: tuple[int, int] = (224, 224),
             seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """``(train, test)`` for a data spec: ``"digits"`` (bundled), ``"mnist:PATH"``,
    ``"cifar10:PATH"``, ``"imagefolder:PATH"`` (images resized to ``image_size``) or
    ``"tensors:FILE"`` (see :mod:`penjing.data.files`)."""
    from penjing.data import cifar10, digits, mnist
    from penjing.data.files import image_folder, tensor_file

    name, _, path = spec.partition(":")
    if name == "digits":
        return digits()
    loaders = {"mnist": mnist, "cifar10": cifar10,
               "imagefolder": lambda p: image_folder(p, image_size, seed),
               "tensors": lambda p: tensor_file(p, seed)}
    if name in loaders:
        if not path:
            raise ValueError(f"data {spec!r}: give the location, e.g. '{name}:/data/{name}'")
        return loaders[name](path)
    raise ValueError(f"unknown data set {spec!r}: use {SOURCES}")


def validation_split(train, fraction: float = 0.1, seed: int = 0):
    """``(train_part, validation)``: a seeded hold-out carved from the training data.

    Every choice a recipe or a sensitivity scan makes is measured on the validation part, so
    the test split stays untouched for the figure that is reported.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    n = len(train)
    held = max(1, int(round(n * fraction)))
    if held >= n:
        raise ValueError(f"{n} training sample(s) are too few to hold out a validation split")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))
    keep, val = order[held:].sort().values, order[:held].sort().values
    if isinstance(train, TensorDataset):
        return (TensorDataset(*(t[keep] for t in train.tensors)),
                TensorDataset(*(t[val] for t in train.tensors)))
    return Subset(train, keep.tolist()), Subset(train, val.tolist())
