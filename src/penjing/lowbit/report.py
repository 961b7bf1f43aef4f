"""Storage figures of a binary/ternary model, from the bytes the ``.pjz`` codec writes.

Every figure comes from :func:`penjing.codec.encode_tensor` on the baked weight with the
layer's codec hint -- exactly the payload :func:`penjing.save` writes -- so there is one
storage format, and these numbers are its real sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from penjing.codec import collect_hints, encode_tensor
from penjing.codec.file import baked_state_dict
from penjing.lowbit.api import latent, lowbit_layers
from penjing.lowbit.binary import BinaryWeight


@dataclass
class LayerStorage:
    name: str
    kind: str  # "binary" or "ternary"
    params: int
    zeros: float | None  # fraction of zero weights (ternary only)
    codec: str  # the codec the file uses for this weight (codebook, affine...)
    packed_bytes: int  # the weight's payload in the .pjz file (codes, scales, tables)
    fp32_bytes: int

    @property
    def ratio(self) -> float:
        return self.fp32_bytes / self.packed_bytes if self.packed_bytes else float("inf")


@dataclass
class ModelStorage:
    layers: list[LayerStorage]
    fp32_bytes: int  # every tensor of the model as float32
    packed_bytes: int  # every tensor's .pjz payload (low-bit weights and the rest)

    @property
    def lowbit_ratio(self) -> float:
        """fp32 / stored, over the binary/ternary weights only."""
        packed = sum(r.packed_bytes for r in self.layers)
        return sum(r.fp32_bytes for r in self.layers) / packed if packed else float("inf")

    @property
    def ratio(self) -> float:
        """fp32 / stored for the whole model (full-precision layers, biases, BN included;
        the file header is not counted)."""
        return self.fp32_bytes / self.packed_bytes if self.packed_bytes else float("inf")


def storage(model: nn.Module) -> ModelStorage:
    """Measure ``model``'s stored size per binary/ternary layer and in all."""
    state, hints = baked_state_dict(model), collect_hints(model)
    encoded = {name: encode_tensor(t.cpu(), hint=hints.get(name)) for name, t in state.items()}
    rows = []
    for name, module, p in lowbit_layers(model):
        key = f"{name}.weight" if name else "weight"
        weight = state[key]
        zeros = None
        if not isinstance(p, BinaryWeight):
            codes = p.encode(latent(module, p))["codes"]
            zeros = float((codes == 0).float().mean()) if codes.numel() else 0.0
        rows.append(LayerStorage(name, "binary" if isinstance(p, BinaryWeight) else "ternary",
                                 weight.numel(), zeros, encoded[key].name, len(encoded[key].payload),
                                 4 * weight.numel()))
    fp32 = sum(4 * t.numel() for t in state.values())
    return ModelStorage(rows, fp32, sum(len(e.payload) for e in encoded.values()))
