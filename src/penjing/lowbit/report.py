"""Storage figures of a binary/ternary model, from its real packed bytes."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from penjing.lowbit.storage import pack, packed_bytes


@dataclass
class LayerStorage:
    name: str
    kind: str  # "binary" or "ternary"
    params: int
    zeros: float | None  # fraction of zero weights (ternary only)
    packed_bytes: int  # codes + scales
    fp32_bytes: int

    @property
    def ratio(self) -> float:
        return self.fp32_bytes / self.packed_bytes if self.packed_bytes else float("inf")


@dataclass
class ModelStorage:
    layers: list[LayerStorage]
    fp32_bytes: int  # every tensor of the model as float32
    packed_bytes: int  # low-bit codes + scales + every other tensor as is

    @property
    def lowbit_ratio(self) -> float:
        """fp32 / packed, over the binary/ternary weights only (codes + their scales)."""
        packed = sum(r.packed_bytes for r in self.layers)
        return sum(r.fp32_bytes for r in self.layers) / packed if packed else float("inf")

    @property
    def ratio(self) -> float:
        """fp32 / packed for the whole model (full-precision layers, biases, BN included)."""
        return self.fp32_bytes / self.packed_bytes if self.packed_bytes else float("inf")


def storage(model: nn.Module, entropy: bool = False) -> ModelStorage:
    """Measure ``model``'s packed size (``entropy=True``: ternary codes entropy-coded)."""
    state = pack(model, entropy=entropy)
    rows = []
    for name, entry in state["layers"].items():
        n = 1
        for d in entry["shape"]:
            n *= d
        scales = sum(4 * entry[k].numel() for k in ("alpha", "wp", "wn") if k in entry)
        zeros = None
        if entry["kind"] == "ternary":
            from penjing.lowbit.pack import decode_ternary_entropy, unpack_ternary

            decode = decode_ternary_entropy if entry["coding"] == "entropy" else unpack_ternary
            zeros = float((decode(entry["data"], n) == 0).float().mean()) if n else 0.0
        rows.append(LayerStorage(name, entry["kind"], n, zeros, entry["data"].numel() + scales, 4 * n))
    sizes = packed_bytes(state)
    fp32 = sum(r.fp32_bytes for r in rows) + sum(4 * t.numel() for t in state["dense"].values())
    return ModelStorage(rows, fp32, sum(sizes.values()))
