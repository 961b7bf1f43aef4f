"""Tensor codecs: how one tensor becomes a payload of bytes, and back.

=================  ===========================================================================
codec              payload
=================  ===========================================================================
raw                the values' bytes (little-endian)
sparse-raw         relative sparse index stream, then the nonzero values' bytes
codebook           codebook (distinct values), one index per element
sparse-codebook    relative sparse index stream, codebook of the nonzero values, one index per
                   nonzero (Deep Compression's storage)
affine             ``w = (q - zero_point) * scale``: b-bit integers ``q`` (offset by their
                   minimum), the scale and zero point per tensor or per channel
=================  ===========================================================================

**Relative sparse index** (Deep Compression, Han et al. 2016, Fig. 2): each nonzero stores the
number of zeros before it at a fixed ``w`` bits (8 for conv, 5 for fc by default). A gap of
``2^w - 1`` or more zeros is bridged by *filler* entries: the symbol ``2^w - 1`` means "``2^w - 1``
zeros and no value" (the paper stores a zero value there; a filler without a value saves its
index bits). Trailing zeros are written as fillers too, so the stream accounts for the whole
tensor up to fewer than ``2^w - 1`` elements -- which lets the decoder check a tensor's claimed
size against its data before allocating it.

Every index or sparse stream is a :mod:`~penjing.codec.streams` stream: packed at its width or
Huffman coded, whichever is smaller.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from penjing.codec.bits import Reader, unzigzag, varint, zigzag
from penjing.codec.dtypes import dtype_code, dtype_of, from_bits, itemsize, to_bits
from penjing.codec.errors import CorruptFileError
from penjing.codec.streams import StreamParts, StreamPlan, estimate_nbytes, read_stream

RAW, SPARSE_RAW, CODEBOOK, SPARSE_CODEBOOK, AFFINE = range(5)
CODEC_NAMES = {RAW: "raw", SPARSE_RAW: "sparse-raw", CODEBOOK: "codebook",
               SPARSE_CODEBOOK: "sparse-codebook", AFFINE: "affine"}
#: Without a hint, a tensor with at most this many distinct values is tried as a codebook.
AUTO_CODEBOOK = 256
MAX_CODEBOOK = 1 << 16
NO_AXIS = 255


@dataclass
class Encoded:
    """One tensor's payload and where its bytes go (``parts``: codebook, indices, ...)."""

    codec: int
    payload: bytes
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return CODEC_NAMES[self.codec]


def _add(parts: dict[str, int], sp: StreamParts, data_key: str) -> None:
    parts[data_key] = parts.get(data_key, 0) + sp.data
    parts["tables"] = parts.get("tables", 0) + sp.table


def _width(count: int) -> int:
    """Bits for indices into ``count`` entries (at least 1)."""
    return max(1, math.ceil(math.log2(count))) if count > 1 else 1


# ---------------------------------------------------------------------------- sparse index

def runs_from_positions(positions: np.ndarray, numel: int, width: int) -> np.ndarray:
    """Relative-index symbols for the sorted nonzero ``positions`` (fillers included)."""
    escape = (1 << width) - 1
    positions = np.asarray(positions, dtype=np.int64)
    gaps = np.diff(positions, prepend=-1) - 1
    fillers, rest = gaps // escape, gaps % escape
    trailing = (numel - 1 - int(positions[-1])) if len(positions) else numel
    counts = fillers + 1
    out = np.full(int(counts.sum()) + trailing // escape, escape, dtype=np.int64)
    out[np.cumsum(counts) - 1] = rest
    return out


def positions_from_runs(symbols: np.ndarray, width: int, numel: int, what: str,
                        at: int | None = None) -> np.ndarray:
    """Inverse of :func:`runs_from_positions`; checks that the stream covers ``numel``.

    Each entry advances the position by at least one element, so the positions come out
    strictly increasing by construction; the symbols are checked to be in ``[0, 2^width)``
    and the elements they cover to end within ``2^width - 1`` of ``numel``."""
    escape = (1 << width) - 1
    if len(symbols) and not 0 <= int(symbols.min()) <= int(symbols.max()) <= escape:
        raise CorruptFileError(f"{what}: sparse index symbol out of range [0, {escape}]", at)
    entry = symbols != escape
    # an entry advances past its zeros and its value (symbol + 1), a filler by ``escape``
    ends = np.cumsum(np.add(symbols, entry, dtype=np.int64))
    covered = int(ends[-1]) if len(ends) else 0
    if not 0 <= numel - covered < max(escape, 1):
        raise CorruptFileError(f"{what}: sparse index covers {covered} elements but the tensor claims {numel}", at)
    positions = ends[entry]
    positions -= 1
    return positions


# ---------------------------------------------------------------------------- encoders

def _raw(bits: np.ndarray) -> Encoded:
    data = bits.tobytes()
    return Encoded(RAW, data, {"values": len(data)})


def _small_tensor(t: torch.Tensor) -> bytes:
    t = t.detach().reshape(-1)
    return bytes([dtype_code(t.dtype)]) + varint(t.numel()) + to_bits(t).tobytes()


def _read_small_tensor(r: Reader, limit: int, what: str) -> torch.Tensor:
    at = r.pos
    code = r.u8(what)
    try:
        dtype = dtype_of(code)
    except CorruptFileError:
        raise r.error(f"{what} has unknown dtype code {code}", at) from None
    n = r.varint(f"{what} size", limit=limit)
    data = r.take(n * itemsize(dtype), what)
    arr = np.frombuffer(data, dtype={1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[itemsize(dtype)])
    return from_bits(arr, dtype, (n,))


def _broadcast(t: torch.Tensor, shape: tuple[int, ...], axis: int | None) -> torch.Tensor:
    if axis is None or t.numel() == 1:
        return t.reshape(())
    view = [1] * len(shape)
    view[axis] = -1
    return t.reshape(view)


def affine_dequant(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int | None,
                   dtype: torch.dtype) -> torch.Tensor:
    """``(q - zero_point) * scale`` in the scale's dtype, cast to ``dtype`` (the one formula the
    encoder checks and the decoder applies, so both agree to the bit)."""
    s = _broadcast(scale, tuple(q.shape), axis)
    z = _broadcast(zero_point.to(scale.dtype), tuple(q.shape), axis)
    return ((q.to(scale.dtype) - z) * s).to(dtype)


def _affine(tensor: torch.Tensor, hint: dict, use_huffman: bool) -> Encoded | None:
    """The affine payload, or ``None`` (with a warning) when the hint does not reproduce the
    tensor bit for bit."""
    bits = int(hint["bits"])
    scale = torch.as_tensor(hint["scale"]).detach().cpu().reshape(-1)
    zero_point = torch.as_tensor(hint["zero_point"]).detach().cpu().reshape(-1)
    axis = hint.get("axis")
    shape = tuple(tensor.shape)
    problem = None
    if not tensor.is_floating_point() or not scale.is_floating_point():
        problem = "affine needs a floating-point tensor and scale"
    elif not 1 <= bits <= 32:
        problem = f"affine bits must be in [1, 32], got {bits}"
    elif axis is not None and not (0 <= axis < len(shape) and scale.numel() in (1, shape[axis])
                                   and zero_point.numel() in (1, shape[axis])):
        problem = f"scale/zero_point of {scale.numel()}/{zero_point.numel()} values do not fit axis {axis} of {shape}"
    elif axis is None and (scale.numel() != 1 or zero_point.numel() != 1):
        problem = "per-tensor affine needs one scale and one zero point"
    if problem is None:
        with torch.no_grad():
            s = _broadcast(scale, shape, axis)
            z = _broadcast(zero_point.to(scale.dtype), shape, axis)
            q = torch.round(tensor.to(scale.dtype) / s + z)
            finite = bool(torch.isfinite(q).all()) if q.numel() else True
            if not finite or (q.numel() and float(q.abs().max()) >= 2 ** 31):
                problem = "q = round(w / scale + zero_point) is not a finite 32-bit integer"
            else:
                qi = q.to(torch.int64)
                back = affine_dequant(qi, scale, zero_point, axis, tensor.dtype)
                # Bit-exact, except that a quantizer's -0.0 may come back as +0.0 (the
                # integer q = 0 has no sign); the two are equal in every computation.
                same = (to_bits(back) == to_bits(tensor)) | ((back == 0) & (tensor == 0)).reshape(-1).numpy()
                if not same.all():
                    problem = "(q - zero_point) * scale does not reproduce the weights bit for bit"
                else:
                    qmin = int(qi.min()) if qi.numel() else 0
                    u = (qi - qmin).reshape(-1).numpy()
                    if u.size and int(u.max()) >= 1 << bits:
                        problem = f"q spans {int(u.max()) + 1} values, more than {bits} bits hold"
    if problem is not None:
        warnings.warn(f"affine codec hint not usable ({problem}); storing the tensor without it",
                      stacklevel=4)
        return None
    head = bytes([bits, NO_AXIS if axis is None else axis])
    params = _small_tensor(scale) + _small_tensor(zero_point) + varint(zigzag(qmin))
    stream, sp = StreamPlan(u, bits, use_huffman).encode()
    parts = {"params": len(head) + len(params)}
    _add(parts, sp, "indices")
    return Encoded(AFFINE, head + params + stream, parts)


def default_index_bits(shape: tuple[int, ...]) -> int:
    """Deep Compression's relative-index widths: 8 bits for conv kernels, 5 for the rest."""
    return 8 if len(shape) > 2 else 5


def encode_tensor(tensor: torch.Tensor, *, hint: dict | None = None, huffman: bool = True,
                  index_bits: int | None = None) -> Encoded:
    """Encode ``tensor`` with the smallest applicable codec (see the module docstring)."""
    hint = hint or {}
    shape = tuple(tensor.shape)
    dtype_code(tensor.dtype)  # refuses unsupported dtypes with a clear message
    bits = to_bits(tensor)
    numel, size = bits.size, itemsize(tensor.dtype)
    width = index_bits or default_index_bits(shape)
    if not 1 <= width <= 16:
        raise ValueError(f"index_bits must be in [1, 16], got {width}")
    candidates: list[tuple[int, object]] = [(numel * size, lambda: _raw(bits))]

    if "affine" in hint:
        affine = _affine(tensor, hint["affine"], huffman)
        if affine is not None:
            candidates.append((len(affine.payload), lambda: affine))

    nonzero = bits != 0
    nnz = int(nonzero.sum())
    runs_plan = None
    if nnz < numel:
        positions = np.flatnonzero(nonzero)
        runs_plan = StreamPlan(runs_from_positions(positions, numel, width), width, huffman)
        candidates.append((1 + runs_plan.nbytes + nnz * size,
                           lambda: _sparse_raw(bits[nonzero], runs_plan, width)))

    hinted = hint.get("codebook_bits")
    limit = min(MAX_CODEBOOK, max(AUTO_CODEBOOK, 2 ** int(hinted) if hinted else 0))
    values = bits[nonzero]
    # Cheap rejection first: a sample with too many distinct values rules out a codebook.
    if numel and (hinted or len(np.unique(values[:4 * limit])) <= limit):
        uniq, inverse = np.unique(values, return_inverse=True)
        if len(uniq) <= limit:
            inverse = inverse.reshape(-1)
            if runs_plan is not None:
                plan = StreamPlan(inverse, _width(len(uniq)), huffman)
                est = 1 + runs_plan.nbytes + len(varint(len(uniq))) + len(uniq) * size + plan.nbytes
                candidates.append((est, lambda: _sparse_codebook(uniq, plan, runs_plan, width)))
            book = np.concatenate([np.zeros(1, uniq.dtype), uniq]) if nnz < numel else uniq
            counts = np.bincount(inverse, minlength=len(uniq))
            if nnz < numel:
                counts = np.concatenate([[numel - nnz], counts])
            # sized from the counts alone: the dense index is only built if this one wins
            est = len(varint(len(book))) + len(book) * size + estimate_nbytes(counts, _width(len(book)), huffman)
            candidates.append((est, lambda: _codebook(book, _dense_index(nonzero, inverse, nnz < numel),
                                                      _width(len(book)), huffman)))

    _, make = min(candidates, key=lambda c: c[0])
    return make()


def _sparse_raw(values: np.ndarray, runs_plan: StreamPlan, width: int) -> Encoded:
    runs, sp = runs_plan.encode()
    data = values.tobytes()
    parts = {"tables": 1, "values": len(data)}
    _add(parts, sp, "sparse index")
    return Encoded(SPARSE_RAW, bytes([width]) + runs + data, parts)


def _dense_index(nonzero: np.ndarray, inverse: np.ndarray, has_zero: bool) -> np.ndarray:
    index = np.zeros(len(nonzero), dtype=np.int64)
    index[nonzero] = inverse + (1 if has_zero else 0)
    return index


def _codebook(book: np.ndarray, index: np.ndarray, width: int, use_huffman: bool) -> Encoded:
    head = varint(len(book))
    stream, sp = StreamPlan(index, width, use_huffman).encode()
    parts = {"tables": len(head), "codebook": book.nbytes}
    _add(parts, sp, "indices")
    return Encoded(CODEBOOK, head + book.tobytes() + stream, parts)


def _sparse_codebook(book: np.ndarray, plan: StreamPlan, runs_plan: StreamPlan, width: int) -> Encoded:
    runs, rp = runs_plan.encode()
    head = varint(len(book))
    stream, sp = plan.encode()
    parts = {"tables": 1 + len(head), "codebook": book.nbytes}
    _add(parts, rp, "sparse index")
    _add(parts, sp, "indices")
    return Encoded(SPARSE_CODEBOOK, bytes([width]) + runs + head + book.tobytes() + stream, parts)


# ---------------------------------------------------------------------------- decoder

_NP_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def decode_tensor(codec: int, payload: bytes | memoryview, dtype: torch.dtype, shape: tuple[int, ...],
                  what: str, base: int = 0) -> tuple[torch.Tensor, dict[str, int]]:
    """Inverse of :func:`encode_tensor`; every count is checked against the payload first.

    ``base``: the file offset of ``payload``, so that errors name the byte of the file."""
    numel = math.prod(shape)
    size = itemsize(dtype)
    unsigned = _NP_UNSIGNED[size]
    r = Reader(payload, what, base)
    parts: dict[str, int] = {}
    if codec == RAW:
        if len(payload) != numel * size:
            raise r.error(f"raw tensor of {numel} x {size} bytes but its payload holds {len(payload)}")
        out = np.frombuffer(r.take(len(payload)), dtype=unsigned).copy()
        parts["values"] = len(payload)
    elif codec in (SPARSE_RAW, SPARSE_CODEBOOK):
        width = r.u8("sparse index width")
        if not 1 <= width <= 16:
            raise r.error(f"sparse index width {width} not in [1, 16]", 0)
        parts["tables"] = 1
        runs_at = r.pos
        runs, rp = read_stream(r, numel + 1, "sparse index")
        _add(parts, rp, "sparse index")
        positions = positions_from_runs(runs, width, numel, what, base + runs_at)
        del runs
        nnz = len(positions)
        values_at = r.pos
        if codec == SPARSE_RAW:
            data = r.take(nnz * size, "nonzero values")
            values = np.frombuffer(data, dtype=unsigned)
            parts["values"] = len(data)
        else:
            values = _read_codebook_values(r, nnz, size, unsigned, parts, what)
        if nnz and not values.all():  # a stored zero would make the index lie about the zeros
            raise r.error("a value the sparse index marks as nonzero is zero", values_at)
        out = np.zeros(numel, dtype=unsigned)  # calloc: zero pages cost no memory until written
        out[positions] = values
    elif codec == CODEBOOK:
        out = _read_codebook_values(r, numel, size, unsigned, parts, what)
    elif codec == AFFINE:
        return _decode_affine(r, dtype, shape, numel, parts, what)
    else:
        raise r.error(f"unknown codec {codec}")
    r.expect_end()
    if dtype == torch.bool and numel and int(out.max()) > 1:
        raise r.error(f"bool tensor holds the byte {int(out.max()):#04x} (only 0 and 1 are booleans)", 0)
    return from_bits(out, dtype, shape, copy=False), parts


@dataclass
class StoredSparse:
    """A sparse or codebook tensor as stored, not densified: the ascending flat ``positions``
    of its nonzeros and either their ``values`` or their ``indices`` into ``codebook``."""

    shape: tuple[int, ...]
    positions: np.ndarray
    values: torch.Tensor | None = None
    codebook: torch.Tensor | None = None
    indices: np.ndarray | None = None

    def nonzero_values(self) -> torch.Tensor:
        """One value per stored position (a codebook tensor's looked up), in its stored dtype."""
        if self.values is not None:
            return self.values
        return self.codebook[torch.as_tensor(self.indices, dtype=torch.int64)]


def decode_stored(codec: int, payload: bytes | memoryview, dtype: torch.dtype, shape: tuple[int, ...],
                  what: str, base: int = 0) -> tuple[torch.Tensor | StoredSparse, dict[str, int]]:
    """Like :func:`decode_tensor`, but sparse-raw, sparse-codebook and codebook tensors come
    back as :class:`StoredSparse` (same checks; the zeros are never materialized)."""
    if codec not in (SPARSE_RAW, SPARSE_CODEBOOK, CODEBOOK):
        return decode_tensor(codec, payload, dtype, shape, what, base)
    numel, size = math.prod(shape), itemsize(dtype)
    unsigned = _NP_UNSIGNED[size]
    r = Reader(payload, what, base)
    parts: dict[str, int] = {}
    if codec == CODEBOOK:
        book, index = _read_codebook(r, numel, size, unsigned, parts, what)
        r.expect_end()
        nonzero_code = book != 0
        positions = np.flatnonzero(nonzero_code[index])
        index = index[positions]
    else:
        width = r.u8("sparse index width")
        if not 1 <= width <= 16:
            raise CorruptFileError(f"{what}: sparse index width {width} not in [1, 16]")
        parts["tables"] = 1
        runs, rp = read_stream(r, numel + 1, "sparse index")
        _add(parts, rp, "sparse index")
        positions = positions_from_runs(runs, width, numel, what)
        if codec == SPARSE_RAW:
            data = r.take(len(positions) * size, "nonzero values")
            parts["values"] = len(data)
            r.expect_end()
            values = from_bits(np.frombuffer(data, dtype=unsigned).copy(), dtype, (len(positions),))
            return StoredSparse(shape, positions, values=values), parts
        book, index = _read_codebook(r, len(positions), size, unsigned, parts, what)
        r.expect_end()
    codebook = from_bits(book.copy(), dtype, (len(book),))
    return StoredSparse(shape, positions, codebook=codebook, indices=index), parts


def _read_codebook(r: Reader, count: int, size: int, unsigned, parts: dict, what: str) -> tuple[np.ndarray, np.ndarray]:
    start = r.pos
    k = r.varint("codebook size", limit=MAX_CODEBOOK)
    parts["tables"] = parts.get("tables", 0) + r.pos - start
    book = np.frombuffer(r.take(k * size, "codebook"), dtype=unsigned)
    parts["codebook"] = book.nbytes
    index, sp = read_stream(r, count, "codebook indices")
    _add(parts, sp, "indices")
    if len(index) != count:
        raise CorruptFileError(f"{what}: {len(index)} codebook indices for {count} values")
    if count and int(index.max()) >= k:
        raise CorruptFileError(f"{what}: codebook index {int(index.max())} past its {k} entries")
    return book, index


def _read_codebook_values(r: Reader, count: int, size: int, unsigned, parts: dict, what: str) -> np.ndarray:
    start = r.pos
    k = r.varint("codebook size", limit=MAX_CODEBOOK)
    parts["tables"] = parts.get("tables", 0) + r.pos - start
    book = np.frombuffer(r.take(k * size, "codebook"), dtype=unsigned)
    parts["codebook"] = book.nbytes
    index_at = r.pos
    index, sp = read_stream(r, count, "codebook indices")
    _add(parts, sp, "indices")
    if len(index) != count:
        raise r.error(f"{len(index)} codebook indices for {count} values", index_at)
    if count and int(index.max()) >= k:
        raise r.error(f"codebook index {int(index.max())} past its {k} entries", index_at)
    return np.take(book, index)


def _decode_affine(r: Reader, dtype: torch.dtype, shape: tuple[int, ...], numel: int, parts: dict,
                   what: str) -> tuple[torch.Tensor, dict[str, int]]:
    if not dtype.is_floating_point:
        raise r.error(f"affine codec on a {dtype} tensor", 0)
    bits = r.u8("affine bits")
    axis_byte = r.u8("affine axis")
    axis = None if axis_byte == NO_AXIS else axis_byte
    if not 1 <= bits <= 32 or (axis is not None and axis >= len(shape)):
        raise r.error(f"affine bits {bits} / axis {axis_byte} invalid for shape {shape}", 0)
    channels = shape[axis] if axis is not None else 1
    params_at = r.pos
    scale = _read_small_tensor(r, channels, "affine scale")
    zero_point = _read_small_tensor(r, channels, "affine zero point")
    offset_at = r.pos
    qmin = unzigzag(r.varint("affine offset"))
    if not -(1 << 31) <= qmin < 1 << 31:  # the encoder stores 32-bit integers only
        raise r.error(f"affine offset {qmin} is not a 32-bit integer", offset_at)
    parts["params"] = r.pos
    if not scale.is_floating_point() or scale.numel() not in (1, channels) or zero_point.numel() not in (1, channels):
        raise r.error(f"affine scale/zero point do not match shape {shape}", params_at)
    values_at = r.pos
    u, sp = read_stream(r, numel, "affine values")
    _add(parts, sp, "indices")
    r.expect_end()
    if len(u) != numel:
        raise r.error(f"{len(u)} affine values for {numel} elements", values_at)
    if numel and int(u.max()) >= 1 << bits:
        raise r.error(f"affine value past {bits} bits", values_at)
    q = torch.from_numpy(u.astype(np.int64) + qmin).reshape(shape)
    return affine_dequant(q, scale, zero_point, axis, dtype), parts
