"""The ``.pjz`` file: every tensor of a state_dict, each with its own codec. No pickle.

Layout (varints are unsigned LEB128; u32 little-endian)::

    b"PJZ" version(u8)
    header length (varint)
    header:  tensor count (varint), then per tensor:
             name length (varint), name (UTF-8), dtype code (u8), ndim (u8), dims (varints),
             codec (u8), payload length (varint)
    crc32 of the header (u32)
    the payloads, in header order
    crc32 of the payloads (u32)

:func:`load` checks, before allocating anything large: the magic and version, that the header
length fits the file, the header checksum, that the payload lengths add up to the bytes that
are there, the payload checksum, the elements of all tensors together against the budget
``max_elements`` (default :data:`MAX_ELEMENTS`, 2^28) and, inside each codec, every count
against the bytes that remain (no stream decodes to more than 8 symbols per byte; a sparse
index covers at most ``2^16 - 1`` elements per symbol). Any malformed input raises
:class:`CorruptFileError`, naming the field, what was wrong, and its byte offset in the file.

A model that penjing rewrote structurally (split attention, channel pruning, low-rank,
Winograd, int8...) also carries its *structure record* (:mod:`penjing.core.structure`): JSON
``{"format": 1, "steps": [...]}``, zlib-compressed, as one 1-D uint8 tensor named
:data:`RECORD_KEY`. It is data only, at most :data:`MAX_RECORD_BYTES` stored and inflated
(decompression stops there), checked on read (valid UTF-8 JSON, known format, every step of a known kind listing its modules by name); it is never
part of the state_dict :func:`load` returns, but :attr:`FileInfo.structure`. Files written by
``save_quantized`` before it carry the int8 record under :data:`OLD_INT8_KEY`, read the same way.
"""

from __future__ import annotations

import inspect as _inspect
import json
import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from penjing.codec.bits import Reader, varint
from penjing.codec.dtypes import dtype_code, dtype_of
from penjing.codec.errors import CorruptFileError
from penjing.codec.tensors import (
    CODEC_NAMES,
    StoredSparse,
    decode_stored,
    decode_tensor,
    encode_tensor,
)

MAGIC = b"PJZ"
VERSION = 1
#: Default budget of elements in one file, all tensors together, checked from the header before
#: any tensor is decoded (a guard against decompression bombs; ``load(max_elements=...)``).
MAX_ELEMENTS = 1 << 28
MAX_NDIM = 16
#: the tensor holding the structure record, and the older int8-only one
RECORD_KEY = "__penjing_structure__"
OLD_INT8_KEY = "__penjing_quantized_structure__"
MAX_RECORD_BYTES = 1 << 24
RECORD_FORMAT = 1


@dataclass
class TensorInfo:
    """One tensor of a ``.pjz`` file: its codec and the bytes of each part."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    codec: str
    parts: dict[str, int] = field(default_factory=dict)
    header: int = 0
    nonzeros: int = 0

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def payload(self) -> int:
        return sum(self.parts.values())

    @property
    def total(self) -> int:
        """Payload plus this tensor's entry in the header."""
        return self.payload + self.header


@dataclass
class FileInfo:
    """What :func:`save` wrote or :func:`inspect` read: file size and per-tensor accounting."""

    path: Path
    bytes: int
    tensors: list[TensorInfo]
    overhead: int  # magic, version, lengths, checksums: the bytes no single tensor owns
    #: the structural rewrites to replay on a fresh model (None: a plain state_dict)
    structure: list[dict] | None = None

    def __getitem__(self, name: str) -> TensorInfo:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)


# ---------------------------------------------------------------------------- hints

def _call_hint(p: nn.Module, value: torch.Tensor) -> dict | None:
    method = p.codec_hint
    try:
        takes_value = len(_inspect.signature(method).parameters) >= 1
    except (TypeError, ValueError):
        takes_value = False
    hint = method(value) if takes_value else method()
    if hint is not None and not isinstance(hint, dict):
        raise TypeError(f"{type(p).__name__}.codec_hint() must return a dict, got {type(hint).__name__}")
    return hint


@torch.no_grad()
def collect_hints(model: nn.Module) -> dict[str, dict]:
    """``{state_dict key: hint}`` from the parametrizations that define ``codec_hint(v)``.

    Each parametrization is asked with the value it receives (the output of the ones below
    it); when several answer, the last (outermost) one wins, merged over the earlier ones.
    """
    hints: dict[str, dict] = {}
    for mod_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for tensor_name, plist in module.parametrizations.items():
            value = plist.original
            merged: dict = {}
            for p in plist:
                if hasattr(p, "codec_hint"):
                    hint = _call_hint(p, value)
                    if hint:
                        merged = {**merged, **hint}
                        if "affine" in hint:
                            merged.pop("codebook_bits", None)
                        elif "codebook_bits" in hint:
                            merged.pop("affine", None)
                value = p(value)
            if merged:
                hints[f"{mod_name}.{tensor_name}" if mod_name else tensor_name] = merged
    return hints


@torch.no_grad()
def baked_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict ``bake(model)`` would have, without changing ``model``.

    (Baking a ``deepcopy`` is not an option: torch's parametrize gives the copy the same
    dynamically created class, and removing a parametrization from the copy deletes the
    property from that shared class, breaking the original model.)
    """
    state = model.state_dict()
    replace: dict[str, tuple[str, torch.Tensor]] = {}  # first key of a group -> baked entry
    drop: set[str] = set()
    for mod_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        prefix = f"{mod_name}." if mod_name else ""
        for tensor_name in module.parametrizations:
            group = f"{prefix}parametrizations.{tensor_name}."
            keys = [k for k in state if k.startswith(group)]
            replace[keys[0]] = (prefix + tensor_name, getattr(module, tensor_name).detach().clone())
            drop.update(keys)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in replace:
            name, baked = replace[key]
            out[name] = baked
        elif key not in drop:
            out[key] = value.detach()
    return out


def _state_and_hints(obj: nn.Module | dict) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    if isinstance(obj, nn.Module):
        return baked_state_dict(obj), collect_hints(obj)
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str) or not isinstance(v, torch.Tensor):
                raise TypeError(f"save() needs a model or a state_dict of str -> Tensor; got {k!r}: {type(v).__name__}")
        return {k: v.detach() for k, v in obj.items()}, {}
    raise TypeError(f"save() needs an nn.Module or a state_dict, got {type(obj).__name__}")


def _index_bits_for(name: str, shape: tuple[int, ...], index_bits: int | dict | None) -> int | None:
    if index_bits is None or isinstance(index_bits, int):
        return index_bits
    kind = "conv" if len(shape) > 2 else "fc"
    module = name.rsplit(".", 1)[0]
    for key in (name, module, kind, "Conv2d" if kind == "conv" else "Linear", "*"):
        if key in index_bits:
            return int(index_bits[key])
    return None


# ---------------------------------------------------------------------------- save / load

def save(model_or_state_dict: nn.Module | dict[str, torch.Tensor], path: str | Path, *,
         huffman: bool = True, index_bits: int | dict[str, int] | None = None) -> FileInfo:
    """Write a model (baked on a copy; the model is not changed) or a state_dict to ``path``.

    A model that penjing rewrote structurally also gets its structure record (see the module
    docstring), so that ``load(path, FreshModel())`` can rebuild it.

    ``huffman``: Huffman-code index streams where that is smaller. ``index_bits``: width of the
    relative sparse index, one int or a dict keyed by tensor name, module name, ``"conv"``,
    ``"fc"`` or ``"*"`` (default: 8 for conv kernels, 5 otherwise). Returns the byte accounting.
    """
    whole = None
    if isinstance(model_or_state_dict, nn.Module):
        from penjing.core import structure

        whole = structure.whole_state(model_or_state_dict)  # e.g. an int8 graph, written whole
    state, hints = (whole, {}) if whole is not None else _state_and_hints(model_or_state_dict)
    if isinstance(model_or_state_dict, nn.Module) and whole is None:
        steps = structure.record(model_or_state_dict)
        if steps:
            if RECORD_KEY in state:
                raise ValueError(f"save(): the model has a tensor named {RECORD_KEY!r}, the name the "
                                 "structure record is stored under")
            state[RECORD_KEY] = encode_record(steps)
    steps = decode_record(state[RECORD_KEY], path) if RECORD_KEY in state else None
    header = bytearray(varint(len(state)))
    payloads: list[bytes] = []
    infos: list[TensorInfo] = []
    for name, tensor in state.items():
        shape = tuple(tensor.shape)
        if len(shape) > MAX_NDIM:
            raise ValueError(f"{name}: {len(shape)} dimensions; the format stores at most {MAX_NDIM}")
        enc = encode_tensor(tensor.cpu(), hint=hints.get(name), huffman=huffman,
                            index_bits=_index_bits_for(name, shape, index_bits))
        _verify(name, tensor, enc)
        raw_name = name.encode()
        entry = (varint(len(raw_name)) + raw_name + bytes([dtype_code(tensor.dtype), len(shape)])
                 + b"".join(varint(d) for d in shape) + bytes([enc.codec]) + varint(len(enc.payload)))
        header += entry
        payloads.append(enc.payload)
        infos.append(TensorInfo(name, tensor.dtype, shape, enc.name, enc.parts, len(entry),
                                int(torch.count_nonzero(tensor)) if tensor.numel() else 0))
    body = b"".join(payloads)
    header = bytes(header)
    blob = (MAGIC + bytes([VERSION]) + varint(len(header)) + header
            + zlib.crc32(header).to_bytes(4, "little") + body + zlib.crc32(body).to_bytes(4, "little"))
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:  # written beside the target and renamed over it: a killed save leaves no half file
        tmp.write_bytes(blob)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    overhead = len(blob) - sum(t.total for t in infos)
    return FileInfo(path, len(blob), infos, overhead, steps)


# ---------------------------------------------------------------------------- structure record

def encode_record(steps: list[dict]) -> torch.Tensor:
    """The structure record as the uint8 tensor stored under :data:`RECORD_KEY`."""
    raw = json.dumps({"format": RECORD_FORMAT, "steps": steps}, separators=(",", ":")).encode()
    if len(raw) > MAX_RECORD_BYTES:
        raise ValueError(f"the structure record is {len(raw):,} bytes, over the limit of "
                         f"{MAX_RECORD_BYTES:,}")
    # zlib: the JSON repeats its keys and shapes, and a pruned model's kept indices count up
    return torch.frombuffer(bytearray(zlib.compress(raw, 9)), dtype=torch.uint8).clone()


def _inflate(data: bytes, bad) -> bytes:
    """zlib-decompress at most :data:`MAX_RECORD_BYTES` (a bomb stops there)."""
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(data, MAX_RECORD_BYTES)
    except zlib.error as exc:
        raise bad(f"not zlib-compressed JSON ({exc})") from None
    if inflater.unconsumed_tail:
        raise bad(f"inflates to more than {MAX_RECORD_BYTES:,} bytes")
    if not inflater.eof or inflater.unused_data:
        raise bad("the compressed JSON is truncated or followed by other bytes")
    return raw


def decode_record(tensor: torch.Tensor, path: Path | str, key: str = RECORD_KEY) -> list[dict]:
    """The steps of a stored structure record; :class:`CorruptFileError` for anything else."""
    from penjing.core.structure import check_steps

    def bad(why: str) -> CorruptFileError:
        return CorruptFileError(f"{path}: bad structure record ({key}): {why}")

    if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.uint8 or tensor.dim() != 1:
        raise bad(f"a {getattr(tensor, 'dtype', type(tensor).__name__)} tensor of shape "
                  f"{tuple(getattr(tensor, 'shape', ()))}, not 1-D uint8")
    if tensor.numel() > MAX_RECORD_BYTES:
        raise bad(f"{tensor.numel():,} bytes, over the limit of {MAX_RECORD_BYTES:,}")
    data = tensor.numpy().tobytes()
    raw = data if key == OLD_INT8_KEY else _inflate(data, bad)  # save_quantized wrote plain JSON
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise bad(f"not JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise bad(f"format {found!r}, this penjing reads format {RECORD_FORMAT}")
    if key == OLD_INT8_KEY:  # save_quantized's record: the int8 step alone
        steps = [{"kind": "int8", "modules": record.get("modules")}]
    else:
        steps = record.get("steps")
    problem = check_steps(steps)
    if problem is not None:
        raise bad(problem)
    return steps


def _verify(name: str, tensor: torch.Tensor, enc) -> None:
    """Decode what is about to be written and compare it bit for bit, so that ``save`` can
    never write a file that ``load`` refuses or that loads different values (the one liberty:
    an affine ``-0.0`` comes back as ``+0.0``, see :mod:`penjing.codec`)."""
    from penjing.codec.dtypes import to_bits

    try:
        back, _ = decode_tensor(enc.codec, enc.payload, tensor.dtype, tuple(tensor.shape), name)
    except CorruptFileError as exc:
        raise RuntimeError(f"internal error: {name} was encoded as {enc.name} but does not decode "
                           f"({exc}); nothing was written") from None
    original = tensor.detach().cpu()
    same = to_bits(back) == to_bits(original)
    if not same.all() and enc.name == "affine":
        same |= ((back == 0) & (original == 0)).reshape(-1).numpy()
    if not same.all():
        raise RuntimeError(f"internal error: {name} encoded as {enc.name} decodes to different values; "
                           "nothing was written")


def _read(path: str | Path, max_elements: int, decode=decode_tensor) -> tuple[dict[str, torch.Tensor], FileInfo]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    return _parse(path.read_bytes(), path, max_elements, decode)


def _parse(blob: bytes, path: Path | str, max_elements: int,
           decode=decode_tensor) -> tuple[dict[str, torch.Tensor], FileInfo]:
    if max_elements < 0:
        raise ValueError(f"max_elements must be >= 0, got {max_elements}")
    r = Reader(blob, str(path))
    if len(blob) < len(MAGIC) + 1 or bytes(r.take(len(MAGIC), "magic")) != MAGIC:
        raise CorruptFileError(f"{path}: not a penjing .pjz file (bad magic bytes)", 0)
    version = r.u8("version")
    if version != VERSION:
        raise CorruptFileError(f"{path}: unsupported .pjz version {version} (this penjing reads version {VERSION})",
                               len(MAGIC))
    header_len = r.varint("header length")
    header_at = r.pos
    header = r.take(header_len, "header")
    if r.u32("header checksum") != zlib.crc32(header):
        raise CorruptFileError(f"{path}: header checksum mismatch (the file is damaged)", r.pos - 4)
    if r.remaining < 4:
        raise CorruptFileError(f"{path}: truncated (no payload checksum)", r.pos)
    body_at = r.pos
    body = r.take(r.remaining - 4, "payloads")
    if r.u32("payload checksum") != zlib.crc32(body):
        raise CorruptFileError(f"{path}: payload checksum mismatch (the file is damaged or truncated)",
                               r.pos - 4)
    h = Reader(header, f"{path} header", base=header_at)
    count = h.varint("tensor count", limit=len(header))
    entries = []
    total = budget = 0
    names: set[str] = set()
    for _ in range(count):
        start = h.pos
        name_len = h.varint("name length", limit=h.remaining)
        name_at = h.pos
        try:
            name = bytes(h.take(name_len, "name")).decode("utf-8")
        except UnicodeDecodeError:
            raise h.error("a tensor name is not valid UTF-8", name_at) from None
        if name in names:
            raise h.error(f"tensor {name} appears twice", name_at)
        names.add(name)
        dtype_at = h.pos
        code = h.u8("dtype")
        try:
            dtype = dtype_of(code)
        except CorruptFileError:
            raise h.error(f"{name} has unknown dtype code {code}", dtype_at) from None
        ndim = h.u8("ndim")
        if ndim > MAX_NDIM:
            raise h.error(f"{name} claims {ndim} dimensions (at most {MAX_NDIM})", h.pos - 1)
        shape_at = h.pos
        shape = tuple(h.varint("dimension", limit=max_elements) for _ in range(ndim))
        # Bounded even with a zero dimension: torch multiplies every dimension to check sizes.
        extent = math.prod(max(d, 1) for d in shape)
        numel = math.prod(shape)
        budget += numel
        if extent > max_elements or budget > max_elements:
            raise h.error(f"{name} of shape {shape} brings the file to {max(budget, extent)} elements, "
                          f"over the limit of {max_elements} (load(..., max_elements=N) raises it)", shape_at)
        codec_at = h.pos
        codec = h.u8("codec")
        if codec not in CODEC_NAMES:
            raise h.error(f"{name} uses unknown codec {codec}", codec_at)
        length_at = h.pos
        length = h.varint("payload length", limit=len(body))
        if total + length > len(body):
            raise h.error(f"{name}'s payload runs past the end of the file", length_at)
        entries.append((name, dtype, shape, codec, total, length, h.pos - start))
        total += length
    h.expect_end()
    if total != len(body):
        raise CorruptFileError(f"{path}: payloads hold {len(body)} bytes but the header accounts for {total}",
                               body_at)
    state: dict[str, torch.Tensor] = {}
    infos = []
    for name, dtype, shape, codec, offset, length, entry_len in entries:
        decoder = decode_tensor if name in (RECORD_KEY, OLD_INT8_KEY) else decode
        tensor, parts = decoder(codec, body[offset:offset + length], dtype, shape, f"{path}: {name}",
                                      base=body_at + offset)
        state[name] = tensor
        nonzeros = len(tensor.positions) if isinstance(tensor, StoredSparse) else (
            int(torch.count_nonzero(tensor)) if tensor.numel() else 0)
        infos.append(TensorInfo(name, dtype, shape, CODEC_NAMES[codec], parts, entry_len, nonzeros))
    overhead = len(blob) - sum(t.total for t in infos)
    steps = None
    for key in (RECORD_KEY, OLD_INT8_KEY):
        if key in state:
            steps = (steps or []) + decode_record(state.pop(key), path, key)
    return state, FileInfo(Path(path), len(blob), infos, overhead, steps)


def load(path: str | Path, model: nn.Module | None = None, *, runtime: str = "auto", batch: int = 1,
         max_elements: int = MAX_ELEMENTS):
    """Read a ``.pjz`` file back into a state_dict (plain tensors, bit-identical to what was
    saved; a structure record is not part of it, see :func:`inspect`). Raises :class:`CorruptFileError` (a ``ValueError``) for any damaged file, and for
    a file whose tensors hold more than ``max_elements`` elements together (default 2^28).

    With a ``model`` (freshly built from the user's class): replay the file's structure
    record on it (split attention, pruned channels, factorisations, int8 layers...), load the
    weights strictly and return it, compressed layers running the CPU kernels of
    :mod:`penjing.runtime` (``runtime="auto"`` times each layer at ``batch`` and keeps the
    faster of kernel and dense; ``"kernel"``; ``"dense"``: plain dense weights)."""
    if model is not None:
        from penjing.runtime.load import load_into

        return load_into(model, path, runtime=runtime, batch=batch, max_elements=max_elements)
    return _read(path, max_elements)[0]


def loads(data: bytes, *, max_elements: int = MAX_ELEMENTS, name: str = "<bytes>") -> dict[str, torch.Tensor]:
    """:func:`load` from bytes in memory (``name`` appears in error messages)."""
    return _parse(bytes(data), name, max_elements)[0]


def load_stored(path: str | Path, *, max_elements: int = MAX_ELEMENTS) -> tuple[dict, FileInfo]:
    """Like :func:`load`, but sparse and codebook tensors come back in their stored form
    (:class:`~penjing.codec.tensors.StoredSparse`), never densified; with the file's accounting."""
    return _read(path, max_elements, decode_stored)


def inspect(path: str | Path, *, max_elements: int = MAX_ELEMENTS) -> FileInfo:
    """Per-tensor codec and byte accounting of a ``.pjz`` file (decodes it to verify it)."""
    return _read(path, max_elements)[1]
