"""SCALE-Sim 3.0.0's USER (bandwidth-limited) memory system, replayed at the level of its events.

SCALE-Sim serves the array's demand matrices one row (one cycle) at a time. Its read buffers
(``memory/read_buffer.py``) cut the operand's *prefetch matrix* (the operand in fold order, some
of them unrolled along anti-diagonals) into a ring of sets of ``ceil(S / 100)`` addresses for an
``S``-word SRAM. An active window of ``A = ceil(S/2 / set)`` sets answers requests; a request
outside it advances the window by ``P`` sets (one prefetch of ``S/2`` words), as many times as it
takes to reach the address, going round the ring if the address lies behind the window. Each
prefetch moves the buffer's prefetch clock ``L`` by ``ceil((S/2) / bw) + 1`` cycles; that clock
never waits for the array, and an advance at array time ``t`` adds ``2 (L - t)`` stall cycles when
``L > t`` (SCALE-Sim adds a positive difference to the row's offset twice) and moves ``t`` back
to ``L`` when ``L <= t``. The write buffer (``memory/write_buffer.py``) starts draining half its
size, ``ceil(S/2 / bw)`` lines of ``bw`` words, once more than half is occupied and no drain is
running, and stalls the array when it is full while a drain runs. A row's stall is the largest of
the three buffers', and row ``i`` is issued at cycle ``i`` plus all earlier stalls.

Which requests miss depends only on the addresses, never on time, so the misses are found first
with array operations over the whole demand stream (requests in SCALE-Sim's order: rows, then
array edge), and only the rows that miss, and the rows where the write buffer starts a drain or
fills up, are then walked one by one through the timing rules above. Everything else in a row
(hit latency, SCALE-Sim's skew, pads of partial folds) follows SCALE-Sim's demand matrices
exactly, so the result is SCALE-Sim's, not an approximation of it; only ramulator traces and
custom layouts (SCALE-Sim options penjing does not read) are not modelled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from penjing.hw.scalesim_io import ConvShape, ScaleSimConfig


@dataclass
class UserRun:
    """What a USER-mode run adds to the CALC counts."""

    stall_cycles: int
    total_cycles: int  # SCALE-Sim's "Total Cycles": the last ofmap write's cycle
    ifmap_dram_reads: int
    filter_dram_reads: int
    ifmap_advances: int  # prefetches of the ifmap buffer after the first fill
    filter_advances: int
    ofmap_dram_writes: int
    ifmap_dram_window: tuple[float, float]  # first and last DRAM cycle of each interface
    filter_dram_window: tuple[float, float]
    ofmap_dram_window: tuple[float, float]


# ----------------------------------------------------------------------------- operand matrices

def _ifmap_matrix(x: ConvShape) -> np.ndarray:
    """SCALE-Sim's ifmap operand matrix (``M x K`` addresses, -1 past the ifmap)."""
    p = np.arange(x.M)
    oy, ox = np.divmod(p, x.ofmap_w)
    y0, x0 = oy * x.stride_h, ox * x.stride_w
    k = np.arange(x.K)
    r, rest = np.divmod(k, x.filter_w * x.channels)
    s, c = np.divmod(rest, x.channels)
    y = y0[:, None] + r[None, :]
    col = x0[:, None] + s[None, :]
    addr = (y * x.ifmap_w + col) * x.channels + c[None, :]
    addr[(y >= x.ifmap_h) | (col >= x.ifmap_w)] = -1
    return addr


def _filter_matrix(x: ConvShape) -> np.ndarray:
    """SCALE-Sim's filter operand matrix (``K x N``; its filter offset is irrelevant here: the
    two read buffers never share addresses)."""
    return np.arange(x.K)[:, None] + x.K * np.arange(x.N)[None, :]


def _stack_blocks(X: np.ndarray, width: int) -> np.ndarray:
    """``X`` (``T x W``) cut into column blocks of ``width`` (the last padded with -1), stacked
    vertically: SCALE-Sim's fold-ordered prefetch matrix before any unrolling."""
    T, W = X.shape
    folds = math.ceil(W / width)
    padded = np.full((T, folds * width), -1, dtype=X.dtype)
    padded[:, :W] = X
    return padded.reshape(T, folds, width).transpose(1, 0, 2).reshape(folds * T, width)


def _diagonal_order(H: int, B: int) -> np.ndarray:
    """Flat indices of an ``H x B`` matrix in SCALE-Sim's anti-diagonal unroll (diagonal by
    diagonal, rows descending within one)."""
    r = np.arange(H)[:, None]
    u = np.arange(B)[None, :]
    d = r + u
    sizes = np.minimum(np.arange(H + B - 1), H - 1) - np.maximum(0, np.arange(H + B - 1) - B + 1) + 1
    start = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    pos = start[d] + (np.minimum(d, H - 1) - r)
    order = np.empty(H * B, dtype=np.int64)
    order[pos.reshape(-1)] = np.arange(H * B)
    return order


def _prefetch_sequence(X: np.ndarray, width: int, diagonal: bool) -> tuple[np.ndarray, int]:
    """The addresses of a prefetch matrix in fetch order, pads dropped, and its size with the
    pads (SCALE-Sim's fetch lines count them)."""
    Z = _stack_blocks(X, width)
    flat = Z.reshape(-1)
    if diagonal:
        flat = flat[_diagonal_order(*Z.shape)]
    return flat[flat >= 0], flat.size


def _streamed_demand(X: np.ndarray, width: int, other_folds: int, fold_cycles: int, pre: int,
                     block_is_inner: bool) -> tuple[np.ndarray, np.ndarray]:
    """A skewed streaming operand (``X`` is ``T x W``, cut into column blocks of ``width``):
    fold ``f`` streams its block, element ``(t, u)`` at row ``f * fold_cycles + pre + t + u``.
    Folds run column folds outer, row folds inner; the block index is the inner fold index
    when ``block_is_inner`` (it changes every fold) else the outer one, and ``other_folds``
    is the count of the other index. Returns the (row, address)
    of every request in SCALE-Sim's order."""
    T, W = X.shape
    blocks = math.ceil(W / width)
    Z = _stack_blocks(X, width).reshape(blocks, T, width)
    t = np.arange(T)[:, None]
    u = np.arange(width)[None, :]
    key = ((t + u) * width + u).reshape(-1)  # row within the fold, then array edge
    order = np.argsort(key, kind="stable")
    within_row = (t + u).reshape(-1)[order]
    rows, addrs = [], []
    inner = blocks if block_is_inner else other_folds
    outer = other_folds if block_is_inner else blocks
    for fo in range(outer):
        for fi in range(inner):
            b = fi if block_is_inner else fo
            f = fo * inner + fi
            a = Z[b].reshape(-1)[order]
            keep = a >= 0
            rows.append(within_row[keep] + (f * fold_cycles + pre))
            addrs.append(a[keep])
    return np.concatenate(rows), np.concatenate(addrs)


def _stationary_demand(X: np.ndarray, R: int, C: int, fold_cycles: int) -> tuple[np.ndarray, np.ndarray]:
    """A stationary operand (``X`` is ``Sr x Sc``): fold ``(fc, fr)`` loads the ``R x C`` block
    flipped, block row ``r`` at row ``f * fold_cycles + R - 1 - r``."""
    Sr, Sc = X.shape
    Fr, Fc = math.ceil(Sr / R), math.ceil(Sc / C)
    rows, addrs = [], []
    for fc in range(Fc):
        for fr in range(Fr):
            blk = X[fr * R:(fr + 1) * R, fc * C:(fc + 1) * C]
            f = fc * Fr + fr
            r = np.arange(blk.shape[0])[::-1]  # flipped: the last block row is loaded first
            rows.append(np.repeat(f * fold_cycles + R - 1 - r, blk.shape[1]))
            addrs.append(blk[::-1].reshape(-1))
    rows, addrs = np.concatenate(rows), np.concatenate(addrs)
    keep = addrs >= 0
    return rows[keep], addrs[keep]


def _skewed_counts(T: int, used: int, pre: int, length: int) -> np.ndarray:
    """Requests per row of a ``T x used`` block skewed by column, starting ``pre`` rows in."""
    counts = np.zeros(length, dtype=np.int64)
    diag = np.convolve(np.ones(T, dtype=np.int64), np.ones(used, dtype=np.int64))
    counts[pre:pre + len(diag)] = diag
    return counts


def _ofmap_counts(x: ConvShape, cfg: ScaleSimConfig, Fr: int, Fc: int, L: int) -> np.ndarray:
    """Ofmap writes per row of the whole run."""
    R, C = cfg.rows, cfg.cols
    M, K, N = x.M, x.K, x.N
    out = []
    for fc in range(Fc):
        for fr in range(Fr):
            if cfg.dataflow == "ws":
                out.append(_skewed_counts(M, min(C, N - fc * C), 2 * R - 1, L))
            elif cfg.dataflow == "is":
                out.append(_skewed_counts(N, min(C, M - fc * C), 2 * R - 1, L))
            else:  # os: the R x C block, flipped and skewed, after K - 1 empty rows
                ru, cu = min(R, M - fr * R), min(C, N - fc * C)
                counts = np.zeros(L, dtype=np.int64)
                diag = np.convolve(np.ones(ru, dtype=np.int64), np.ones(cu, dtype=np.int64))
                start = K - 1 + (R - ru)  # flipped: the pads (missing rows) come first
                counts[start:start + len(diag)] = diag
                out.append(counts)
    return np.concatenate(out)


def _demands(x: ConvShape, cfg: ScaleSimConfig, Fr: int, Fc: int, L: int):
    """``(rows, addresses, (prefetch sequence, padded size))`` of the ifmap and filter buffers."""
    R, C = cfg.rows, cfg.cols
    Im, W = _ifmap_matrix(x), _filter_matrix(x)
    if cfg.dataflow == "ws":
        ifm = (*_streamed_demand(Im, R, Fc, L, R, True), _prefetch_sequence(Im, R, True))
        flt = (*_stationary_demand(W, R, C, L), _prefetch_sequence(W, C, False))
    elif cfg.dataflow == "os":
        ifm = (*_streamed_demand(Im.T, R, Fc, L, 0, True), _prefetch_sequence(Im.T, R, True))
        flt = (*_streamed_demand(W, C, Fr, L, 0, False), _prefetch_sequence(W, C, True))
    else:
        ifm = (*_stationary_demand(Im.T, R, C, L), _prefetch_sequence(Im.T, C, False))
        flt = (*_streamed_demand(W.T, R, Fc, L, R, True), _prefetch_sequence(W.T, R, True))
    return ifm, flt


# ----------------------------------------------------------------------------- read buffer

@dataclass
class _ReadBuffer:
    sets: int  # n: sets in the ring
    active: int  # A
    step: int  # P: sets per advance
    prefetch_cycles: int  # D: prefetch clock per advance
    first_words: int  # DRAM words of the first fill
    words_per_advance: int


def _read_buffer(sequence_len: int, padded_len: int, words: float, bw: int) -> _ReadBuffer:
    total = math.floor(words)
    per_set = math.ceil(total / 100)
    active_words = int(math.ceil(total * 0.5))
    prefetch_words = total - active_words
    n = sequence_len // per_set + 1
    A = min(int(math.ceil(active_words / per_set)), n)
    P = min(int(math.ceil(prefetch_words / per_set)), n - A)
    fetch_lines = math.ceil(padded_len / bw)
    first_lines = min(math.ceil(active_words / bw), fetch_lines)
    lines = math.ceil(prefetch_words / bw)
    return _ReadBuffer(sets=n, active=A, step=P, prefetch_cycles=lines + 1,
                       first_words=first_lines * bw, words_per_advance=lines * bw)


def _occurrence_sets(sequence: np.ndarray, per_set: int) -> tuple[np.ndarray, np.ndarray]:
    """For every distinct address: the sets that hold it (``(addresses, sets)`` padded with -1),
    and a lookup from address to row."""
    set_of = np.arange(len(sequence)) // per_set
    order = np.argsort(sequence, kind="stable")
    a_sorted, s_sorted = sequence[order], set_of[order]
    uniq, first, counts = np.unique(a_sorted, return_index=True, return_counts=True)
    width = int(counts.max()) if len(counts) else 1
    table = np.full((len(uniq), width), -1, dtype=np.int64)
    rank = np.arange(len(a_sorted)) - np.repeat(first, counts)
    table[np.repeat(np.arange(len(uniq)), counts), rank] = s_sorted
    return uniq, table


def _misses(rows: np.ndarray, addrs: np.ndarray, sequence: np.ndarray, buf: _ReadBuffer,
            per_set: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose requests advance the window, and how many advances each row makes (SCALE-Sim
    checks requests in order; a miss advances until the address is in the window)."""
    if buf.step == 0 or len(addrs) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    uniq, table = _occurrence_sets(sequence, per_set)
    idx = np.searchsorted(uniq, addrs)
    n, A, P = buf.sets, buf.active, buf.step
    ks = np.arange(1, n // P + 3)
    out_rows, out_k = [], []
    start, q, chunk = 0, 0, 4096
    total = len(idx)
    while q < total:
        occ = table[idx[q:q + chunk]]
        hit = (((occ - start) % n < A) & (occ >= 0)).any(axis=1)
        miss = np.flatnonzero(~hit)
        if len(miss) == 0:
            q += chunk
            chunk = min(chunk * 2, 1 << 20)
            continue
        m = q + int(miss[0])
        o = table[idx[m]]
        o = o[o >= 0]
        ok = (((o[None, :] - start - P * ks[:, None]) % n) < A).any(axis=1)
        k = int(ks[np.argmax(ok)])
        start = (start + k * P) % n
        out_rows.append(int(rows[m]))
        out_k.append(k)
        q = m + 1
        chunk = 4096
    r = np.asarray(out_rows, dtype=np.int64)
    k = np.asarray(out_k, dtype=np.int64)
    if len(r):  # several misses in one row: one entry with their advances summed
        uniq_rows, inv = np.unique(r, return_inverse=True)
        return uniq_rows, np.bincount(inv, weights=k).astype(np.int64)
    return r, k


# ----------------------------------------------------------------------------- timing replay

class _WriteBuffer:
    """SCALE-Sim's ofmap write buffer: drains of half its size, lines of ``bw`` words."""

    def __init__(self, words: int, bw: int):
        self.total = words
        self.drain_size = words - int(math.ceil(words * 0.5))
        self.bw = bw
        self.lines_per_drain = int(math.ceil(self.drain_size / bw))
        self.free = words
        self.drain_end = 0.0
        # the trace: chunks of lines between forced flushes, as (full lines, partial size)
        self.chunks: list[list[int]] = []
        self.pending = 0  # elements written since the last forced flush
        self.drain_chunk = 0
        self.drain_line = 0
        self.written = 0  # words sent to DRAM
        self.first_drain: float | None = None

    def _drain(self, cycle: float) -> None:
        full, part = divmod(self.pending, self.bw)
        if self.pending:
            self.chunks.append([full, part])
        self.pending = 0
        want, taken, last_size = self.lines_per_drain, 0, self.bw
        while taken < want and self.drain_chunk < len(self.chunks):
            full, part = self.chunks[self.drain_chunk]
            lines_here = full + (1 if part else 0)
            take = min(want - taken, lines_here - self.drain_line)
            end_line = self.drain_line + take
            last_size = part if (part and end_line == lines_here) else self.bw
            taken += take
            self.drain_line = end_line
            if self.drain_line == lines_here:
                self.drain_chunk += 1
                self.drain_line = 0
        data = taken * self.bw - (self.bw - last_size) if taken else 0
        self.free += data
        self.written += data
        self.drain_end = cycle + taken - 1
        if self.first_drain is None:
            self.first_drain = cycle

    def flush(self, cycle: float) -> None:
        """After the last row: drain everything left, one drain after the other."""
        if self.pending:
            self.chunks.append(list(divmod(self.pending, self.bw)))
            self.pending = 0
        while self.drain_chunk < len(self.chunks):
            self._drain(cycle)
            cycle = self.drain_end + 1

    def row(self, count: int, cycle: float) -> float:
        """Serve one row of ``count`` writes issued at ``cycle``; the row's stall."""
        offset = 0.0
        current = cycle
        for _ in range(count):
            self.pending += 1
            self.free -= 1
            if current < self.drain_end:
                if self.free <= 0:
                    offset += max(self.drain_end - current, 0)
                    current = self.drain_end
            elif self.free < self.total - self.drain_size:
                self._drain(current)
        return offset

    def skip(self, count: int) -> None:
        """Rows with no event: writes only."""
        self.pending += count
        self.free -= count


def _next_write_event(wb: _WriteBuffer, cum: np.ndarray, row: int, S: int) -> int:
    """The first row at or after ``row`` where the write buffer may start a drain or stall
    (rows before it only fill the buffer), given no other stall before it."""
    n_rows = len(cum) - 1
    if row >= n_rows:
        return n_rows
    base, written = int(cum[row]), int(cum[-1])

    def row_of(j: int) -> int:  # the row holding the ``j``-th write from ``row`` on (1-based)
        return n_rows if base + j > written else int(np.searchsorted(cum, base + j, side="left")) - 1

    # a drain starts at the first write that leaves less than half free, in a row issued no
    # earlier than the running drain's end
    j_half = max(wb.free - (wb.total - wb.drain_size) + 1, 1)
    free_row = min(max(row, math.ceil(wb.drain_end - S)), n_rows)
    j_drain = max(j_half, int(cum[free_row]) - base + 1)
    # the array stalls at the write that fills the buffer (if a drain still runs then)
    j_full = max(wb.free, 1)
    return min(row_of(j_drain), row_of(j_full))


def _advance(L: float, k: int, D: int, cycle: float) -> tuple[float, float]:
    """``k`` prefetches of one row at ``cycle``: the new prefetch clock and the row's stall."""
    offset = 1.0
    for _ in range(k):
        L += D
        pot = L - (cycle + offset)
        offset += pot
        if pot > 0:
            offset += pot
    return L, offset - 1.0


def user_run(x: ConvShape, cfg: ScaleSimConfig, Fr: int, Fc: int, fold_cycles: int, *,
             ifmap_words: float = 1.0, filter_words: float = 1.0) -> UserRun:
    """Replay SCALE-Sim 3.0.0's USER-mode memory system on one layer (module docstring)."""
    L = fold_cycles
    n_rows = Fr * Fc * L
    (i_rows, i_addr, (i_seq, i_len)), (f_rows, f_addr, (f_seq, f_len)) = _demands(x, cfg, Fr, Fc, L)
    words_i = cfg.ifmap_kb * 1024 / ifmap_words
    words_f = cfg.filter_kb * 1024 / filter_words
    ib = _read_buffer(len(i_seq), i_len, words_i, cfg.ifmap_bw)
    fb = _read_buffer(len(f_seq), f_len, words_f, cfg.filter_bw)
    im_rows, im_k = _misses(i_rows, i_addr, i_seq, ib, math.ceil(math.floor(words_i) / 100))
    fm_rows, fm_k = _misses(f_rows, f_addr, f_seq, fb, math.ceil(math.floor(words_f) / 100))
    counts = _ofmap_counts(x, cfg, Fr, Fc, L)
    cum = np.concatenate(([0], np.cumsum(counts)))
    wb = _WriteBuffer(cfg.ofmap_kb * 1024, cfg.ofmap_bw)
    read_events = {}
    for r, k in zip(im_rows.tolist(), im_k.tolist(), strict=True):
        read_events.setdefault(r, [0, 0])[0] += k
    for r, k in zip(fm_rows.tolist(), fm_k.tolist(), strict=True):
        read_events.setdefault(r, [0, 0])[1] += k
    read_rows = sorted(read_events)
    Li = Lf = -1.0
    S = 0
    row = 0
    ri = 0
    last_out = None
    while row < n_rows:
        nxt_read = read_rows[ri] if ri < len(read_rows) else n_rows
        nxt_write = _next_write_event(wb, cum, row, S)
        nxt = min(nxt_read, nxt_write)
        if nxt >= n_rows:
            wb.skip(int(cum[n_rows] - cum[row]))
            break
        wb.skip(int(cum[nxt] - cum[row]))
        cycle = nxt + S
        stall_i = stall_f = 0.0
        if nxt == nxt_read:
            ki, kf = read_events[nxt]
            if ki:
                Li, stall_i = _advance(Li, ki, ib.prefetch_cycles, cycle)
            if kf:
                Lf, stall_f = _advance(Lf, kf, fb.prefetch_cycles, cycle)
            ri += 1
        stall_o = wb.row(int(counts[nxt]), cycle)
        if nxt == n_rows - 1:
            last_out = cycle + stall_o
        S += int(max(stall_i, stall_f, stall_o))
        row = nxt + 1
    total = last_out if last_out is not None else n_rows - 1 + S
    wb.flush(total)
    adv_i, adv_f = int(im_k.sum()), int(fm_k.sum())
    # a read buffer's first fill is requested in the cycles just before the first row
    i_first, f_first = ib.first_words // cfg.ifmap_bw, fb.first_words // cfg.filter_bw
    return UserRun(stall_cycles=S, total_cycles=int(total),
                   ifmap_dram_reads=ib.first_words + adv_i * ib.words_per_advance,
                   filter_dram_reads=fb.first_words + adv_f * fb.words_per_advance,
                   ifmap_advances=adv_i, filter_advances=adv_f, ofmap_dram_writes=wb.written,
                   ifmap_dram_window=(float(-i_first), Li), filter_dram_window=(float(-f_first), Lf),
                   ofmap_dram_window=(float(wb.first_drain if wb.first_drain is not None else total),
                                      float(wb.drain_end)))
