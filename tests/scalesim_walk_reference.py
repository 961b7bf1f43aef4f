"""The address-by-address walk of penjing.hw.memory as it was before the keyed walk and the
runs of chunks (commit 4a0bf53): every unit that completes an epoch materialised as its demand
stream in skewed order, first occurrences found with ``np.minimum.at``, chunks counted one by
one. Kept as the reference the fast path must equal exactly (tests/test_hw_memory_walk.py)."""

from __future__ import annotations

import functools
import math

import numpy as np

from penjing.hw.memory import ArrayCounts, _Epochs, _IfmapGeometry, epoch_size
from penjing.hw.scalesim_io import ConvShape, ScaleSimConfig


def _exact_stream(state: _Epochs, flat_mask: np.ndarray, addresses: np.ndarray, timeline: list,
                  cycle: int, distinct: int | None = None) -> None:
    """Walk ``addresses`` (in stream order) exactly: SCALE-Sim's epoch rule, address by address.

    The mask is the epoch's content (``state.n`` addresses set). The fresh addresses of the rest
    are marked and counted at once; only when they complete the epoch is the completing one
    located, by first occurrences over the shortest prefix that holds it. ``distinct``: the
    caller's count of fresh distinct addresses in the whole stream, when it has one."""
    pos = 0
    while pos < len(addresses):
        rest = addresses[pos:]
        if state.n:
            outside = np.flatnonzero(~flat_mask[rest])
            fresh = rest[outside]
        else:  # an empty epoch (after a flush): every address is fresh
            outside, fresh = None, rest
        need = state.E - state.n
        if distinct is None:
            flat_mask[fresh] = True
            distinct = int(np.count_nonzero(flat_mask)) - state.n
            if distinct < need:
                state.reads += distinct
                state.n += distinct
                return
            flat_mask[fresh] = False  # undo: the epoch completes inside the rest
        length = min(len(fresh), max(4096, int(len(fresh) * 1.25 * need / distinct)))
        while True:
            first = _first_occurrences(fresh[:length], flat_mask.size)
            if len(first) >= need or length == len(fresh):
                break
            length = min(len(fresh), 2 * length)
        cut = first[need - 1] if outside is None else outside[first[need - 1]]  # completes the epoch
        distinct = None
        state.reads += need
        state.flushes += 1
        state.n = 0
        flat_mask[...] = False
        timeline.append(cycle)
        pos += int(cut) + 1


_STAMP = np.zeros(0, dtype=np.int32)


def _first_occurrences(values: np.ndarray, space: int) -> np.ndarray:
    """Sorted positions of the first occurrence of each value (values in ``[0, space)``)."""
    global _STAMP
    if _STAMP.size < space:
        _STAMP = np.full(space, np.iinfo(np.int32).max, dtype=np.int32)
    idx = np.arange(len(values), dtype=np.int32)
    np.minimum.at(_STAMP, values, idx)
    first = np.flatnonzero(_STAMP[values] == idx)
    _STAMP[values] = np.iinfo(np.int32).max
    return first


def _pixel_block_reads(state: _Epochs, geo: _IfmapGeometry, block: int, passes: int, unit_cycles: int,
                       timeline: list) -> None:
    """os / is ifmap: units of ``block`` output pixels by one window row (all its columns and
    channels, the order both dataflows stream a fold in), ``passes`` times over the image (os:
    once per column fold). A unit that stays inside the epoch is counted with set operations; a
    unit that completes an epoch is walked address by address in its stream order (window
    position major, pixel minor: the systolic skew), so the flush falls where SCALE-Sim's does."""
    x = geo.x
    M, C = x.M, x.channels
    mask = np.zeros((x.ifmap_h, x.ifmap_w, C), dtype=bool)
    flat = mask.reshape(-1)
    units = math.ceil(M / block)
    step = max(1, unit_cycles // x.filter_h)
    cycle = 0
    for _ in range(passes):
        flushes_before, reads_before = state.flushes, state.reads
        for u in range(units * x.filter_h):
            u, r = divmod(u, x.filter_h)
            p0, p1 = u * block, min(M, (u + 1) * block)
            boxes = geo.pixels_window_row(p0, p1, r)
            new = sum(int((~mask[rows, cols]).sum()) for rows, cols in boxes)
            if state.n + new < state.E:
                state.reads += new
                state.n += new
                for rows, cols in boxes:
                    mask[rows, cols] = True
            else:
                _exact_stream(state, flat, _unit_addresses(geo, p0, p1, r), timeline, cycle + step // 2, new)
            cycle += step
        if state.flushes == flushes_before and state.reads == reads_before:
            break  # a pass that read nothing: the rest hit too


def _unit_addresses(geo: _IfmapGeometry, p0: int, p1: int, r: int) -> np.ndarray:
    """Ifmap addresses of window row ``r`` of pixels ``[p0, p1)`` in stream order (skewed:
    pixel ``j`` of the block reaches window position ``k`` at step ``k + j``)."""
    x = geo.x
    C, S, W = x.channels, x.filter_w, x.ifmap_w
    p = np.arange(p0, p1, dtype=np.int32)
    oy, ox = np.divmod(p, geo.Ew)
    k = np.arange(S * C, dtype=np.int32)
    s, c = np.divmod(k, C)
    y = (oy * x.stride_h + r)[None, :]
    col = (ox * x.stride_w)[None, :] + s[:, None]
    addr = (y * W + col) * C + c[:, None]
    addr[(y >= x.ifmap_h) | (col >= W)] = -1
    return _skewed(addr)


def _window_block_reads(state: _Epochs, geo: _IfmapGeometry, block: int, passes: int,
                        unit_cycles: int, timeline: list) -> None:
    """ws ifmap: folds of ``block`` window columns over all output pixels, ``passes`` times
    (once per column fold), each fold cut into chunks of whole output rows (a fold streams
    pixel by pixel). Chunks inside the epoch are counted with set operations; a chunk that
    completes an epoch is walked address by address in stream order."""
    x = geo.x
    K = x.K
    mask = np.zeros((x.ifmap_h, x.ifmap_w, x.channels), dtype=bool)
    flat = mask.reshape(-1)
    units = math.ceil(K / block)
    cycle = 0
    for _ in range(passes):
        flushes_before, reads_before = state.flushes, state.reads
        for u in range(units):
            j0, j1 = u * block, min(K, (u + 1) * block)
            groups = geo.window_groups(j0, j1)
            per_row = sum(c1 - c0 for _, _, c0, c1 in groups) * geo.Ew
            # chunks of at least 8 skews of the fold (its ``block`` columns lag by up to
            # block - 1 steps, so a chunk's edges mix with its neighbours'), else ~E/4 addresses
            rows_per_chunk = max(1, math.ceil(2 * block / geo.Ew), state.E // (16 * max(per_row, 1)))
            for oy0 in range(0, geo.Eh, rows_per_chunk):
                oy1 = min(geo.Eh, oy0 + rows_per_chunk)
                views = [mask[geo._rows_slice(oy0, oy1, r), geo._cols_slice(0, geo.Ew, s_), c0:c1]
                         for r, s_, c0, c1 in groups]
                # the views of a fold's window positions overlap (strided windows): count the
                # union by marking as we go, and undo the marks if the chunk completes an epoch
                saved, new = [], 0
                for v in views:
                    saved.append(v.copy())
                    new += int((~v).sum())
                    v[...] = True
                if state.n + new < state.E:
                    state.reads += new
                    state.n += new
                else:
                    for v, old in zip(reversed(views), reversed(saved), strict=True):
                        v[...] = old
                    chunk_cycle = cycle + unit_cycles * oy0 // max(geo.Eh, 1)
                    _exact_stream(state, flat, _chunk_addresses(geo, oy0, oy1, j0, j1), timeline, chunk_cycle,
                                  new)
            cycle += unit_cycles
        if state.flushes == flushes_before and state.reads == reads_before:
            break


def _chunk_addresses(geo: _IfmapGeometry, oy0: int, oy1: int, j0: int, j1: int) -> np.ndarray:
    """Ifmap addresses of output rows ``[oy0, oy1)`` x window columns ``[j0, j1)`` in ws stream
    order (column ``j`` of the fold reaches pixel ``p`` at step ``p + j``)."""
    x = geo.x
    C, S, W = x.channels, x.filter_w, x.ifmap_w
    p = np.arange(oy0 * geo.Ew, oy1 * geo.Ew, dtype=np.int32)
    oy, ox = np.divmod(p, geo.Ew)
    k = np.arange(j0, j1, dtype=np.int32)
    r, rest = np.divmod(k, S * C)
    s, c = np.divmod(rest, C)
    y = (oy * x.stride_h)[:, None] + r[None, :]
    col = (ox * x.stride_w)[:, None] + s[None, :]
    addr = (y * W + col) * C + c[None, :]
    addr[(y >= x.ifmap_h) | (col >= W)] = -1
    return _skewed(addr)


def _skewed(matrix: np.ndarray) -> np.ndarray:
    """The valid entries of ``matrix`` (time x array edge, -1 = no request) in the order the
    array requests them: column ``j`` delayed by ``j`` steps, read row by row."""
    flat = matrix.reshape(-1)[_skew_order(*matrix.shape)]
    return flat[flat >= 0]


@functools.lru_cache(maxsize=64)
def _skew_order(steps: int, width: int) -> np.ndarray:
    """Flat indices of a ``steps x width`` matrix in skewed order: by ``t + j``, then ``j``."""
    t = np.arange(steps)[:, None]
    j = np.arange(width)[None, :]
    return np.argsort(((t + j) * width + j).reshape(-1))


def reference_ifmap_epochs(layer: ConvShape, config: ScaleSimConfig, counts: ArrayCounts,
                           ifmap_words: float = 1.0) -> tuple[_Epochs, list]:
    """penjing.hw.memory.ifmap_epochs for the walked (non-GEMM-form) layers, the old way."""
    ifm = _Epochs(epoch_size(config.ifmap_kb / ifmap_words))
    timeline: list = []
    geo = _IfmapGeometry(layer)
    R, C = config.rows, config.cols
    if config.dataflow == "os":
        _pixel_block_reads(ifm, geo, R, counts.fold_cols, counts.fold_cycles, timeline)
    elif config.dataflow == "is":
        _pixel_block_reads(ifm, geo, C, 1, counts.fold_cycles * counts.fold_rows, timeline)
    else:
        _window_block_reads(ifm, geo, R, counts.fold_cols, counts.fold_cycles, timeline)
    return ifm, timeline
