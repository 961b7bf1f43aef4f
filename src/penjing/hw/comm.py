"""Scaling on paper: an alpha-beta model of data-parallel communication.

A message of ``n`` bytes over one link costs ``alpha + n / B`` seconds (latency ``alpha``,
bandwidth ``B`` bytes/s; Hockney 1994). For one step of data-parallel SGD with ``N`` workers
and a gradient of ``G`` bytes:

* **ring all-reduce** (reduce-scatter + all-gather, Patarasuk & Yuan 2009; what NCCL/gloo and
  DDP use): ``2 (N - 1)`` steps, each sending ``G / N`` bytes::

      t = 2 (N - 1) alpha + 2 (N - 1) / N * G / B

  bandwidth-optimal: the per-worker traffic stays below ``2 G`` however many workers.
* **parameter server** with ``S`` server shards (Li et al., OSDI 2014; the seed's picture):
  every worker pushes its gradient and pulls fresh weights; each server's link carries
  ``N G / S`` bytes in and the same out, which is the bottleneck::

      t = 2 alpha + 2 N G / (S B)

* **gradient compression** (Deep Gradient Compression, Lin et al. ICLR 2018): a worker sends
  only a fraction ``density`` of its gradient as (value, index) pairs, ``G_c = G * density *
  (value_bits + index_bits) / value_bits``. Sparse gradients with different supports cannot
  be reduced in a ring, so they are all-gathered: ``t = (N - 1) alpha + (N - 1) G_c / B``.
  With a parameter server the workers push ``G_c`` and pull the aggregated update, whose
  support is at most ``N`` times larger (capped at the dense ``G``):
  ``t = 2 alpha + N (G_c + min(N G_c, G)) / (S B)``.

The projected step time is ``compute + communication`` (or their maximum with ``overlap``:
DDP overlaps the all-reduce of early buckets with the rest of the backward pass), and the
speed-up over one worker at the same per-worker batch is ``N * compute / step``. The compute
time is measured (see ``penjing simulate --train``), not modelled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SCHEMES = ("ring", "ps")

_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


def parse_bandwidth(text: str | float) -> float:
    """Bandwidth in bytes/s from ``"10Gbit"``, ``"10Gb/s"``, ``"1.25GB/s"``, ``"100Mbit"`` or a
    number (bytes/s). Lower-case ``b``/``bit`` means bits, ``B`` bytes."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([kKmMgGtT]?)(bit|bps|b|B|Byte|byte)?(?:/s|ps)?\s*",
                         text)
        if not m:
            raise ValueError(f"cannot read bandwidth {text!r}; write e.g. 10Gbit, 25Gb/s, 1.25GB/s")
        number, prefix, unit = m.groups()
        value = float(number) * _UNITS[prefix.lower()]
        if unit in ("bit", "bps", "b"):
            value /= 8
    if not value > 0:
        raise ValueError(f"bandwidth must be > 0, got {text!r}")
    return value


def ring_allreduce_time(nbytes: float, workers: int, bandwidth: float, latency: float = 0.0) -> float:
    """Seconds for a ring all-reduce of ``nbytes`` among ``workers`` (0 for one worker)."""
    _check(nbytes, workers, bandwidth, latency)
    n = workers
    return 2 * (n - 1) * latency + 2 * (n - 1) / n * nbytes / bandwidth


def allgather_time(nbytes: float, workers: int, bandwidth: float, latency: float = 0.0) -> float:
    """Seconds for a ring all-gather where every worker contributes ``nbytes``."""
    _check(nbytes, workers, bandwidth, latency)
    return (workers - 1) * (latency + nbytes / bandwidth)


def parameter_server_time(nbytes: float, workers: int, bandwidth: float, latency: float = 0.0,
                          servers: int = 1, pull_bytes: float | None = None) -> float:
    """Seconds for every worker to push ``nbytes`` and pull ``pull_bytes`` (default the same)
    through ``servers`` shards, the servers' links being the bottleneck."""
    _check(nbytes, workers, bandwidth, latency)
    if servers < 1:
        raise ValueError(f"servers must be >= 1, got {servers}")
    if workers == 1:
        return 0.0
    pull = nbytes if pull_bytes is None else pull_bytes
    return 2 * latency + workers * (nbytes + pull) / (servers * bandwidth)


def compressed_bytes(nbytes: float, density: float, value_bits: int = 32, index_bits: int = 32) -> float:
    """Bytes of a gradient of ``nbytes`` sent as (value, index) pairs at ``density``."""
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    return nbytes * density * (value_bits + index_bits) / value_bits


@dataclass
class StepProjection:
    scheme: str
    workers: int
    compressed: bool
    compute_s: float
    comm_s: float
    sent_bytes: float  # bytes each worker sends per step
    overlap: bool = False

    @property
    def step_s(self) -> float:
        return max(self.compute_s, self.comm_s) if self.overlap else self.compute_s + self.comm_s

    @property
    def speedup(self) -> float:
        """Throughput relative to one worker at the same per-worker batch."""
        return self.workers * self.compute_s / self.step_s

    @property
    def efficiency(self) -> float:
        return self.speedup / self.workers


def project_step(grad_bytes: float, compute_s: float, workers: int, bandwidth: float, *,
                 scheme: str = "ring", latency: float = 50e-6, density: float | None = None,
                 servers: int = 1, overlap: bool = False, index_bits: int = 32) -> StepProjection:
    """Projected data-parallel step time (see the module docstring for the formulas).

    ``grad_bytes``: gradient size (fp32: 4 bytes per parameter); ``compute_s``: measured
    forward + backward time of one worker's batch; ``bandwidth``: bytes/s per link
    (:func:`parse_bandwidth`); ``latency``: alpha in seconds (default 50 us, a TCP/Ethernet
    round; about 5 us on InfiniBand); ``density``: gradient compression (e.g. 0.001 for DGC's
    99.9% sparsity), ``None`` for dense.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    if compute_s < 0:
        raise ValueError(f"compute time must be >= 0, got {compute_s}")
    _check(grad_bytes, workers, bandwidth, latency)
    if density is None:
        if scheme == "ring":
            comm = ring_allreduce_time(grad_bytes, workers, bandwidth, latency)
            sent = 2 * (workers - 1) / workers * grad_bytes
        else:
            comm = parameter_server_time(grad_bytes, workers, bandwidth, latency, servers)
            sent = grad_bytes if workers > 1 else 0.0
    else:
        gc = compressed_bytes(grad_bytes, density, index_bits=index_bits)
        if scheme == "ring":
            comm = allgather_time(gc, workers, bandwidth, latency)
            sent = (workers - 1) * gc
        else:
            comm = parameter_server_time(gc, workers, bandwidth, latency, servers,
                                         pull_bytes=min(workers * gc, grad_bytes))
            sent = gc if workers > 1 else 0.0
    return StepProjection(scheme=scheme, workers=workers, compressed=density is not None,
                          compute_s=compute_s, comm_s=comm, sent_bytes=sent, overlap=overlap)


def _check(nbytes: float, workers: int, bandwidth: float, latency: float) -> None:
    if nbytes < 0:
        raise ValueError(f"message size must be >= 0 bytes, got {nbytes}")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be > 0 bytes/s, got {bandwidth}")
    if latency < 0:
        raise ValueError(f"latency must be >= 0 s, got {latency}")
