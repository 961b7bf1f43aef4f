"""The honest speed report: per layer, format, kernel, weight bytes read per call, measured
time against dense in the same run, and the time those bytes predict at the machine's measured
memory bandwidth (a STREAM-style read probe), so each layer shows how close it runs to the limit.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from penjing.core.report import ms_text
from penjing.runtime.convert import dense_call, input_for, input_shapes, is_hf_conv1d, time_pair
from penjing.runtime.modules import RuntimeLayer, SparseConv2d
from penjing.runtime.ops import compiled_isa, read_probe


def bandwidth_probe(megabytes: int = 256, rounds: int = 5) -> float:
    """Read bandwidth in bytes/s: the best of ``rounds`` timed sums over an array of
    ``megabytes`` (several times any L3), at ``torch.get_num_threads()`` threads (STREAM
    reports the best round too: the others are the same work slowed by noise)."""
    a = torch.ones(megabytes * (1 << 20) // 4)
    read_probe(a)  # touch every page before timing
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        read_probe(a)
        best = min(best, time.perf_counter() - t0)
    return a.numel() * 4 / best


@dataclass
class LayerSpeed:
    """One layer at one batch size."""

    name: str
    format: str
    kernel: str
    batch: int
    weight_bytes: int
    dense_bytes: int
    time_s: float
    dense_s: float
    bandwidth: float

    @property
    def speedup(self) -> float:
        return self.dense_s / self.time_s if self.time_s else float("nan")

    @property
    def predicted_s(self) -> float:
        """Time to stream the weight bytes once at the measured bandwidth."""
        return self.weight_bytes / self.bandwidth

    @property
    def bandwidth_fraction(self) -> float:
        """Achieved weight-read rate over the measured bandwidth (1.0 = at the memory limit)."""
        return self.predicted_s / self.time_s if self.time_s else float("nan")


def _layer_inputs(model: nn.Module, example: torch.Tensor | None) -> dict[str, tuple[int, ...]]:
    if example is None:
        return {}
    layers = {name: m for name, m in model.named_modules()
              if isinstance(m, (RuntimeLayer, nn.Linear, nn.Conv2d))}
    return {name: shape[1:] for name, shape in input_shapes(model, example, layers).items()}


@torch.no_grad()
def speed_report(model: nn.Module, batch_sizes: list[int], *, example: torch.Tensor | None = None,
                 rounds: int = 15, bandwidth: float | None = None) -> list[LayerSpeed]:
    """Time every runtime layer (and every dense Linear / Conv2d) of ``model`` at each batch
    size against dense ``F.linear`` / ``F.conv2d`` on the same weight, interleaved, median of
    ``rounds``. Conv layers need ``example`` (an input of the model) for their sizes."""
    bw = bandwidth_probe() if bandwidth is None else bandwidth
    shapes = _layer_inputs(model, example)
    rows: list[LayerSpeed] = []
    for name, m in model.named_modules():
        if isinstance(m, RuntimeLayer):
            weight = m.dense_weight()
            dense = dense_call(m, weight)
            for b in batch_sizes:
                spatial = shapes[name][-2:] if isinstance(m, SparseConv2d) and name in shapes else None
                x = input_for(m, b, spatial)
                tk, td = time_pair(m, dense, x, rounds)
                rows.append(LayerSpeed(name, m.format, compiled_isa(), b, m.bytes_per_call(b), 4 * weight.numel(),
                                       tk, td, bw))
            del weight, dense
        elif isinstance(m, (nn.Linear, nn.Conv2d)) or is_hf_conv1d(m):
            for b in batch_sizes:
                if isinstance(m, nn.Conv2d):
                    if name not in shapes:
                        raise ValueError(f"timing conv layer {name} needs example=<an input of the model>")
                    x = torch.randn(b, *shapes[name])
                else:  # (a Conv1D's weight is [in, out])
                    x = torch.randn(b, m.in_features if isinstance(m, nn.Linear) else m.weight.shape[0])
                ts = []
                for _ in range(rounds):
                    t0 = time.perf_counter()
                    m(x)
                    ts.append(time.perf_counter() - t0)
                t = statistics.median(ts)
                n = 4 * m.weight.numel()
                rows.append(LayerSpeed(name, "dense fp32", "dense", b, n, n, t, t, bw))
    return rows


def format_report(rows: list[LayerSpeed], bandwidth: float | None = None) -> str:
    """A markdown table of :func:`speed_report`'s rows, with a total per batch size."""
    bw = bandwidth or (rows[0].bandwidth if rows else float("nan"))
    head = (f"measured read bandwidth {bw / 1e9:.1f} GB/s at {torch.get_num_threads()} thread(s); "
            f"kernels: {compiled_isa()}\n\n"
            "| layer | format | kernel | batch | weight bytes/call | vs dense bytes | time (ms) | dense (ms) "
            "| speedup | bytes predict (ms) | of bandwidth |\n"
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    lines = []
    for r in rows:
        lines.append(f"| {r.name} | {r.format} | {r.kernel} | {r.batch} | {r.weight_bytes:,} | "
                     f"{r.dense_bytes / r.weight_bytes:.1f}x | {ms_text(r.time_s)} | {ms_text(r.dense_s)} | "
                     f"{r.speedup:.2f}x | {ms_text(r.predicted_s)} | {r.bandwidth_fraction:.0%} |")
    for b in sorted({r.batch for r in rows}):
        sel = [r for r in rows if r.batch == b]
        t, d = sum(r.time_s for r in sel), sum(r.dense_s for r in sel)
        wb, db = sum(r.weight_bytes for r in sel), sum(r.dense_bytes for r in sel)
        lines.append(f"| **all layers** | | | {b} | {wb:,} | {db / wb:.1f}x | {ms_text(t)} | {ms_text(d)} | "
                     f"{d / t:.2f}x | {ms_text(wb / bw)} | {wb / bw / t:.0%} |")
    return head + "\n".join(lines) + "\n"


@dataclass
class FileSpeed:
    """:func:`file_speed_report`'s result: the rows, the bandwidth they are measured against,
    and what the load chose per layer."""

    path: str
    threads: int
    isa: str
    bandwidth: float
    rounds: int
    rows: list[LayerSpeed]
    chosen: dict[str, str]

    def to_markdown(self) -> str:
        first = self.rows[0].batch if self.rows else 1
        picks = ", ".join(f"{n}: {c}" for n, c in self.chosen.items()) or "no layer has a kernel"
        return (f"`{Path(self.path).name}` run by the penjing runtime's kernels vs dense on the same weights, "
                f"median of {self.rounds} interleaved rounds. `runtime=\"auto\"` at batch {first} keeps: {picks}. "
                "Above 100% of bandwidth: the weights sat in cache between calls.\n\n"
                + format_report(self.rows, self.bandwidth))

    def to_record(self) -> dict:
        """Plain JSON-able data (what ``report.json`` keeps for the HTML report)."""
        return {"file": Path(self.path).name, "threads": self.threads, "isa": self.isa,
                "bandwidth": self.bandwidth, "rounds": self.rounds, "chosen": dict(self.chosen),
                "rows": [{**asdict(r), "speedup": r.speedup, "predicted_s": r.predicted_s,
                          "bandwidth_fraction": r.bandwidth_fraction} for r in self.rows]}


@torch.no_grad()
def file_speed_report(path: str | Path, model: nn.Module, batch_sizes: list[int] | tuple[int, ...] = (1, 32), *,
                      example: torch.Tensor | None = None, rounds: int = 5, probe_mb: int = 64) -> FileSpeed:
    """The speed report of a ``.pjz`` file: load it into a copy of ``model`` (its architecture;
    ``model`` is left alone) with every compressed layer on its kernel (``runtime="kernel"``),
    time each layer at each batch size against dense (:func:`speed_report`), and say what
    ``runtime="auto"`` keeps at the first batch size (the faster of the two). Few rounds and a
    64 MB bandwidth probe by default: the quick version a compress run appends to its report;
    ``penjing bench`` and ``benchmarks/runtime.py`` are the careful ones."""
    from penjing.runtime.load import load_into

    batches = [int(b) for b in batch_sizes]
    if not batches or any(b < 1 for b in batches):
        raise ValueError(f"batch sizes must be positive integers, got {list(batch_sizes)!r}")
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    loaded = load_into(copy.deepcopy(model).eval(), path, runtime="kernel")
    bw = bandwidth_probe(probe_mb, rounds=3)
    rows = speed_report(loaded, batches, example=example, rounds=rounds, bandwidth=bw)
    chosen = {r.name: "kernel" if r.time_s <= r.dense_s else "dense"
              for r in rows if r.batch == batches[0] and r.kernel != "dense"}
    return FileSpeed(str(path), torch.get_num_threads(), compiled_isa(), bw, rounds, rows, chosen)


def speed_record(path: str | Path, models: list[nn.Module], batch_sizes, *, example: torch.Tensor | None = None
                 ) -> dict:
    """:func:`file_speed_report` as the plain data a compress report keeps (``report.json``),
    with its Markdown under ``"markdown"``. ``models``: architectures to try in order (the dense
    model, then the compressed one baked: a rewrite such as low-rank changes the architecture);
    when the file fits none, ``{"error": ...}`` says why rather than failing the run."""
    from penjing.core.params import bake

    reason = "no model given"
    for i, model in enumerate(models):
        skeleton = model if i == 0 else bake(copy.deepcopy(model))
        try:
            result = file_speed_report(path, skeleton, batch_sizes, example=example)
            return {**result.to_record(), "markdown": result.to_markdown()}
        except (ValueError, RuntimeError) as exc:
            reason = str(exc).strip().splitlines()[0]
    return {"error": f"Not measured: the file does not load into the model ({reason})."}
