"""SCALE-Sim counting for traced model layers: the cost model fed by the compression recipe.

Each GEMM layer goes through :mod:`penjing.hw.memory` (SCALE-Sim 3.0.0's cycles, SRAM accesses
and CALC-mode DRAM model) with the hardware's buffers, after three mappings of what the model
itself says about the layer:

* **Zero skipping (documented mapping).** The array skips zero weights along ``K`` within
  each filter column: an N:M-structured weight (every group of ``M`` consecutive weights of a
  filter has at most ``N`` nonzeros, read from the weight itself) needs ``ceil(K N / M)``
  rows/steps, the compressed form of SCALE-Sim's N:M support; an unstructured sparse weight
  is paced by its densest filter, ``K' = max_n nnz(W[:, n])`` (a column of PEs cannot finish
  before its own filter; load balance across columns is not modelled), when it is stored
  sparse: values + index bits smaller than dense, the tracer's rule. The ifmap elements
  still stream for the kept weights, so ifmap DRAM traffic is the dense layer's. Window
  overlap (conv geometry) is used for ungrouped Conv2d layers at batch 1, as SCALE-Sim has no
  batch; otherwise the ifmap is the plain ``M x K`` GEMM operand (no reuse between windows).
* **Sub-word packing.** A PE ``bits`` wide does ``floor(bits / b)`` MACs of ``b``-bit operands
  per cycle (``b`` = the wider of the layer's weight and activation bits), folded into ``K``:
  an int8 layer on a 32-bit array needs a quarter of the steps. Operands wider than the array
  are quantized to it (``b`` is at most ``bits``).
* **Word sizes.** A buffer of ``S`` KiB holds ``S * 1024 * 8 / b`` elements of ``b`` bits
  (SCALE-Sim's 1-byte words are the ``b = 8`` case); DRAM bytes are elements times ``b / 8``,
  weights at their stored width plus index bits per nonzero (``log2 M`` bits for N:M,
  the layer's relative-index bits when unstructured), ofmap and partial sums at ``b``.

**Stalls.** The hardware's one DRAM interface moves ``bytes_per_cycle``; with double buffering
a layer stalls for ``max(0, dram_bytes / bytes_per_cycle - compute_cycles)``.

**Energy**: MACs at the layer's width (nonzero MACs only: skipped zeros cost nothing), SRAM
accesses priced by the size of the buffer they hit (:meth:`EnergyTable.sram`), DRAM bytes.
"""

from __future__ import annotations

import math

from penjing.hw.energy import EnergyTable
from penjing.hw.memory import array_counts, dram_counts
from penjing.hw.presets import HardwareConfig
from penjing.hw.scalesim_io import ConvShape, ScaleSimConfig
from penjing.hw.trace import Layer


def _operand_bits(layer: Layer, hw: HardwareConfig) -> float:
    wb = layer.weight_bits if layer.has_weight else layer.act_bits
    return float(min(max(wb, layer.act_bits), hw.bits))


def effective_k(layer: Layer, geom, hw: HardwareConfig) -> tuple[int, int, tuple[int, int] | None]:
    """``(K kept after zero skipping, rows/steps the array spends after sub-word packing too,
    the N:M pattern or None)``."""
    K = layer.K
    nm = None
    if layer.has_weight and geom is not None:
        if geom.nm is not None:
            nm = geom.nm
            K = math.ceil(K * nm[0] / nm[1])
        elif layer.w_nonzeros * (layer.weight_bits + layer.index_bits) < layer.w_elems * layer.weight_bits:
            # stored sparse only when that is smaller (the tracer's rule): a quantized layer
            # with a few weights rounded to zero stays dense
            K = max(1, min(K, geom.max_column_nonzeros))
    pack = max(1, int(hw.bits // _operand_bits(layer, hw)))
    return K, max(1, math.ceil(K / pack)), nm


def simulate_layers_scalesim(layers: list[Layer], hw: HardwareConfig, *, dataflow: str,
                             table: EnergyTable, batch: int, geometry: dict):
    from penjing.hw.systolic import LayerSim, SimReport

    report = SimReport(hw=hw, dataflow=dataflow, batch=batch, table=table.name)
    cfg = ScaleSimConfig(rows=hw.rows, cols=hw.cols, ifmap_kb=max(1, math.ceil(hw.ifmap_kib)),
                         filter_kb=max(1, math.ceil(hw.weight_kib)),
                         ofmap_kb=max(1, math.ceil(hw.ofmap_kib)), dataflow=dataflow)
    add_pj = table.op("int_add" if hw.arith == "int" else "float_add", hw.acc_bits)
    sram_pj = {k: table.sram(kib) for k, kib in (("i", hw.ifmap_kib), ("f", hw.weight_kib), ("o", hw.ofmap_kib))}
    for layer in layers:
        if layer.kind != "gemm":
            # vector unit, C lanes; operands from and to DRAM (SCALE-Sim keeps nothing between layers)
            cycles = math.ceil(layer.ops / hw.cols)
            abytes = min(layer.act_bits, hw.bits) / 8
            r_b, w_b = layer.in_elems * abytes, layer.out_elems * abytes
            dram_cycles = (r_b + w_b) / hw.bytes_per_cycle
            report.rows.append(LayerSim(
                name=layer.name, op=layer.op, kind="memory", gemm="-", macs=0.0, compute_cycles=cycles,
                dram_cycles=dram_cycles, utilisation=0.0, sram_read_bytes=r_b, sram_write_bytes=w_b,
                dram_read_bytes=r_b, dram_write_bytes=w_b, compute_pj=layer.ops * add_pj,
                sram_pj=(r_b + w_b) / 4 * sram_pj["i"], dram_pj=table.memory("dram", r_b + w_b),
                stall=max(0.0, dram_cycles - cycles)))
            continue
        geom = geometry.get(layer.name)
        g = layer.count
        M, K, N = layer.M, layer.K, layer.N
        k_kept, k_eff, nm = effective_k(layer, geom, hw)
        b = _operand_bits(layer, hw)
        words = b / 8
        counts = array_counts(M, k_eff, N, hw.rows, hw.cols, dataflow)
        # ifmap traffic: the dense layer's addresses (conv geometry when known)
        shape = geom.shape if (geom is not None and geom.shape is not None and g == 1
                               and geom.shape.M == M and geom.shape.K == K) else ConvShape.gemm(layer.name, M, N, K)
        dense_counts = counts if k_eff == K else array_counts(M, K, N, hw.rows, hw.cols, dataflow)
        ifmap_reads = dram_counts(shape, cfg, dense_counts, ifmap_words=words).ifmap_reads
        # weights: the kept K x N values (packing changes the folds, not the count), distinct
        # addresses re-streamed per dataflow
        filt = dram_counts(ConvShape.gemm(layer.name, M, N, k_kept), cfg, counts, filter_words=words)
        if layer.has_weight:
            wbits = min(layer.weight_bits, b)
            index = math.ceil(math.log2(nm[1])) if nm else (layer.index_bits if k_kept < K else 0)
            w_bytes_per = (wbits + index) / 8
        else:
            w_bytes_per = words
        dram_i = g * ifmap_reads * words
        dram_f = g * filt.filter_reads * w_bytes_per
        dram_o = g * counts.ofmap_elements * words
        compute = g * counts.demand_cycles - 1
        dram_cycles = (dram_i + dram_f + dram_o) / hw.bytes_per_cycle
        stall = max(0.0, dram_cycles - compute)
        sram_i, sram_f, sram_o = g * counts.ifmap_reads, g * counts.filter_reads, g * counts.ofmap_writes
        nz = layer.nonzero_macs
        mac_pj = table.mac(b, layer.integer or hw.arith == "int")
        sram = (sram_i * words / 4 * sram_pj["i"] + sram_f * w_bytes_per / 4 * sram_pj["f"]
                + sram_o * words / 4 * sram_pj["o"]
                + (dram_i / 4 * sram_pj["i"] + dram_f / 4 * sram_pj["f"]))  # DRAM fills write SRAM
        macs = g * M * K * N
        report.rows.append(LayerSim(
            name=layer.name, op=layer.op, kind="gemm",
            gemm=f"{M}x{K}x{N}" + (f" (K'={k_eff})" if k_eff != K else "") + (f" (x{g})" if g > 1 else ""),
            macs=float(macs), compute_cycles=compute, dram_cycles=dram_cycles,
            utilisation=g * M * k_eff * N / (hw.rows * hw.cols * compute),
            sram_read_bytes=sram_i * words + sram_f * w_bytes_per, sram_write_bytes=sram_o * words + dram_i + dram_f,
            dram_read_bytes=dram_i + dram_f, dram_write_bytes=dram_o, compute_pj=nz * mac_pj, sram_pj=sram,
            dram_pj=table.memory("dram", dram_i + dram_f + dram_o), reg_pj=3 * nz * table.reg_32b,
            stall=stall, mapping_efficiency=counts.mapping_efficiency,
            fold_utilisation=counts.compute_utilisation, sram_ifmap_reads=sram_i, sram_filter_reads=sram_f,
            sram_ofmap_writes=sram_o, dram_ifmap_read_bytes=dram_i, dram_filter_read_bytes=dram_f,
            dram_ofmap_write_bytes=dram_o))
    return report
