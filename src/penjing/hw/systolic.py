"""An analytical systolic-array simulator (TPU-like): cycles, utilisation, traffic, energy.

**Default counting: SCALE-Sim 3.0.0's** (``counting="scalesim"``): identical cycles, its
double-buffered SRAM / DRAM model and per-operand counts, fed by each layer's sparsity and bit
widths; see :mod:`penjing.hw.memory` and :mod:`penjing.hw.scalesim_layers`. What follows is
the model behind ``counting="penjing"``, kept as an option (a partial fold charges only the
PEs it uses; activations stay in the input buffer between layers).

Every layer is a GEMM ``O[M x N] = A[M x K] @ B[K x N]`` (a convolution in its im2col view:
``M = batch * output pixels``, ``K = in_channels/groups * kernel volume``,
``N = out_channels/groups``, repeated once per group; see :mod:`penjing.hw.trace`). The array
has ``R x C`` processing elements. Following SCALE-Sim (Samajdar et al., "SCALE-Sim: Systolic
CNN Accelerator Simulator", arXiv:1811.02883, 2018), a dataflow maps the GEMM onto the array
as a spatial ``S_R x S_C`` grid and a temporal dimension ``T``:

=========================  =======  =======  =======
dataflow                   ``S_R``  ``S_C``  ``T``
=========================  =======  =======  =======
output stationary (os)     M        N        K
weight stationary (ws)     K        N        M
input stationary (is)      K        M        N
=========================  =======  =======  =======

**Folds.** When the grid exceeds the array it is cut into ``F_R = ceil(S_R / R)`` by
``F_C = ceil(S_C / C)`` folds run one after the other (column folds outer, row folds inner,
as in SCALE-Sim). A fold using ``r <= R`` rows and ``c <= C`` columns takes
``2r + c + T - 2`` cycles (SCALE-Sim's eq. for one fold: the operands are skewed in over
``r + c - 1`` cycles, ``T`` cycles of streaming, and ``r`` cycles to preload (ws/is) or drain
(os) the stationary values). Summed over all folds, in closed form::

    cycles = 2 * F_C * S_R  +  F_R * S_C  +  F_R * F_C * (T - 2)

which reduces to ``2 S_R + S_C + T - 2`` for a GEMM that fits the array and to SCALE-Sim's
``(2R + C + T - 2) * F_R * F_C`` when every fold is full. It is non-increasing in ``R`` and
``C``. A layer with ``count`` groups runs its GEMMs one after another.
**Utilisation** = ``MACs / (R * C * cycles)``; **mapping efficiency** =
``S_R S_C / (F_R R F_C C)``. A fully connected layer at batch 1 on a weight-stationary array
has ``T = M = 1``: every fold pays ``2r + c - 1`` cycles of loading and skew for one cycle of
work, the under-utilisation the TPU paper reports for MLPs and LSTMs (Jouppi et al., "In-
Datacenter Performance Analysis of a Tensor Processing Unit", ISCA 2017).

**On-chip buffer traffic** (operand elements delivered to the array edges, as SCALE-Sim
counts them): os reads ``A`` ``F_C`` times and ``B`` ``F_R`` times and writes ``O`` once; ws
reads ``B`` once, ``A`` ``F_C`` times and accumulates partial sums ``F_R`` times in the output
buffer; is reads ``A`` once, ``B`` ``F_C`` times and accumulates like ws. Activations and
weights move at ``bits``, partial sums at ``acc_bits``.

**DRAM traffic** (reuse limited by buffer sizes; the double-buffering of SCALE-Sim is folded
into "fits" tests on whole operands): the stationary operand of ws (``B``) and is (``A``) is
read once; the streamed operand is read once if it fits in its buffer, else once per column
fold; in os the ``K x C`` weight tile of a column fold is read once if it fits in the weight
buffer, else once per row fold. Partial sums of a column fold that do not fit in the output
buffer either spill to DRAM (``2 (F_R - 1) M N acc_bits/8`` bytes) or, when cheaper, the
streamed dimension is cut into chunks whose partial sums fit and the stationary operand is
re-read from DRAM once per extra chunk (how the TPU tiles a large batch through its 4 MiB
of accumulators). Activations stay in the input buffer between
layers (the TPU's unified buffer): a layer's input comes from DRAM only for the first layer
or when it does not fit, and its output goes to DRAM only for the last layer or when it does
not fit. Weights come from DRAM at their stored size (sparse values + indices, or 5-bit
codebook indices, decoded on chip), never larger than ``bits`` per weight.

**Stalls and time.** DRAM needs ``bytes / (GB/s / clock)`` cycles; with prefetching
(double buffering) it overlaps compute, so a layer takes ``max(compute, dram)`` cycles and
stalls for the difference; it is *memory-bound* when the DRAM time is the larger.
Memory-only layers (pooling, BatchNorm, activations, adds) run on a vector unit ``C`` lanes
wide (the TPU's activation pipeline): ``ceil(ops / C)`` cycles plus their DRAM traffic.

**Energy** uses :mod:`penjing.hw.energy`'s table: a MAC per nonzero weight (zero operands
are gated: the systolic array still spends the *cycle*, which is why unstructured pruning
saves energy but no time here), buffer accesses at the SRAM cost and DRAM bytes at the DRAM
cost.

This is a closed-form model per layer, not a cycle trace: a 50-layer ResNet simulates in
milliseconds (after one traced forward pass).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from penjing.hw.energy import EnergyTable, format_pj, load_table
from penjing.hw.presets import HardwareConfig, check_dataflow, load_hw
from penjing.hw.trace import Layer, trace


@dataclass
class GemmCost:
    """Array cost of ``count`` GEMMs ``M x K x N`` under one dataflow (no memory system)."""

    Sr: int
    Sc: int
    T: int
    fold_rows: int
    fold_cols: int
    cycles: int
    macs: int
    utilisation: float
    mapping_efficiency: float
    a_reads: int
    b_reads: int
    o_writes: int
    psum_reads: int


def mapping(M: int, K: int, N: int, dataflow: str) -> tuple[int, int, int]:
    """``(S_R, S_C, T)`` of a GEMM under ``dataflow`` (see the module docstring)."""
    check_dataflow(dataflow)
    return {"os": (M, N, K), "ws": (K, N, M), "is": (K, M, N)}[dataflow]


def gemm_cost(M: int, K: int, N: int, rows: int, cols: int, dataflow: str, count: int = 1,
              counting: str = "scalesim") -> GemmCost:
    """Closed-form cycles, utilisation and buffer reads of ``count`` GEMMs on an array.

    ``counting="scalesim"`` (default): SCALE-Sim 3.0.0's CALC-mode cycles exactly (every fold
    padded to the full array, the 0-based index of the last cycle; see
    :mod:`penjing.hw.memory`). ``counting="penjing"``: charge only the rows and columns a
    partial fold uses (the formula below), what an array that clock-gates idle PEs and starts
    the next fold as soon as the used ones drain would take."""
    check_counting(counting)
    if counting == "scalesim":
        return _scalesim_gemm_cost(M, K, N, rows, cols, dataflow, count)
    if rows < 1 or cols < 1:
        raise ValueError(f"the array needs at least 1x1 PEs, got {rows}x{cols}")
    if min(M, K, N) < 1 or count < 1:
        raise ValueError(f"GEMM dimensions must be >= 1, got M={M}, K={K}, N={N}, count={count}")
    Sr, Sc, T = mapping(M, K, N, dataflow)
    Fr, Fc = math.ceil(Sr / rows), math.ceil(Sc / cols)
    cycles = count * (2 * Fc * Sr + Fr * Sc + Fr * Fc * (T - 2))
    macs = count * M * K * N
    if dataflow == "os":
        a, b, o, p = M * K * Fc, K * N * Fr, M * N, 0
    elif dataflow == "ws":
        a, b, o, p = M * K * Fc, K * N, M * N * Fr, M * N * (Fr - 1)
    else:
        a, b, o, p = M * K, K * N * Fc, M * N * Fr, M * N * (Fr - 1)
    return GemmCost(Sr=Sr, Sc=Sc, T=T, fold_rows=Fr, fold_cols=Fc, cycles=cycles, macs=macs,
                    utilisation=macs / (rows * cols * cycles),
                    mapping_efficiency=Sr * Sc / (Fr * rows * Fc * cols),
                    a_reads=count * a, b_reads=count * b, o_writes=count * o, psum_reads=count * p)


COUNTINGS = ("scalesim", "penjing")


def check_counting(counting: str) -> str:
    if counting not in COUNTINGS:
        raise ValueError(f"unknown counting {counting!r}; choose scalesim (SCALE-Sim 3.0.0 "
                         "compatible, the default) or penjing (partial folds charge only the PEs they use)")
    return counting


def _scalesim_gemm_cost(M, K, N, rows, cols, dataflow, count) -> GemmCost:
    from penjing.hw.memory import array_counts

    check_dataflow(dataflow)
    if count < 1:
        raise ValueError(f"GEMM dimensions must be >= 1, got M={M}, K={K}, N={N}, count={count}")
    c = array_counts(M, K, N, rows, cols, dataflow)
    cycles = count * c.demand_cycles - 1
    macs = count * M * K * N
    return GemmCost(Sr=c.Sr, Sc=c.Sc, T=c.T, fold_rows=c.fold_rows, fold_cols=c.fold_cols,
                    cycles=cycles, macs=macs, utilisation=macs / (rows * cols * cycles),
                    mapping_efficiency=c.mapping_efficiency, a_reads=count * c.ifmap_reads,
                    b_reads=count * c.filter_reads, o_writes=count * c.ofmap_writes,
                    psum_reads=count * (c.ofmap_elements - M * N))


@dataclass
class LayerSim:
    """Simulated cost of one layer (for the whole batch)."""

    name: str
    op: str
    kind: str
    gemm: str
    macs: float
    compute_cycles: int
    dram_cycles: float
    utilisation: float
    sram_read_bytes: float
    sram_write_bytes: float
    dram_read_bytes: float
    dram_write_bytes: float
    compute_pj: float
    sram_pj: float
    dram_pj: float
    reg_pj: float = 0.0
    #: per-operand counts (SCALE-Sim counting): elements for SRAM, bytes for DRAM
    stall: float | None = None
    mapping_efficiency: float = 0.0
    fold_utilisation: float = 0.0
    sram_ifmap_reads: float = 0.0
    sram_filter_reads: float = 0.0
    sram_ofmap_writes: float = 0.0
    dram_ifmap_read_bytes: float = 0.0
    dram_filter_read_bytes: float = 0.0
    dram_ofmap_write_bytes: float = 0.0

    @property
    def cycles(self) -> float:
        if self.stall is not None:
            return self.compute_cycles + self.stall
        return max(self.compute_cycles, self.dram_cycles)

    @property
    def stall_cycles(self) -> float:
        if self.stall is not None:
            return self.stall
        return max(0.0, self.dram_cycles - self.compute_cycles)

    @property
    def dram_bytes(self) -> float:
        return self.dram_read_bytes + self.dram_write_bytes

    @property
    def energy_pj(self) -> float:
        return self.compute_pj + self.sram_pj + self.dram_pj + self.reg_pj

    @property
    def overall_utilisation(self) -> float:
        """Utilisation over the layer's whole time, stalls included."""
        return self.utilisation * self.compute_cycles / self.cycles if self.cycles else 0.0

    @property
    def bound(self) -> str:
        return "memory" if self.stall_cycles > 0 or self.dram_cycles > self.compute_cycles else "compute"

    @property
    def intensity(self) -> float:
        """Operations (2 per MAC) per DRAM byte."""
        return 2 * self.macs / self.dram_bytes if self.dram_bytes else math.inf


@dataclass
class SimReport:
    """Per-layer simulation of one batch on ``hw`` and the totals."""

    hw: HardwareConfig
    dataflow: str
    batch: int
    table: str
    rows: list[LayerSim] = field(default_factory=list)

    @property
    def cycles(self) -> float:
        return sum(r.cycles for r in self.rows)

    @property
    def compute_cycles(self) -> int:
        return sum(r.compute_cycles for r in self.rows)

    @property
    def stall_cycles(self) -> float:
        return sum(r.stall_cycles for r in self.rows)

    @property
    def macs(self) -> float:
        return sum(r.macs for r in self.rows)

    @property
    def dram_bytes(self) -> float:
        return sum(r.dram_bytes for r in self.rows)

    @property
    def sram_bytes(self) -> float:
        return sum(r.sram_read_bytes + r.sram_write_bytes for r in self.rows)

    @property
    def energy_pj(self) -> float:
        return sum(r.energy_pj for r in self.rows)

    @property
    def time_s(self) -> float:
        return self.cycles / (self.hw.clock_mhz * 1e6)

    @property
    def utilisation(self) -> float:
        """MACs done / MACs the array could have done in the total time."""
        return self.macs / (self.hw.rows * self.hw.cols * self.cycles) if self.cycles else 0.0

    @property
    def throughput(self) -> float:
        """Inferences per second."""
        return self.batch / self.time_s if self.time_s else math.inf

    @property
    def per_operand(self) -> bool:
        """Rows carry SCALE-Sim's per-operand counts (``counting="scalesim"``)."""
        return any(r.stall is not None for r in self.rows)

    def header(self) -> list[str]:
        head = ["layer", "op", "GEMM MxKxN", "cycles", "stall", "util %"]
        if self.per_operand:
            head += ["map eff %", "SRAM I/F/O (elements)", "DRAM I/F/O (bytes)"]
        return head + ["DRAM bytes", "energy", "bound"]

    def table_rows(self) -> list[list[str]]:
        rows = []
        for r in self.rows:
            gemm = r.kind == "gemm"
            row = [r.name, r.op, r.gemm, f"{r.cycles:,.0f}", f"{r.stall_cycles:,.0f}",
                   f"{100 * r.overall_utilisation:.1f}" if gemm else "-"]
            if self.per_operand:
                row += [f"{100 * r.mapping_efficiency:.1f}" if gemm else "-",
                        f"{r.sram_ifmap_reads:,.0f}/{r.sram_filter_reads:,.0f}/{r.sram_ofmap_writes:,.0f}" if gemm else "-",
                        f"{r.dram_ifmap_read_bytes:,.0f}/{r.dram_filter_read_bytes:,.0f}/{r.dram_ofmap_write_bytes:,.0f}"
                        if gemm else "-"]
            rows.append(row + [f"{r.dram_bytes:,.0f}", format_pj(r.energy_pj), r.bound])
        return rows

    def totals(self) -> str:
        return (f"{self.hw.name} ({self.hw.rows}x{self.hw.cols}, {self.dataflow}, "
                f"{self.hw.clock_mhz:g} MHz, {self.hw.dram_gbps:g} GB/s), batch {self.batch}: "
                f"{self.cycles:,.0f} cycles ({self.stall_cycles:,.0f} stall) = "
                f"{self.time_s * 1e6:,.2f} us, {self.throughput:,.0f} inferences/s, "
                f"utilisation {100 * self.utilisation:.2f}%, DRAM {self.dram_bytes:,.0f} B, "
                f"energy {format_pj(self.energy_pj)} ({format_pj(self.energy_pj / self.batch)}/inference)")

    def to_markdown(self) -> str:
        head = self.header()
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i < 3 else "---:" for i in range(len(head))) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.table_rows()]
        return "\n".join(lines + ["", self.totals()])

    def __str__(self) -> str:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"simulate on {self.hw.name}", title_justify="left")
        for i, col in enumerate(self.header()):
            table.add_column(col, justify="left" if i < 3 else "right")
        for row in self.table_rows():
            table.add_row(*row)
        console = Console(width=210, record=True, file=_Null())
        console.print(table)
        return console.export_text().rstrip() + "\n" + self.totals()

    def roofline(self, path: str | Path, title: str | None = None) -> Path:
        """Write the roofline plot of this simulation to ``path`` (PNG)."""
        from penjing.hw.roofline import plot_roofline

        return plot_roofline(self, path, title=title)


class _Null:
    def write(self, _):
        return 0

    def flush(self):
        pass


def _weight_dram_bytes(layer: Layer, bits: int) -> float:
    """Stored bytes of ``B`` on this array: the layer's format, never wider than ``bits``."""
    if not layer.has_weight:
        return layer.w_elems * bits / 8
    wb = min(layer.weight_bits, bits)
    dense = layer.w_elems * wb / 8
    sparse = layer.w_nonzeros * (wb + layer.index_bits) / 8
    return min(dense, sparse)


def simulate_layers(layers: list[Layer], hw: HardwareConfig, *, dataflow: str | None = None,
                    table: EnergyTable | None = None, batch: int = 1, counting: str = "scalesim",
                    geometry: dict | None = None) -> SimReport:
    """Simulate traced ``layers`` on ``hw``.

    ``counting="scalesim"`` (default): SCALE-Sim 3.0.0's cycles and memory model
    (:mod:`penjing.hw.scalesim_layers`), fed by each layer's sparsity and bit widths;
    ``geometry`` (from :func:`penjing.hw.geometry.geometry`) adds conv window overlap and zero
    patterns. ``counting="penjing"``: the model of this module's docstring."""
    dataflow = check_dataflow(dataflow or hw.dataflow)
    check_counting(counting)
    table = table or load_table()
    if counting == "scalesim":
        from penjing.hw.scalesim_layers import simulate_layers_scalesim

        return simulate_layers_scalesim(layers, hw, dataflow=dataflow, table=table, batch=batch,
                                        geometry=geometry or {})
    report = SimReport(hw=hw, dataflow=dataflow, batch=batch, table=table.name)
    abytes, accbytes = hw.bits / 8, hw.acc_bits / 8
    in_buf, w_buf, out_buf = hw.ifmap_kib * 1024, hw.weight_kib * 1024, hw.ofmap_kib * 1024
    mac_pj = table.mac(hw.bits, hw.arith == "int")
    add_pj = table.op("int_add" if hw.arith == "int" else "float_add", hw.acc_bits)
    last = len(layers) - 1
    for i, layer in enumerate(layers):
        in_bytes, out_bytes = layer.in_elems * abytes, layer.out_elems * abytes
        # activations live in the input buffer between layers when they fit
        in_dram = in_bytes if (i == 0 or in_bytes > in_buf) else 0.0
        out_dram = out_bytes if (i == last or out_bytes > in_buf) else 0.0
        if layer.kind != "gemm":
            cycles = math.ceil(layer.ops / hw.cols)
            dram_r, dram_w = in_dram, out_dram
            sram_r, sram_w = in_bytes, out_bytes
            compute_pj = layer.ops * add_pj
            row = LayerSim(name=layer.name, op=layer.op, kind="memory", gemm="-", macs=0.0,
                           compute_cycles=cycles, dram_cycles=(dram_r + dram_w) / hw.bytes_per_cycle,
                           utilisation=0.0, sram_read_bytes=sram_r, sram_write_bytes=sram_w + dram_r,
                           dram_read_bytes=dram_r, dram_write_bytes=dram_w, compute_pj=compute_pj,
                           sram_pj=table.memory("sram", sram_r + sram_w + dram_r),
                           dram_pj=table.memory("dram", dram_r + dram_w))
            report.rows.append(row)
            continue
        M, K, N, g = layer.M, layer.K, layer.N, layer.count
        cost = gemm_cost(M, K, N, hw.rows, hw.cols, dataflow, g, counting="penjing")
        Fr, Fc = cost.fold_rows, cost.fold_cols
        a_unique = in_dram  # the first operand is the layer input
        b_unique = _weight_dram_bytes(layer, hw.bits)
        a_g, b_g = in_bytes / g, b_unique / g
        if dataflow == "os":
            a_passes = 1 if a_g <= in_buf else Fc
            b_passes = 1 if K * min(N, hw.cols) * abytes <= w_buf else Fr
            spill = 0.0
        elif dataflow == "ws":
            a_passes, b_passes = (1 if a_g <= in_buf else Fc), 1
        else:
            a_passes, b_passes = 1, (1 if b_g <= w_buf else Fc)
        # an input that does not fit is re-streamed from DRAM once per pass
        a_dram = a_unique * (a_passes if a_unique else 0)
        if not layer.has_weight:  # activation x activation: B was produced on chip if it fits
            b_unique = b_unique if b_unique > in_buf else 0.0
        b_dram = b_unique * b_passes
        spill = 0.0
        if dataflow != "os":
            # partial sums of a column fold (ws: M x C, is: C x N) accumulate over the F_R row
            # folds; when they do not fit in the output buffer either they spill to DRAM, or
            # the streamed dimension is cut into chunks that fit and the stationary operand is
            # re-read once per extra chunk: the cheaper of the two
            tile = (M * min(N, hw.cols) if dataflow == "ws" else min(M, hw.cols) * N) * accbytes
            if Fr > 1 and tile > out_buf:
                spill_bytes = 2 * (Fr - 1) * M * N * accbytes * g
                stationary = b_unique if dataflow == "ws" else a_unique
                chunks = math.ceil(tile / out_buf) if out_buf > 0 else math.inf
                rechunk = stationary * (chunks - 1)
                if rechunk < spill_bytes:
                    if dataflow == "ws":
                        b_dram += rechunk
                    else:
                        a_dram += rechunk
                else:
                    spill = spill_bytes
        dram_r = a_dram + b_dram + spill / 2
        dram_w = out_dram + spill / 2
        sram_r = (cost.a_reads + cost.b_reads) * abytes + cost.psum_reads * accbytes
        sram_w = cost.o_writes * accbytes + a_dram + b_dram
        nz = layer.nonzero_macs
        report.rows.append(LayerSim(
            name=layer.name, op=layer.op, kind="gemm",
            gemm=f"{M}x{K}x{N}" + (f" (x{g})" if g > 1 else ""), macs=float(cost.macs),
            compute_cycles=cost.cycles, dram_cycles=(dram_r + dram_w) / hw.bytes_per_cycle,
            utilisation=cost.utilisation, sram_read_bytes=sram_r, sram_write_bytes=sram_w,
            dram_read_bytes=dram_r, dram_write_bytes=dram_w, compute_pj=nz * mac_pj,
            sram_pj=table.memory("sram", sram_r + sram_w), dram_pj=table.memory("dram", dram_r + dram_w),
            reg_pj=3 * nz * table.reg_32b))
    return report


def simulate(model: nn.Module, example: torch.Tensor | tuple, hw: str | Path | dict | HardwareConfig = "tpu-v1",
             *, dataflow: str | None = None, table: str | Path | dict | EnergyTable | None = None,
             counting: str = "scalesim") -> SimReport:
    """Simulate one forward pass of ``model`` on ``example`` (a batch) on a systolic array.

    ``hw``: ``"tpu-v1"``, ``"edge"``, a YAML file or a :class:`HardwareConfig`.
    ``dataflow``: ``"os"``, ``"ws"`` or ``"is"`` (default: the hardware's).
    ``table``: energy table (default 45 nm). ``counting``: ``"scalesim"`` (default, SCALE-Sim
    3.0.0's cycles and memory model) or ``"penjing"`` (see :func:`gemm_cost`). Returns a :class:`SimReport` (print it, or call
    ``.roofline("roofline.png")``).
    """
    config = load_hw(hw)
    dataflow = check_dataflow(dataflow or config.dataflow)
    first = example[0] if isinstance(example, tuple) else example
    layers = trace(model, example)
    batch = int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() > 0 else 1
    geom = None
    if check_counting(counting) == "scalesim":
        from penjing.hw.geometry import geometry

        geom = geometry(model, example)
    return simulate_layers(layers, config, dataflow=dataflow, table=load_table(table), batch=batch,
                           counting=counting, geometry=geom)
