"""Training-step cost (fp32 vs mixed) and the alpha-beta communication model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from penjing.hw import load_hw, trace, training_step
from penjing.hw.comm import (
    allgather_time,
    compressed_bytes,
    parameter_server_time,
    parse_bandwidth,
    project_step,
    ring_allreduce_time,
)
from penjing.hw.training import training_step_layers
from penjing.models import LeNet5, LeNet300


def test_training_step_has_three_gemms_per_layer():
    model, x = LeNet5(), torch.rand(16, 1, 8, 8)
    cost = training_step(model, x, "edge", "fp32")
    layers = [lay for lay in trace(model, x) if lay.kind == "gemm"]
    fwd = sum(lay.macs for lay in layers)
    # dW for every layer, dX for every layer but the first (the data needs no gradient)
    assert cost.forward.macs == fwd
    assert cost.backward.macs == 2 * fwd - layers[0].macs
    names = [r.name for r in cost.backward.rows if r.kind == "gemm"]
    assert names[:2] == ["fc2 (dX)", "fc2 (dW)"] and names[-1] == "conv1 (dW)" and "conv1 (dX)" not in names
    # the weight-gradient GEMM of fc1 is K x M x N of the forward
    dw = next(r for r in cost.backward.rows if r.name == "fc1 (dW)")
    assert dw.gemm == "200x16x500"


def test_mixed_precision_halves_traffic_and_saves_energy():
    model, x = LeNet300(), torch.rand(64, 1, 8, 8)
    hw = load_hw("edge")
    layers = trace(model, x)
    fp32 = training_step_layers(layers, hw, "fp32", batch=64)
    mixed = training_step_layers(layers, hw, "mixed", batch=64)
    assert mixed.macs == fp32.macs
    assert mixed.forward.dram_bytes == pytest.approx(fp32.forward.dram_bytes / 2)
    assert mixed.energy_pj < fp32.energy_pj and mixed.cycles <= fp32.cycles
    # the optimizer keeps fp32 master weights: its traffic is not halved
    assert mixed.update.dram_bytes == fp32.update.dram_bytes
    with pytest.raises(ValueError, match="unknown precision 'fp8'; choose one of fp32, mixed"):
        training_step_layers(layers, hw, "fp8")


def test_alpha_beta_formulas_by_hand():
    G, B = 1e6, 1e9
    # ring: 2 (N-1) alpha + 2 (N-1)/N G/B with N=4: 6 * 1e-5 + 1.5 * 1e-3
    assert ring_allreduce_time(G, 4, B, 1e-5) == pytest.approx(6e-5 + 1.5e-3)
    assert ring_allreduce_time(G, 1, B, 1e-5) == 0
    # parameter server: 2 alpha + 2 N G / (S B)
    assert parameter_server_time(G, 4, B, 1e-5) == pytest.approx(2e-5 + 8e-3)
    assert parameter_server_time(G, 4, B, 1e-5, servers=4) == pytest.approx(2e-5 + 2e-3)
    assert allgather_time(1e3, 4, B, 1e-5) == pytest.approx(3 * (1e-5 + 1e-6))
    assert compressed_bytes(G, 0.001) == pytest.approx(2e3)  # value + 32-bit index


def test_ring_scales_and_parameter_server_does_not():
    G, compute, bw = 4 * 266_200, 0.02, parse_bandwidth("10Gbit")
    ring = [project_step(G, compute, n, bw, scheme="ring", latency=0).comm_s for n in (2, 8, 64, 512)]
    ps = [project_step(G, compute, n, bw, scheme="ps", latency=0).comm_s for n in (2, 8, 64, 512)]
    assert ring[-1] < 2 * ring[0]  # the bandwidth term is bounded by 2 G / B at any N
    assert ps[-1] == pytest.approx(ps[0] * 256, rel=0.01)  # linear in workers at the server
    dense = project_step(G, compute, 64, bw, scheme="ring")
    dgc = project_step(G, compute, 64, bw, scheme="ring", density=0.001)
    assert dgc.sent_bytes < dense.sent_bytes / 10 and dgc.step_s < dense.step_s
    assert project_step(G, compute, 1, bw).speedup == 1.0
    overlap = project_step(G, compute, 64, bw, overlap=True)
    assert overlap.step_s == max(compute, overlap.comm_s)


def test_bandwidth_parsing_and_errors():
    assert parse_bandwidth("10Gbit") == 1.25e9
    assert parse_bandwidth("10Gb/s") == 1.25e9
    assert parse_bandwidth("1.25GB/s") == 1.25e9
    assert parse_bandwidth("100Mbit") == 12.5e6
    assert parse_bandwidth(5e8) == 5e8
    with pytest.raises(ValueError, match="cannot read bandwidth 'fast'; write e.g. 10Gbit"):
        parse_bandwidth("fast")
    with pytest.raises(ValueError, match="bandwidth must be > 0"):
        parse_bandwidth("0Gbit")
    with pytest.raises(ValueError, match="workers must be a positive integer, got 0"):
        project_step(1e6, 0.01, 0, 1e9)
    with pytest.raises(ValueError, match="unknown scheme 'tree'"):
        project_step(1e6, 0.01, 2, 1e9, scheme="tree")
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\], got 2"):
        project_step(1e6, 0.01, 2, 1e9, density=2)


def test_training_cost_of_a_model_without_weights_in_the_first_gemm():
    class AttentionOnly(nn.Module):
        def forward(self, x):
            return x @ x.transpose(-2, -1)

    cost = training_step(AttentionOnly(), torch.rand(2, 4, 8), "edge", "mixed")
    # both operands are activations: two gradient GEMMs, no optimizer work
    assert cost.backward.macs == 2 * cost.forward.macs
    assert cost.update.cycles == 0
