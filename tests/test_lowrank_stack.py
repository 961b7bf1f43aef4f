"""Low-rank stacks with the other methods: factorise, fine-tune, quantize the factors to 8 bits,
save them into the compressed file and load them back into a rebuilt model."""

from __future__ import annotations

import pytest
import torch

from penjing.data import digits
from penjing.low_rank import LowRankConfig, LowRankLinear
from penjing.models import LeNet300
from penjing.train import evaluate, fit


def decompose(model, config, **kwargs):
    """``pj.lowrank`` and the per-layer plan it records."""
    from penjing.core.report import last_report
    from penjing.low_rank import lowrank

    lowrank(model, config, **kwargs)
    return last_report(model).extra["plan"]

quantize_pkg = pytest.importorskip("penjing.quantization")
codec = pytest.importorskip("penjing.codec")

torch.set_num_threads(1)


def test_lowrank_then_int8_quantize_saves_into_the_compressed_file(tmp_path):
    train, test = digits()
    torch.manual_seed(0)
    model = LeNet300()
    fit(model, train, epochs=10, lr=1e-3, progress=False)
    result = decompose(model, LowRankConfig(params=0.5), data=train)
    fit(model, train, epochs=2, lr=3e-4, progress=False)
    factorised_acc = evaluate(model, test)
    assert any(isinstance(m, LowRankLinear) for m in model.modules())

    quantize_pkg.quantize(model, quantize_pkg.QuantConfig(bits=8), data=train, progress=False)
    names = {name for name, *_ in quantize_pkg.quantized_layers(model)}
    for layer in result.ranks:  # both factors of every factorised layer are quantized
        assert {f"{layer}.0", f"{layer}.1"} <= names
    quantized_acc = evaluate(model, test)
    assert quantized_acc >= factorised_acc - 0.01

    info = codec.save(model, tmp_path / "lowrank_int8.pjz")
    state = codec.load(tmp_path / "lowrank_int8.pjz")
    weights = {f"{n}.weight": m.weight.detach() for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear)}  # (parametrized classes are subclasses)
    assert len(weights) == 3 + len(result.ranks)
    for key, value in weights.items():
        assert torch.equal(state[key], value), key  # the 8-bit grid values, bit for bit
        assert info[key].codec == "affine"
    float_bytes = 4 * sum(v.numel() for v in weights.values())
    assert info.bytes < float_bytes / 3  # 8-bit factors (+ scales, biases, header)

    # A fresh model rebuilt from the ranks takes the loaded tensors and predicts the same
    # as the quantized model does with its activation quantizers switched off.
    rebuilt = LeNet300()
    decompose(rebuilt, LowRankConfig(rank=result.ranks))
    missing, _ = rebuilt.load_state_dict({k: v for k, v in state.items() if k in rebuilt.state_dict()},
                                         strict=False)
    assert missing == []
    assert evaluate(rebuilt, test) >= quantized_acc - 0.02
