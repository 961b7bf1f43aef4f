"""SCALE-Sim's file formats: ``.cfg`` architecture files, topology CSVs, report CSVs.

* :func:`read_config` reads a SCALE-Sim 3.0.0 ``.cfg`` (an INI file: ``[general]``,
  ``[architecture_presets]``, ``[run_presets]``, ``[layout]``) into a :class:`ScaleSimConfig`.
* :func:`read_topology` reads a topology CSV: the convolution form (``Layer name, IFMAP Height,
  IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides[, N:M]``) or, with
  ``gemm=True``, the GEMM form (``Layer, M, N, K[, N:M]``). SCALE-Sim drops the last field of
  every row (its files end each row with a comma); here a trailing empty field is dropped and
  a row without one is read whole, so both spellings give the same layers.
* :func:`write_reports` writes ``COMPUTE_REPORT.csv``, ``BANDWIDTH_REPORT.csv`` and
  ``DETAILED_ACCESS_REPORT.csv`` with SCALE-Sim's headers and column order.

A GEMM row ``M, N, K`` is, as in SCALE-Sim, the convolution of an ``M x K`` one-channel ifmap
by ``N`` filters of ``1 x K``: ``M`` output pixels, window ``K``.
"""

from __future__ import annotations

import configparser
import math
from dataclasses import dataclass, field
from pathlib import Path

DATAFLOWS = ("os", "ws", "is")


@dataclass(frozen=True)
class ConvShape:
    """One topology row: a convolution (no padding: pad the ifmap sizes yourself)."""

    name: str
    ifmap_h: int
    ifmap_w: int
    filter_h: int
    filter_w: int
    channels: int
    num_filters: int
    stride_h: int = 1
    stride_w: int = 1
    sparsity_n: int = 1
    sparsity_m: int = 1

    def __post_init__(self):
        for key in ("ifmap_h", "ifmap_w", "filter_h", "filter_w", "channels", "num_filters",
                    "stride_h", "stride_w", "sparsity_n", "sparsity_m"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"layer {self.name!r}: {key} must be a positive integer, got {value!r}")
        if self.filter_h > self.ifmap_h or self.filter_w > self.ifmap_w:
            raise ValueError(f"layer {self.name!r}: filter {self.filter_h}x{self.filter_w} is larger "
                             f"than the ifmap {self.ifmap_h}x{self.ifmap_w}")
        if self.sparsity_n > self.sparsity_m:
            raise ValueError(f"layer {self.name!r}: sparsity N:M needs N <= M, got "
                             f"{self.sparsity_n}:{self.sparsity_m}")

    @classmethod
    def gemm(cls, name: str, M: int, N: int, K: int, sparsity: tuple[int, int] = (1, 1)) -> ConvShape:
        """SCALE-Sim's GEMM layer: an ``M x K`` one-channel ifmap, ``N`` filters of ``1 x K``."""
        return cls(name, M, K, 1, K, 1, N, 1, 1, *sparsity)

    @property
    def ofmap_h(self) -> int:
        # SCALE-Sim's size, ceil((H - R + s) / s): one more than torch's floor when the
        # stride does not divide H - R (the extra row reads past the ifmap: no request)
        return math.ceil((self.ifmap_h - self.filter_h + self.stride_h) / self.stride_h)

    @property
    def ofmap_w(self) -> int:
        return math.ceil((self.ifmap_w - self.filter_w + self.stride_w) / self.stride_w)

    @property
    def M(self) -> int:
        """Output pixels (GEMM rows)."""
        return self.ofmap_h * self.ofmap_w

    @property
    def K(self) -> int:
        """Window size (GEMM inner dimension)."""
        return self.filter_h * self.filter_w * self.channels

    @property
    def N(self) -> int:
        return self.num_filters

    @property
    def macs(self) -> int:
        return self.M * self.K * self.N


@dataclass
class ScaleSimConfig:
    """The architecture of a SCALE-Sim ``.cfg`` (sizes in KiB, bandwidths in words/cycle)."""

    rows: int = 32
    cols: int = 32
    ifmap_kb: int = 64
    filter_kb: int = 64
    ofmap_kb: int = 64
    dataflow: str = "ws"
    #: ``CALC``: SCALE-Sim estimates the bandwidth a stall-free run needs; ``USER``: the
    #: given bandwidths limit the DRAM interfaces and the array stalls
    bandwidth_mode: str = "CALC"
    #: ``Bandwidth`` of ``[architecture_presets]``: SCALE-Sim 3.0.0 uses its first entry for
    #: the ofmap (write) interface in USER mode
    bandwidths: list[int] = field(default_factory=lambda: [10])
    #: ``IfmapSRAMBankBandwidth`` / ``FilterSRAMBankBandwidth`` of ``[layout]``: in USER mode
    #: SCALE-Sim 3.0.0 takes the ifmap and filter DRAM bandwidths from these
    ifmap_bw: int = 10
    filter_bw: int = 10
    run_name: str = "penjing_run"
    ifmap_offset: int = 0
    filter_offset: int = 10_000_000
    ofmap_offset: int = 20_000_000
    read_request_buffer: int = 32
    write_request_buffer: int = 32

    def __post_init__(self):
        for key in ("rows", "cols", "ifmap_kb", "filter_kb", "ofmap_kb", "ifmap_bw", "filter_bw"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SCALE-Sim config: {key} must be a positive integer, got {value!r}")
        if self.dataflow not in DATAFLOWS:
            raise ValueError(f"SCALE-Sim config: unknown dataflow {self.dataflow!r}; choose os, ws or is")
        if self.bandwidth_mode not in ("CALC", "USER"):
            raise ValueError(f"SCALE-Sim config: InterfaceBandwidth must be CALC or USER, "
                             f"got {self.bandwidth_mode!r}")
        if not self.bandwidths or any(b < 1 for b in self.bandwidths):
            raise ValueError(f"SCALE-Sim config: Bandwidth needs positive words/cycle, got {self.bandwidths!r}")

    @property
    def ofmap_bw(self) -> int:
        """Write-interface bandwidth: the first ``Bandwidth`` (USER) or the array width (CALC)."""
        return self.bandwidths[0] if self.bandwidth_mode == "USER" else self.cols

    def to_cfg(self) -> str:
        """The ``.cfg`` text SCALE-Sim 3.0.0 reads for this configuration."""
        bw = ",".join(str(b) for b in self.bandwidths)
        return f"""[general]
run_name = {self.run_name}

[architecture_presets]
ArrayHeight:    {self.rows}
ArrayWidth:     {self.cols}
IfmapSramSzkB:    {self.ifmap_kb}
FilterSramSzkB:   {self.filter_kb}
OfmapSramSzkB:    {self.ofmap_kb}
IfmapOffset:    {self.ifmap_offset}
FilterOffset:   {self.filter_offset}
OfmapOffset:    {self.ofmap_offset}
Bandwidth : {bw}
Dataflow : {self.dataflow}
MemoryBanks:   1
ReadRequestBuffer: {self.read_request_buffer}
WriteRequestBuffer: {self.write_request_buffer}

[layout]
IfmapCustomLayout: False
IfmapSRAMBankBandwidth: {self.ifmap_bw}
IfmapSRAMBankNum: 1
IfmapSRAMBankPort: 2
FilterCustomLayout: False
FilterSRAMBankBandwidth: {self.filter_bw}
FilterSRAMBankNum: 1
FilterSRAMBankPort: 2

[sparsity]
SparsitySupport : false
SparseRep : ellpack_block
OptimizedMapping : false
BlockSize : 8
RandomNumberGeneratorSeed : 40

[run_presets]
InterfaceBandwidth: {self.bandwidth_mode}
UseRamulatorTrace: False
"""


def _int(parser: configparser.ConfigParser, section: str, key: str, source: str, default=None) -> int:
    if not parser.has_option(section, key):
        if default is not None:
            return default
        raise ValueError(f"SCALE-Sim config {source}: [{section}] has no {key}")
    raw = parser.get(section, key).strip()
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"SCALE-Sim config {source}: [{section}] {key} must be an integer, got {raw!r}") from None


def read_config(path: str | Path) -> ScaleSimConfig:
    """Parse a SCALE-Sim ``.cfg`` file (keys are case-insensitive, as in SCALE-Sim)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"SCALE-Sim config {path} not found")
    parser = configparser.ConfigParser()
    try:
        parser.read_string(path.read_text(), source=str(path))
    except configparser.Error as err:
        raise ValueError(f"SCALE-Sim config {path}: not an INI file ({err.__class__.__name__})") from None
    arch = "architecture_presets"
    if not parser.has_section(arch):
        raise ValueError(f"SCALE-Sim config {path}: no [architecture_presets] section")
    mode = parser.get("run_presets", "InterfaceBandwidth", fallback="CALC").strip()
    bw_raw = parser.get(arch, "Bandwidth", fallback="10")
    try:
        bandwidths = [int(b.strip()) for b in bw_raw.split(",") if b.strip()]
    except ValueError:
        raise ValueError(f"SCALE-Sim config {path}: Bandwidth must be integers, got {bw_raw.strip()!r}") from None
    return ScaleSimConfig(
        rows=_int(parser, arch, "ArrayHeight", str(path)), cols=_int(parser, arch, "ArrayWidth", str(path)),
        ifmap_kb=_int(parser, arch, "IfmapSramSzkB", str(path)),
        filter_kb=_int(parser, arch, "FilterSramSzkB", str(path)),
        ofmap_kb=_int(parser, arch, "OfmapSramSzkB", str(path)),
        dataflow=parser.get(arch, "Dataflow", fallback="ws").strip(), bandwidth_mode=mode,
        bandwidths=bandwidths or [10],
        ifmap_bw=_int(parser, "layout", "IfmapSRAMBankBandwidth", str(path), 10),
        filter_bw=_int(parser, "layout", "FilterSRAMBankBandwidth", str(path), 10),
        run_name=parser.get("general", "run_name", fallback="penjing_run").strip(),
        ifmap_offset=_int(parser, arch, "IfmapOffset", str(path), 0),
        filter_offset=_int(parser, arch, "FilterOffset", str(path), 10_000_000),
        ofmap_offset=_int(parser, arch, "OfmapOffset", str(path), 20_000_000),
        read_request_buffer=_int(parser, arch, "ReadRequestBuffer", str(path), 32),
        write_request_buffer=_int(parser, arch, "WriteRequestBuffer", str(path), 32))


def _sparsity(field_text: str, where: str) -> tuple[int, int]:
    parts = field_text.strip().split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"{where}: sparsity must be N:M, got {field_text.strip()!r}")
    return int(parts[0]), int(parts[1])


def read_topology(path: str | Path, gemm: bool = False) -> list[ConvShape]:
    """Layers of a SCALE-Sim topology CSV (first row is the header)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"topology {path} not found")
    layers = []
    for lineno, line in enumerate(path.read_text().splitlines()[1:], start=2):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        if fields and fields[-1] == "":
            fields = fields[:-1]
        where = f"topology {path} line {lineno}"
        need = 4 if gemm else 8
        if len(fields) < need:
            raise ValueError(f"{where}: expected {need} fields "
                             f"({'name, M, N, K' if gemm else 'name, H, W, R, S, C, filters, stride'}), "
                             f"got {len(fields)}")
        sparsity = _sparsity(fields[need], where) if len(fields) > need else (1, 1)
        try:
            numbers = [int(f) for f in fields[1:need]]
        except ValueError:
            raise ValueError(f"{where}: sizes must be integers, got {fields[1:need]}") from None
        if gemm:
            M, N, K = numbers
            layers.append(ConvShape.gemm(fields[0], M, N, K, sparsity))
        else:
            H, W, R, S, C, F, stride = numbers
            layers.append(ConvShape(fields[0], H, W, R, S, C, F, stride, stride, *sparsity))
    if not layers:
        raise ValueError(f"topology {path}: no layers")
    return layers


def write_topology(layers: list[ConvShape], path: str | Path) -> Path:
    """Write ``layers`` as a SCALE-Sim convolution topology CSV (GEMMs in their conv form)."""
    path = Path(path)
    rows = ["Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides,"]
    for x in layers:
        if x.stride_h != x.stride_w:
            raise ValueError(f"layer {x.name!r}: SCALE-Sim topologies have one stride, got "
                             f"{x.stride_h}x{x.stride_w}")
        rows.append(f"{x.name}, {x.ifmap_h}, {x.ifmap_w}, {x.filter_h}, {x.filter_w}, {x.channels}, "
                    f"{x.num_filters}, {x.stride_h}, {x.sparsity_n}:{x.sparsity_m},")
    path.write_text("\n".join(rows) + "\n")
    return path


COMPUTE_HEADER = ("LayerID, Total Cycles (incl. prefetch), Total Cycles, Stall Cycles, Overall Util %, "
                  "Mapping Efficiency %, Compute Util %,")
BANDWIDTH_HEADER = ("LayerID, Avg IFMAP SRAM BW, Avg FILTER SRAM BW, Avg OFMAP SRAM BW, "
                    "Avg IFMAP DRAM BW, Avg FILTER DRAM BW, Avg OFMAP DRAM BW,")
DETAILED_HEADER = ("LayerID, SRAM IFMAP Start Cycle, SRAM IFMAP Stop Cycle, SRAM IFMAP Reads, "
                   "SRAM Filter Start Cycle, SRAM Filter Stop Cycle, SRAM Filter Reads, "
                   "SRAM OFMAP Start Cycle, SRAM OFMAP Stop Cycle, SRAM OFMAP Writes, "
                   "DRAM IFMAP Start Cycle, DRAM IFMAP Stop Cycle, DRAM IFMAP Reads, "
                   "DRAM Filter Start Cycle, DRAM Filter Stop Cycle, DRAM Filter Reads, "
                   "DRAM OFMAP Start Cycle, DRAM OFMAP Stop Cycle, DRAM OFMAP Writes,")


def _row(lid: int, values) -> str:
    return f"{lid}, " + ", ".join(str(v) for v in values) + ","


def write_reports(results: list, folder: str | Path) -> list[Path]:
    """Write SCALE-Sim's three report CSVs for per-layer ``results``
    (:class:`penjing.hw.memory.LayerResult`) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    compute = [COMPUTE_HEADER]
    bandwidth = [BANDWIDTH_HEADER]
    detailed = [DETAILED_HEADER]
    for lid, r in enumerate(results):
        compute.append(_row(lid, r.compute_report()))
        bandwidth.append(_row(lid, r.bandwidth_report()))
        detailed.append(_row(lid, r.detailed_report()))
    paths = []
    for name, lines in (("COMPUTE_REPORT", compute), ("BANDWIDTH_REPORT", bandwidth),
                        ("DETAILED_ACCESS_REPORT", detailed)):
        path = folder / f"{name}.csv"
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    return paths


def read_report(path: str | Path) -> list[list[float]]:
    """Rows of a SCALE-Sim report CSV as numbers (header skipped; the LayerID column kept)."""
    rows = []
    for line in Path(path).read_text().splitlines()[1:]:
        fields = [f.strip() for f in line.split(",") if f.strip()]
        if fields:
            rows.append([float(f) for f in fields])
    return rows
