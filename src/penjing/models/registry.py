"""Reference models by name, and trained baselines cached in the user cache directory."""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from penjing.models import baseline_cache
from penjing.models.lenet import LeNet5, LeNet300
from penjing.models.resnet import SmallResNet

MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet300": LeNet300,
    "lenet5": LeNet5,
    "resnet": SmallResNet,
}

#: How each reference model is trained to its baseline (Adam; epochs over the train split).
BASELINE_EPOCHS = {"lenet300": 60, "lenet5": 40, "resnet": 30}


def get_model(name: str, example: torch.Tensor | None = None) -> nn.Module:
    """Build reference model ``name`` sized for inputs like ``example`` (default: 1x8x8)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; reference models are {sorted(MODELS)}")
    shape = tuple(example.shape[-3:]) if example is not None else (1, 8, 8)
    channels, side = shape[0], shape[-1]
    if name == "lenet300":
        return LeNet300(in_features=int(torch.tensor(shape).prod()))
    if name == "lenet5":
        return LeNet5(in_channels=channels, image_size=side)
    return SmallResNet(in_channels=channels)


def cache_dir() -> Path:
    """Where trained baselines live (``$PENJING_CACHE`` overrides the user cache dir)."""
    if "PENJING_CACHE" in os.environ:
        return Path(os.environ["PENJING_CACHE"])
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("penjing"))


def _fingerprint(name: str, data: TensorDataset, epochs: int, seed: int) -> str:
    x, y = data.tensors
    digest = hashlib.sha256()
    digest.update(f"{name}|{tuple(x.shape)}|{epochs}|{seed}|v1".encode())
    if os.environ.get("PENJING_MAX_EPOCHS"):  # a shortened (test) baseline never passes for the real one
        digest.update(f"|max_epochs={os.environ['PENJING_MAX_EPOCHS']}".encode())
    digest.update(x[:64].numpy().tobytes())
    digest.update(y.numpy().tobytes())
    return digest.hexdigest()[:16]


def baseline_path(name: str, train: TensorDataset, *, seed: int = 0, epochs: int | None = None) -> Path:
    """Where :func:`pretrained` caches reference model ``name`` trained on ``train`` (it is
    trained first when this file does not exist)."""
    epochs = epochs or BASELINE_EPOCHS.get(name, 30)
    return cache_dir() / "baselines" / f"{name}-{_fingerprint(name, train, epochs, seed)}.safetensors"


def pretrained(name: str, train: TensorDataset, *, seed: int = 0, epochs: int | None = None,
               progress: bool = True) -> nn.Module:
    """Reference model ``name`` trained on ``train``; trained once, then loaded from the cache."""
    from penjing.train import fit

    epochs = epochs or BASELINE_EPOCHS.get(name, 30)
    model = get_model(name, train.tensors[0][:1])
    fingerprint = _fingerprint(name, train, epochs, seed)
    path = baseline_path(name, train, seed=seed, epochs=epochs)
    legacy = path.with_suffix(".pt")  # written by torch.save before safetensors
    for found in (path, legacy):
        if not found.exists():
            continue
        try:
            model.load_state_dict(baseline_cache.read(found, model, fingerprint))
        except baseline_cache.StaleBaseline as exc:
            warnings.warn(f"penjing: the cached baseline {found} cannot be used ({exc}); training it again",
                          stacklevel=2)
            found.unlink(missing_ok=True)
            continue
        if found == legacy:  # seal it in the current format
            baseline_cache.write(path, model, fingerprint)
            legacy.unlink(missing_ok=True)
        return model.eval()
    torch.manual_seed(seed)
    model = get_model(name, train.tensors[0][:1])
    fit(model, train, epochs=epochs, lr=1e-3, seed=seed, progress=progress, desc=f"baseline {name}")
    baseline_cache.write(path, model, fingerprint)
    return model.eval()
