"""The int8 graph (pj.convert's default on CNNs) saved to .pjz and replayed on a fresh model."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from penjing.models import LeNet5, SmallResNet
from penjing.quantization import QuantConfig, convert, load_quantized, quantize, save_quantized
from penjing.quantization.graph_saving import graph_state, record_graph, replay_graph
from penjing.quantization.int8_graph import int8_graph

sys.path.insert(0, str(Path(__file__).parent))
from test_quant_graph import Mobile, NormActNet  # noqa: E402


def _graph_model(cls, shape):
    torch.manual_seed(0)
    model = cls().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    fresh_state = copy.deepcopy(model.state_dict())  # the float weights a "fresh" instance would get
    quantize(model, QuantConfig(), data=torch.rand(32, *shape), progress=False)
    convert(model)
    assert int8_graph(model) is not None
    return model, fresh_state, torch.rand(4, *shape, generator=torch.Generator().manual_seed(3))


def _fresh(cls):
    torch.manual_seed(123)  # other random weights than the saved model's: all must come from the file
    return cls()


@pytest.mark.parametrize(("cls", "shape"), [(SmallResNet, (1, 8, 8)), (LeNet5, (1, 8, 8)), (Mobile, (3, 8, 8)),
                                            (NormActNet, (3, 6, 6))])
def test_int8_graph_round_trips_through_pjz_identically(tmp_path, cls, shape):
    model, _, x = _graph_model(cls, shape)
    save_quantized(model, tmp_path / "g.pjz")
    fresh = load_quantized(tmp_path / "g.pjz", _fresh(cls))
    assert int8_graph(fresh) is not None and not fresh.training
    assert torch.equal(fresh(x), model(x))
    assert int8_graph(fresh).code == int8_graph(model).code  # the same graph, op for op


@pytest.mark.parametrize("runtime", ["dense", "kernel", "auto"])
def test_pj_save_and_pj_load_take_the_int8_graph_the_default_convert_builds(tmp_path, runtime):
    """The front door: pj.convert's default on a CNN is the int8 graph, and pj.save / pj.load
    write and rebuild it (a registered whole-model format), whatever runtime is asked for."""
    import penjing as pj
    from penjing.quantization.graph_saving import KEY

    model, _, x = _graph_model(SmallResNet, (1, 8, 8))
    info = pj.save(model, tmp_path / "g.pjz")
    assert KEY in {t.name for t in info.tensors} and info.structure is None
    fresh = pj.load(tmp_path / "g.pjz", _fresh(SmallResNet), runtime=runtime)
    assert int8_graph(fresh) is not None
    assert torch.equal(fresh(x), model(x))


def test_record_is_json_and_replay_needs_no_calibration(tmp_path):
    model, _, x = _graph_model(Mobile, (3, 8, 8))
    rec, tensors = record_graph(model)
    rec = json.loads(json.dumps(rec))  # JSON-able as it is
    assert rec["folds"] == [["c1", "bn1"]] and set(rec["layers"]) == {"c1", "dw", "pw", "c2", "fc"}
    assert all(t.dtype == torch.int8 for k, t in tensors.items() if k.endswith(".weight"))
    state = {**graph_state(model, rec), **tensors}  # the float rest of the model, and the graph's tensors
    assert not any(k.startswith(("c1.", "fc.")) for k in graph_state(model, rec))  # no packed torch.ao entry
    fresh = replay_graph(_fresh(Mobile), rec, state)
    assert torch.equal(fresh(x), model(x))


def test_a_bad_record_or_another_architecture_is_refused_with_the_reason(tmp_path):
    model, _, _ = _graph_model(SmallResNet, (1, 8, 8))
    rec, tensors = record_graph(model)
    name = next(iter(rec["layers"]))
    bad = json.loads(json.dumps(rec))
    bad["layers"][name]["in_zero_point"] = 300
    with pytest.raises(ValueError, match=rf"layer '{name}': input zero-point 300 is not on the 0..255 grid"):
        replay_graph(_fresh(SmallResNet), bad, dict(tensors))
    bad = json.loads(json.dumps(rec))
    bad["layers"][name]["in_scale"] = -1.0
    with pytest.raises(ValueError, match=rf"layer '{name}': input scale -1.0 is not a positive number"):
        replay_graph(_fresh(SmallResNet), bad, dict(tensors))
    short = dict(tensors)
    del short[f"{name}.weight_scale"]
    with pytest.raises(ValueError, match=rf"needs '{name}.weight_scale', which is not there"):
        replay_graph(_fresh(SmallResNet), rec, short)
    save_quantized(model, tmp_path / "r.pjz")
    with pytest.raises(ValueError, match="is it the same architecture"):
        load_quantized(tmp_path / "r.pjz", LeNet5())
    with pytest.raises(ValueError, match="was not converted to an int8 graph"):
        record_graph(SmallResNet())


FRESH = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    from test_int8_graph_save import _fresh
    from penjing.models import SmallResNet
    from penjing.quantization import load_quantized
    model = load_quantized({path!r}, _fresh(SmallResNet))
    torch.save(model(torch.load({x!r}, weights_only=True)), {out!r})
""")


@pytest.mark.slow
def test_int8_graph_resnet_loads_in_a_new_process_identically(tmp_path):
    model, _, x = _graph_model(SmallResNet, (1, 8, 8))
    save_quantized(model, tmp_path / "g.pjz")
    torch.save(x, tmp_path / "x.pt")
    code = FRESH.format(tests=str(Path(__file__).parent), path=str(tmp_path / "g.pjz"), x=str(tmp_path / "x.pt"),
                        out=str(tmp_path / "out.pt"))
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert torch.equal(torch.load(tmp_path / "out.pt", weights_only=True), model(x))


REAL = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    from test_int8_graph_save import _real
    from penjing.quantization import load_quantized
    model = load_quantized({path!r}, _real({name!r}, fresh=True))
    x = torch.load({x!r}, weights_only=True)
    torch.save(model(**x).last_hidden_state if isinstance(x, dict) else model(x), {out!r})
""")


def _real(name: str, fresh: bool = False) -> nn.Module:
    torch.manual_seed(123 if fresh else 0)
    if name == "resnet18":
        import torchvision

        return torchvision.models.resnet18(weights=None).eval()
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=1000, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=512, max_position_embeddings=64)
    return BertModel(cfg, add_pooling_layer=False).eval()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "bert"])
def test_real_int8_models_load_in_a_new_process_identically(tmp_path, name):
    pytest.importorskip("torchvision" if name == "resnet18" else "transformers")
    model = _real(name)
    if name == "resnet18":
        model.train()
        with torch.no_grad():  # BN statistics from random data
            for _ in range(2):
                model(torch.randn(4, 3, 64, 64))
        model.eval()
        quantize(model, QuantConfig(), data=[torch.randn(4, 3, 64, 64)], progress=False)
        x = torch.randn(2, 3, 64, 64)
    else:
        ids = torch.randint(1, 1000, (8, 16), generator=torch.Generator().manual_seed(1))
        quantize(model, QuantConfig(activations="dynamic", smooth_alpha="auto"),
                 data=[{"input_ids": ids, "attention_mask": torch.ones_like(ids)}],
                 forward_fn=lambda m, b: m(**b).last_hidden_state, progress=False)
        x = {"input_ids": torch.randint(1, 1000, (2, 12)), "attention_mask": torch.ones(2, 12, dtype=torch.long)}
    convert(model)
    assert (int8_graph(model) is not None) == (name == "resnet18")
    expected = model(**x).last_hidden_state if isinstance(x, dict) else model(x)
    save_quantized(model, tmp_path / "m.pjz")
    torch.save(x, tmp_path / "x.pt")
    code = REAL.format(tests=str(Path(__file__).parent), path=str(tmp_path / "m.pjz"), name=name,
                       x=str(tmp_path / "x.pt"), out=str(tmp_path / "out.pt"))
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
    assert torch.equal(torch.load(tmp_path / "out.pt", weights_only=True), expected)
