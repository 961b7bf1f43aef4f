"""The record of one traced operation (:class:`Layer`), what the hardware models price."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Layer:
    """One traced operation. For ``kind == "gemm"``: ``count`` GEMMs of ``M x K`` by ``K x N``."""

    name: str
    op: str
    kind: str  # "gemm" or "memory"
    in_elems: int
    out_elems: int
    M: int = 0
    K: int = 0
    N: int = 0
    count: int = 1
    #: elements of the B operand (weights; or the second activation of a matmul)
    w_elems: int = 0
    w_nonzeros: int = 0
    #: True when B is a stored weight (False for activation x activation matmuls)
    has_weight: bool = False
    weight_bits: float = 32.0
    act_bits: float = 32.0
    integer: bool = False
    index_bits: int = 0
    #: element-wise operations of a memory-only layer (compares of a pool, adds, ...)
    ops: int = 0
    #: fraction of nonzero input activations (ReLU zeros): reported, not yet exploited
    act_density: float = 1.0
    #: the module this record belongs to: the weight's owner for a weight-bearing GEMM, else
    #: the innermost running module ("" for the model itself)
    module: str = ""

    @property
    def macs(self) -> int:
        return self.count * self.M * self.K * self.N

    @property
    def density(self) -> float:
        """Fraction of nonzero B elements (1.0 for a dense or activation operand)."""
        return self.w_nonzeros / self.w_elems if self.w_elems else 1.0

    @property
    def nonzero_macs(self) -> float:
        return self.macs * self.density

    @property
    def compute_bits(self) -> float:
        """Operand width of the multiplier: integer ops at the wider operand, else float at
        the activation width (a 5-bit codebook index still multiplies a float centroid)."""
        return max(self.weight_bits, self.act_bits) if self.integer else self.act_bits

    def weight_bytes(self) -> float:
        """Stored bytes of B: dense at its bits, or sparse values + relative indices (Deep
        Compression's format, as in :func:`penjing.core.stats.estimate_bytes`), whichever is
        smaller. Activation operands are dense at the activation width."""
        if not self.has_weight:
            return self.w_elems * self.act_bits / 8
        dense = self.w_elems * self.weight_bits / 8
        sparse = self.w_nonzeros * (self.weight_bits + self.index_bits) / 8
        return min(dense, sparse)


def layer_macs(layers: list[Layer]) -> dict[str, int]:
    """MACs of the weight-bearing GEMMs of ``layers`` summed per weight-owning module: the
    figure a low-rank budget or a pruning benchmark compares (activation matmuls excluded)."""
    out: dict[str, int] = {}
    for layer in layers:
        if layer.kind == "gemm" and layer.has_weight:
            out[layer.module] = out.get(layer.module, 0) + layer.macs
    return out


# --- which kernels are what -----------------------------------------------------------------
