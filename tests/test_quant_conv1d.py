"""Hugging Face's ``Conv1D`` (GPT-2: a Linear with its weight stored ``[in, out]``) is
quantized per output channel (axis 1), converts to an ``Int8Linear`` of its transpose, and
round-trips through the ``.pjz``. A stand-in module registered where penjing looks for it
(``transformers.pytorch_utils.Conv1D``), so the default run needs no transformers; the real
GPT-2 is a cell of tests/realmodels."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from torch import nn

import penjing as pj
from penjing.quantization.int_kernels import Int8Linear
from penjing.quantization.ptq import weight_quantizer


class Conv1D(nn.Module):
    """transformers' GPT-2 ``Conv1D``: y = x @ W + b, W [in, out]."""

    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.2)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x):
        return torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(*x.shape[:-1], self.nf)


class TinyGPTBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.c_fc = Conv1D(48, 16)
        self.c_proj = Conv1D(16, 48)

    def forward(self, x):
        return x + self.c_proj(torch.nn.functional.gelu(self.c_fc(x)))


@pytest.fixture
def hf_conv1d(monkeypatch):
    fake = types.ModuleType("transformers.pytorch_utils")
    fake.Conv1D = Conv1D
    monkeypatch.setitem(sys.modules, "transformers.pytorch_utils", fake)


def _block():
    torch.manual_seed(0)
    return TinyGPTBlock().eval()


@pytest.mark.parametrize("activations", ["dynamic", "static"])
@torch.no_grad()
def test_conv1d_quantizes_per_output_channel_and_converts_to_int8(hf_conv1d, tmp_path, activations):
    model = _block()
    data = [torch.randn(4, 7, 16) for _ in range(3)]
    x = data[0]
    reference = model(x)
    pj.quantize(model, pj.QuantConfig(activations=activations), data=data, progress=False)
    report = pj.last_report(model)
    assert [(c.name, c.kind) for c in report.touched] == [("c_fc", "Conv1D"), ("c_proj", "Conv1D")]
    expected_input = "dynamic per-row" if activations == "dynamic" else "static"
    assert all(expected_input in c.after for c in report.touched)
    for layer in (model.c_fc, model.c_proj):
        wq = weight_quantizer(layer)
        assert wq.spec.axis == 1 and wq.scale.numel() == layer.nf  # one scale per output channel
        w = layer.weight.detach()  # fake-quantized: each output column on its own grid
        assert torch.allclose(w / wq.scale.reshape(1, -1), torch.round(w / wq.scale.reshape(1, -1)), atol=1e-4)
    fake = model(x)
    assert float((fake - reference).norm() / reference.norm()) < 0.02
    pj.convert(model)
    assert isinstance(model.c_fc, Int8Linear) and model.c_fc.weight_int8.shape == (48, 16)
    assert model.c_fc.mode == model.c_proj.mode == activations  # int8 inputs, not weight-only
    got = model(x)
    assert float((got - fake).abs().max() / fake.abs().max()) < 1e-5
    if activations == "dynamic":  # a row's output does not depend on the rest of its batch
        assert torch.allclose(model(x[:1]), got[:1], rtol=1e-5, atol=1e-6)
    pj.save(model, tmp_path / "g.pjz")
    fresh = pj.load(tmp_path / "g.pjz", _block(), runtime="dense")
    assert isinstance(fresh.c_proj, Int8Linear) and torch.equal(fresh(x), got)


def test_smoothquant_says_it_leaves_conv1d_unsmoothed(hf_conv1d):
    model = _block()
    data = [torch.randn(4, 7, 16) for _ in range(2)]
    pj.quantize(model, pj.QuantConfig(activations="dynamic", smooth_alpha=0.5), data=data, progress=False)
    notes = pj.last_report(model).notes
    assert ("SmoothQuant migrates outliers of nn.Linear layers only: 2 Hugging Face Conv1D layers "
            "(c_fc, ...) are quantized without it") in notes


def test_without_transformers_loaded_conv1d_is_reported_skipped():
    """No transformers module in the process: a class of that name is not guessed at."""
    assert "transformers.pytorch_utils" not in sys.modules or pytest.skip("transformers is loaded")
    model = nn.Sequential(nn.Linear(8, 8), Conv1D(4, 8))
    pj.quantize(model, pj.QuantConfig(activations="none"), progress=False)
    skipped = {s.name: s.reason for s in pj.last_report(model).skipped}
    assert skipped == {"1": "Conv1D has no quantizer (Linear, Conv1d/2d/3d, Embedding and Hugging Face "
                            "Conv1D have)"}
