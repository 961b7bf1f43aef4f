"""Accelerator configurations: the TPU v1 and a small edge array, or your own YAML file.

A YAML hardware file has the fields of :class:`HardwareConfig`::

    name: my-npu
    rows: 64            # PE rows of the systolic array
    cols: 64            # PE columns
    clock_mhz: 800
    dram_gbps: 25.6     # DRAM bandwidth, GB/s (1e9 bytes/s)
    ifmap_kib: 512      # input/activation buffer
    weight_kib: 256     # weight buffer
    ofmap_kib: 128      # output/accumulator buffer
    bits: 8             # operand width of the array
    acc_bits: 32        # accumulator width
    arith: int          # int or float
    dataflow: ws        # os, ws or is
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import yaml

DATAFLOWS = ("os", "ws", "is")


@dataclass(frozen=True)
class HardwareConfig:
    """A systolic-array accelerator. Buffer sizes in KiB, bandwidth in GB/s, clock in MHz."""

    name: str
    rows: int
    cols: int
    clock_mhz: float
    dram_gbps: float
    ifmap_kib: float
    weight_kib: float
    ofmap_kib: float
    bits: int = 8
    acc_bits: int = 32
    arith: str = "int"
    dataflow: str = "ws"

    def __post_init__(self):
        for key in ("rows", "cols"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"hardware {self.name!r}: {key} must be a positive integer "
                                 f"(PEs of the array), got {value!r}")
        for key in ("clock_mhz", "dram_gbps"):
            if not getattr(self, key) > 0:
                raise ValueError(f"hardware {self.name!r}: {key} must be > 0, got {getattr(self, key)!r}")
        for key in ("ifmap_kib", "weight_kib", "ofmap_kib"):
            if not getattr(self, key) >= 0:
                raise ValueError(f"hardware {self.name!r}: buffer {key} must be >= 0 KiB, "
                                 f"got {getattr(self, key)!r}")
        if self.bits < 1 or self.acc_bits < self.bits:
            raise ValueError(f"hardware {self.name!r}: need 1 <= bits <= acc_bits, got "
                             f"bits={self.bits}, acc_bits={self.acc_bits}")
        if self.arith not in ("int", "float"):
            raise ValueError(f"hardware {self.name!r}: arith must be 'int' or 'float', got {self.arith!r}")
        check_dataflow(self.dataflow)

    @property
    def peak_macs_per_s(self) -> float:
        return self.rows * self.cols * self.clock_mhz * 1e6

    @property
    def peak_ops_per_s(self) -> float:
        """Peak operations per second (a MAC is two operations)."""
        return 2 * self.peak_macs_per_s

    @property
    def bytes_per_cycle(self) -> float:
        return self.dram_gbps * 1e9 / (self.clock_mhz * 1e6)

    def with_(self, **changes) -> HardwareConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)


def check_dataflow(dataflow: str) -> str:
    if dataflow not in DATAFLOWS:
        raise ValueError(f"unknown dataflow {dataflow!r}; choose one of os (output stationary), "
                         "ws (weight stationary), is (input stationary)")
    return dataflow


#: Google TPU v1 (Jouppi et al., ISCA 2017): a 256x256 array of 8-bit MACs at 700 MHz,
#: 24 MiB unified buffer for activations, 4 MiB of 32-bit accumulators, weights streamed
#: from 8 GiB DDR3 at 34 GB/s through a weight FIFO four 64 KiB tiles deep; weight stationary.
TPU_V1 = HardwareConfig(name="tpu-v1", rows=256, cols=256, clock_mhz=700, dram_gbps=34,
                        ifmap_kib=24 * 1024, weight_kib=4 * 64, ofmap_kib=4 * 1024,
                        bits=8, acc_bits=32, arith="int", dataflow="ws")

#: A small edge NPU-like array (illustrative, not a product): 32x32 int8 PEs at 500 MHz,
#: 128 KiB activations, 256 KiB weights, 64 KiB accumulators, 8 GB/s LPDDR.
EDGE = HardwareConfig(name="edge", rows=32, cols=32, clock_mhz=500, dram_gbps=8,
                      ifmap_kib=128, weight_kib=256, ofmap_kib=64, bits=8, acc_bits=32,
                      arith="int", dataflow="ws")

PRESETS = {"tpu-v1": TPU_V1, "edge": EDGE}


def load_hw(hw: str | Path | dict | HardwareConfig) -> HardwareConfig:
    """A preset name (``tpu-v1``, ``edge``), a YAML file, a dict or a config."""
    if isinstance(hw, HardwareConfig):
        return hw
    if isinstance(hw, dict):
        return _from_dict(hw, "dict")
    if str(hw) in PRESETS:
        return PRESETS[str(hw)]
    path = Path(hw)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise FileNotFoundError(f"hardware file {path} not found")
        return _from_dict(yaml.safe_load(path.read_text()), str(path))
    raise ValueError(f"unknown hardware {hw!r}; use one of {sorted(PRESETS)} or a YAML file")


def _from_dict(data: dict, source: str) -> HardwareConfig:
    if not isinstance(data, dict):
        raise ValueError(f"hardware {source}: expected a mapping of fields")
    known = {f.name for f in fields(HardwareConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"hardware {source}: unknown field(s) {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(known))}")
    missing = [m for m in ("rows", "cols", "clock_mhz", "dram_gbps", "ifmap_kib", "weight_kib",
                           "ofmap_kib") if m not in data]
    if missing:
        raise ValueError(f"hardware {source}: missing field(s) {', '.join(missing)}")
    return HardwareConfig(**{"name": Path(source).stem, **data})
