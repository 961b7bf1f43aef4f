"""Loaders for data sets the user has on disk: MNIST (IDX files) and CIFAR-10.

Nothing is downloaded: point these at a folder that holds the files. Every length read from a
file is checked against the file's size before anything is allocated.
"""

from __future__ import annotations

import gzip
import math
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


# ---------------------------------------------------------------------------- CIFAR pickles
#
# CIFAR-10's python batches are pickles. No unpickler is used: the opcodes are parsed here, and
# only those a batch holds are understood -- dicts, lists and tuples, ints, bools, None, byte and
# text strings, numeric numpy arrays (``numpy _reconstruct`` + ``BUILD`` with raw data) and
# ``_codecs.encode(text, "latin1")`` (how Python 3 writes bytes at protocol 2). Nothing is ever
# called or imported: a name is matched against that list and replaced by a marker, an array
# is built with ``np.frombuffer`` from a numeric dtype only, so no object array (whose bytes
# would be read as pointers) and no other reduction can come out of a file.

_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy._core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy", "ndarray"): "ndarray",
    ("numpy", "dtype"): "dtype",
    ("_codecs", "encode"): "encode",
    ("numpy.core.numeric", "_frombuffer"): "frombuffer",  # protocol 5
    ("numpy._core.numeric", "_frombuffer"): "frombuffer",
    ("__builtin__", "bytes"): "bytes",  # Python 3 writes b"" as bytes() at protocols 1-2
    ("builtins", "bytes"): "bytes",
}
_NUMERIC_DTYPES = {"b1", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8"}


class _Global:
    def __init__(self, kind: str):
        self.kind = kind


class _PendingDType:
    def __init__(self, code: str):
        self.code = code
        self.dtype: np.dtype | None = None


class _PendingArray:
    def __init__(self):
        self.array: np.ndarray | None = None


class _PickleError(ValueError):
    pass


def _parse_pickle(data: bytes) -> object:
    """The value of a CIFAR batch pickle (the binary protocols 1-5, the opcodes above only)."""
    view = memoryview(data)
    pos = 0
    stack: list = []
    marks: list[int] = []
    memo: dict[int, object] = {}

    def fail(message: str, at: int) -> _PickleError:
        return _PickleError(f"{message} (at byte {at})")

    def take(n: int, at: int) -> memoryview:
        nonlocal pos
        if n < 0 or pos + n > len(view):
            raise fail(f"a field claims {n} bytes but only {len(view) - pos} remain", at)
        out = view[pos:pos + n]
        pos += n
        return out

    def uint(n: int, at: int) -> int:
        return int.from_bytes(take(n, at), "little")

    def line(at: int) -> str:
        nonlocal pos
        end = data.find(b"\n", pos, pos + 256)
        if end < 0:
            raise fail("an unterminated text field", at)
        text = data[pos:end].decode("ascii", errors="strict")
        pos = end + 1
        return text

    def pop_mark(at: int) -> list:
        if not marks:
            raise fail("an opcode needs a MARK that is not there", at)
        start = marks.pop()
        items = stack[start:]
        del stack[start:]
        return items

    def top(at: int):
        """The value on top of the stack, above the last MARK."""
        if len(stack) <= (marks[-1] if marks else 0):
            raise fail("an opcode needs a value that is not there", at)
        return stack[-1]

    def pop(at: int):
        top(at)
        return stack.pop()

    def key(value, at: int):
        if not isinstance(value, (bytes, str, int, tuple)):
            raise fail(f"a dict key of type {type(value).__name__}", at)
        return value

    def text(raw: memoryview, at: int) -> str:
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise fail("a text string that is not UTF-8", at) from None

    def reduce(func, args, at: int):
        if not isinstance(func, _Global) or not isinstance(args, tuple):
            raise fail("a call of something that is not a whitelisted name", at)
        if func.kind == "encode":
            if (len(args) != 2 or not isinstance(args[0], str) or args[1] not in ("latin1", "latin-1")):
                raise fail("_codecs.encode with arguments a data batch never has", at)
            try:
                return args[0].encode("latin1")
            except UnicodeEncodeError:
                raise fail("_codecs.encode of text that is not latin-1", at) from None
        if func.kind == "dtype":
            if not args or not isinstance(args[0], str) or args[0].lstrip("<>|=") not in _NUMERIC_DTYPES:
                raise fail(f"numpy dtype {args[0]!r} is not a numeric dtype" if args else "numpy dtype()", at)
            return _PendingDType(args[0])
        if func.kind == "bytes":
            if args != ():
                raise fail("bytes() with arguments a data batch never has", at)
            return b""
        if func.kind == "frombuffer":  # (raw bytes, dtype, shape, order)
            if (len(args) != 4 or not isinstance(args[0], bytes) or not isinstance(args[1], _PendingDType)
                    or args[1].dtype is None or args[3] not in ("C", "F")):
                raise fail("numpy _frombuffer with arguments a data batch never has", at)
            array = _PendingArray()
            build(array, (1, args[2], args[1], args[3] == "F", args[0]), at)
            return array
        if func.kind == "reconstruct":
            if len(args) != 3 or not isinstance(args[0], _Global) or args[0].kind != "ndarray":
                raise fail("numpy _reconstruct of something that is not an ndarray", at)
            return _PendingArray()
        raise fail(f"a call of {func.kind}", at)

    def build(obj, state, at: int):
        if isinstance(obj, _PendingDType) and obj.dtype is None:
            if not isinstance(state, tuple) or len(state) < 2 or state[1] not in ("<", ">", "|", "="):
                raise fail("a numpy dtype state a data batch never has", at)
            dtype = np.dtype(obj.code.lstrip("<>|="))
            obj.dtype = dtype.newbyteorder(state[1]) if state[1] in "<>" else dtype
            return
        if isinstance(obj, _PendingArray) and obj.array is None:
            if (not isinstance(state, tuple) or len(state) != 5 or not isinstance(state[1], tuple)
                    or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d for d in state[1])
                    or not isinstance(state[2], _PendingDType) or state[2].dtype is None
                    or not isinstance(state[4], bytes)):
                raise fail("a numpy array state that is not (version, shape, numeric dtype, order, raw bytes)", at)
            shape, dtype, raw = state[1], state[2].dtype, state[4]
            if dtype.kind not in "biuf":
                raise fail(f"a numpy array of dtype {dtype}", at)
            if math.prod(shape) * dtype.itemsize != len(raw):
                raise fail(f"a numpy array of shape {shape} ({dtype}) backed by {len(raw)} bytes", at)
            order = "F" if state[3] else "C"
            obj.array = np.frombuffer(raw, dtype=dtype).reshape(shape, order=order).copy()
            return
        raise fail("BUILD on something that is not a numpy array or dtype", at)

    def finish(value):
        if isinstance(value, _PendingArray):
            if value.array is None:
                raise _PickleError("a numpy array without its data")
            return value.array
        if isinstance(value, (_PendingDType, _Global)):
            raise _PickleError("a numpy dtype or a name where data was expected")
        if isinstance(value, list):
            return [finish(v) for v in value]
        if isinstance(value, tuple):
            return tuple(finish(v) for v in value)
        if isinstance(value, dict):
            return {k: finish(v) for k, v in value.items()}
        return value

    while True:
        at = pos
        op = bytes(take(1, at))
        if op == b"\x80":  # PROTO
            if uint(1, at) > 5:
                raise fail("an unknown pickle protocol", at)
        elif op == b"\x95":  # FRAME: a length hint only
            uint(8, at)
        elif op == b".":  # STOP
            if len(stack) != 1 or marks:
                raise fail("STOP with an unfinished stack", at)
            if pos != len(view):
                raise fail(f"{len(view) - pos} bytes after the end of the pickle", pos)
            return finish(stack[0])
        elif op == b"(":
            marks.append(len(stack))
        elif op in (b"}", b"]", b")"):
            stack.append({} if op == b"}" else [] if op == b"]" else ())
        elif op == b"N":
            stack.append(None)
        elif op in (b"\x88", b"\x89"):
            stack.append(op == b"\x88")
        elif op == b"K":
            stack.append(uint(1, at))
        elif op == b"M":
            stack.append(uint(2, at))
        elif op == b"J":
            stack.append(int.from_bytes(take(4, at), "little", signed=True))
        elif op == b"\x8a":  # LONG1
            n = uint(1, at)
            if n > 8:
                raise fail("an integer of more than 64 bits", at)
            stack.append(int.from_bytes(take(n, at), "little", signed=True))
        elif op == b"I":  # INT (protocol 0; 01/00 are booleans)
            raw_int = line(at)
            if not raw_int.lstrip("-").isdigit() or len(raw_int) > 20:
                raise fail("an INT that is not a 64-bit integer", at)
            stack.append({"01": True, "00": False}.get(raw_int, int(raw_int)))
        elif op in (b"U", b"C"):  # SHORT_BINSTRING (Python 2 str), SHORT_BINBYTES
            stack.append(bytes(take(uint(1, at), at)))
        elif op in (b"T", b"B"):
            stack.append(bytes(take(uint(4, at), at)))
        elif op in (b"\x8e", b"\x96"):  # BINBYTES8, BYTEARRAY8 (read as bytes)
            stack.append(bytes(take(uint(8, at), at)))
        elif op == b"\x8c":
            stack.append(text(take(uint(1, at), at), at))
        elif op == b"X":
            stack.append(text(take(uint(4, at), at), at))
        elif op == b"\x8d":
            stack.append(text(take(uint(8, at), at), at))
        elif op in (b"q", b"r", b"p", b"\x94"):  # BINPUT, LONG_BINPUT, PUT, MEMOIZE
            index = (uint(1, at) if op == b"q" else uint(4, at) if op == b"r"
                     else len(memo) if op == b"\x94" else None)
            if index is None:
                raw_index = line(at)
                if not raw_index.isdigit():
                    raise fail("a PUT index that is not a number", at)
                index = int(raw_index)
            if index > len(data):
                raise fail(f"a memo index {index} larger than the file", at)
            memo[index] = top(at)
        elif op in (b"h", b"j", b"g"):  # BINGET, LONG_BINGET, GET
            if op == b"g":
                raw_index = line(at)
                index = int(raw_index) if raw_index.isdigit() else -1
            else:
                index = uint(1 if op == b"h" else 4, at)
            if index not in memo:
                raise fail(f"a memo lookup of {index}, which was never stored", at)
            stack.append(memo[index])
        elif op in (b"c", b"\x93"):  # GLOBAL, STACK_GLOBAL
            if op == b"c":
                module, name = line(at), line(at)
            else:
                name, module = pop(at), pop(at)
            kind = _GLOBALS.get((module, name)) if isinstance(module, str) and isinstance(name, str) else None
            if kind is None:
                raise fail(f"the batch refers to {module}.{name}, which a data batch never holds", at)
            stack.append(_Global(kind))
        elif op == b"R":
            args = pop(at)
            stack.append(reduce(pop(at), args, at))
        elif op == b"b":
            state = pop(at)
            build(top(at), state, at)
        elif op == b"t":
            stack.append(tuple(pop_mark(at)))
        elif op in (b"\x85", b"\x86", b"\x87"):
            n = {b"\x85": 1, b"\x86": 2, b"\x87": 3}[op]
            items = [pop(at) for _ in range(n)][::-1]
            stack.append(tuple(items))
        elif op == b"l":
            stack.append(pop_mark(at))
        elif op in (b"a", b"e"):  # APPEND, APPENDS
            items = [pop(at)] if op == b"a" else pop_mark(at)
            if not isinstance(top(at), list):
                raise fail("APPEND to something that is not a list", at)
            stack[-1].extend(items)
        elif op == b"d":
            items = pop_mark(at)
            if len(items) % 2:
                raise fail("a dict of an odd number of items", at)
            stack.append({key(items[i], at): items[i + 1] for i in range(0, len(items), 2)})
        elif op in (b"s", b"u"):  # SETITEM, SETITEMS
            items = [pop(at), pop(at)][::-1] if op == b"s" else pop_mark(at)
            if len(items) % 2 or not isinstance(top(at), dict):
                raise fail("SETITEM on something that is not a dict", at)
            for i in range(0, len(items), 2):
                stack[-1][key(items[i], at)] = items[i + 1]
        else:
            raise fail(f"pickle opcode {op!r}, which a data batch never holds", at)


def _cifar_python_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _parse_pickle(path.read_bytes())
    except _PickleError as exc:
        raise ValueError(f"{path}: not a CIFAR-10 python batch ({exc})") from None
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: not a CIFAR-10 python batch (a {type(batch).__name__}, not a dict)")
    batch = {k.encode("latin1") if isinstance(k, str) else k: v for k, v in batch.items()}
    if b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path}: not a CIFAR-10 python batch (no data/labels entries)")
    data, labels = batch[b"data"], batch[b"labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        raise ValueError(f"{path}: CIFAR-10 data must be a uint8 array, got {type(data).__name__} "
                         f"{getattr(data, 'dtype', '')}".rstrip())
    if isinstance(labels, np.ndarray):
        labels = labels.tolist() if labels.dtype.kind in "iu" and labels.ndim == 1 else None
    if not isinstance(labels, list) or not all(type(v) is int for v in labels):
        raise ValueError(f"{path}: CIFAR-10 labels must be a list of ints")
    labels = np.asarray(labels, dtype=np.int64)
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
