"""Training checkpoints: written atomically, read without pickle, verified, checked against the model.

A checkpoint is a plain dict of tensors, numbers and strings (model, optimizer, scheduler and
loss-scaler states, the RNG states as uint8 tensors, the step and the position in the epoch),
serialised by ``torch.save``, so ``torch.load(path, weights_only=True)`` reads it (no pickle).

Verification (version 2): the zip's comment -- the last field of the file -- is
``b"PJSHA256"`` + the SHA-256 of every byte before the comment-length field, so one flipped bit
anywhere is refused on read (``torch.load`` itself does not check the zip's CRCs), and the
file stays a plain zip for any tool. Version-1 files (no comment) are still read, verified
with the zip members' own CRC-32s. After verification every field the loop
uses is range-checked (step, epoch and batch are non-negative integers, the RNG state is the
right size, ...), so a hand-edited file gives one clear ``ValueError`` instead of a
traceback from deep inside the loop.

The file is written to ``.NAME.PID.tmp`` in the same folder and renamed over the target
(``os.replace`` is atomic on POSIX and Windows), so a run killed while saving leaves the
previous checkpoint intact; the next save removes temp files left by dead processes.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT = "penjing-train-checkpoint"
VERSION = 2
SEAL = b"PJSHA256"
_SEAL_LEN = len(SEAL) + 32  # the zip comment: SEAL + SHA-256 digest


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


def _clean_orphans(path: Path) -> None:
    """Remove ``.NAME.PID.tmp`` files of this checkpoint left by processes that are gone."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)\.tmp$")
    for candidate in path.parent.glob(f".{path.name}.*.tmp"):
        match = pattern.match(candidate.name)
        if not match or int(match.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(match.group(1)), 0)
            continue  # a live writer (another process saving the same file)
        except ProcessLookupError:
            candidate.unlink(missing_ok=True)
        except (PermissionError, OverflowError):
            continue  # alive under another user, or not a pid at all: leave it


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically (temp file in the same folder, then rename),
    with a SHA-256 of the serialised state that :func:`load_checkpoint` verifies."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clean_orphans(path)
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **payload}, buf)
    body = buf.getvalue()
    if body[-22:-18] != b"PK\x05\x06" or body[-2:] != b"\x00\x00":
        raise RuntimeError("torch.save wrote a zip without a plain end record; cannot seal the checkpoint")
    head = body[:-2]  # everything but the (empty) comment's length
    sealed = head + _SEAL_LEN.to_bytes(2, "little") + SEAL + hashlib.sha256(head).digest()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(sealed)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _verify(path: Path, blob: bytes) -> None:
    """Check the SHA-256 seal (version 2) or, for an unsealed version-1 file, every zip
    member's CRC-32."""
    seal = blob[-_SEAL_LEN:]
    if len(blob) > _SEAL_LEN + 22 and seal.startswith(SEAL):
        head = blob[:-_SEAL_LEN - 2]
        if blob[-_SEAL_LEN - 2:-_SEAL_LEN] != _SEAL_LEN.to_bytes(2, "little") or \
                hashlib.sha256(head).digest() != seal[len(SEAL):]:
            raise ValueError(f"checkpoint {path} is damaged: its SHA-256 does not match the "
                             "contents (the file changed after it was written)")
        return
    try:  # version 1: the bare torch.save zip; its members carry CRC-32s
        with zipfile.ZipFile(io.BytesIO(blob)) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise ValueError(f"{path} is not a readable penjing training checkpoint ({exc})") from None
    if bad is not None:
        raise ValueError(f"checkpoint {path} is damaged: CRC mismatch in {bad}")


def _nonnegative_int(path: Path, state: dict, key: str) -> None:
    value = state[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{path}: checkpoint field {key!r} must be a non-negative integer, got {value!r}")


def _check_fields(path: Path, state: dict[str, Any]) -> None:
    """Types and ranges of every field the training loop reads."""
    for key in ("model", "optimizer", "step", "epoch", "batch", "rng", "sums", "history", "data_seed"):
        if key not in state:
            raise ValueError(f"{path}: checkpoint has no {key!r} entry")
    for key in ("step", "epoch", "batch"):
        _nonnegative_int(path, state, key)
    model = state["model"]
    if not isinstance(model, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in model.items()):
        raise ValueError(f"{path}: checkpoint field 'model' must be a state_dict (str -> Tensor)")
    optimizer = state["optimizer"]
    if (not isinstance(optimizer, dict) or not isinstance(optimizer.get("state"), dict)
            or not isinstance(optimizer.get("param_groups"), list)):
        raise ValueError(f"{path}: checkpoint field 'optimizer' is not an optimizer state_dict "
                         "(needs 'state' and 'param_groups')")
    rng = state["rng"]
    expected = torch.get_rng_state()
    if (not isinstance(rng, dict) or not isinstance(rng.get("torch"), torch.Tensor)
            or rng["torch"].dtype != torch.uint8 or rng["torch"].shape != expected.shape):
        raise ValueError(f"{path}: checkpoint field 'rng' must hold the torch RNG state "
                         f"(a uint8 tensor of {expected.numel()} bytes)")
    if "batch_size" in state:
        size = state["batch_size"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"{path}: checkpoint field 'batch_size' must be a positive integer, got {size!r}")
    if isinstance(state["data_seed"], bool) or not isinstance(state["data_seed"], int):
        raise ValueError(f"{path}: checkpoint field 'data_seed' must be an integer, got {state['data_seed']!r}")
    sums = state["sums"]  # [loss * n, correct, n] of the epoch so far
    if (not isinstance(sums, (list, tuple)) or len(sums) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
                       for v in sums[1:]) or not isinstance(sums[0], (int, float)) or not math.isfinite(sums[0])):
        raise ValueError(f"{path}: checkpoint field 'sums' must be [loss sum, correct, count] "
                         f"(finite, counts >= 0), got {sums!r}")
    if not isinstance(state["history"], dict):
        raise ValueError(f"{path}: checkpoint field 'history' must be a dict")
    if "callbacks" in state and not isinstance(state["callbacks"], list):
        raise ValueError(f"{path}: checkpoint field 'callbacks' must be a list")
    for key in ("scheduler", "precision", "distill", "dsd"):
        if state.get(key) is not None and not isinstance(state[key], dict):
            raise ValueError(f"{path}: checkpoint field {key!r} must be a dict or None")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`: checksum verified, no pickle
    (``weights_only=True``), every field range-checked. Raises ``ValueError`` naming the
    problem for a damaged, foreign or hand-edited file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    blob = path.read_bytes()
    _verify(path, blob)
    try:
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file gets the same clear message
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path} is not a readable penjing training checkpoint ({first})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a penjing training checkpoint (no {FORMAT!r} marker)")
    if state.get("version") not in (1, VERSION):
        raise ValueError(f"{path}: checkpoint version {state.get('version')!r} is not supported "
                         f"(this penjing reads versions 1 and {VERSION})")
    _check_fields(path, state)
    return state


def check_model(path: str | Path, saved: dict[str, torch.Tensor], model: nn.Module) -> None:
    """Raise a ValueError naming the differences when ``saved`` is not ``model``'s state."""
    current = model.state_dict()
    missing = [k for k in current if k not in saved]
    unexpected = [k for k in saved if k not in current]
    shapes = [f"{k} {tuple(saved[k].shape)} vs {tuple(v.shape)}" for k, v in current.items()
              if k in saved and tuple(saved[k].shape) != tuple(v.shape)]
    dtypes = [f"{k} {saved[k].dtype} vs {v.dtype}" for k, v in current.items()
              if k in saved and tuple(saved[k].shape) == tuple(v.shape) and saved[k].dtype != v.dtype
              and not (saved[k].is_floating_point() and v.is_floating_point())]
    if not (missing or unexpected or shapes or dtypes):
        return
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes),
                         ("dtype mismatch", dtypes)):
        if items:
            more = f" (+{len(items) - 4} more)" if len(items) > 4 else ""
            parts.append(f"{label}: {', '.join(items[:4])}{more}")
    raise ValueError(f"checkpoint {path} was written for a different model; " + "; ".join(parts))
