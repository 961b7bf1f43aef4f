"""Storage layouts the kernels run from, built from positions + values (never a dense matrix).

:class:`SparseWeights` -- rows are output features; each row's nonzeros sit in column panels
of ``2^(16 - code_bits)`` columns and each nonzero is one ``uint16`` entry
``column_in_panel << code_bits | code``. Values: fp32 per nonzero (``kind="f32"``), int8 per
nonzero with one scale per output channel (``"int8"``), or a ``code_bits``-bit index into
``2^code_bits`` centroids (``"codebook"``: Deep Compression's shared weights, 2 bytes per
nonzero in all). Column indices are 16 bits (a 4096-wide fp32 layer reads 6 bytes per
nonzero, not CSR's 8), and with a codebook the index and the code share those 16 bits.

:class:`BitWeights` -- ternary (a +1 plane and a -1 plane, per-row scales) or binary (one sign
plane, per-row scale), one bit per weight in ``uint16`` words, rows padded to 64 columns.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass, field

import numpy as np
import torch

KINDS = {"f32": 0, "int8": 1, "codebook": 2}
MAX_CODE_BITS = 8


class _SparseStruct(ctypes.Structure):
    _fields_ = [("rows", ctypes.c_int64), ("cols", ctypes.c_int64), ("panels", ctypes.c_int64),
                ("kind", ctypes.c_int32), ("code_bits", ctypes.c_int32),
                ("segptr", ctypes.c_void_p), ("entries", ctypes.c_void_p), ("values", ctypes.c_void_p),
                ("scales", ctypes.c_void_p), ("centroids", ctypes.c_void_p)]


class _BitsStruct(ctypes.Structure):
    _fields_ = [("rows", ctypes.c_int64), ("cols", ctypes.c_int64), ("words", ctypes.c_int64),
                ("ternary", ctypes.c_int32), ("plus", ctypes.c_void_p), ("minus", ctypes.c_void_p),
                ("scale_plus", ctypes.c_void_p), ("scale_minus", ctypes.c_void_p)]


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def code_bits_for(count: int) -> int:
    """Bits of a codebook index for ``count`` centroids (at least 1)."""
    return max(1, math.ceil(math.log2(count))) if count > 1 else 1


@dataclass
class SparseWeights:
    """A sparse weight matrix ``[rows, cols]`` in the kernels' panel layout."""

    rows: int
    cols: int
    kind: str
    code_bits: int
    segptr: torch.Tensor  # int64 [rows * panels + 1]
    entries: torch.Tensor  # int16 (bit pattern of uint16) [nnz]
    values: torch.Tensor | None = None  # float32 or int8 [nnz]
    scales: torch.Tensor | None = None  # float32 [rows] (int8)
    centroids: torch.Tensor | None = None  # float32 [2^code_bits] (codebook)
    _struct: _SparseStruct | None = field(default=None, repr=False, compare=False)

    @property
    def panels(self) -> int:
        return max(1, -(-self.cols // (1 << (16 - self.code_bits))))

    @property
    def nnz(self) -> int:
        return int(self.entries.numel())

    @property
    def nbytes(self) -> int:
        """Bytes of weights one call reads (entries, values, pointers, scales, centroids)."""
        return sum(t.numel() * t.element_size() for t in
                   (self.segptr, self.entries, self.values, self.scales, self.centroids) if t is not None)

    def struct(self) -> _SparseStruct:
        if self._struct is None:
            self._struct = _SparseStruct(self.rows, self.cols, self.panels, KINDS[self.kind], self.code_bits,
                                         _ptr(self.segptr), _ptr(self.entries), _ptr(self.values),
                                         _ptr(self.scales), _ptr(self.centroids))
        return self._struct

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in ("segptr", "entries", "values", "scales", "centroids")
                if getattr(self, k) is not None}

    # ------------------------------------------------------------------ building

    @classmethod
    def from_positions(cls, rows: int, cols: int, positions: np.ndarray | torch.Tensor, *,
                       values: torch.Tensor | None = None, codes: np.ndarray | torch.Tensor | None = None,
                       centroids: torch.Tensor | None = None, scales: torch.Tensor | None = None) -> SparseWeights:
        """From the ascending flat (row-major) ``positions`` of the nonzeros and either their
        ``values`` (float32, or int8 with per-row ``scales``) or their ``codes`` into ``centroids``."""
        pos = torch.as_tensor(np.asarray(positions, dtype=np.int64))
        if pos.numel() and (int(pos[0]) < 0 or int(pos[-1]) >= rows * cols or bool((pos[1:] <= pos[:-1]).any())):
            raise ValueError("positions must be ascending flat indices inside the matrix")
        if codes is not None:
            if centroids is None:
                raise ValueError("codes need centroids")
            kind, code_bits = "codebook", code_bits_for(centroids.numel())
            if code_bits > MAX_CODE_BITS:
                raise ValueError(f"a codebook of {centroids.numel()} values needs {code_bits} bits; at most {MAX_CODE_BITS}")
            code_t = torch.as_tensor(np.asarray(codes, dtype=np.int64))
            if code_t.numel() != pos.numel():
                raise ValueError(f"{code_t.numel()} codes for {pos.numel()} nonzeros")
            if code_t.numel() and (int(code_t.min()) < 0 or int(code_t.max()) >= centroids.numel()):
                raise ValueError("a code points past the codebook")
            book = torch.zeros(1 << code_bits, dtype=torch.float32)
            book[:centroids.numel()] = centroids.to(torch.float32).reshape(-1)
            centroids = book
        else:
            if values is None or values.numel() != pos.numel():
                raise ValueError("need one value per nonzero")
            code_bits, code_t = 0, torch.zeros_like(pos)
            if values.dtype == torch.int8:
                kind = "int8"
                if scales is None or scales.numel() != rows:
                    raise ValueError("int8 values need one scale per output channel")
                scales = scales.to(torch.float32).reshape(-1).contiguous()
            else:
                kind, values = "f32", values.to(torch.float32)
            values = values.reshape(-1).contiguous()
        # a stored -0.0 (what masking a negative weight leaves; the codec keeps its bit pattern)
        # multiplies to nothing: drop it rather than stream it every call
        kept = (centroids[code_t] != 0) if kind == "codebook" else (values != 0)
        if not bool(kept.all()):
            pos, code_t = pos[kept], code_t[kept]
            if kind != "codebook":
                values = values[kept].contiguous()
        r, c = pos // cols, pos % cols
        width = 16 - code_bits
        seg = r * max(1, -(-cols // (1 << width))) + (c >> width)
        panels = max(1, -(-cols // (1 << width)))
        counts = torch.bincount(seg, minlength=rows * panels)
        segptr = torch.zeros(rows * panels + 1, dtype=torch.int64)
        torch.cumsum(counts, 0, out=segptr[1:])
        entry = ((c & ((1 << width) - 1)) << code_bits) | code_t
        entries = entry.to(torch.int32).to(torch.int16)  # wraps: the bit pattern is the uint16
        return cls(rows, cols, kind, code_bits, segptr, entries.contiguous(), values,
                   scales if kind == "int8" else None, centroids)

    @classmethod
    def from_dense(cls, weight: torch.Tensor, *, codebook: bool | None = None,
                   int8_scales: torch.Tensor | None = None) -> SparseWeights:
        """From a 2-D weight: fp32, or (``codebook`` None = when it has at most 256 distinct
        nonzero values) shared weights. ``int8_scales``: the weight equals ``q * scale[row]``
        for int8 ``q``; stores ``q``."""
        w = weight.detach().to(torch.float32).cpu()
        rows, cols = w.shape
        flat = w.reshape(-1)
        pos = torch.nonzero(flat).reshape(-1)
        vals = flat[pos]
        if int8_scales is not None:
            s = int8_scales.to(torch.float32).reshape(-1)
            q = torch.round(vals / s[pos // cols])
            if q.numel() and float(q.abs().max()) > 127:
                raise ValueError("weight / scale does not fit int8")
            return cls.from_positions(rows, cols, pos.numpy(), values=q.to(torch.int8), scales=s)
        if codebook is not False:
            uniq, inverse = torch.unique(vals, return_inverse=True)
            if uniq.numel() <= (1 << MAX_CODE_BITS) and (codebook or uniq.numel() <= 256):
                return cls.from_positions(rows, cols, pos.numpy(), codes=inverse.numpy(), centroids=uniq)
            if codebook:
                raise ValueError(f"{uniq.numel()} distinct values do not fit a {MAX_CODE_BITS}-bit codebook")
        return cls.from_positions(rows, cols, pos.numpy(), values=vals)

    def to_dense(self) -> torch.Tensor:
        """The dense matrix (for tests and the dense reference only; the kernels never call it)."""
        rows_of_seg = torch.arange(self.rows * self.panels) // self.panels
        panel_of_seg = torch.arange(self.rows * self.panels) % self.panels
        counts = self.segptr[1:] - self.segptr[:-1]
        r = torch.repeat_interleave(rows_of_seg, counts)
        p = torch.repeat_interleave(panel_of_seg, counts)
        e = self.entries.to(torch.int32) & 0xFFFF
        c = (e >> self.code_bits) + p * (1 << (16 - self.code_bits))
        out = torch.zeros(self.rows, self.cols)
        out[r, c] = self.values_f32(e, r)
        return out

    def values_f32(self, entries: torch.Tensor | None = None, rows: torch.Tensor | None = None) -> torch.Tensor:
        """One float value per nonzero (what the entries mean)."""
        if self.kind == "f32":
            return self.values
        if self.kind == "int8":
            if rows is None:
                counts = self.segptr[1:] - self.segptr[:-1]
                rows = torch.repeat_interleave(torch.arange(self.rows * self.panels) // self.panels, counts)
            return self.values.to(torch.float32) * self.scales[rows]
        e = self.entries.to(torch.int32) & 0xFFFF if entries is None else entries
        return self.centroids[(e & ((1 << self.code_bits) - 1)).long()]


@dataclass
class BitWeights:
    """Ternary ``W = scale_plus[r] * P - scale_minus[r] * M`` or binary ``W = scale[r] * (2S - 1)``."""

    rows: int
    cols: int
    ternary: bool
    plus: torch.Tensor  # int16 [rows, words]
    minus: torch.Tensor | None
    scale_plus: torch.Tensor  # float32 [rows]
    scale_minus: torch.Tensor | None
    _struct: _BitsStruct | None = field(default=None, repr=False, compare=False)

    @property
    def words(self) -> int:
        return int(self.plus.shape[1])

    @property
    def padded_cols(self) -> int:
        return 16 * self.words

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in
                   (self.plus, self.minus, self.scale_plus, self.scale_minus) if t is not None)

    def struct(self) -> _BitsStruct:
        if self._struct is None:
            self._struct = _BitsStruct(self.rows, self.cols, self.words, int(self.ternary), _ptr(self.plus),
                                       _ptr(self.minus), _ptr(self.scale_plus), _ptr(self.scale_minus))
        return self._struct

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in ("plus", "minus", "scale_plus", "scale_minus")
                if getattr(self, k) is not None}

    @staticmethod
    def pack_plane(mask: torch.Tensor) -> torch.Tensor:
        """``[rows, cols]`` bools -> ``[rows, words]`` int16, bit ``j`` of word ``w`` = column ``16w + j``."""
        rows, cols = mask.shape
        padded = -(-cols // 64) * 64
        m = torch.zeros(rows, padded, dtype=torch.int32)
        m[:, :cols] = mask.to(torch.int32)
        weights = (1 << torch.arange(16, dtype=torch.int32))
        words = (m.reshape(rows, padded // 16, 16) * weights).sum(-1)
        return words.to(torch.int16).contiguous()

    @staticmethod
    def unpack_plane(words: torch.Tensor, cols: int) -> torch.Tensor:
        bits = (words.to(torch.int32).unsqueeze(-1) >> torch.arange(16, dtype=torch.int32)) & 1
        return bits.reshape(words.shape[0], -1)[:, :cols].bool()

    @classmethod
    def detect(cls, weight: torch.Tensor) -> BitWeights | None:
        """The bit layout when each row of ``weight`` takes only ``{-b_r, 0, +a_r}`` (ternary)
        or ``{-a_r, +a_r}`` with no zeros (binary); ``None`` otherwise."""
        w = weight.detach().to(torch.float32).cpu()
        if w.dim() != 2 or w.numel() == 0:
            return None
        a = w.clamp(min=0).amax(1)
        b = (-w).clamp(min=0).amax(1)
        pos, neg = w > 0, w < 0
        if not (torch.equal(w[pos], a[:, None].expand_as(w)[pos]) and torch.equal(w[neg], -b[:, None].expand_as(w)[neg])):
            return None
        mag = torch.maximum(a, b)
        if bool((pos | neg).all()) and torch.equal(w.abs(), mag[:, None].expand_as(w)):
            return cls(w.shape[0], w.shape[1], False, cls.pack_plane(pos), None, mag.contiguous(), None)
        return cls(w.shape[0], w.shape[1], True, cls.pack_plane(pos), cls.pack_plane(neg), a.contiguous(),
                   b.contiguous())

    # ------------------------------------------------------------------ lookup-table codes

    lut: tuple | None = field(default=None, repr=False, compare=False)

    def lut_codes(self) -> tuple | None:
        """``(codes, mode, a, b, weights_per_code, row_scale)`` for the table-lookup kernel (built once, on
        first use): one byte per 3 ternary / 5 binary weights, ``[row blocks of 16][groups][16]``.
        ``None`` for ternary layers whose scales differ from row to row *and* between signs."""
        if self.lut is not None:
            return self.lut or None
        scale = self.scale_plus
        if self.ternary:
            # a row without +1s (-1s) has no use for its plus (minus) scale: only used ones count
            has_p = self.plus.ne(0).any(1)
            has_m = self.minus.ne(0).any(1)
            sp, sm = self.scale_plus, self.scale_minus
            if bool(((sp == sm) | ~has_p | ~has_m).all()):
                mode, a, b = 0, 1.0, 1.0
                scale = torch.where(has_p, sp, sm).contiguous()
            elif bool((sp[has_p] == sp[has_p][:1]).all() and (sm[has_m] == sm[has_m][:1]).all()):
                mode = 1
                a = float(sp[has_p][0]) if bool(has_p.any()) else 0.0
                b = float(sm[has_m][0]) if bool(has_m.any()) else 0.0
            else:
                self.lut = ()
                return None
            d = (self.unpack_plane(self.plus, self.cols).to(torch.uint8)
                 - self.unpack_plane(self.minus, self.cols).to(torch.uint8) + 1)  # 0, 1, 2
            k, base, pad_value = 3, torch.tensor([1, 3, 9], dtype=torch.uint8), 1
        else:
            mode, a, b = 2, 1.0, 1.0
            d = self.unpack_plane(self.plus, self.cols).to(torch.uint8)
            k, base, pad_value = 5, torch.tensor([1, 2, 4, 8, 16], dtype=torch.uint8), 0
        groups = -(-self.cols // k)
        rows_p = -(-self.rows // 16) * 16
        full = torch.full((rows_p, groups * k), pad_value, dtype=torch.uint8)
        full[:self.rows, :self.cols] = d
        codes = (full.reshape(rows_p, groups, k) * base).sum(-1, dtype=torch.uint8)
        codes = codes.reshape(rows_p // 16, 16, groups).transpose(1, 2).contiguous()
        self.lut = (codes, mode, a, b, k, scale)
        return self.lut

    def lut_nbytes(self) -> int:
        """Bytes one table-lookup call reads: the codes and the per-row scales."""
        codes = self.lut_codes()
        return codes[0].numel() + 4 * self.rows if codes else self.nbytes

    def to_dense(self) -> torch.Tensor:
        p = self.unpack_plane(self.plus, self.cols).to(torch.float32)
        if self.ternary:
            m = self.unpack_plane(self.minus, self.cols).to(torch.float32)
            return self.scale_plus[:, None] * p - self.scale_minus[:, None] * m
        return self.scale_plus[:, None] * (2 * p - 1)
