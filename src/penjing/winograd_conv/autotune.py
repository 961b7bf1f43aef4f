"""Choosing the output tile m per layer: a cost model, or a quick measurement.

**Cost model** (:func:`estimate_cost`, used when no example input is given). Time on a CPU is
multiplications *and* memory traffic, so the estimate, in multiply-equivalents, is::

    cost(m) = mults(elementwise + transforms) + LAMBDA * elements streamed

where the streamed elements are the transformed filter ``U`` (``alpha^2 C K``, read once per
call: it dominates when there are few tiles, e.g. 512 channels at 7x7 with batch 1), the
transformed input ``V`` and the GEMM output ``M`` (written and read back), and the padded
input and output. ``LAMBDA = 8`` was fitted on the 2-core AVX2 EPYC used for the benchmarks
(a float read from memory costs about as much time as 8 multiply-adds in MKL's GEMM); it only
has to rank the tile sizes, not predict absolute time. Larger m saves multiplications but
grows ``U`` as ``(m + r - 1)^2`` and wastes more work on tiles that overhang the output.

**Measurement** (:func:`measure_tiles`, used by ``pj.winograd`` when given an example
input): time ``F.conv2d`` and each candidate F(m) on the layer's real input shape, median of a
few interleaved runs, and keep the fastest (which may be the direct conv: then the layer is
left alone).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from penjing.winograd_conv import functional as wf
from penjing.winograd_conv.cost import conv_multiplications

LAMBDA = 8.0  # multiply-equivalents per float streamed from memory (fitted; see module doc)

#: The timer of :func:`measure_tiles` (a module attribute, so a test can drive it).
clock = time.perf_counter


def estimate_cost(in_channels: int, out_channels: int, out_h: int, out_w: int, kernel_size: int,
                  m: int, batch: int = 1) -> float:
    """Estimated time of F(m x m, r x r) for one call, in multiply-equivalents."""
    count = conv_multiplications(in_channels, out_channels, out_h, out_w, kernel_size, m, batch)
    a = m + kernel_size - 1
    p = batch * count.tiles
    streamed = (a * a * in_channels * out_channels          # U
                + 2 * a * a * p * (in_channels + out_channels)  # V and M, written then read
                + batch * in_channels * (out_h + kernel_size) * (out_w + kernel_size)
                + batch * out_channels * out_h * out_w)
    return count.winograd + LAMBDA * streamed


def choose_tile_by_cost(in_channels: int, out_channels: int, out_h: int, out_w: int,
                        kernel_size: int, batch: int = 1, tiles: Sequence[int] = (2, 4)) -> int:
    """The m in ``tiles`` with the lowest :func:`estimate_cost`."""
    return min(tiles, key=lambda m: estimate_cost(in_channels, out_channels, out_h, out_w,
                                                  kernel_size, m, batch))


def _median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = clock()
        fn()
        times.append(clock() - start)
    times.sort()
    return times[len(times) // 2]


@torch.no_grad()
def measure_tiles(conv: nn.Conv2d, x: torch.Tensor, tiles: Sequence[int] = (2, 4),
                  reps: int = 5) -> dict[int | str, float]:
    """Median seconds of ``F.conv2d`` (key ``"direct"``) and of F(m) for each m in ``tiles``
    on input ``x``, measured interleaved (direct, m1, m2, ..., repeated) so that load from
    other processes hits every candidate alike."""
    weight, bias = conv.weight.detach(), None if conv.bias is None else conv.bias.detach()
    left, right, top, bottom = conv._reversed_padding_repeated_twice
    pad4 = (top, bottom, left, right)
    r = conv.kernel_size[0]
    us = {m: wf.filter_transform(weight, m) for m in tiles}  # cached in the layer, so not timed
    runs: dict[int | str, Callable] = {"direct": lambda: F.conv2d(x, weight, bias, 1, conv.padding)}
    for m in tiles:
        runs[m] = lambda m=m: wf.winograd_conv2d(x, us[m], r, m, pad4, bias)
    for fn in runs.values():  # warm-up (allocator, MKL thread pools)
        fn()
    samples: dict[int | str, list[float]] = {key: [] for key in runs}
    for _ in range(reps):
        for key, fn in runs.items():
            samples[key].append(_median_time(fn, 1))
    return {key: sorted(v)[len(v) // 2] for key, v in samples.items()}
