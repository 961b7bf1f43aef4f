"""``nn.Module`` layers that run their compressed weights through the kernels.

Each holds its stored form (never a dense weight) as non-persistent buffers, so ``.cpu()`` and
friends keep working; a layer notices when a buffer was replaced and re-reads its pointers.
They are inference layers: with autograd on an input that needs a gradient they run the
PyTorch fallback, which is differentiable with respect to the input (not the weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from penjing.runtime import ops
from penjing.runtime.formats import BitWeights, SparseWeights


class RuntimeLayer(nn.Module):
    """Common part: the weights object, its buffers, the bias, byte accounting."""

    weights: SparseWeights | BitWeights

    def __init__(self, weights: SparseWeights | BitWeights, bias: torch.Tensor | None):
        super().__init__()
        self.weights = weights
        for name, t in weights.tensors().items():
            self.register_buffer(f"w_{name}", t, persistent=False)
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).contiguous().clone(),
                             persistent=False)
        #: an int8 layer's input rounding (``(q - z) * s`` in float) and its fused ReLU, when
        #: this layer runs an int8 weight stored by ``pj.convert`` (see :meth:`takes_int8_input`)
        self.input_grid: nn.Module | None = None
        self.fused_relu = False

    def takes_int8_input(self, grid: nn.Module | None, relu: bool) -> RuntimeLayer:
        """Run as the int8 layer this one replaces: its input rounded to that layer's grid first
        (``grid``; ``None`` for weight-only int8), its ReLU applied after."""
        self.input_grid, self.fused_relu = grid, bool(relu)
        return self

    def _input_note(self) -> str:
        return "" if self.input_grid is None else f", {self.input_grid.mode} int8 input"

    def _grid(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.input_grid is None else self.input_grid(x)

    def _relu(self, y: torch.Tensor) -> torch.Tensor:
        if not self.fused_relu:
            return y
        return torch.relu(y) if torch.is_grad_enabled() and y.requires_grad else y.relu_()

    def _sync(self) -> None:
        # a buffer replaced by .to()/.cpu()/.float(): point the kernels at the new memory
        # (runs every call: looks at the buffer dict directly, a few attribute reads in all)
        w, bufs = self.weights, self._buffers
        changed = False
        for name in ("segptr", "entries", "values", "scales", "centroids", "plus", "minus", "scale_plus",
                     "scale_minus"):
            buf = bufs.get(f"w_{name}")
            if buf is not None and buf is not getattr(w, name):
                if buf.device.type != "cpu":
                    raise ValueError(f"{type(self).__name__} runs on CPU only; its weights are on {buf.device}")
                setattr(w, name, buf.contiguous())
                changed = True
        if changed:
            w._struct = None
        bias = bufs["bias"]
        if bias is not None and (bias.dtype != torch.float32 or not bias.is_contiguous()):
            self.bias = bias.to(torch.float32).contiguous()

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights one call reads."""
        return self.weights.nbytes

    def bytes_per_call(self, batch: int) -> int:
        """Bytes of weights one call at ``batch`` reads (the layout that batch runs from)."""
        return self.weights.nbytes

    @property
    def format(self) -> str:
        raise NotImplementedError

    def dense_weight(self) -> torch.Tensor:
        """The dense weight these layers stand for (the reference; forward never builds it)."""
        return self.weights.to_dense()

    @property
    def weight(self) -> torch.Tensor:
        """:meth:`dense_weight`, decoded at each read and not kept: for code that reads a
        layer's ``weight`` (Hugging Face models check ``.weight.dtype``). Forward never does."""
        return self.dense_weight()

    def extra_repr(self) -> str:  # the Linear layers'; SparseConv2d has its own
        relu = ", relu" if self.fused_relu else ""
        return f"{self.in_features}, {self.out_features}, {self.format}, bias={self.bias is not None}{relu}"


def _sparse_format(w: SparseWeights) -> str:
    density = w.nnz / max(1, w.rows * w.cols)
    if w.kind == "codebook":
        return f"sparse {density:.1%} + {w.code_bits}-bit codebook"
    return f"sparse {density:.1%} {w.kind}"


class SparseLinear(RuntimeLayer):
    """``nn.Linear`` with a sparse weight (fp32 or int8 values, or codebook indices)."""

    weights: SparseWeights

    def __init__(self, weights: SparseWeights, bias: torch.Tensor | None = None):
        super().__init__(weights, bias)
        self.in_features, self.out_features = weights.cols, weights.rows
        self._csr_cache: torch.Tensor | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kw) -> SparseLinear:
        """From an ``nn.Linear`` (parametrized or baked): its weight's nonzeros."""
        return cls(SparseWeights.from_dense(linear.weight, **kw), linear.bias)

    @property
    def format(self) -> str:
        return _sparse_format(self.weights) + self._input_note()

    def _csr(self) -> torch.Tensor:
        if self._csr_cache is None:
            self._csr_cache = ops._csr(self.weights)
        return self._csr_cache

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._sync()
        return self._relu(ops.sparse_linear(self.weights, self._grid(x), self.bias, self._csr))


class CodebookLinear(SparseLinear):
    """The Deep Compression layer: b-bit indices into 2^b shared values, zeros skipped."""

    def __init__(self, weights: SparseWeights, bias: torch.Tensor | None = None):
        if weights.kind != "codebook":
            raise ValueError(f"CodebookLinear needs codebook weights, got {weights.kind}")
        super().__init__(weights, bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kw) -> CodebookLinear:
        return cls(SparseWeights.from_dense(linear.weight, codebook=True), linear.bias)


class _BitsLinear(RuntimeLayer):
    weights: BitWeights

    def __init__(self, weights: BitWeights, bias: torch.Tensor | None = None):
        super().__init__(weights, bias)
        self.in_features, self.out_features = weights.cols, weights.rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._sync()
        return ops.bits_linear(self.weights, x, self.bias)

    def bytes_per_call(self, batch: int) -> int:
        # batch 1 on AVX-512 reads the table-lookup codes (built on first use), else the planes
        if batch == 1 and ops.lut_kernel():
            return self.weights.lut_nbytes()
        return self.weights.nbytes


class TernaryLinear(_BitsLinear):
    """``W = a_r * P - b_r * M``: two bit planes, per-row scales (TWN/TTQ weights)."""

    def __init__(self, weights: BitWeights, bias: torch.Tensor | None = None):
        if not weights.ternary:
            raise ValueError("TernaryLinear needs ternary bit planes")
        super().__init__(weights, bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> TernaryLinear:
        w = BitWeights.detect(linear.weight)
        if w is None:
            raise ValueError("the weight is not ternary (each row must take only -b, 0, +a)")
        if not w.ternary:  # a ternary layer without zeros is stored as two planes all the same
            w = BitWeights(w.rows, w.cols, True, w.plus, BitWeights.pack_plane(linear.weight.detach() < 0),
                           w.scale_plus, w.scale_plus.clone())
        return cls(w, linear.bias)

    @property
    def format(self) -> str:
        return "ternary 2-bit"


class BinaryLinear(_BitsLinear):
    """``W = a_r * sign``: one bit plane, per-row scale (BinaryConnect / XNOR weights)."""

    def __init__(self, weights: BitWeights, bias: torch.Tensor | None = None):
        if weights.ternary:
            raise ValueError("BinaryLinear needs one sign plane")
        super().__init__(weights, bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> BinaryLinear:
        w = BitWeights.detect(linear.weight)
        if w is None or w.ternary:
            raise ValueError("the weight is not binary (each row must take only -a, +a)")
        return cls(w, linear.bias)

    @property
    def format(self) -> str:
        return "binary 1-bit"


class SparseConv2d(RuntimeLayer):
    """``nn.Conv2d`` (zero padding) with a sparse weight ``[out, in * kh * kw]``: 1x1
    convolutions multiply the input planes directly, larger kernels go through im2col. A
    grouped (or depthwise) convolution is the same product with a block-diagonal weight:
    output channel ``o`` of group ``j`` has its nonzeros only in group ``j``'s columns, so the
    kernels skip the other groups like any zero (:func:`block_diagonal`)."""

    weights: SparseWeights

    def __init__(self, weights: SparseWeights, bias: torch.Tensor | None, in_channels: int,
                 kernel_size: tuple[int, int], stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups: int = 1):
        if groups < 1 or in_channels % groups or weights.rows % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={weights.rows}")
        if weights.cols != in_channels * kernel_size[0] * kernel_size[1]:
            raise ValueError(f"weights have {weights.cols} columns; in_channels x kernel = "
                             f"{in_channels * kernel_size[0] * kernel_size[1]}")
        super().__init__(weights, bias)
        self.in_channels, self.out_channels = in_channels, weights.rows
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
        self.padding, self.dilation = tuple(padding), tuple(dilation)
        self.groups = groups
        self._csr_cache: torch.Tensor | None = None

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **kw) -> SparseConv2d:
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("SparseConv2d takes zero padding given as numbers")
        w = block_diagonal(conv.weight.detach().reshape(conv.out_channels, -1), conv.groups)
        return cls(SparseWeights.from_dense(w, **kw), conv.bias, conv.in_channels,
                   conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups)

    @property
    def format(self) -> str:
        return _sparse_format(self.weights) + self._input_note()

    def _csr(self) -> torch.Tensor:
        if self._csr_cache is None:
            self._csr_cache = ops._csr(self.weights)
        return self._csr_cache

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._sync()
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"SparseConv2d expects [N, {self.in_channels}, H, W], got {list(x.shape)}")
        return self._relu(self._conv(self._grid(x)))

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        oh, ow = self.out_size(h, w)
        pointwise = self.kernel_size == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0)
        if not pointwise and self.stride == (1, 1) and self.dilation == (1, 1):
            out = ops.conv_direct(self.weights, x.contiguous(), self.kernel_size, self.padding, self.bias, (oh, ow))
            if out is not None:
                return out
        if pointwise:
            cols = x.reshape(n, self.in_channels, h * w)
        else:
            cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # [N, K, L]
        # each sample straight into its slice of the output: torch.stack's copy runs on torch's
        # thread pool, which on a busy machine cost more than the kernel (37 ms for a 0.2 ms
        # 1x1 layer at 2 threads, load 19 on 2 cores)
        out = torch.empty(n, self.out_channels, oh * ow)
        for i in range(n):
            ops.sparse_mm_kn(self.weights, cols[i], self.bias, self._csr, out=out[i])
        return out.reshape(n, self.out_channels, oh, ow)

    def dense_weight(self) -> torch.Tensor:
        """The ``nn.Conv2d`` weight ``[out, in / groups, kh, kw]``."""
        g, per = self.groups, self.out_channels // self.groups
        full = self.weights.to_dense().reshape(g, per, g, -1)
        own = torch.stack([full[j, :, j] for j in range(g)])  # each group's block of its own columns
        return own.reshape(self.out_channels, self.in_channels // g, *self.kernel_size)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}, {self.format}")


def block_diagonal(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """A grouped conv's ``[out, in / groups * kh * kw]`` weight as the ``[out, in * kh * kw]``
    matrix im2col multiplies: group ``j``'s rows keep their values in group ``j``'s columns,
    zeros elsewhere."""
    if groups == 1:
        return weight
    per = weight.shape[0] // groups
    return torch.block_diag(*[weight[j * per:(j + 1) * per] for j in range(groups)])


def block_diagonal_positions(positions, rows: int, cols: int, groups: int):
    """:func:`block_diagonal` on the ascending flat positions of a ``[rows, cols]`` weight's
    nonzeros (the stored form): positions in ``[rows, groups * cols]``, still ascending."""
    import numpy as np

    pos = np.asarray(positions, dtype=np.int64)
    if groups == 1:
        return pos
    r, c = pos // cols, pos % cols
    return r * (groups * cols) + (r // (rows // groups)) * cols + c
