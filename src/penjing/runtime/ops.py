"""Calls into the compiled kernels, with a pure-PyTorch fallback for each.

The kernels are inference kernels: when autograd needs a gradient through the input, the
fallback (differentiable with respect to the input) runs instead.
"""

from __future__ import annotations

import ctypes
import functools
import warnings

import torch
import torch.nn.functional as F

from penjing.runtime.build import kernels
from penjing.runtime.formats import BitWeights, SparseWeights

_c_int64 = ctypes.c_int64
_c_int = ctypes.c_int
_vp = ctypes.c_void_p


def _configure(lib: ctypes.CDLL, isa: str) -> None:
    sigs = {"pj_spmv": [_vp, _vp, _vp, _vp, _c_int], "pj_spmm": [_vp, _vp, _c_int64, _vp, _vp, _c_int],
            "pj_bits_mv": [_vp, _vp, ctypes.c_float, _vp, _vp, _c_int],
            "pj_bits_mm": [_vp, _vp, _c_int64, _vp, _vp, _vp, _c_int],
            "pj_read_probe": [_vp, _c_int64, _c_int, _vp],
            "pj_lut_tables": [_vp, _c_int64, _c_int, ctypes.c_float, ctypes.c_float, _vp],
            "pj_lut_mv": [_vp, _c_int64, _c_int64, _vp, _c_int, _vp, _vp, _vp, _c_int],
            "pj_conv_direct": [_vp, _vp, _vp, _c_int64, _c_int64, _c_int64, _vp, _vp, _c_int]}
    for name, args in sigs.items():
        fn = getattr(lib, f"{name}_{isa}")
        fn.argtypes = args
        fn.restype = {"pj_read_probe": ctypes.c_double, "pj_lut_mv": ctypes.c_int,
                      "pj_conv_direct": ctypes.c_int}.get(name)


def _lib():
    k = kernels()
    if k is None:
        return None
    if not getattr(k, "configured", False):
        # without argtypes ctypes would pass pointers as 32-bit ints: set them once per library
        _configure(k.lib, k.isa)
        k.configured = True
    return k


def compiled_isa() -> str:
    """The instruction-set variant the kernels run (``"pytorch"`` for the fallback)."""
    k = _lib()
    return k.isa if k is not None else "pytorch"


#: Multiply-adds below which a call runs on one thread: a fork-join region costs tens of
#: microseconds, and far more on a loaded machine (a late worker stalls the closing barrier).
MIN_WORK_PER_THREAD = 1 << 18


def threads_for(work: int) -> int:
    """Threads for a call doing ``work`` multiply-adds: ``torch.get_num_threads()``, fewer for
    small calls."""
    return max(1, min(torch.get_num_threads(), work // MIN_WORK_PER_THREAD))


def _p(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _needs_grad(x: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and x.requires_grad


def _check_input(x: torch.Tensor, features: int) -> torch.Tensor:
    if x.dtype != torch.float32:
        raise TypeError(f"the runtime kernels take float32 inputs, got {x.dtype}")
    if x.device.type != "cpu":
        raise ValueError(f"the runtime kernels run on CPU, got an input on {x.device}")
    if x.shape[-1] != features:
        raise ValueError(f"input has {x.shape[-1]} features, the layer takes {features}")
    return x


# ---------------------------------------------------------------------------- sparse

def _csr(w: SparseWeights) -> torch.Tensor:
    """torch CSR of ``w`` (fallback only): rows' pointers are every ``panels``-th segment pointer.
    An int8 weight keeps its integers: :func:`_csr_product` scales the sums, as the kernels do."""
    counts = w.segptr[1:] - w.segptr[:-1]
    seg = torch.arange(w.rows * w.panels)
    p = torch.repeat_interleave(seg % w.panels, counts)
    e = w.entries.to(torch.int32) & 0xFFFF
    cols = (e >> w.code_bits).to(torch.int64) + p * (1 << (16 - w.code_bits))
    rows = torch.repeat_interleave(seg // w.panels, counts)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        values = w.values.to(torch.float32) if w.kind == "int8" else w.values_f32(e, rows)
        return torch.sparse_csr_tensor(w.segptr[::w.panels].contiguous(), cols, values,
                                       size=(w.rows, w.cols), check_invariants=True)


def _csr_product(w: SparseWeights, csr: torch.Tensor, X: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``(W @ X) * scale + bias`` in the fallback: int8 sums are scaled per row before the
    bias, rounded twice like the kernels' epilogue, so both paths requantize alike."""
    y = csr @ X
    if w.kind == "int8":
        y = y * w.scales[:, None]
    return y + bias[:, None] if bias is not None else y


def sparse_mm_kn(w: SparseWeights, X: torch.Tensor, bias: torch.Tensor | None, fallback=None,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """``W @ X + bias[:, None]`` for ``X`` of shape ``[cols, P]``; returns ``[rows, P]`` (written
    into ``out``, a contiguous ``[rows, P]`` float32 tensor, when given)."""
    if out is not None and not (out.is_contiguous() and out.shape == (w.rows, X.shape[1])
                                and out.dtype == torch.float32):
        raise ValueError(f"out must be a contiguous float32 [{w.rows}, {X.shape[1]}] tensor")
    k = _lib()
    if k is None or _needs_grad(X):
        y = _csr_product(w, fallback() if fallback is not None else _csr(w), X, bias)
        return y if out is None else out.copy_(y)
    X = X.contiguous()
    P = X.shape[1]
    Y = torch.empty(w.rows, P) if out is None else out
    if P:
        k.fn("pj_spmm")(ctypes.byref(w.struct()), X.data_ptr(), P, Y.data_ptr(), _p(bias), threads_for(w.nnz * P))
    return Y


def sparse_linear(w: SparseWeights, x: torch.Tensor, bias: torch.Tensor | None, fallback=None) -> torch.Tensor:
    """``F.linear(x, W, bias)`` from the sparse layout (``x``: ``[..., cols]``)."""
    _check_input(x, w.cols)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, w.cols)
    k = _lib()
    if k is None or _needs_grad(x2):
        y = _csr_product(w, fallback() if fallback is not None else _csr(w), x2.t(), bias).t()
        return y.reshape(*lead, w.rows)
    if x2.shape[0] == 1:
        xc = x2.contiguous()
        y = torch.empty(1, w.rows)
        k.fn("pj_spmv")(ctypes.byref(w.struct()), xc.data_ptr(), y.data_ptr(), _p(bias), threads_for(w.nnz))
        return y.reshape(*lead, w.rows)
    # batched: the kernel wants the batch contiguous per input feature; [rows, B] comes back and
    # its transpose is handed on as a view (a following sparse layer takes it without a copy)
    y = sparse_mm_kn(w, x2.t(), bias).t()
    return y.reshape(*lead, w.rows)


# ---------------------------------------------------------------------------- bits

def bits_linear(w: BitWeights, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, W, bias)`` for ternary / binary ``W`` in its bit planes."""
    _check_input(x, w.cols)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, w.cols)
    k = _lib()
    if k is None or _needs_grad(x2):
        return F.linear(x2, w.to_dense(), bias).reshape(*lead, w.rows)
    B = x2.shape[0]
    nt = threads_for(w.rows * w.cols // 4 * B)  # a masked add does 16 weights in about 4 MACs' time
    if B == 1 and lut_kernel(k):
        codes, mode, a, b, per, scale = w.lut_codes() or (None,) * 6
        if codes is not None:
            groups = codes.shape[1]
            xp = torch.zeros(groups * per)
            xp[:w.cols] = x2[0]
            tables = torch.empty(groups * 32)
            k.fn("pj_lut_tables")(xp.data_ptr(), groups, mode, a, b, tables.data_ptr())
            y = torch.empty(1, w.rows)
            k.fn("pj_lut_mv")(codes.data_ptr(), w.rows, groups, tables.data_ptr(), mode, scale.data_ptr(),
                              y.data_ptr(), _p(bias), nt)
            return y.reshape(*lead, w.rows)
    if B == 1:
        xp = torch.zeros(w.padded_cols)
        xp[:w.cols] = x2[0]
        y = torch.empty(1, w.rows)
        k.fn("pj_bits_mv")(ctypes.byref(w.struct()), xp.data_ptr(), float(xp.sum()), y.data_ptr(), _p(bias), nt)
        return y.reshape(*lead, w.rows)
    X = x2.t().contiguous()
    xsum = X.sum(0).contiguous()
    Y = torch.empty(w.rows, B)
    k.fn("pj_bits_mm")(ctypes.byref(w.struct()), X.data_ptr(), B, xsum.data_ptr(), Y.data_ptr(), _p(bias), nt)
    return Y.t().reshape(*lead, w.rows)


def lut_kernel(k=None) -> bool:
    """Whether the running variant has the table-lookup ternary/binary kernel (AVX-512)."""
    k = k or _lib()
    return k is not None and k.isa == "avx512"


@functools.lru_cache(maxsize=256)
def _window_offsets(cin: int, kh: int, kw: int, rows: int, ld: int) -> torch.Tensor:
    """Offset of each im2col column's window (channel ci, kernel row, kernel column) in the
    padded input planes: the same for every call at a shape, so built once."""
    c = torch.arange(cin * kh * kw, dtype=torch.int64)
    ci, rem = c // (kh * kw), c % (kh * kw)
    return (ci * rows * ld + (rem // kw) * ld + rem % kw).to(torch.int32)


def conv_direct(w: SparseWeights, x: torch.Tensor, kernel_size: tuple[int, int], padding: tuple[int, int],
                bias: torch.Tensor | None, out_size: tuple[int, int]) -> torch.Tensor | None:
    """Stride-1 sparse conv straight from the zero-padded input (no im2col), for output planes
    of at most 16 x 16 on AVX-512; ``None`` where it does not apply (the caller uses im2col)."""
    k = _lib()
    oh, ow = out_size
    if not lut_kernel(k) or _needs_grad(x) or not (1 <= oh <= 16 and 1 <= ow <= 16):
        return None
    (kh, kw), (ph, pw) = kernel_size, padding
    n, cin, h, wd = x.shape
    rows = 16 + kh - 1  # every one of the 16 computed output rows reads inside its channel
    # loads are masked to the ow output lanes, so a row holds just the padded width: 16 floats
    # for a padded 14x14 map, one cache line, and no load crosses a line
    ld = wd + 2 * pw
    xp = torch.zeros(n, cin, rows, ld)
    xp[:, :, ph:ph + h, pw:pw + wd] = x
    off = _window_offsets(cin, kh, kw, rows, ld)
    out = torch.empty(n, w.rows, oh, ow)
    nt = threads_for(w.nnz * oh * ow)
    fn = k.fn("pj_conv_direct")
    for i in range(n):
        if not fn(ctypes.byref(w.struct()), xp[i].data_ptr(), off.data_ptr(), ld, oh, ow, out[i].data_ptr(),
                  _p(bias), nt):
            return None
    return out


def read_probe(a: torch.Tensor) -> float:
    """Sum of ``a`` read by the compiled streaming loop (the bandwidth probe); torch's sum in
    the fallback."""
    k = _lib()
    if k is None:
        return float(a.sum())
    partial = torch.empty(-(-a.numel() // 4096), dtype=torch.float64)
    return k.fn("pj_read_probe")(a.data_ptr(), a.numel(), torch.get_num_threads(), partial.data_ptr())
