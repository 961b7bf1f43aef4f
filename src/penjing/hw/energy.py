"""Memory-access-centred energy model: operations and accesses per layer, priced in pJ.

The lecture's point, in numbers (45 nm, Horowitz ISSCC 2014): a 32-bit DRAM access costs
640 pJ, 6400x a 32-bit integer add (0.1 pJ) and 128x a 32-bit SRAM access (5 pJ). So the
energy of inference is dominated by *where the weights live*.

:func:`energy` prices one inference (the example's batch, divided by its size) as

* **compute**: each multiply-accumulate that is not a multiplication by a zero weight (zero
  operands are gated, as in EIE/Eyeriss) costs one multiply at the layer's operand width plus
  one add at the accumulator width (an int8 MAC accumulates in int32; float16 in float32 —
  mixed precision). Integer ops are used only when both weight and activation are quantized
  to an integer grid; a weight-shared layer stores 5-bit indices but multiplies float
  centroids, so it computes in float. Memory-only layers (pooling, BatchNorm, ReLU, adds)
  cost one add per element operation.
* **weights**: each stored weight is read once per inference, at its stored size (bits per
  weight, plus Deep Compression's relative index per nonzero when sparse: see
  :meth:`penjing.hw.trace.Layer.weight_bytes`). If *all* of the model's stored weights fit in
  the on-chip SRAM (``on_chip_kib``) they stay resident and are read from SRAM; otherwise
  from DRAM. This is why pruning + sharing can pay far more than its MAC savings: a model
  that shrinks under the SRAM size stops paying 640 pJ per word.
* **activations**: each layer reads its inputs and writes its output once, from SRAM if they
  fit beside the resident weights, else from DRAM.
* **registers**: every MAC reads two operands and updates an accumulator (3 register
  accesses), priced with ``reg_32b`` (0 in the default table, which has no such entry).

Memory energy is linear in bits: ``bytes * 8 / 32 * cost_32b``. An op at a width the table
lacks is interpolated, not rounded up: a power law ``e(b) = e(b0) (b / b0)^p`` between the two
neighbouring tabulated widths (``p`` from those two points: about 1 for the 45 nm adders, 2
for the multipliers, as their area grows), extrapolated with the nearest segment outside the
table. SRAM energy grows with the buffer: :meth:`EnergyTable.sram` interpolates
``sram_32b_by_kib`` (Horowitz's 8 KB / 32 KB / 1 MB points) the same way in size.

A user table is a YAML file with the same keys as ``45nm.yaml`` next to this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import torch
import yaml
from torch import nn

from penjing.hw.trace import Layer, trace

_OPS = ("int_add", "int_mult", "float_add", "float_mult")
_MEM = ("sram_32b", "dram_32b", "reg_32b")


@dataclass
class EnergyTable:
    """Per-op energies (pJ) keyed by operand bits, and per-32-bit-access memory energies."""

    name: str
    int_add: dict[int, float]
    int_mult: dict[int, float]
    float_add: dict[int, float]
    float_mult: dict[int, float]
    sram_32b: float
    dram_32b: float
    reg_32b: float = 0.0
    #: per-32-bit SRAM read energy by buffer size in KiB (empty: ``sram_32b`` at every size)
    sram_32b_by_kib: dict[float, float] = field(default_factory=dict)

    def op(self, kind: str, bits: float) -> float:
        """Energy of one ``kind`` op (``int_add``, ``float_mult``...) on ``bits``-bit operands,
        interpolated between tabulated widths (see the module docstring)."""
        if not bits > 0:
            raise ValueError(f"operand width must be > 0 bits, got {bits!r}")
        entries = getattr(self, kind)
        widest = max(entries)
        if kind == "int_add" and bits > widest:  # int64 ids and masks: a chain of the widest
            return -(-bits // widest) * entries[widest]  # adds with carry, ceil(bits / widest)
        return power_law(entries, bits)

    def sram(self, kib: float) -> float:
        """Energy of one 32-bit read of a ``kib``-KiB SRAM (interpolated on the size points)."""
        if not self.sram_32b_by_kib:
            return self.sram_32b
        return power_law(self.sram_32b_by_kib, max(kib, 1e-3))

    def mac(self, bits: float, integer: bool) -> float:
        """One multiply-accumulate: multiply at ``bits``, add at the accumulator width."""
        if integer:
            return self.op("int_mult", bits) + self.op("int_add", 32)
        return self.op("float_mult", bits) + self.op("float_add", 32)

    def memory(self, level: str, nbytes: float) -> float:
        return nbytes / 4 * getattr(self, f"{level}_32b")


def power_law(points: dict, x: float) -> float:
    """Interpolate ``points`` (x -> y, y >= 0) at ``x``: a straight line in log-log between the
    neighbouring points, the nearest segment's slope outside them; a single point is flat."""
    import math

    xs = sorted(points)
    if x in points or len(xs) == 1:
        return points.get(x, points[xs[0]])
    if x < xs[0]:
        a, b = xs[0], xs[1]
    elif x > xs[-1]:
        a, b = xs[-2], xs[-1]
    else:
        b = next(p for p in xs if p > x)
        a = xs[xs.index(b) - 1]
    ya, yb = points[a], points[b]
    if ya <= 0 or yb <= 0:  # a zero entry: interpolate linearly instead
        return max(0.0, ya + (yb - ya) * (x - a) / (b - a))
    slope = math.log(yb / ya) / math.log(b / a)
    return ya * (x / a) ** slope


def _check_table(data: dict, source: str) -> EnergyTable:
    if not isinstance(data, dict):
        raise ValueError(f"energy table {source}: expected a mapping of costs")
    missing = [k for k in (*_OPS, "sram_32b", "dram_32b") if k not in data]
    if missing:
        raise ValueError(f"energy table {source}: missing {', '.join(missing)}")
    kwargs = {"name": str(data.get("name", source))}
    for key in _OPS:
        entries = data[key]
        if not isinstance(entries, dict) or not entries:
            raise ValueError(f"energy table {source}: {key} must map operand bits to pJ")
        parsed = {int(b): float(v) for b, v in entries.items()}
        if any(b <= 0 or v < 0 for b, v in parsed.items()):
            raise ValueError(f"energy table {source}: {key} needs positive bits and pJ >= 0")
        kwargs[key] = parsed
    for key in _MEM:
        value = float(data.get(key, 0.0))
        if value < 0:
            raise ValueError(f"energy table {source}: {key} must be >= 0, got {value}")
        kwargs[key] = value
    sizes = data.get("sram_32b_by_kib", {})
    if not isinstance(sizes, dict) or any(float(k) <= 0 or float(v) < 0 for k, v in sizes.items()):
        raise ValueError(f"energy table {source}: sram_32b_by_kib must map positive KiB to pJ >= 0")
    kwargs["sram_32b_by_kib"] = {float(k): float(v) for k, v in sizes.items()}
    return EnergyTable(**kwargs)


@lru_cache(maxsize=1)
def _default_table() -> EnergyTable:
    # parsed once: simulating a small model should not be dominated by reading YAML
    text = resources.files("penjing.hw").joinpath("45nm.yaml").read_text()
    return _check_table(yaml.safe_load(text), "45nm")


def load_table(table: str | Path | dict | EnergyTable | None = None) -> EnergyTable:
    """The default 45 nm table (``None`` or ``"45nm"``), a YAML file, or a dict."""
    if isinstance(table, EnergyTable):
        return table
    if isinstance(table, dict):
        return _check_table(table, "dict")
    if table is None or str(table) == "45nm":
        return _default_table()
    path = Path(table)
    if not path.exists():
        raise FileNotFoundError(f"energy table {path} not found")
    return _check_table(yaml.safe_load(path.read_text()), str(path))


@dataclass
class LayerEnergy:
    """Counts and energy (pJ, per inference) of one traced layer."""

    name: str
    op: str
    macs: float
    nonzero_macs: float
    adds: float
    weight_bytes: float
    act_bytes: float
    weight_level: str
    act_level: str
    reg_accesses: float
    compute_pj: float
    sram_pj: float
    dram_pj: float
    reg_pj: float

    @property
    def total_pj(self) -> float:
        return self.compute_pj + self.sram_pj + self.dram_pj + self.reg_pj


@dataclass
class EnergyReport:
    """Per-layer energy of one inference and the totals."""

    table: str
    batch: int
    weights_on_chip: bool
    rows: list[LayerEnergy] = field(default_factory=list)

    @property
    def total_pj(self) -> float:
        return sum(r.total_pj for r in self.rows)

    def by_layer(self) -> dict[str, float]:
        """Total pJ per layer name (memory-only ops inside a layer add to it)."""
        out: dict[str, float] = {}
        for r in self.rows:
            out[r.name] = out.get(r.name, 0.0) + r.total_pj
        return out

    def breakdown(self) -> dict[str, float]:
        return {"compute": sum(r.compute_pj for r in self.rows), "sram": sum(r.sram_pj for r in self.rows),
                "dram": sum(r.dram_pj for r in self.rows), "register": sum(r.reg_pj for r in self.rows)}

    def to_markdown(self) -> str:
        lines = [f"energy per inference ({self.table}; weights {'on chip' if self.weights_on_chip else 'in DRAM'})",
                 "", "| layer | op | MACs | nonzero MACs | weight bytes | weights from | energy |",
                 "|---|---|---:|---:|---:|---|---:|"]
        for r in self.rows:
            lines.append(f"| {r.name} | {r.op} | {r.macs:,.0f} | {r.nonzero_macs:,.0f} | "
                         f"{r.weight_bytes:,.0f} | {r.weight_level} | {format_pj(r.total_pj)} |")
        parts = ", ".join(f"{k} {format_pj(v)}" for k, v in self.breakdown().items())
        lines += ["", f"total {format_pj(self.total_pj)} ({parts})"]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()


def format_pj(pj: float) -> str:
    """``1234.5`` -> ``"1.23 nJ"``."""
    for unit, scale in (("mJ", 1e9), ("uJ", 1e6), ("nJ", 1e3)):
        if abs(pj) >= scale:
            return f"{pj / scale:.3g} {unit}"
    return f"{pj:.3g} pJ"


def energy_of_layers(layers: list[Layer], table: EnergyTable, *, batch: int = 1,
                     on_chip_kib: float = 8.0) -> EnergyReport:
    """Price traced ``layers`` (see the module docstring for the model)."""
    if on_chip_kib < 0:
        raise ValueError(f"on_chip_kib must be >= 0, got {on_chip_kib}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    capacity = on_chip_kib * 1024
    weight_total = sum(layer.weight_bytes() for layer in layers if layer.has_weight)
    resident = weight_total <= capacity
    act_capacity = capacity - weight_total if resident else capacity
    report = EnergyReport(table=table.name, batch=batch, weights_on_chip=resident)
    for layer in layers:
        act_bytes = (layer.in_elems + layer.out_elems) * layer.act_bits / 8
        if layer.kind == "gemm" and not layer.has_weight:
            act_bytes += layer.weight_bytes()  # matmul of two activations
        act_level = "sram" if act_bytes <= act_capacity else "dram"
        if layer.kind == "gemm":
            nz = layer.nonzero_macs
            compute = nz * table.mac(layer.compute_bits, layer.integer)
            adds = nz
            regs = 3 * nz
        else:
            nz = 0.0
            adds = float(layer.ops)
            compute = adds * table.op("int_add" if layer.integer else "float_add", layer.act_bits)
            regs = 0.0
        w_bytes = layer.weight_bytes() / batch if layer.has_weight else 0.0
        w_level = ("sram" if resident else "dram") if layer.has_weight else "-"
        sram = table.memory("sram", w_bytes if w_level == "sram" else 0.0)
        dram = table.memory("dram", w_bytes if w_level == "dram" else 0.0)
        if act_level == "sram":
            sram += table.memory("sram", act_bytes / batch)
        else:
            dram += table.memory("dram", act_bytes / batch)
        report.rows.append(LayerEnergy(
            name=layer.name, op=layer.op, macs=layer.macs / batch, nonzero_macs=nz / batch,
            adds=adds / batch, weight_bytes=w_bytes, act_bytes=act_bytes / batch,
            weight_level=w_level, act_level=act_level, reg_accesses=regs / batch,
            compute_pj=compute / batch, sram_pj=sram, dram_pj=dram,
            reg_pj=regs / batch * table.reg_32b))
    return report


def energy(model: nn.Module, example: torch.Tensor | tuple, *,
           table: str | Path | dict | EnergyTable | None = None,
           on_chip_kib: float = 8.0) -> EnergyReport:
    """Estimated energy of one inference of ``model`` (per example of the batch).

    ``example``: an input batch (its size divides every count). ``table``: ``"45nm"``
    (default), a YAML path or a dict. ``on_chip_kib``: on-chip SRAM capacity deciding whether
    weights and activations are read from SRAM or DRAM. The default, 8 KiB, is the size of the
    SRAM the table's 5 pJ figure was measured on: a larger SRAM costs more per access, so give
    a matching table when you raise it.
    """
    layers = trace(model, example)
    first = example[0] if isinstance(example, tuple) else example
    batch = int(first.shape[0]) if first.dim() > 0 else 1
    return energy_of_layers(layers, load_table(table), batch=max(batch, 1), on_chip_kib=on_chip_kib)


def energy_column(model: nn.Module, data, names: list[str], **kwargs) -> list[str] | None:
    """Per-layer energy per inference, formatted, for the layers ``names`` of a report table
    (``"-"`` for a layer the trace did not see). ``data``: an example batch, or a data set
    whose first sample is used (batch 1). ``None`` when the model cannot be traced: a report
    must never fail because of its energy column."""
    try:
        example = data if isinstance(data, torch.Tensor) else data[0:1][0]
        per_layer = energy(model, example, **kwargs).by_layer()
    except Exception:  # noqa: BLE001 -- any failure of the user's forward only drops the column
        return None
    return [format_pj(per_layer[n]) if n in per_layer else "-" for n in names]
