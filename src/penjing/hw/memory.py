"""SCALE-Sim 3.0.0's counting, in closed form: cycles, folds, SRAM traffic and its DRAM model.

**Array (exact).** A layer is the GEMM ``O[M x N] = I[M x K] W[K x N]`` (``M`` output pixels,
``K`` window, ``N`` filters) mapped to ``S_R x S_C`` with ``T`` streamed (os: ``M, N, K``; ws:
``K, N, M``; is: ``K, M, N``) and cut into ``F_R x F_C`` folds, column folds outer. SCALE-Sim
pads *every* fold to the full ``R x C`` array and lets it drain before the next, so each fold
is ``T + R + C - 2`` demand cycles (os) or ``2R + C + T - 2`` (ws, is: ``R`` more to load the
stationary operand), and its reported "Total Cycles" is the 0-based index of the last one::

    cycles = F_R * F_C * (T + R + C - 2) - 1      (os)
    cycles = F_R * F_C * (2R + C + T - 2) - 1     (ws, is)

Mapping efficiency is the mean over folds of the PEs used, ``S_R S_C / (F_R F_C R C)``;
compute utilisation the mean of ``used * T / (R C cycles_fold)`` with SCALE-Sim's per-fold
cycle count (``T + R + C - 2`` for os, ``2R + 2C + T - 3`` for ws/is). SRAM accesses are the
operand elements each fold streams: os reads ``I`` ``F_C`` times and ``W`` ``F_R`` times and
writes ``O`` once (SCALE-Sim adds ``R + C`` per fold to its ofmap count, kept for parity); ws
reads ``I`` ``F_C`` times, ``W`` once and writes ``O`` once per row fold (partial sums); is
reads ``I`` once, ``W`` ``F_C`` times and writes ``O`` once per row fold.

**DRAM, CALC mode (a model of SCALE-Sim's read buffer).** Each read SRAM of ``S`` bytes (one
byte per word) is double buffered: SCALE-Sim fills "epochs" of ``E = 50 * floor(S / 100)``
distinct addresses (the active half), then forgets them all and starts the next. An address
costs a DRAM read when it is not yet in the current epoch, so the DRAM reads of an operand are
the distinct addresses per epoch of its demand stream. Here the stream is walked unit by unit
(ws: a chunk of output rows of a fold; os/is: a block of output pixels by one window row) with
the epoch kept as a mask over the ifmap: units that stay inside the epoch are counted with set
operations (runs of them as one union), the unit where an epoch completes is walked in
SCALE-Sim's skewed order, so the flush falls where SCALE-Sim's does. The walk keeps, per
address, its first position in the unit's stream (closed-form positions on strided views of
the ifmap, :func:`_keyed_walk`) instead of building the stream. Filters and GEMM operands (all addresses
distinct, re-streamed whole) are cyclic scans and come out exact. Every ofmap element a fold
writes goes to DRAM (partial sums included): no de-duplication, as in SCALE-Sim.

**USER mode (bandwidth-limited).** SCALE-Sim's USER memory system (a ring of prefetch sets per
read buffer, a window that advances one prefetch at a time, a write buffer that drains half its
size at a time) is replayed event by event in :mod:`penjing.hw.user_bandwidth`: its stall
cycles, total cycles, DRAM reads and DRAM windows are SCALE-Sim's own. SCALE-Sim 3.0.0 takes the
ifmap and filter bandwidths from ``IfmapSRAMBankBandwidth`` / ``FilterSRAMBankBandwidth`` and the
ofmap one from the first ``Bandwidth``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import numpy as np

from penjing.hw.scalesim_io import ConvShape, ScaleSimConfig
from penjing.hw.user_bandwidth import user_run


def folds(Sr: int, Sc: int, rows: int, cols: int) -> tuple[int, int]:
    return math.ceil(Sr / rows), math.ceil(Sc / cols)


def spatial_map(M: int, K: int, N: int, dataflow: str) -> tuple[int, int, int]:
    """``(S_R, S_C, T)`` of a GEMM under ``dataflow``."""
    return {"os": (M, N, K), "ws": (K, N, M), "is": (K, M, N)}[dataflow]


@dataclass
class ArrayCounts:
    """SCALE-Sim's compute-side counts of one GEMM (exact)."""

    Sr: int
    Sc: int
    T: int
    fold_rows: int
    fold_cols: int
    fold_cycles: int  # demand cycles of one fold
    demand_cycles: int  # all folds: the total is this - 1 (+ stalls)
    mapping_efficiency: float
    compute_utilisation: float
    ifmap_reads: int
    filter_reads: int
    ofmap_writes: int  # SCALE-Sim's SRAM count (os adds R + C per fold)
    ofmap_elements: int  # ofmap elements the folds write (what reaches DRAM)


def array_counts(M: int, K: int, N: int, rows: int, cols: int, dataflow: str) -> ArrayCounts:
    """Cycles, efficiencies and SRAM accesses of ``M x K x N`` on ``rows x cols`` (module doc)."""
    if rows < 1 or cols < 1:
        raise ValueError(f"the array needs at least 1x1 PEs, got {rows}x{cols}")
    if min(M, K, N) < 1:
        raise ValueError(f"GEMM dimensions must be >= 1, got M={M}, K={K}, N={N}")
    Sr, Sc, T = spatial_map(M, K, N, dataflow)
    Fr, Fc = folds(Sr, Sc, rows, cols)
    if dataflow == "os":
        fold_cycles = T + rows + cols - 2
        util_cycles = fold_cycles
        ifr, flr, ofw, ofe = Fc * M * K, Fr * K * N, M * N + Fr * Fc * (rows + cols), M * N
    else:
        fold_cycles = 2 * rows + cols + T - 2
        util_cycles = 2 * rows + 2 * cols + T - 3
        if dataflow == "ws":
            ifr, flr = Fc * M * K, K * N
        else:
            ifr, flr = M * K, Fc * K * N
        ofw = ofe = Fr * M * N
    mapping = Sr * Sc / (Fr * Fc * rows * cols)
    return ArrayCounts(Sr=Sr, Sc=Sc, T=T, fold_rows=Fr, fold_cols=Fc, fold_cycles=fold_cycles,
                       demand_cycles=Fr * Fc * fold_cycles, mapping_efficiency=mapping,
                       compute_utilisation=mapping * T / util_cycles, ifmap_reads=ifr,
                       filter_reads=flr, ofmap_writes=ofw, ofmap_elements=ofe)


# ----------------------------------------------------------------------------- DRAM (CALC)

def epoch_size(buffer_kb: float) -> int:
    """Distinct words per epoch of SCALE-Sim's estimate-mode read buffer (1-byte words)."""
    return 50 * math.floor(buffer_kb * 1024 / 100)


class _Epochs:
    """The state of one read buffer: distinct addresses in the current epoch, reads so far."""

    def __init__(self, capacity: int):
        self.E = max(capacity, 1)
        self.n = 0
        self.reads = 0
        self.flushes = 0


def cyclic_scan(state: _Epochs, unique: int, repeats: int) -> None:
    """``repeats`` passes over the same ``unique`` distinct addresses, always in one order."""
    E = state.E
    if unique >= E:  # the epoch never holds a whole pass: every access misses
        total = unique * repeats
        state.reads += total
        state.flushes += (state.n + total) // E
        state.n = (state.n + total) % E
        return
    if state.n + unique < E:
        state.reads += unique
        state.n += unique
        return  # the whole pass is in the epoch: later passes hit
    first = E - state.n  # addresses of pass 1 before the flush
    state.reads += unique
    state.flushes += 1
    state.n = unique - first
    if repeats > 1:  # pass 2 re-reads what the flush forgot; then everything fits
        state.reads += first
        state.n = unique
        if state.n >= E:
            state.flushes += 1
            state.n -= E


class _IfmapGeometry:
    """Addresses ``(row, col, channel)`` of a convolution's ifmap touched by pixels x windows."""

    def __init__(self, layer: ConvShape):
        self.x = layer
        self.Eh, self.Ew = layer.ofmap_h, layer.ofmap_w

    def _rows_slice(self, oy0: int, oy1: int, r: int) -> slice:
        x = self.x
        start = oy0 * x.stride_h + r
        stop = min((oy1 - 1) * x.stride_h + r, x.ifmap_h - 1)
        return slice(start, stop + 1, x.stride_h) if start <= stop else slice(0, 0)

    def _cols_slice(self, ox0: int, ox1: int, s: int) -> slice:
        x = self.x
        start = ox0 * x.stride_w + s
        stop = min((ox1 - 1) * x.stride_w + s, x.ifmap_w - 1)
        return slice(start, stop + 1, x.stride_w) if start <= stop else slice(0, 0)

    def window_groups(self, j0: int, j1: int) -> list[tuple[int, int, int, int]]:
        """Window columns ``[j0, j1)`` as ``(r, s, c0, c1)`` runs of channels."""
        C, S = self.x.channels, self.x.filter_w
        out = []
        j = j0
        while j < j1:
            r, rest = divmod(j, S * C)
            s, c = divmod(rest, C)
            c1 = min(C, c + j1 - j)
            out.append((r, s, c, c1))
            j += c1 - c
        return out

    def pixel_segments(self, p0: int, p1: int) -> list[tuple[int, int, int]]:
        """Output pixels ``[p0, p1)`` as ``(oy, ox0, ox1)`` row segments."""
        out = []
        p = p0
        while p < p1:
            oy, ox = divmod(p, self.Ew)
            ox1 = min(self.Ew, ox + p1 - p)
            out.append((oy, ox, ox1))
            p += ox1 - ox
        return out

    def pixels_window_row(self, p0: int, p1: int, r: int) -> list[tuple[slice, slice]]:
        """``(rows, cols)`` slices of the (channel-complete) input that window row ``r`` of a
        pixel range touches."""
        x = self.x
        boxes = []
        for oy, ox0, ox1 in self.pixel_segments(p0, p1):
            y = oy * x.stride_h + r
            if y >= x.ifmap_h:
                continue
            rows = slice(y, y + 1)
            if x.stride_w <= x.filter_w:  # windows overlap or touch: one box
                cols = [slice(ox0 * x.stride_w, min((ox1 - 1) * x.stride_w + x.filter_w, x.ifmap_w))]
            else:
                cols = [self._cols_slice(ox0, ox1, s) for s in range(x.filter_w)]
            boxes += [(rows, c) for c in cols]
        return boxes


def _pixel_block_reads(state: _Epochs, geo: _IfmapGeometry, block: int, passes: int, unit_cycles: int,
                       timeline: list) -> None:
    """os / is ifmap: units of ``block`` output pixels by one window row (all its columns and
    channels, the order both dataflows stream a fold in), ``passes`` times over the image (os:
    once per column fold). A unit that stays inside the epoch is counted with set operations; a
    unit that completes an epoch is walked address by address in its stream order (window
    position major, pixel minor: the systolic skew), so the flush falls where SCALE-Sim's does.

    Runs of whole blocks (all their window rows) are counted as one union first, as the ws
    chunks are (:func:`_window_block_reads`); a block whose union completes the epoch is taken
    window row by window row."""
    x = geo.x
    M, C, R = x.M, x.channels, x.filter_h
    mask = np.zeros((x.ifmap_h, x.ifmap_w, C), dtype=bool)
    units = math.ceil(M / block)
    step = max(1, unit_cycles // R)
    cycle = 0
    for _ in range(passes):
        flushes_before, reads_before = state.flushes, state.reads
        u, per_block = 0, 0.0
        while u < units:
            run = 1 if per_block <= 0 else max(1, int((state.E - state.n - 1) / per_block))
            # a block expected to complete the epoch goes window row by window row at once
            while per_block <= 0 or state.n + per_block < state.E:
                u1 = min(units, u + run)
                boxes = _block_footprint(geo, u * block, min(M, u1 * block))
                new, commit = _boxes_union(mask, boxes)
                if state.n + new < state.E or u1 - u == 1:
                    break
                run = max(1, (u1 - u) // 2)
            else:
                new = state.E  # not counted: taken row by row below
            if state.n + new < state.E:
                commit()
                state.reads += new
                state.n += new
                per_block = new / (u1 - u)
                cycle += step * R * (u1 - u)
                u = u1
                continue
            p0, p1 = u * block, min(M, (u + 1) * block)
            for r in range(R):
                boxes = geo.pixels_window_row(p0, p1, r)
                new = sum(v.size - int(np.count_nonzero(v)) for v in (mask[rows, cols] for rows, cols in boxes))
                if state.n + new < state.E:
                    state.reads += new
                    state.n += new
                    for rows, cols in boxes:
                        mask[rows, cols] = True
                else:
                    _keyed_walk(state, mask, *_unit_pieces(geo, p0, p1, r), timeline, cycle + step // 2)
                cycle += step
            u += 1
        if state.flushes == flushes_before and state.reads == reads_before:
            break  # a pass that read nothing: the rest hit too


def _block_footprint(geo: _IfmapGeometry, p0: int, p1: int) -> list[tuple[slice, slice]]:
    """``(rows, cols)`` boxes (channel-complete) of the input that output pixels ``[p0, p1)``
    read through all window rows: per output-row segment its ``R`` input rows, consecutive
    whole output rows merged when their windows touch."""
    x = geo.x
    segments = geo.pixel_segments(p0, p1)
    merged: list[list[int]] = []  # [oy_first, oy_last, ox0, ox1]
    for oy, ox0, ox1 in segments:
        if (merged and ox0 == 0 and ox1 == geo.Ew and merged[-1][2] == 0 and merged[-1][3] == geo.Ew
                and x.stride_h <= x.filter_h):
            merged[-1][1] = oy
        else:
            merged.append([oy, oy, ox0, ox1])
    boxes = []
    for oy0, oy1, ox0, ox1 in merged:
        y0 = oy0 * x.stride_h
        rows = slice(y0, min(x.ifmap_h, oy1 * x.stride_h + x.filter_h))
        if rows.start >= rows.stop:
            continue
        if x.stride_w <= x.filter_w:
            boxes.append((rows, slice(ox0 * x.stride_w, min((ox1 - 1) * x.stride_w + x.filter_w, x.ifmap_w))))
        else:
            boxes += [(rows, geo._cols_slice(ox0, ox1, s_)) for s_ in range(x.filter_w)]
    return boxes


def _boxes_union(mask: np.ndarray, boxes: list[tuple[slice, slice]]):
    """Fresh addresses in the union of channel-complete ``boxes`` and a function adding them
    to ``mask`` (left unchanged). Boxes of different output rows may overlap (``R > stride``)."""
    if not boxes:
        return 0, lambda: None
    if len(boxes) == 1:
        v = mask[boxes[0]]
        return v.size - int(np.count_nonzero(v)), functools.partial(v.fill, True)
    y0, y1 = min(b[0].start for b in boxes), max(b[0].stop for b in boxes)
    union = np.zeros((y1 - y0, mask.shape[1]), dtype=bool)
    for rows, cols in boxes:
        union[rows.start - y0:rows.stop - y0, cols] = True
    sub = mask[y0:y1]
    fresh = union[:, :, None] & ~sub
    return int(np.count_nonzero(fresh)), functools.partial(np.logical_or, sub, union[:, :, None], out=sub)


SKEWS = 2


def _window_block_reads(state: _Epochs, geo: _IfmapGeometry, block: int, passes: int,
                        unit_cycles: int, timeline: list) -> None:
    """ws ifmap: folds of ``block`` window columns over all output pixels, ``passes`` times
    (once per column fold), each fold cut into chunks of whole output rows (a fold streams
    pixel by pixel). Chunks inside the epoch are counted with set operations; a chunk that
    completes an epoch is walked address by address in stream order (:func:`_keyed_walk`).

    Runs of chunks are counted as one union: when a run leaves the epoch incomplete, so does
    every chunk in it (the counts of a run's prefixes only grow), so the result is the same
    as counting chunk by chunk. The run length is guessed from the last run's fresh addresses
    per chunk and halved until it fits; a single chunk that completes the epoch is walked."""
    x = geo.x
    K = x.K
    mask = np.zeros((x.ifmap_h, x.ifmap_w, x.channels), dtype=bool)
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
            rows_per_chunk = max(1, math.ceil(SKEWS * block / geo.Ew), state.E // (16 * max(per_row, 1)))
            chunks = math.ceil(geo.Eh / rows_per_chunk)
            k, per_chunk = 0, 0.0
            while k < chunks:
                run = 1 if per_chunk <= 0 else max(1, int((state.E - state.n - 1) / per_chunk))
                while True:
                    k1 = min(chunks, k + run)
                    new, commit = _rows_union(mask, geo, groups, k * rows_per_chunk,
                                              min(geo.Eh, k1 * rows_per_chunk))
                    if state.n + new < state.E or k1 - k == 1:
                        break
                    run = max(1, (k1 - k) // 2)
                if state.n + new < state.E:
                    commit()
                    state.reads += new
                    state.n += new
                    per_chunk = new / (k1 - k)
                    k = k1
                    continue
                oy0, oy1 = k * rows_per_chunk, min(geo.Eh, (k + 1) * rows_per_chunk)
                chunk_cycle = cycle + unit_cycles * oy0 // max(geo.Eh, 1)
                _keyed_walk(state, mask, *_chunk_pieces(geo, oy0, oy1, j0, j1, groups), timeline, chunk_cycle)
                k += 1
            cycle += unit_cycles
        if state.flushes == flushes_before and state.reads == reads_before:
            break


def _rows_union(mask: np.ndarray, geo: _IfmapGeometry, groups: list, oy0: int, oy1: int):
    """Fresh addresses (not in ``mask``) in the union of the window groups of output rows
    ``[oy0, oy1)``, and a function that adds them to ``mask``; ``mask`` is left unchanged."""
    if len(groups) == 1:  # one view: no overlap with itself
        (r, s_, c0, c1), = groups
        v = mask[geo._rows_slice(oy0, oy1, r), geo._cols_slice(0, geo.Ew, s_), c0:c1]
        return v.size - int(np.count_nonzero(v)), functools.partial(v.fill, True)
    # several window positions overlap (strided windows): their union in a scratch box
    x = geo.x
    r_lo, r_hi = min(g[0] for g in groups), max(g[0] for g in groups)
    y0 = oy0 * x.stride_h + r_lo
    y1 = min(x.ifmap_h, (oy1 - 1) * x.stride_h + r_hi + 1)
    c_lo, c_hi = min(g[2] for g in groups), max(g[3] for g in groups)
    if y0 >= y1:
        return 0, lambda: None
    box = mask[y0:y1, :, c_lo:c_hi]
    union = np.zeros(box.shape, dtype=bool)
    for r, cols, c0, c1 in _merged_groups(geo, groups):
        rows = geo._rows_slice(oy0, oy1, r)
        if rows.start >= rows.stop:
            continue
        union[rows.start - y0:rows.stop - y0:rows.step, cols, c0 - c_lo:c1 - c_lo] = True
    fresh = union & ~box
    return int(np.count_nonzero(fresh)), functools.partial(np.logical_or, box, union, out=box)


def _merged_groups(geo: _IfmapGeometry, groups: list) -> list[tuple[int, slice, int, int]]:
    """Window groups as ``(r, cols, c0, c1)``: runs of whole-channel groups of one window row
    merged into one column range when their strided columns touch (stride <= run length)."""
    x = geo.x
    out: list = []
    run: list = []  # [r, s_first, s_last] of whole-channel groups

    def close():
        if not run:
            return
        r, sa, sb = run
        if x.stride_w <= sb - sa + 1:
            out.append((r, slice(sa, min(x.ifmap_w, (geo.Ew - 1) * x.stride_w + sb + 1)), 0, x.channels))
        else:
            out.extend((r, geo._cols_slice(0, geo.Ew, s_), 0, x.channels) for s_ in range(sa, sb + 1))
        run.clear()

    for r, s_, c0, c1 in groups:
        if c0 == 0 and c1 == x.channels:
            if run and run[0] == r and run[2] == s_ - 1:
                run[2] = s_
                continue
            close()
            run.extend((r, s_, s_))
        else:
            close()
            out.append((r, geo._cols_slice(0, geo.Ew, s_), c0, c1))
    close()
    return out


def _chunk_pieces(geo: _IfmapGeometry, oy0: int, oy1: int, j0: int, j1: int, groups: list) -> list:
    """The ws chunk of output rows ``[oy0, oy1)`` x window columns ``[j0, j1)`` as pieces for
    :func:`_keyed_walk`: one ifmap view per window group with each element's stream position
    (column ``j`` of the fold reaches pixel ``p`` at step ``p + j``; skewed order)."""
    width = j1 - j0
    Ew = geo.Ew
    bound = ((oy1 - oy0) * Ew + width) * width  # above every position of the chunk
    dt = _key_dtype(bound)
    pieces = []
    jg = 0
    for r, s_, c0, c1 in groups:
        rows, cols = geo._rows_slice(oy0, oy1, r), geo._cols_slice(0, Ew, s_)
        n_oy = len(range(rows.start, rows.stop, rows.step or 1))
        n_ox = len(range(cols.start, cols.stop, cols.step or 1))
        jj = jg + np.arange(c1 - c0, dtype=dt)
        jg += c1 - c0
        if n_oy == 0 or n_ox == 0:
            continue
        # position (t + jj) * width + jj with t = (oy - oy0) * Ew + ox: the skewed order
        key = ((np.arange(n_oy, dtype=dt) * (Ew * width))[:, None, None]
               + (np.arange(n_ox, dtype=dt) * width)[None, :, None] + (jj * (width + 1))[None, None, :])
        pieces.append(((rows, cols, slice(c0, c1)), key))
    return pieces, bound


def _unit_pieces(geo: _IfmapGeometry, p0: int, p1: int, r: int) -> list:
    """The os / is unit (window row ``r`` of pixels ``[p0, p1)``) as pieces for
    :func:`_keyed_walk`: per output-row segment and window column ``s`` one ifmap view, with
    each element's stream position (pixel ``j`` of the block reaches window position ``k`` at
    step ``k + j``; skewed order)."""
    x = geo.x
    C, S, W = x.channels, x.filter_w, x.ifmap_w
    width = p1 - p0
    bound = (S * C + width) * width  # above every position of the unit
    dt = _key_dtype(bound)
    chan = np.arange(C, dtype=dt) * width
    pieces = []
    for oy, ox0, ox1 in geo.pixel_segments(p0, p1):
        y = oy * x.stride_h + r
        if y >= x.ifmap_h:
            continue
        jj = (oy * geo.Ew + np.arange(ox0, ox1, dtype=dt) - p0) * (width + 1)
        for s_ in range(S):
            n = min(ox1, (W - 1 - s_) // x.stride_w + 1) - ox0
            if n <= 0:
                continue
            col0 = ox0 * x.stride_w + s_
            cols = slice(col0, col0 + (n - 1) * x.stride_w + 1, x.stride_w)
            # position (k + jj) * width + jj with window position k = s * C + c
            key = (jj[:n, None] + (s_ * C * width + chan)[None, :])[None]
            pieces.append(((slice(y, y + 1), cols, slice(0, C)), key))
    return pieces, bound


def _nth_smallest(values: np.ndarray, n: int, bound: int) -> int:
    """The ``n``-th smallest (1-based) of distinct non-negative ``values`` below ``bound``."""
    if bound <= 8 * len(values) + 4096:  # a bitmap of the positions: two passes, no sort
        present = np.zeros(bound, dtype=bool)
        present[values] = True
        return int(np.flatnonzero(present)[n - 1])
    return int(np.partition(values, n - 1)[n - 1])


def _key_dtype(bound: int):
    return np.int32 if bound < np.iinfo(np.int32).max else np.int64


def _keyed_walk(state: _Epochs, mask: np.ndarray, pieces: list, bound: int, timeline: list,
                cycle: int) -> None:
    """SCALE-Sim's epoch rule over a unit of the demand stream that completes the epoch.

    The unit is given as ``pieces``: views ``mask[index]`` with, per element, its position in
    the stream (a unique integer below ``bound`` per occurrence; an address occurs in several
    pieces when windows overlap). What matters of an address is its first position: the epoch
    completes at the ``E - n``-th fresh address (not in the epoch) in that order. After a flush
    the epoch is empty and the rest of the unit (positions after the cut; an address counts
    from its first position after it) fills it again, flushing whenever it holds ``E``. This
    is the address-by-address walk, without materialising the stream (module doc)."""
    if len(pieces) == 1:  # one view: every address occurs once, at its own position
        (index, key), = pieces
        sub = mask[index]
        need = state.E - state.n
        _flush_until_fits(state, mask, sub, timeline, cycle, need, _nth_smallest(key[~sub], need, bound), bound,
                          key, lambda cut: key > cut)
        return
    box = tuple(slice(min(idx[d].start for idx, _ in pieces), max(idx[d].stop for idx, _ in pieces))
                for d in range(mask.ndim))
    rel = [tuple(slice(i.start - b.start, i.stop - b.start, i.step) for i, b in zip(idx, box, strict=True))
           for idx, _ in pieces]
    keys = [key for _, key in pieces]
    none = np.iinfo(keys[0].dtype).max
    sub = mask[box]
    first = np.full(sub.shape, none, dtype=keys[0].dtype)
    for key, where in zip(keys, rel, strict=True):
        view = first[where]
        np.minimum(view, key, out=view)
    need = state.E - state.n

    def first_after(cut: int) -> np.ndarray:
        """Each address's first position after ``cut`` (into ``first``); where it has one."""
        first.fill(none)
        for key, where in zip(keys, rel, strict=True):
            # keys grow along every axis of a piece: its first and last are its extremes
            if key.flat[-1] <= cut:
                continue
            view = first[where]
            np.minimum(view, key if key.flat[0] > cut else np.where(key > cut, key, none), out=view)
        return first != none

    _flush_until_fits(state, mask, sub, timeline, cycle, need,
                      _nth_smallest(first[(first != none) & ~sub], need, bound), bound, first, first_after)


def _flush_until_fits(state: _Epochs, mask: np.ndarray, sub: np.ndarray, timeline: list, cycle: int, need: int,
                      cut: int, bound: int, keyed: np.ndarray, after_cut) -> None:
    """Flush at ``cut`` (``need`` more reads complete the epoch), then again while the rest of
    the unit fills a whole epoch: ``after_cut(cut)`` marks the addresses read after the cut,
    ``keyed`` holds their positions; what is left when it fits stays in the epoch (``sub``)."""
    while True:
        state.reads += need
        state.flushes += 1
        state.n = 0
        mask[...] = False
        timeline.append(cycle)
        after = after_cut(cut)
        count = int(np.count_nonzero(after))
        if count < state.E:
            sub[after] = True
            state.reads += count
            state.n = count
            return
        need = state.E
        cut = _nth_smallest(keyed[after], need, bound)


def _is_gemm_form(x: ConvShape) -> bool:
    """Every (pixel, window) pair reads its own ifmap address (no window overlap)."""
    no_overlap_h = x.filter_h <= x.stride_h or x.ofmap_h == 1
    no_overlap_w = x.filter_w <= x.stride_w or x.ofmap_w == 1
    return no_overlap_h and no_overlap_w


@dataclass
class DramCounts:
    ifmap_reads: int
    filter_reads: int
    ofmap_writes: int
    ifmap_flush_cycles: list
    filter_flush_cycles: list


def dram_counts(layer: ConvShape, config: ScaleSimConfig, counts: ArrayCounts,
                ifmap_words: float = 1.0, filter_words: float = 1.0) -> DramCounts:
    """DRAM reads per read operand and ofmap writes under SCALE-Sim's CALC-mode buffer model.

    ``ifmap_words`` / ``filter_words`` scale the addresses per element (below 1 for operands
    narrower than the 1-byte word, e.g. 4-bit weights: two per word)."""
    df = config.dataflow
    C = config.cols
    Fr, Fc = counts.fold_rows, counts.fold_cols
    K, N = layer.K, layer.N
    # ---- filter: distinct addresses, re-streamed whole (exact cyclic scans)
    filt = _Epochs(epoch_size(config.filter_kb / filter_words))
    f_timeline: list = []
    if df == "ws":
        cyclic_scan(filt, K * N, 1)
    elif df == "is":
        cyclic_scan(filt, K * N, Fc)
    else:  # os: each column fold's K x c block, repeated for every row fold
        for fc in range(Fc):
            cyclic_scan(filt, K * min(C, N - fc * C), Fr)
    # ---- ifmap
    ifm, i_timeline = ifmap_epochs(layer, config, counts, ifmap_words)
    # cyclic scans keep no timeline: place their last flush by the share of reads before it
    for state, timeline in ((filt, f_timeline), (ifm, i_timeline)):
        if state.flushes and not timeline:
            before = state.reads - state.n if state.n else state.reads
            timeline.append(round(counts.demand_cycles * before / max(state.reads, 1)))
    return DramCounts(ifmap_reads=ifm.reads, filter_reads=filt.reads,
                      ofmap_writes=counts.ofmap_elements, ifmap_flush_cycles=i_timeline,
                      filter_flush_cycles=f_timeline)


def ifmap_epochs(layer: ConvShape, config: ScaleSimConfig, counts: ArrayCounts,
                 ifmap_words: float = 1.0) -> tuple[_Epochs, list]:
    """The ifmap read buffer after the layer (DRAM reads, flushes, epoch fill) and the cycles
    of its flushes (walked units only)."""
    df, R, C = config.dataflow, config.rows, config.cols
    ifm = _Epochs(epoch_size(config.ifmap_kb / ifmap_words))
    timeline: list = []
    if _is_gemm_form(layer):
        touched = layer.M * layer.K
        if layer.ofmap_h * layer.stride_h > layer.ifmap_h or layer.ofmap_w * layer.stride_w > layer.ifmap_w:
            geo = _IfmapGeometry(layer)  # pixels reading past the ifmap (SCALE-Sim's ceil) issue none
            touched = _touched(geo)
        cyclic_scan(ifm, touched, 1 if df == "is" else counts.fold_cols)
    else:
        geo = _IfmapGeometry(layer)
        if df == "os":
            _pixel_block_reads(ifm, geo, R, counts.fold_cols, counts.fold_cycles, timeline)
        elif df == "is":
            _pixel_block_reads(ifm, geo, C, 1, counts.fold_cycles * counts.fold_rows, timeline)
        else:
            _window_block_reads(ifm, geo, R, counts.fold_cols, counts.fold_cycles, timeline)
    return ifm, timeline


def _touched(geo: _IfmapGeometry) -> int:
    x = geo.x
    mask = np.zeros((x.ifmap_h, x.ifmap_w), dtype=bool)
    for r in range(x.filter_h):
        for s in range(x.filter_w):
            mask[geo._rows_slice(0, geo.Eh, r), geo._cols_slice(0, geo.Ew, s)] = True
    return int(mask.sum()) * x.channels


# ----------------------------------------------------------------------------- one layer

@dataclass
class LayerResult:
    """One layer as SCALE-Sim reports it (cycles, utilisation, SRAM and DRAM accesses)."""

    name: str
    config: ScaleSimConfig
    counts: ArrayCounts
    dram: DramCounts
    macs: int
    stall_cycles: int = 0
    ifmap_dram_start: float = 0.0
    filter_dram_start: float = 0.0
    ifmap_dram_stop: float = -1.0
    filter_dram_stop: float = -1.0
    ofmap_dram_start: float = 0.0
    ofmap_dram_stop: float = 0.0
    #: USER mode: the cycle of the last ofmap write (SCALE-Sim's "Total Cycles"), which is
    #: the demand length - 1 + stalls unless the last row itself stalled on a read
    last_write_cycle: int | None = None

    @property
    def total_cycles(self) -> int:
        """SCALE-Sim's "Total Cycles": the index of the last demand cycle, stalls included."""
        if self.last_write_cycle is not None:
            return self.last_write_cycle
        return self.counts.demand_cycles - 1 + self.stall_cycles

    @property
    def cycles_with_prefetch(self) -> int:
        return int(self.ofmap_dram_stop - min(self.ifmap_dram_start, self.filter_dram_start))

    @property
    def overall_utilisation(self) -> float:
        return self.macs / (self.total_cycles * self.config.rows * self.config.cols)

    def compute_report(self) -> list:
        return [self.cycles_with_prefetch, self.total_cycles, self.stall_cycles,
                100 * self.overall_utilisation, 100 * self.counts.mapping_efficiency,
                100 * self.counts.compute_utilisation]

    def bandwidth_report(self) -> list:
        c, d, t = self.counts, self.dram, self.total_cycles
        span = lambda a, b: b - a + 1  # noqa: E731
        return [c.ifmap_reads / t, c.filter_reads / t, c.ofmap_writes / t,
                d.ifmap_reads / span(self.ifmap_dram_start, self.ifmap_dram_stop),
                d.filter_reads / span(self.filter_dram_start, self.filter_dram_stop),
                d.ofmap_writes / span(self.ofmap_dram_start, self.ofmap_dram_stop)]

    def detailed_report(self) -> list:
        c, d = self.counts, self.dram
        i0, i1, f0, f1, o0, o1 = _sram_windows(self.config, c)
        return [i0, i1, c.ifmap_reads, f0, f1, c.filter_reads, o0, o1, c.ofmap_writes,
                self.ifmap_dram_start, self.ifmap_dram_stop, d.ifmap_reads,
                self.filter_dram_start, self.filter_dram_stop, d.filter_reads,
                self.ofmap_dram_start, self.ofmap_dram_stop, d.ofmap_writes]


def _sram_windows(config: ScaleSimConfig, c: ArrayCounts) -> tuple:
    """First and last cycles each SRAM sees a request (reads answer one cycle later): from the
    layout of SCALE-Sim's demand matrices (prefix gaps, flipped stationary blocks, skews)."""
    R, C, T, L = config.rows, config.cols, c.T, c.demand_cycles
    last = L - c.fold_cycles  # first cycle of the last fold
    r_first = min(R, c.Sr)
    r_last = c.Sr - (c.fold_rows - 1) * R
    c_last = c.Sc - (c.fold_cols - 1) * C
    if config.dataflow == "os":
        return (1, last + T - 1 + r_last, 1, last + T - 1 + c_last,
                T - 1 + R - r_first, last + T - 1 + R - 1 + c_last - 1)
    ofmap = (2 * R - 1, last + 2 * R - 1 + T - 1 + c_last - 1)
    if config.dataflow == "ws":
        return (R + 1, last + R + T - 1 + r_last, R - r_first + 1, last + R, *ofmap)
    return (R - r_first + 1, last + R, R + 1, last + R + T - 1 + r_last, *ofmap)


def _read_window(reads: int, flushes: list, kb: float, first_request: int, bw: int) -> tuple[float, float]:
    """SCALE-Sim's DRAM start/stop cycles of a read buffer in CALC mode (prefetch at ``bw``)."""
    items = math.floor(kb * 1024 / 100)
    if not flushes:
        sets = math.ceil(reads / items) if items else 0
        return -math.ceil(sets * items / bw), -1.0
    return first_request - math.ceil(50 * items / bw), flushes[-1] + 1.0


def simulate_layer(layer: ConvShape, config: ScaleSimConfig, *, ifmap_words: float = 1.0,
                   filter_words: float = 1.0) -> LayerResult:
    """One topology layer under ``config`` (SCALE-Sim CALC counting; USER adds stalls)."""
    counts = array_counts(layer.M, layer.K, layer.N, config.rows, config.cols, config.dataflow)
    dram = dram_counts(layer, config, counts, ifmap_words, filter_words)
    res = LayerResult(name=layer.name, config=config, counts=counts, dram=dram, macs=layer.macs)
    first_ifmap = config.rows if config.dataflow == "ws" else 0
    first_filter = config.rows if config.dataflow == "is" else 0
    res.ifmap_dram_start, res.ifmap_dram_stop = _read_window(
        dram.ifmap_reads, dram.ifmap_flush_cycles, config.ifmap_kb, first_ifmap, 10)
    res.filter_dram_start, res.filter_dram_stop = _read_window(
        dram.filter_reads, dram.filter_flush_cycles, config.filter_kb, first_filter, 10)
    if config.bandwidth_mode == "USER":
        _apply_user(res, layer, config, ifmap_words, filter_words)
    else:
        _ofmap_window(res)
    return res


def _apply_user(res: LayerResult, layer: ConvShape, config: ScaleSimConfig, ifmap_words: float,
                filter_words: float) -> None:
    """A USER-mode run: stalls, DRAM reads and DRAM windows from the replayed memory system."""
    c = res.counts
    run = user_run(layer, config, c.fold_rows, c.fold_cols, c.fold_cycles,
                   ifmap_words=ifmap_words, filter_words=filter_words)
    res.stall_cycles = run.stall_cycles
    res.last_write_cycle = run.total_cycles
    res.dram = DramCounts(ifmap_reads=run.ifmap_dram_reads, filter_reads=run.filter_dram_reads,
                          ofmap_writes=run.ofmap_dram_writes, ifmap_flush_cycles=[],
                          filter_flush_cycles=[])
    res.ifmap_dram_start, res.ifmap_dram_stop = run.ifmap_dram_window
    res.filter_dram_start, res.filter_dram_stop = run.filter_dram_window
    res.ofmap_dram_start, res.ofmap_dram_stop = run.ofmap_dram_window


def _ofmap_window(res: LayerResult) -> None:
    """The write buffer drains half its size whenever it is more than half full, and the rest
    after the last cycle, one line of ``bw`` words per cycle."""
    cfg, W = res.config, res.dram.ofmap_writes
    half = cfg.ofmap_kb * 1024 - math.ceil(cfg.ofmap_kb * 1024 * 0.5)
    bw = cfg.ofmap_bw
    end = res.total_cycles
    drains = (W - 1) // half if W > half else 0
    left = W - drains * half
    res.ofmap_dram_stop = float(end + math.ceil(left / bw) - 1)
    if drains:
        first = res.counts.demand_cycles * (half + 1) / W
        res.ofmap_dram_start = float(round(first))
    else:
        res.ofmap_dram_start = float(end)


def simulate_topology(layers: list[ConvShape], config: ScaleSimConfig) -> list[LayerResult]:
    """Every layer of a topology under ``config``. Layers of one shape (ResNet repeats its 3x3
    convolutions) are simulated once and their result copied under each name: a layer's
    counts depend on its shape and the config only."""
    done: dict[tuple, LayerResult] = {}
    out = []
    for layer in layers:
        shape = tuple(getattr(layer, f.name) for f in dataclasses.fields(layer) if f.name != "name")
        if shape not in done:
            done[shape] = simulate_layer(layer, config)
            out.append(done[shape])
        else:
            out.append(dataclasses.replace(done[shape], name=layer.name))
    return out
