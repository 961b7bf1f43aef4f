"""Loaders for data sets the user has on disk: MNIST (IDX files) and CIFAR-10.

Nothing is downloaded: point these at a folder that holds the files. Every length read from a
file is checked against the file's size before anything is allocated.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (the MNIST format), optionally gzipped."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path}: not an IDX file (shorter than its 4-byte magic number)")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code not in _IDX_DTYPES or not 1 <= ndim <= 4:
        raise ValueError(f"{path}: not an IDX file (bad magic number {data[:4].hex()})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[dtype_code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{path}: header says shape {shape} ({expected} bytes) but the file holds "
            f"{len(data) - header} bytes of data"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def _find(root: Path, stems: list[str]) -> Path:
    for stem in stems:
        for candidate in (root / stem, root / f"{stem}.gz"):
            if candidate.exists():
                return candidate
    raise FileNotFoundError(f"none of {stems} (optionally .gz) found in {root}")


def mnist(root: str | Path) -> tuple[TensorDataset, TensorDataset]:
    """MNIST (or Fashion-MNIST) from the four IDX files in ``root``; images scaled to [0, 1]."""
    root = Path(root)
    out = []
    for split in ("train", "t10k"):
        images = read_idx(_find(root, [f"{split}-images-idx3-ubyte", f"{split}-images.idx3-ubyte"]))
        labels = read_idx(_find(root, [f"{split}-labels-idx1-ubyte", f"{split}-labels.idx1-ubyte"]))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"{root}: {split} images {images.shape} and labels {labels.shape} do not match"
            )
        x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
        out.append(TensorDataset(x, torch.from_numpy(labels.astype(np.int64))))
    return out[0], out[1]


class _ArraysOnly(pickle.Unpickler):
    """CIFAR-10's python batches are pickles; allow only what they hold (dicts, bytes,
    lists and numpy arrays) so a crafted file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise ValueError(f"CIFAR batch refers to {module}.{name}, which a data batch never holds")


def _cifar_python_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _ArraysOnly(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: not a CIFAR-10 python batch ({exc})") from exc
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path}: not a CIFAR-10 python batch (no data/labels entries)")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise ValueError(f"{path}: data {data.shape} / labels {labels.shape} are not CIFAR-10 shaped")
    return data.reshape(-1, 3, 32, 32), labels


def _cifar_binary_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    if raw.size == 0 or raw.size % 3073:
        raise ValueError(f"{path}: {raw.size} bytes is not a whole number of 3073-byte CIFAR-10 records")
    records = raw.reshape(-1, 3073)
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0].astype(np.int64)


def cifar10(root: str | Path) -> tuple[TensorDataset, TensorDataset]:
    """CIFAR-10 from ``root``: the python batches (``data_batch_1..5``, ``test_batch``) or the
    binary ones (``data_batch_1.bin``..., ``test_batch.bin``)."""
    root = Path(root)
    if (root / "data_batch_1").exists():
        train_files = sorted(root.glob("data_batch_[0-9]"))
        test_files, reader = [root / "test_batch"], _cifar_python_batch
    elif (root / "data_batch_1.bin").exists():
        train_files = sorted(root.glob("data_batch_[0-9].bin"))
        test_files, reader = [root / "test_batch.bin"], _cifar_binary_batch
    else:
        raise FileNotFoundError(f"no CIFAR-10 batches (data_batch_1 or data_batch_1.bin) in {root}")
    out = []
    for files in (train_files, test_files):
        parts = [reader(f) for f in files]
        x = np.concatenate([p[0] for p in parts]).astype(np.float32) / 255.0
        y = np.concatenate([p[1] for p in parts])
        if y.min(initial=0) < 0 or y.max(initial=0) > 9:
            raise ValueError(f"{root}: CIFAR-10 labels must be 0..9")
        out.append(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)))
    return out[0], out[1]
