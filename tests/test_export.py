"""ONNX export: every compressed representation round-trips through ONNX Runtime."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import penjing as pj
from penjing.export.check import max_rel_error, ort_outputs, session
from penjing.models import get_model

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 10)).eval()


def ops(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_dense_lenet_round_trips_and_batch_is_dynamic(tmp_path):
    model = get_model("lenet300").eval()
    x = torch.randn(4, 64)
    result = pj.export(model, tmp_path / "m.onnx", x)
    assert result.exporter == "dynamo" and result.fallback_reason is None
    assert result.max_rel_error < 1e-5
    # another batch size than the traced one runs too
    x2 = torch.randn(7, 64)
    with torch.no_grad():
        assert max_rel_error(model(x2), ort_outputs(result.path, (x2,))) < 1e-5


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_both_exporters_name_themselves(tmp_path, exporter):
    result = pj.export(small_cnn(), tmp_path / "m.onnx", torch.randn(2, 1, 8, 8), exporter=exporter)
    assert result.exporter == exporter and result.max_rel_error < 1e-5
    assert f"{exporter} exporter" in result.describe()


def _compressed(kind: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if kind in ("pruned", "shared", "ternary", "lowrank", "2:4"):
        model, x = get_model("lenet300").eval(), torch.randn(8, 64)
    else:
        model, x = small_cnn(), torch.randn(4, 1, 8, 8)
    if kind == "pruned":
        pj.prune(model, pj.PruneConfig(sparsity=0.9), example_inputs=x[:1], progress=False)
    elif kind == "2:4":
        pj.prune(model, pj.PruneConfig(granularity="2:4"), example_inputs=x[:1], progress=False)
    elif kind == "shared":
        pj.prune(model, pj.PruneConfig(sparsity=0.8), example_inputs=x[:1], progress=False)
        pj.share(model, pj.ShareConfig(bits=4))
    elif kind == "ternary":
        pj.ternarize(model, pj.TernaryConfig())
    elif kind == "lowrank":
        pj.lowrank(model, pj.LowRankConfig(rank=16, exclude=["fc3"]))
    elif kind == "structured":
        pj.prune(model, pj.PruneConfig(sparsity=0.5, granularity="filter"), example_inputs=x[:1], progress=False)
    elif kind == "winograd":
        pj.winograd(model, pj.WinogradConfig(m=2, measure=False))
    return model.eval(), x


@pytest.mark.parametrize("kind", ["pruned", "2:4", "shared", "ternary", "lowrank", "structured", "winograd"])
def test_compressed_models_export_as_float_graphs(tmp_path, kind):
    model, x = _compressed(kind)
    before = copy.deepcopy(model.state_dict())
    # TorchScript here (fast); the dynamo path is covered by the dense, int8 and "both" tests
    result = pj.export(model, tmp_path / f"{kind}.onnx", x, exporter="torchscript")
    assert result.max_rel_error < 1e-4, result.describe()
    # the model itself is untouched (export works on a baked copy)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert "QuantizeLinear" not in ops(result.path)
    if kind == "winograd":
        assert result.notes == ["2 WinogradConv2d -> Conv"] and "Conv" in ops(result.path)
    if kind == "lowrank":  # factorised: two MatMul/Gemm per decomposed Linear
        assert sum(n.op_type in ("Gemm", "MatMul") for n in onnx.load(str(result.path)).graph.node) >= 5


def test_mulfree_ternary_linear_exports_as_its_dense_weight(tmp_path):
    from penjing.lowbit.mulfree import to_multiplication_free

    model, x = _compressed("ternary")
    to_multiplication_free(model)
    result = pj.export(model, tmp_path / "t.onnx", x, exporter="torchscript")
    swapped = sum(type(m).__name__ == "TernaryLinear" for m in model.modules())
    assert f"{swapped} TernaryLinear -> dense Linear" in result.notes and result.max_rel_error < 1e-5


def test_binary_inputs_export_as_sign(tmp_path):
    model, x = get_model("lenet300").eval(), torch.randn(8, 64)
    pj.binarize(model, pj.BinaryConfig(activations=["fc2", "fc3"]))
    result = pj.export(model.eval(), tmp_path / "b.onnx", x, exporter="torchscript")
    assert any("binary input" in n for n in result.notes) and result.max_rel_error < 1e-5


def _int8(model: nn.Module, x: torch.Tensor) -> nn.Module:
    pj.quantize(model, pj.QuantConfig(bits=8), data=x)
    return pj.convert(model, graph=False)


@pytest.mark.parametrize("name", ["cnn", pytest.param("lenet300", marks=pytest.mark.slow),
                                  pytest.param("resnet", marks=pytest.mark.slow)])
def test_int8_models_export_as_qdq_that_ort_runs_with_integer_kernels(tmp_path, name):
    torch.manual_seed(0)
    if name == "cnn":
        model, x = small_cnn(), torch.randn(16, 1, 8, 8)
    elif name == "lenet300":
        model, x = get_model("lenet300").eval(), torch.randn(32, 64)
    else:
        model, x = get_model("resnet", torch.randn(1, 1, 8, 8)).eval(), torch.randn(16, 1, 8, 8)
    model = _int8(model, x)
    path = tmp_path / "q.onnx"
    result = pj.export(model, path, x)
    graph = onnx.load(str(path)).graph
    dq = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops(path)
    from penjing.export.check import weights_only_dequantized

    assert not weights_only_dequantized(path)  # static QDQ: ORT's QDQ fusion stays on
    layers = [m for m in model.modules() if type(m).__name__ in ("Int8Linear", "Int8Conv2d")]
    assert result.int8_initializers == len(layers)
    # weights are int8 initializers with one scale per output channel (axis 0)
    inits = {i.name: i for i in graph.initializer}
    weights = [n for n in dq if n.input[0] in inits and inits[n.input[0]].data_type == onnx.TensorProto.INT8]
    assert len(weights) == len(layers)
    channels = sorted(int(inits[n.input[1]].dims[0]) for n in weights)
    assert channels == sorted(int(m.weight.shape[0]) for m in layers)
    # the int8 model's own output vs ORT's: within a few output quantization steps
    assert result.max_rel_error < 3e-2, result.describe()
    # ONNX Runtime fuses the QDQ groups into integer kernels
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "opt.onnx")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    fused = ops(tmp_path / "opt.onnx") & {"QLinearConv", "QGemm", "QLinearMatMul", "MatMulIntegerToFloat",
                                          "MatMulInteger", "DynamicQuantizeMatMul"}
    assert fused, ops(tmp_path / "opt.onnx")
    # with the outputs quantized every int8 conv runs as QLinearConv
    optimized = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert optimized.count("QLinearConv") == sum(type(m).__name__ == "Int8Conv2d" for m in layers)


def test_output_quantization_can_be_turned_off(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(16, 1, 8, 8)
    model = _int8(small_cnn(), x)
    result = pj.export(model, tmp_path / "q.onnx", x, quantize_outputs=False)
    # ORT still requantizes conv outputs that feed the next int8 layer (its rounding, not
    # penjing's), measured 3.7e-3 here
    assert result.max_rel_error < 1e-2 and not any("outputs quantized" in n for n in result.notes)
    q_out = [n for n in onnx.load(str(result.path)).graph.node if n.op_type == "QuantizeLinear"]
    assert len(q_out) == 3  # the three layers' inputs only


def test_int8_file_stores_weights_in_one_byte(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(32, 64)
    dense = get_model("lenet300").eval()

    def weight_bytes(model, name):
        path = pj.export(model, tmp_path / name, x, check=False, exporter="torchscript").path
        return sum(len(i.raw_data) for i in onnx.load(str(path)).graph.initializer)

    float_bytes = weight_bytes(dense, "f.onnx")
    int8_bytes = weight_bytes(_int8(copy.deepcopy(dense), x), "q.onnx")
    # 1 byte per weight instead of 4, plus float biases and per-channel scales
    assert 50_610 < int8_bytes < 0.3 * float_bytes


def test_torchscript_int8_weights_are_folded_into_int8_initializers(tmp_path):
    """TorchScript writes float weight -> QuantizeLinear (with deduplicated zero points behind
    Identity nodes); the export folds every one into an int8 initializer."""
    torch.manual_seed(0)
    x = torch.randn(16, 1, 8, 8)
    result = pj.export(_int8(small_cnn(), x), tmp_path / "q.onnx", x, exporter="torchscript")
    assert result.exporter == "torchscript" and result.int8_initializers == 3
    graph = onnx.load(str(result.path)).graph
    floats = [i for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) >= 2]
    assert floats == [] and result.max_rel_error < 3e-2


def test_four_bit_activations_name_the_layer(tmp_path):
    model, x = get_model("lenet300").eval(), torch.randn(16, 64)
    pj.quantize(model, pj.QuantConfig(bits=4, act_bits=4), data=x)
    with pytest.raises(ValueError) as err:
        pj.export(model, tmp_path / "m.onnx", x)
    assert str(err.value) == ("layer 'fc1' (Linear): its 4-bit input quantizer (grid 0..15) has no "
                              "ONNX QuantizeLinear form (full 8-bit grids only); convert the model first "
                              "(penjing.convert) or export the float model")


def test_converted_four_bit_activations_export_clamped(tmp_path):
    torch.manual_seed(0)
    model, x = get_model("lenet300").eval(), torch.randn(32, 64)
    pj.quantize(model, pj.QuantConfig(bits=8, act_bits=4), data=x)
    pj.convert(model, graph=False)
    result = pj.export(model, tmp_path / "m.onnx", x, exporter="torchscript")
    # one flipped rounding tie is 1/15 of an activation's range at 4 bits, hence the looser bound
    assert "Clip" in ops(result.path) and result.max_rel_error < 0.1, result.describe()


class Histogram(nn.Module):
    """torch.histc has no ONNX form in either exporter."""

    def forward(self, x):
        return torch.histc(x, bins=4).expand(x.shape[0], 4)


def test_a_layer_onnx_cannot_express_is_named(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(Histogram()), nn.Linear(4, 2)).eval()
    with pytest.raises(ValueError) as err:
        pj.export(model, tmp_path / "m.onnx", torch.randn(3, 4))
    assert str(err.value) == ("ONNX export failed at layer '1.0' (Histogram): Exporting the operator "
                              "'aten::histc' to ONNX opset version 17 is not supported")


def _int8_as(model, x, activations, **kw):
    pj.quantize(model, pj.QuantConfig(bits=8, activations=activations, **kw), data=x)
    return pj.convert(model, graph=False)


def test_dynamic_int8_linear_runs_per_row_on_matmul_integer(tmp_path):
    """Per-row dynamic activations: ONNX's DynamicQuantizeLinear has one scale per tensor, so
    the graph computes penjing's per-row scales itself and ORT's MatMulInteger does the int8
    GEMM: the same integers, so ORT agrees to float rounding (measured 2e-7) at any batch."""
    torch.manual_seed(0)
    model, x = get_model("lenet300").eval(), torch.randn(16, 64)
    model = _int8_as(model, x, "dynamic")
    assert {m.mode for m in model.modules() if hasattr(m, "mode")} == {"dynamic"}
    path = tmp_path / "dyn.onnx"
    result = pj.export(model, path, x)
    assert result.exporter == "dynamo" and result.int8_initializers == 3
    assert "3 Int8Linear (dynamic) -> per-row int8 MatMulInteger" in result.notes
    assert ops(path) >= {"MatMulInteger", "ReduceMax", "Round", "Clip"}
    assert not ops(path) & {"DynamicQuantizeLinear", "MatMul", "Gemm"}
    assert result.max_rel_error < 1e-5, result.describe()
    sess = session(path)
    for batch in (1, 7):  # each row's scale is its own: any batch gives penjing's numbers
        xb = torch.randn(batch, 64)
        with torch.no_grad():
            assert max_rel_error(model(xb), ort_outputs(path, (xb,), sess)) < 1e-5


def test_dynamic_int8_on_token_inputs_with_smoothquant(tmp_path):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8)).eval()
    x = torch.randn(2, 5, 16) * torch.linspace(0.1, 4, 16)  # outlier channels: what SmoothQuant is for
    model = _int8_as(model, x, "dynamic", smooth_alpha=0.5)
    assert all(getattr(m, "smooth", None) is not None for m in model.modules() if hasattr(m, "mode"))
    result = pj.export(model, tmp_path / "tok.onnx", x)
    assert "MatMulInteger" in ops(tmp_path / "tok.onnx")
    assert result.max_rel_error < 1e-5, result.describe()


@pytest.mark.parametrize("name", ["lenet300", pytest.param("resnet", marks=pytest.mark.slow)])
def test_weight_only_int8_exports_as_dequantized_int8_weights(tmp_path, name):
    torch.manual_seed(0)
    if name == "lenet300":
        model, x = get_model("lenet300").eval(), torch.randn(16, 64)
    else:
        model, x = get_model("resnet", torch.randn(1, 1, 8, 8)).eval(), torch.randn(8, 1, 8, 8)
    model = _int8_as(model, x, "none")
    layers = [m for m in model.modules() if hasattr(m, "mode")]
    assert {m.mode for m in layers} == {"weight"}
    path = tmp_path / "w.onnx"
    result = pj.export(model, path, x)
    assert result.int8_initializers == len(layers)
    assert "DequantizeLinear" in ops(path) and "QuantizeLinear" not in ops(path)  # no activation rounding
    assert result.max_rel_error < 1e-5, result.describe()
    # penjing's session lets ORT fold the dequantized weights into constants (pre-packed once)
    import onnxruntime as ort

    from penjing.export.check import weights_only_dequantized

    assert weights_only_dequantized(path)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "opt.onnx")
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    assert "DequantizeLinear" not in ops(tmp_path / "opt.onnx")


def test_dynamic_int8_layers_need_the_dynamo_exporter(tmp_path):
    model, x = get_model("lenet300").eval(), torch.randn(16, 64)
    model = _int8_as(model, x, "dynamic")
    with pytest.raises(ValueError, match=r"^layer 'fc1' \(dynamic int8 Linear\) is written with ONNX ops only "
                                         r"the dynamo exporter emits; use exporter='dynamo' or 'auto'$"):
        pj.export(model, tmp_path / "m.onnx", x, exporter="torchscript")


def test_bad_arguments(tmp_path):
    model = get_model("lenet300").eval()
    with pytest.raises(ValueError, match=r"^exporter must be one of \['auto', 'dynamo', 'torchscript'\], got 'tf'$"):
        pj.export(model, tmp_path / "m.onnx", torch.randn(1, 64), exporter="tf")
    with pytest.raises(ValueError, match="^example_inputs must be a tensor or a non-empty tuple of tensors$"):
        pj.export(model, tmp_path / "m.onnx", ())


def test_rtol_turns_a_large_error_into_an_error(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(32, 64)
    model = _int8(get_model("lenet300").eval(), x)
    with pytest.raises(ValueError, match=r"above rtol=1e-09$"):
        pj.export(model, tmp_path / "m.onnx", x, rtol=1e-9, exporter="torchscript")


def test_session_runs_with_numpy_outputs(tmp_path):
    model = small_cnn()
    x = torch.randn(2, 1, 8, 8)
    path = pj.export(model, tmp_path / "m.onnx", x, check=False, exporter="torchscript").path
    out = ort_outputs(path, (x,), session(path))
    assert isinstance(out[0], np.ndarray) and out[0].shape == (2, 10)
