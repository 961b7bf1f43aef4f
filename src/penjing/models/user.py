"""Load the user's own model: ``FILE.py:Class`` plus an optional state_dict file."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn


def load_class(spec: str) -> type[nn.Module]:
    """``path/to/file.py:ClassName`` -> the class (the file is imported as a module)."""
    file, sep, cls_name = spec.rpartition(":")
    if not sep or not file.endswith(".py"):
        raise ValueError(f"model {spec!r}: give a reference model name or FILE.py:ClassName")
    path = Path(file)
    if not path.exists():
        raise FileNotFoundError(f"model file {path} not found")
    module_spec = importlib.util.spec_from_file_location(f"penjing_user_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    cls = getattr(module, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"{path} has no nn.Module subclass named {cls_name!r}")
    return cls


def is_safetensors(path: str | Path) -> bool:
    """Whether ``path`` starts like a safetensors file (u64 header length, then a JSON object)."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= 100_000_000


def save_state_dict(state: dict[str, torch.Tensor], path: str | Path,
                    metadata: dict[str, str] | None = None) -> Path:
    """Write a plain state_dict as safetensors (no pickle; any suffix; ``metadata``: the
    header's string map), atomically."""
    import os

    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    # safetensors refuses tensors sharing storage (tied weights): give each its own copy
    save_file({k: v.detach().cpu().clone().contiguous() for k, v in state.items() if v is not None}, str(tmp),
              metadata=metadata)
    os.replace(tmp, path)
    return path


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state_dict without unpickling code: safetensors (told by its header, whatever
    the suffix), or a ``torch.save`` file read with ``weights_only=True``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights file {path} not found")
    if is_safetensors(path):
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # the library checks every offset against the file's size
            raise ValueError(f"{path} is not a valid safetensors file ({type(exc).__name__}: {exc})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        raise ValueError(f"{path} is not a PyTorch state_dict file ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
    return state


def load_user_model(spec: str | None, weights: str | Path | None = None,
                    base: nn.Module | None = None) -> nn.Module:
    """Instantiate ``spec`` (or use ``base``) and load ``weights`` into it."""
    model = base if base is not None else load_class(spec)()
    if weights:
        state = load_state_dict(weights)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(f"{weights} does not fit {type(model).__name__}: {exc}") from None
    return model.eval()
