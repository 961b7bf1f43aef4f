"""Per-layer quantization report: bits, scale range, SQNR, size; accuracy before and after."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from penjing.core.stats import estimate_bytes
from penjing.quantization.core import MIN_SCALE, sqnr_db
from penjing.quantization.fake_quant import WeightFakeQuant
from penjing.quantization.int_kernels import int8_layers
from penjing.quantization.ptq import quantized_layers


@dataclass
class LayerReport:
    name: str
    type: str
    bits: int
    act_bits: int | None
    scale_min: float
    scale_max: float
    sqnr_db: float
    params: int
    bytes: float
    act_grid: tuple[int, int] | None = None

    def row(self) -> list[str]:
        act = "-" if self.act_bits is None else str(self.act_bits)
        if self.act_grid is not None:  # e.g. "8 [0,127]": 8-bit codes on a 7-bit range
            act += f" [{self.act_grid[0]},{self.act_grid[1]}]"
        return [self.name, self.type, str(self.bits), act, f"{self.scale_min:.2e}..{self.scale_max:.2e}",
                f"{self.sqnr_db:.1f}", f"{self.params:,}", f"{self.bytes:,.0f}"]


HEADER = ["layer", "type", "w bits", "a bits [grid]", "scale range", "SQNR dB", "params", "bytes"]


def _pre_quant_weight(module: nn.Module) -> torch.Tensor:
    """The weight as it is *before* the quantizer: the original through earlier
    parametrizations (e.g. a pruning mask), without the fake-quant itself."""
    chain = module.parametrizations.weight
    w = chain.original
    for p in chain:
        if isinstance(p, WeightFakeQuant):
            break
        w = p(w)
    return w.detach()


@torch.no_grad()
def layer_report(model: nn.Module) -> list[LayerReport]:
    """One row per quantized (fake-quant) layer. Size counts the weight codes at ``bits``
    (sparse layers as nonzeros + relative indices, :func:`penjing.core.stats.estimate_bytes`)
    plus one float32 scale (and an int32 zero-point if asymmetric) per channel. The scale
    range leaves out all-zero (pruned) channels."""
    rows = []
    for name, module, wq, act in quantized_layers(model):
        before = _pre_quant_weight(module)
        after = module.weight.detach()
        nscale = wq.scale.numel()
        zp_bytes = 0 if wq.spec.symmetric else 4 * nscale
        used = wq.scale.detach().reshape(-1)
        used = used[used > MIN_SCALE] if bool((used > MIN_SCALE).any()) else used  # skip all-zero channels
        nonzeros = int(torch.count_nonzero(after))
        layer_type = type(module).__name__.removeprefix("Parametrized")
        rows.append(LayerReport(
            name=name, type=layer_type, bits=wq.spec.bits, act_bits=act.spec.bits if act else None,
            scale_min=float(used.min()), scale_max=float(used.max()),
            sqnr_db=sqnr_db(before, after), params=after.numel(),
            bytes=estimate_bytes(after.numel(), nonzeros, wq.spec.bits, layer_type) + 4 * nscale + zp_bytes,
            act_grid=act.spec.qrange if act else None))
    for name, module in int8_layers(model):
        rows.append(LayerReport(
            name=name, type=type(module).__name__, bits=8, act_bits=None if module.mode == "weight" else 8,
            scale_min=float(module.weight_scale.min()), scale_max=float(module.weight_scale.max()),
            sqnr_db=float("nan"), params=module.weight.numel(),
            bytes=module.weight.numel() + 4 * module.weight_scale.numel(),
            act_grid=(module.in_qmin, module.in_qmax) if module.static else None))
    return rows


def to_markdown(rows: list[LayerReport], accuracy: dict[str, float] | None = None) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r.row()) + " |" for r in rows]
    if accuracy:
        lines.append("")
        lines.append(", ".join(f"{k}: {100 * v:.2f}%" for k, v in accuracy.items()))
    return "\n".join(lines)


def rich_table(rows: list[LayerReport], title: str = "quantization"):
    from rich.table import Table

    table = Table(title=title)
    for h in HEADER:
        table.add_column(h, justify="left" if h in ("layer", "type") else "right")
    for r in rows:
        table.add_row(*r.row())
    return table


def state_bytes(model: nn.Module) -> int:
    """Bytes of the model's ``state_dict`` tensors as stored (int8 weights count 1 byte)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values() if isinstance(t, torch.Tensor))
