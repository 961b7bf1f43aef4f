"""The fast ifmap walk of penjing.hw.memory equals the address-by-address walk it replaced.

The reference (tests/scalesim_walk_reference.py) materialises every unit that completes an
epoch as its demand stream in skewed order and counts chunks one by one; the fast path keeps
the first stream position per address (:func:`penjing.hw.memory._keyed_walk`) and counts runs
of chunks at once. Both must give the same DRAM reads, flushes, epoch fill and flush cycles
on any layer, so the shapes here are random: small buffers (many flushes per unit), strides
below, at and above the filter, channel counts below the array (a fold spans several window
positions), ofmaps that read past the ifmap (SCALE-Sim's ceil).
"""

from __future__ import annotations

import random

import pytest

from penjing.hw.memory import (
    _is_gemm_form,
    array_counts,
    ifmap_epochs,
    simulate_layer,
    simulate_topology,
)
from penjing.hw.resnet_shapes import resnet18_convs, resnet18_fc
from penjing.hw.scalesim_io import ConvShape, ScaleSimConfig
from scalesim_walk_reference import reference_ifmap_epochs


def _random_case(rng: random.Random) -> tuple[ConvShape, ScaleSimConfig, float]:
    while True:
        R = rng.randint(1, 5)
        S = rng.randint(1, 5)
        layer = ConvShape("x", rng.randint(R, 20), rng.randint(S, 20), R, S, rng.choice([1, 2, 3, 5, 8, 16, 24]),
                          rng.randint(1, 40), rng.randint(1, 3), rng.randint(1, 3))
        if not _is_gemm_form(layer):
            break
    a = rng.choice([2, 3, 4, 8, 16])
    cfg = ScaleSimConfig(rows=a, cols=rng.choice([a, 2 * a, 3]), dataflow=rng.choice(["os", "ws", "is"]),
                         ifmap_kb=rng.choice([1, 1, 2, 4]))
    return layer, cfg, rng.choice([1.0, 1.0, 0.5])


def _state(pair) -> tuple:
    state, timeline = pair
    return state.reads, state.flushes, state.n, timeline


@pytest.mark.parametrize("seed", range(8))
def test_fast_walk_equals_the_address_by_address_walk_on_random_layers(seed):
    rng = random.Random(seed)
    flushes = 0
    for _ in range(40):
        layer, cfg, words = _random_case(rng)
        counts = array_counts(layer.M, layer.K, layer.N, cfg.rows, cfg.cols, cfg.dataflow)
        fast = _state(ifmap_epochs(layer, cfg, counts, words))
        assert fast == _state(reference_ifmap_epochs(layer, cfg, counts, words)), (layer, cfg, words)
        flushes += fast[1]
    assert flushes > 40  # the cases do flush (units that complete an epoch are walked)


@pytest.mark.parametrize("name", ["conv1", "layer1.0.conv1", "layer2.0.conv1", "layer3.0.conv2"])
@pytest.mark.parametrize("dataflow", ["os", "ws"])
def test_fast_walk_equals_the_address_by_address_walk_on_resnet18(name, dataflow):
    """The 64 KiB SCALE-Sim sweep's layers on a 128x128 array (several window positions per
    fold for C = 3 and 64, ~E-sized chunks: every one walked)."""
    layer = next(x for x in resnet18_convs() if x.name == name)
    cfg = ScaleSimConfig(rows=128, cols=128, dataflow=dataflow)
    counts = array_counts(layer.M, layer.K, layer.N, 128, 128, dataflow)
    fast = _state(ifmap_epochs(layer, cfg, counts))
    assert fast == _state(reference_ifmap_epochs(layer, cfg, counts))
    assert fast[1] > 0


def test_topology_simulates_each_shape_once_with_every_name():
    layers = resnet18_convs() + [resnet18_fc()]
    cfg = ScaleSimConfig(rows=16, cols=16, dataflow="ws", ifmap_kb=8, filter_kb=8, ofmap_kb=8)
    results = simulate_topology(layers, cfg)
    assert [r.name for r in results] == [x.name for x in layers]
    for layer, res in zip(layers, results, strict=True):
        alone = simulate_layer(layer, cfg)
        assert res.compute_report() == alone.compute_report()
        assert res.detailed_report() == alone.detailed_report()
        assert res.bandwidth_report() == alone.bandwidth_report()
