"""int8 layers of ``pj.convert`` run from the .pjz by the sparse int8 kernels: the stored
integers and per-channel scales, the input rounded to the layer's own grid, its ReLU fused."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import penjing as pj
from penjing.quantization.input_grid import InputGrid
from penjing.quantization.int_kernels import Int8Conv2d, Int8Linear
from penjing.runtime import SparseConv2d, SparseLinear, convert, load_into


def mlp():
    return nn.Sequential(nn.Linear(48, 96), nn.ReLU(), nn.Linear(96, 10))


def cnn():
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 1), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.Flatten(), nn.Linear(16 * 36, 5))


def rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max())


def _int8_model(build, shape, sparsity=0.9, **quant):
    torch.manual_seed(0)
    model = build()
    if sparsity:
        pj.prune(model, pj.PruneConfig(sparsity=sparsity))
    data = [(torch.randn(16, *shape), torch.zeros(16, dtype=torch.long)) for _ in range(3)]
    pj.quantize(model, pj.QuantConfig(bits=8, **quant), data=data)
    return pj.convert(model, graph=False).eval()


@pytest.fixture(scope="module")
def static_mlp(tmp_path_factory):
    model = _int8_model(mlp, (48,))
    path = tmp_path_factory.mktemp("int8") / "mlp.pjz"
    pj.save(model, path)
    return model, path


def test_static_int8_mlp_runs_on_sparse_int8_kernels_from_the_file(static_mlp):
    model, path = static_mlp
    assert [type(m) for m in model if not isinstance(m, nn.Identity)] == [Int8Linear, Int8Linear]
    loaded, info = load_into(mlp(), path, runtime="kernel", return_info=True)
    layers = [m for m in loaded if isinstance(m, SparseLinear)]
    assert len(layers) == 2
    assert all(m.weights.kind == "int8" and isinstance(m.input_grid, InputGrid) for m in layers)
    assert layers[0].fused_relu and not layers[1].fused_relu
    assert [c.format for c in info.layers] == ["sparse 10.0% int8, static int8 input"] * 2
    for batch in (1, 7, 33):
        x = torch.randn(batch, 48) * 2
        with torch.no_grad():
            # float sums of the same integer products: measured <= 2e-7 relative
            assert rel(loaded(x), model(x)) <= 1e-5
    # many inputs: an input rounded to the other integer would move its outputs by ~1e-4
    x = torch.randn(4096, 48) * 2
    with torch.no_grad():
        assert rel(loaded(x), model(x)) <= 1e-5
    x3 = torch.randn(2, 5, 48)
    with torch.no_grad():
        assert loaded(x3).shape == (2, 5, 10)
        assert rel(loaded(x3), model(x3)) <= 1e-5


def test_the_kernel_layer_holds_no_dense_copy_of_the_weight(static_mlp):
    _, path = static_mlp
    loaded = load_into(mlp(), path, runtime="kernel")
    first = loaded[0]
    # the stored nonzeros only: one int8 value and one 16-bit entry per nonzero
    assert first.weights.values.dtype == torch.int8
    assert first.weights.values.numel() == first.weights.entries.numel() <= 0.1 * 96 * 48 + 1
    assert not any(t.numel() == 96 * 48 for t in [*first.buffers(), *first.parameters()])


def test_auto_keeps_the_faster_of_the_sparse_kernel_and_the_int8_layer(static_mlp):
    model, path = static_mlp
    loaded, info = load_into(mlp(), path, runtime="auto", return_info=True)
    assert len(info.layers) == 2
    for choice, module in zip(info.layers, [loaded[0], loaded[2]], strict=True):
        assert choice.kernel_s > 0 and choice.dense_s > 0
        assert choice.chosen == ("kernel" if choice.kernel_s <= choice.dense_s else "dense")
        assert isinstance(module, SparseLinear if choice.chosen == "kernel" else Int8Linear)
        assert choice.dense_bytes == 96 * (48 if choice.name == "0" else 10)  # int8: 1 byte a weight
    x = torch.randn(4, 48)
    with torch.no_grad():
        assert rel(loaded(x), model(x)) <= 1e-5


def test_dynamic_and_weight_only_int8_layers_keep_their_input_rule(tmp_path):
    for activations, expect_grid in (("dynamic", "dynamic"), ("none", None)):
        model = _int8_model(mlp, (48,), activations=activations)
        assert model[0].mode == ("dynamic" if activations == "dynamic" else "weight")
        path = tmp_path / f"{activations}.pjz"
        pj.save(model, path)
        loaded = load_into(mlp(), path, runtime="kernel")
        grid = loaded[0].input_grid
        assert (grid.mode if grid is not None else None) == expect_grid
        x = torch.randn(2048, 48) * 3
        x[0] *= 50  # a row far louder than the rest: dynamic rows must not share its scale
        with torch.no_grad():
            assert rel(loaded(x), model(x)) <= 1e-5
            # each row's output depends on that row alone
            assert torch.allclose(loaded(x[1:2]), loaded(x)[1:2], rtol=1e-6, atol=1e-6)


def test_int8_convs_run_sparse_including_grouped(tmp_path):
    model = _int8_model(cnn, (3, 6, 6))
    convs = [m for m in model if isinstance(m, Int8Conv2d)]
    assert len(convs) == 3
    path = tmp_path / "cnn.pjz"
    pj.save(model, path)
    loaded = load_into(cnn(), path, runtime="kernel")
    sparse = [m for m in loaded if isinstance(m, SparseConv2d)]
    assert [m.groups for m in sparse] == [1, 1, 4]
    assert all(m.weights.kind == "int8" and m.input_grid is not None for m in sparse)
    assert sparse[0].fused_relu and sparse[1].fused_relu and not sparse[2].fused_relu
    for batch in (1, 3):
        x = torch.randn(batch, 3, 6, 6)
        with torch.no_grad():
            assert rel(loaded(x), model(x)) <= 1e-5


def test_in_memory_convert_takes_int8_layers_and_leaves_asymmetric_ones(static_mlp):
    model, _ = static_mlp
    twin = copy.deepcopy(model)
    assert convert(twin) == ["0", "2"]
    x = torch.randn(3, 48)
    with torch.no_grad():
        assert rel(twin(x), model(x)) <= 1e-5
    asym = _int8_model(mlp, (48,), symmetric=False)
    assert bool((asym[0].weight_zero_point != 0).any())
    assert convert(copy.deepcopy(asym)) == []  # the kernels do not subtract weight zero-points


def test_dense_int8_weights_stay_on_the_int8_layer(tmp_path):
    model = _int8_model(mlp, (48,), sparsity=0.0)
    path = tmp_path / "dense.pjz"
    pj.save(model, path)
    loaded, info = load_into(mlp(), path, runtime="kernel", return_info=True)
    assert info.layers == [] and isinstance(loaded[0], Int8Linear)


def test_input_grid_is_the_int8_layers_rounding():
    grid = InputGrid("static", torch.tensor(0.5), torch.tensor(3), 0, 15)
    x = torch.tensor([-10.0, -1.4, 0.0, 0.26, 2.0, 100.0])
    # q = clamp(round(x / 0.5) + 3, 0, 15); the integers q - 3, the step 0.5 for the weights
    assert grid(x).tolist() == [-3.0, -3.0, 0.0, 1.0, 4.0, 12.0] and grid.step == 0.5
    dyn = InputGrid("dynamic", torch.tensor(1.0), torch.tensor(0), -127, 127)
    row = torch.tensor([[127.0, 0.4, -63.6]])
    assert dyn(row).tolist() == [[127.0, 0.0, -64.0]] and dyn.step == 1.0
    with pytest.raises(ValueError, match="InputGrid mode must be 'static' or 'dynamic', got 'weight'"):
        InputGrid("weight", torch.tensor(1.0), torch.tensor(0), 0, 255)


def test_fused_input_grid_rounds_exactly_as_fbgemm_quantizes():
    """fbgemm rounds fma(x, 1/s, z); round(x / s) + z differs on ~1 input in 250,000."""
    import warnings

    torch.manual_seed(1)
    x = torch.randn(2_000_000) * 3
    differ = 0
    for scale, zp in ((0.03233, 134), (0.0123456, 0), (0.1, 77)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # quantized tensors are deprecated
            ints = torch.quantize_per_tensor(x, scale, zp, torch.quint8).int_repr().float()
        fbgemm = ints - zp
        grid = InputGrid("static", torch.tensor(scale), torch.tensor(zp), 0, 255, fused=True)
        assert torch.equal(grid(x), fbgemm)
        differ += int((InputGrid("static", torch.tensor(scale), torch.tensor(zp), 0, 255)(x) != fbgemm).sum())
    assert differ > 0  # the difference the fused rounding exists for
