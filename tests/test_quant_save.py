"""An int8 model saved to .pjz loads into a fresh instance in a new process, identical."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from penjing.quantization import QuantConfig, convert, load_quantized, quantize, save_quantized

FRESH = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    from test_quant_dynamic import Encoder
    from penjing.models import SmallResNet
    from penjing.quantization import load_quantized
    model = {build}
    model = load_quantized({path!r}, model)
    torch.save(model({x}), {out!r})
""")


def _fresh_process(tmp_path, build: str, path, x: str) -> torch.Tensor:
    out = tmp_path / "out.pt"
    code = FRESH.format(tests=str(__import__("pathlib").Path(__file__).parent), build=build, path=str(path),
                        x=x, out=str(out))
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    return torch.load(out, weights_only=True)


def _int8_resnet(tmp_path):
    from penjing.models import SmallResNet

    torch.manual_seed(0)
    model = SmallResNet().eval()
    quantize(model, QuantConfig(), data=torch.rand(32, 1, 8, 8), progress=False)
    convert(model, graph=False)  # the layer-by-layer record; the int8 graph has its own tests
    save_quantized(model, tmp_path / "resnet.pjz")
    return model, torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(5))


def test_int8_resnet_round_trips_through_pjz(tmp_path):
    from penjing.models import SmallResNet

    model, x = _int8_resnet(tmp_path)
    fresh = load_quantized(tmp_path / "resnet.pjz", SmallResNet())
    assert torch.equal(fresh(x), model(x))
    assert fresh.layers[1].conv1.weight_int8.dtype == torch.int8


@pytest.mark.slow
def test_int8_resnet_round_trips_through_pjz_in_a_new_process(tmp_path):
    model, x = _int8_resnet(tmp_path)
    got = _fresh_process(tmp_path, "SmallResNet()", tmp_path / "resnet.pjz",
                         "torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(5))")
    assert torch.equal(got, model(x))


@pytest.mark.slow
def test_int8_encoder_with_smoothing_and_embeddings_round_trips_in_a_new_process(tmp_path):
    from test_quant_dynamic import Encoder

    model = Encoder().eval()
    ids = torch.randint(0, 50, (16, 12), generator=torch.Generator().manual_seed(1))
    quantize(model, QuantConfig(activations="dynamic", smooth_alpha="auto"), data=[ids], progress=False)
    convert(model)
    save_quantized(model, tmp_path / "enc.pjz")
    got = _fresh_process(tmp_path, "Encoder()", tmp_path / "enc.pjz",
                         "torch.randint(0, 50, (4, 12), generator=torch.Generator().manual_seed(9))")
    x = torch.randint(0, 50, (4, 12), generator=torch.Generator().manual_seed(9))
    assert torch.equal(got, model(x))
    # in process too, and a file without the record says how to load it
    assert torch.equal(load_quantized(tmp_path / "enc.pjz", Encoder())(x), model(x))


def test_fake_quantized_models_and_plain_files_are_refused_with_the_reason(tmp_path):
    import penjing as pj
    from penjing.models import LeNet5

    fake = quantize(LeNet5().eval(), QuantConfig(), data=torch.rand(8, 1, 8, 8), progress=False)
    with pytest.raises(ValueError, match="layer conv1 is still fake-quantized"):
        save_quantized(fake, tmp_path / "f.pjz")
    pj.save(LeNet5(), tmp_path / "plain.pjz")
    with pytest.raises(ValueError, match="holds no quantized-model structure"):
        load_quantized(tmp_path / "plain.pjz", LeNet5())
