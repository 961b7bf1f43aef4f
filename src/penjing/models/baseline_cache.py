"""The trained-baseline cache: one safetensors file per (model, data, epochs, seed), sealed
with a SHA-256 of its tensors and checked against the model before use.

A cache file is data penjing did not just compute: it may be truncated by a killed write,
damaged on disk, left over from another version, or edited by hand. :func:`read` never hands
such a file to the model: it raises :class:`StaleBaseline` with what is wrong (not a readable
file, a missing or wrong seal, a different set of tensors, shapes or dtypes, NaN/Inf values),
and :func:`~penjing.models.registry.pretrained` then retrains the baseline with a warning.
Older caches written with ``torch.save`` (``.pt``) are still read, with ``weights_only=True``
and the same checks, and rewritten as sealed safetensors.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import nn

FORMAT = "penjing-baseline"
VERSION = "1"


class StaleBaseline(ValueError):
    """A cached baseline that cannot be used as it is (the message says why)."""


def digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{str(t.dtype).removeprefix('torch.')}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def write(path: Path, model: nn.Module, fingerprint: str) -> Path:
    """Write ``model``'s state_dict to ``path`` (safetensors, sealed), atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # parallel test processes: one each
    save_file(state, str(tmp), metadata={"format": FORMAT, "version": VERSION, "fingerprint": fingerprint,
                                         "sha256": digest(state)})
    os.replace(tmp, path)
    return path


def read(path: Path, model: nn.Module, fingerprint: str) -> dict[str, torch.Tensor]:
    """The checked state_dict in ``path`` for ``model``; raises :class:`StaleBaseline`."""
    if path.suffix == ".pt":
        state = _read_legacy(path)
    else:
        state = _read_sealed(path, fingerprint)
    _check_fits(state, model)
    return state


def _read_sealed(path: Path, fingerprint: str) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # the library checks every offset against the file's size
        raise StaleBaseline(f"not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise StaleBaseline(f"not a penjing baseline of version {VERSION} (format {meta.get('format')!r}, "
                            f"version {meta.get('version')!r})")
    if meta.get("fingerprint") != fingerprint:
        raise StaleBaseline(f"written for another model/data/epochs/seed (fingerprint {meta.get('fingerprint')!r}, "
                            f"expected {fingerprint!r})")
    if meta.get("sha256") != digest(state):
        raise StaleBaseline("its tensors do not match their SHA-256 seal (damaged or edited)")
    return state


def _read_legacy(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        raise StaleBaseline(f"not a readable PyTorch file ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise StaleBaseline("does not hold a state_dict (a mapping of names to tensors)")
    return state


def _check_fits(state: dict[str, torch.Tensor], model: nn.Module) -> None:
    expected = model.state_dict()
    missing, extra = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or extra:
        raise StaleBaseline(f"its tensors are not the model's (missing {missing[:4]}, unexpected {extra[:4]})")
    for name, want in expected.items():
        got = state[name]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise StaleBaseline(f"{name} is {got.dtype} {tuple(got.shape)}, the model has {want.dtype} "
                                f"{tuple(want.shape)}")
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise StaleBaseline(f"{name} holds NaN or Inf values")
