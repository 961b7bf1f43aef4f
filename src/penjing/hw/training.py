"""The cost of one training step on a simulated accelerator, fp32 vs mixed fp16/fp32.

The seed's "hardware for efficient training", read as: what does a step cost, and what does
mixed precision save. A step of a GEMM layer ``O = A @ B`` (``M x K`` by ``K x N``) is three
GEMMs (the backward pass is two extra GEMMs per layer):

* forward ``O = A B``: ``M x K x N``
* input gradient ``dA = dO B^T``: ``M x N x K`` (skipped for the first layer: the data needs
  no gradient)
* weight gradient ``dB = A^T dO``: ``K x M x N`` (for a matmul of two activations, both are
  input gradients)

Memory-only layers cost their forward traffic again in the backward pass (read the saved
input and the incoming gradient, write the outgoing gradient). The optimizer update (SGD
with momentum) is an element-wise pass over the parameters:

* **fp32**: read weight, gradient and momentum, write weight and momentum (all 4 bytes);
* **mixed fp16/fp32** (Micikevicius et al., ICLR 2018): the array multiplies fp16 operands
  and accumulates in fp32; activations, gradients and the working copy of the weights are
  fp16 (2 bytes), the master weights and momentum fp32; the update reads the fp16 gradient
  and fp32 master + momentum, writes fp32 master + momentum and the fp16 copy.

Each of these becomes a layer of :func:`penjing.hw.systolic.simulate_layers` on the given
hardware with a floating-point datapath of the precision's width (TPU v1 itself is an int8
inference chip: here its array, buffers and bandwidth are reused as if its MACs were fp32 or
fp16, like its successors; a real fp32 MAC array would be slower per area, which this model
does not charge). What mixed precision buys here is halved DRAM and buffer traffic and the
cheaper fp16 multiply (1.1 vs 3.7 pJ); the cycles of a compute-bound layer are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from penjing.hw.energy import EnergyTable, format_pj, load_table
from penjing.hw.presets import HardwareConfig, load_hw
from penjing.hw.systolic import SimReport, simulate_layers
from penjing.hw.trace import Layer, trace

PRECISIONS = ("fp32", "mixed")


def _backward_layers(layers: list[Layer]) -> list[Layer]:
    out: list[Layer] = []
    first_gemm = next(i for i, layer in enumerate(layers) if layer.kind == "gemm")
    for i in range(len(layers) - 1, -1, -1):
        layer = layers[i]
        if layer.kind != "gemm":
            out.append(replace(layer, name=f"{layer.name} (bwd)", in_elems=layer.in_elems + layer.out_elems,
                               out_elems=layer.in_elems))
            continue
        if i != first_gemm or not layer.has_weight:
            out.append(replace(layer, name=f"{layer.name} (dX)", op=f"{layer.op} dX",
                               M=layer.M, K=layer.N, N=layer.K, in_elems=layer.out_elems,
                               out_elems=layer.in_elems))
        out.append(Layer(name=f"{layer.name} (dW)", op=f"{layer.op} dW", kind="gemm",
                         in_elems=layer.in_elems, out_elems=layer.w_elems, M=layer.K, K=layer.M,
                         N=layer.N, count=layer.count, w_elems=layer.out_elems,
                         w_nonzeros=layer.out_elems, has_weight=False, act_bits=layer.act_bits))
    return out


def _update_layer(layers: list[Layer], precision: str) -> Layer:
    params = sum(layer.w_elems for layer in layers if layer.has_weight)
    # elements moved per parameter, in units of the datapath width (2 bytes for mixed, 4 fp32):
    # fp32: read w, g, m + write w, m = 3 + 2; mixed (in 2-byte units): read g (1) + master
    # and momentum (2 + 2), write master and momentum (2 + 2) and the fp16 copy (1)
    reads, writes = (3, 2) if precision == "fp32" else (5, 5)
    return Layer(name="optimizer update", op="sgd_momentum", kind="memory",
                 in_elems=reads * params, out_elems=writes * params, ops=3 * params)


@dataclass
class TrainingCost:
    """One training step on ``hw`` at ``precision``: forward, backward and update costs."""

    precision: str
    forward: SimReport
    backward: SimReport
    update: SimReport

    @property
    def cycles(self) -> float:
        return self.forward.cycles + self.backward.cycles + self.update.cycles

    @property
    def time_s(self) -> float:
        return self.cycles / (self.forward.hw.clock_mhz * 1e6)

    @property
    def energy_pj(self) -> float:
        return self.forward.energy_pj + self.backward.energy_pj + self.update.energy_pj

    @property
    def dram_bytes(self) -> float:
        return self.forward.dram_bytes + self.backward.dram_bytes + self.update.dram_bytes

    @property
    def macs(self) -> float:
        return self.forward.macs + self.backward.macs

    def summary(self) -> str:
        return (f"{self.precision}: {self.cycles:,.0f} cycles ({self.time_s * 1e6:,.1f} us; forward "
                f"{self.forward.cycles:,.0f}, backward {self.backward.cycles:,.0f}, update "
                f"{self.update.cycles:,.0f}), DRAM {self.dram_bytes:,.0f} B, energy {format_pj(self.energy_pj)}")


def training_step_layers(layers: list[Layer], hw: HardwareConfig, precision: str = "mixed", *,
                         dataflow: str | None = None, table: EnergyTable | None = None,
                         batch: int = 1) -> TrainingCost:
    """Cost one training step of traced ``layers`` (see the module docstring)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    bits = 32 if precision == "fp32" else 16
    # the array computes in float at the precision's width and accumulates in fp32
    hw = replace(hw, bits=bits, acc_bits=32, arith="float")
    table = table or load_table()
    fwd_layers = [replace(layer, act_bits=float(bits), weight_bits=float(bits), integer=False)
                  if layer.weight_bits > bits or layer.act_bits != bits else layer for layer in layers]
    # penjing's counting: its activation-residency and partial-sum model is what the training
    # comparison (fp32 vs fp16 traffic) is built on; SCALE-Sim has no training passes
    kw = {"counting": "penjing", "dataflow": dataflow, "table": table, "batch": batch}
    return TrainingCost(
        precision=precision,
        forward=simulate_layers(fwd_layers, hw, **kw),
        backward=simulate_layers(_backward_layers(fwd_layers), hw, **kw),
        update=simulate_layers([_update_layer(fwd_layers, precision)], hw, **kw))


def training_step(model: nn.Module, example: torch.Tensor, hw: str | Path | dict | HardwareConfig = "tpu-v1",
                  precision: str = "mixed", *, dataflow: str | None = None,
                  table: str | Path | dict | EnergyTable | None = None) -> TrainingCost:
    """Simulated cost of one training step of ``model`` on the batch ``example``."""
    layers = trace(model, example)
    batch = int(example.shape[0]) if example.dim() > 0 else 1
    return training_step_layers(layers, load_hw(hw), precision, dataflow=dataflow,
                                table=load_table(table), batch=batch)
