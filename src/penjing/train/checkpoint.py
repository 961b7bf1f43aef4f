"""Training checkpoints: written atomically, read without pickle, checked against the model.

A checkpoint is a plain dict of tensors, numbers and strings (model, optimizer, scheduler and
loss-scaler states, the RNG states as uint8 tensors, the step and the position in the epoch),
so ``torch.load(path, weights_only=True)`` reads it. It is written to a temporary file in
the same folder and renamed over the target (``os.replace`` is atomic on POSIX and Windows),
so a run killed while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT = "penjing-train-checkpoint"
VERSION = 1


def rng_state() -> dict[str, Any]:
    """The global random states the loop uses (torch CPU, and every CUDA device if present)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, "version": VERSION, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (no pickle: ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file gets the same clear message
        raise ValueError(f"{path} is not a readable penjing training checkpoint ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a penjing training checkpoint (no {FORMAT!r} marker)")
    if state.get("version") != VERSION:
        raise ValueError(f"{path}: checkpoint version {state.get('version')!r} is not supported "
                         f"(this penjing reads version {VERSION})")
    for key in ("model", "optimizer", "step", "epoch", "batch", "rng"):
        if key not in state:
            raise ValueError(f"{path}: checkpoint has no {key!r} entry")
    return state


def check_model(path: str | Path, saved: dict[str, torch.Tensor], model: nn.Module) -> None:
    """Raise a ValueError naming the differences when ``saved`` is not ``model``'s state."""
    current = model.state_dict()
    missing = [k for k in current if k not in saved]
    unexpected = [k for k in saved if k not in current]
    shapes = [f"{k} {tuple(saved[k].shape)} vs {tuple(v.shape)}" for k, v in current.items()
              if k in saved and tuple(saved[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or shapes):
        return
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if items:
            more = f" (+{len(items) - 4} more)" if len(items) > 4 else ""
            parts.append(f"{label}: {', '.join(items[:4])}{more}")
    raise ValueError(f"checkpoint {path} was written for a different model; " + "; ".join(parts))
