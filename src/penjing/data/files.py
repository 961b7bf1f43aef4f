"""Data from the user's own files: a folder of images, or a file of tensors.

* ``imagefolder:PATH``: ``PATH/<class>/<image>`` (one sub-folder per class, sorted names are
  the labels), or ``PATH/train/<class>/...`` and ``PATH/test/<class>/...``. Read with Pillow
  (no torchvision), converted to RGB, resized to ``size`` (the model's input size), scaled to
  [0, 1]. Without a ``train``/``test`` split, a seeded 80/20 split is made per class.
* ``tensors:FILE``: a ``.safetensors`` file (or a ``.pt`` file, read with
  ``weights_only=True``) holding ``x`` and ``y`` (split 80/20, seeded) or ``train_x``,
  ``train_y``, ``test_x``, ``test_y``. ``x`` may be token ids (int64) or features of any shape.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import TensorDataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
#: images read from one folder at most: they are held in memory as float32
MAX_IMAGES = 200_000


def _split(x: torch.Tensor, y: torch.Tensor, seed: int, fraction: float = 0.2):
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=g)
    cut = int(round(len(x) * (1 - fraction)))
    if cut == 0 or cut == len(x):
        raise ValueError(f"{len(x)} sample(s) cannot be split into train and test: give at least 2")
    train, test = order[:cut], order[cut:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test])


def _read_classes(root: Path, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    from PIL import Image, UnidentifiedImageError

    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"image folder {root}: expected one sub-folder per class (e.g. {root}/cat/1.png)")
    images, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for path in files:
            if len(images) >= MAX_IMAGES:
                raise ValueError(f"image folder {root}: more than {MAX_IMAGES} images; use a "
                                 "DataLoader from Python for larger sets")
            try:
                with Image.open(path) as img:
                    rgb = img.convert("RGB").resize((size[1], size[0]), Image.BILINEAR)
            except (UnidentifiedImageError, OSError) as exc:
                raise ValueError(f"cannot read image {path}: {exc}") from None
            data = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
            images.append(data.view(size[0], size[1], 3).permute(2, 0, 1).float() / 255)
            labels.append(label)
    if not images:
        raise ValueError(f"image folder {root}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return torch.stack(images), torch.tensor(labels), classes


def image_folder(path: str | Path, size: tuple[int, int] = (224, 224), seed: int = 0):
    """``(train, test)`` TensorDatasets from an image folder (see the module docstring)."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} not found")
    if (root / "train").is_dir() and (root / "test").is_dir():
        x, y, classes = _read_classes(root / "train", size)
        tx, ty, test_classes = _read_classes(root / "test", size)
        if test_classes != classes:
            raise ValueError(f"image folder {root}: train classes {classes} differ from test "
                             f"classes {test_classes}")
        return TensorDataset(x, y), TensorDataset(tx, ty)
    x, y, _ = _read_classes(root, size)
    return _split(x, y, seed)


def tensor_file(path: str | Path, seed: int = 0):
    """``(train, test)`` TensorDatasets from a tensor file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tensor file {path} not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise ValueError(f"{path} is not a safetensors file ({exc})") from None
    else:
        try:
            tensors = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a file that is not a tensor file
            raise ValueError(f"{path} is not a tensor file ({type(exc).__name__}: {exc})") from None
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise ValueError(f"{path} must hold a mapping of names to tensors")
    if {"train_x", "train_y", "test_x", "test_y"} <= set(tensors):
        pairs = [(tensors["train_x"], tensors["train_y"]), (tensors["test_x"], tensors["test_y"])]
        for x, y in pairs:
            _check_pair(path, x, y)
        return TensorDataset(*pairs[0]), TensorDataset(*pairs[1])
    if {"x", "y"} <= set(tensors):
        _check_pair(path, tensors["x"], tensors["y"])
        return _split(tensors["x"], tensors["y"], seed)
    raise ValueError(f"{path} holds {sorted(tensors)}; expected x and y, or train_x, train_y, "
                     "test_x and test_y")


def _check_pair(path: Path, x: torch.Tensor, y: torch.Tensor) -> None:
    if x.dim() == 0 or y.dim() == 0 or len(x) != len(y):
        raise ValueError(f"{path}: inputs and targets must have the same number of samples "
                         f"(got {tuple(x.shape)} and {tuple(y.shape)})")
