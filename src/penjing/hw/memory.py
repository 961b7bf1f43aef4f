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
the epoch kept as a mask over the ifmap: a unit that stays inside the epoch is counted with
set operations, the unit where an epoch completes is walked address by address in SCALE-Sim's
skewed order, so the flush falls where SCALE-Sim's does. Filters and GEMM operands (all addresses
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


SKEWS = 2


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
            rows_per_chunk = max(1, math.ceil(SKEWS * block / geo.Ew), state.E // (16 * max(per_row, 1)))
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
    R, C = config.rows, config.cols
    Fr, Fc = counts.fold_rows, counts.fold_cols
    M, K, N = layer.M, layer.K, layer.N
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
    ifm = _Epochs(epoch_size(config.ifmap_kb / ifmap_words))
    i_timeline: list = []
    if _is_gemm_form(layer):
        touched = M * K
        if layer.ofmap_h * layer.stride_h > layer.ifmap_h or layer.ofmap_w * layer.stride_w > layer.ifmap_w:
            geo = _IfmapGeometry(layer)  # pixels reading past the ifmap (SCALE-Sim's ceil) issue none
            touched = _touched(geo)
        cyclic_scan(ifm, touched, 1 if df == "is" else Fc)
    else:
        geo = _IfmapGeometry(layer)
        if df == "os":
            _pixel_block_reads(ifm, geo, R, Fc, counts.fold_cycles, i_timeline)
        elif df == "is":
            _pixel_block_reads(ifm, geo, C, 1, counts.fold_cycles * Fr, i_timeline)
        else:
            _window_block_reads(ifm, geo, R, Fc, counts.fold_cycles, i_timeline)
    # cyclic scans keep no timeline: place their last flush by the share of reads before it
    for state, timeline in ((filt, f_timeline), (ifm, i_timeline)):
        if state.flushes and not timeline:
            before = state.reads - state.n if state.n else state.reads
            timeline.append(round(counts.demand_cycles * before / max(state.reads, 1)))
    return DramCounts(ifmap_reads=ifm.reads, filter_reads=filt.reads,
                      ofmap_writes=counts.ofmap_elements, ifmap_flush_cycles=i_timeline,
                      filter_flush_cycles=f_timeline)


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
    """Every layer of a topology under ``config``."""
    return [simulate_layer(layer, config) for layer in layers]
