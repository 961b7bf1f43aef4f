"""The structure record's edges (issue 22): a record that does not fit the fresh model names
the module, a damaged record is a CorruptFileError, the rewrites outside the round-trip matrix
(binary inputs, multiplication-free ternary, fake quantization, pruning after low-rank, a verb
run on a submodule) come back too, and the files of before still load."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zlib

import pytest
import torch
from torch import nn

import penjing as pj
from penjing.codec import CorruptFileError, inspect
from penjing.codec import file as codec_file
from penjing.lowbit import to_multiplication_free
from penjing.quantization import load_quantized, save_quantized

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from test_structure_record import AttentionNet, _inputs, build, channel, lowrank  # noqa: E402


def _same(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        assert torch.equal(a.eval()(x), b.eval()(x))


# ---------------------------------------------------------------------------- does not fit

def test_a_module_the_fresh_model_lacks_is_named(tmp_path):
    model = build("attention", 0)
    channel(model, _inputs())
    pj.save(model, tmp_path / "m.pjz")
    fresh = AttentionNet()
    del fresh.attn
    with pytest.raises(ValueError) as err:
        pj.load(tmp_path / "m.pjz", fresh)
    assert str(err.value) == (f"{tmp_path / 'm.pjz'}'s structure record (split_attention step) names module "
                              "'attn', which AttentionNet does not have: is it the same architecture?")
    assert err.value.module == "attn"


def test_a_fresh_model_of_another_width_is_named(tmp_path):
    model = build("resnet", 0)
    channel(model, _inputs())
    pj.save(model, tmp_path / "m.pjz")
    with pytest.raises(ValueError) as err:
        pj.load(tmp_path / "m.pjz", pj.models.SmallResNet(widths=(12, 24, 48)), runtime="dense")
    assert str(err.value) == (f"{tmp_path / 'm.pjz'} does not fit the model: module 'stem.0' has weight "
                              "[12, 1, 3, 3]; the file's model had weight [16, 1, 3, 3] before pruning "
                              "(prune_channels step of the structure record)")


def test_a_fresh_model_of_another_class_is_named(tmp_path):
    model = build("lenet300", 0)
    lowrank(model, _inputs())
    pj.save(model, tmp_path / "m.pjz")
    with pytest.raises(ValueError, match=re.escape("structure record (lowrank step) names module 'fc1', "
                                                   "which SmallResNet does not have")):
        pj.load(tmp_path / "m.pjz", pj.models.SmallResNet())


def test_the_cli_names_the_module_in_one_line(tmp_path):
    model = build("lenet300", 0)
    lowrank(model, _inputs())
    pj.save(model, tmp_path / "m.pjz")
    proc = subprocess.run([sys.executable, "-m", "penjing.cli", "eval", str(tmp_path / "m.pjz"), "--model", "resnet"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"penjing eval: error: {tmp_path / 'm.pjz'} does not fit --model resnet: its "
                                   "structure record (lowrank step) names module 'fc1', which SmallResNet does "
                                   "not have: is it the same architecture?")


# ---------------------------------------------------------------------------- damaged record

def _save_raw_record(path, payload: bytes, monkeypatch, compress: bool = True):
    """A file whose record tensor holds ``payload`` (save() itself refuses to write a bad one)."""
    state = pj.models.LeNet300().state_dict()
    data = zlib.compress(payload) if compress else payload
    state[codec_file.RECORD_KEY] = torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()
    monkeypatch.setattr(codec_file, "decode_record", lambda *a, **k: None)
    pj.save(state, path)
    monkeypatch.undo()


@pytest.mark.parametrize("payload, why", [
    (b"{not json", "not JSON (JSONDecodeError: Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
    (json.dumps({"format": 2, "steps": []}).encode(), "format 2, this penjing reads format 1"),
    (json.dumps({"format": 1, "steps": [{"kind": "fold_paper", "modules": []}]}).encode(),
     "step 0 is of kind 'fold_paper', which this penjing does not know"),
    (json.dumps({"format": 1, "steps": [{"kind": "lowrank", "modules": [{"rank": 3}]}]}).encode(),
     "step 0 (lowrank) does not list its modules by name"),
    (b"\xff\xfe", "not JSON (UnicodeDecodeError"),
    (b"[" * 100_000, "not JSON (RecursionError"),
])
def test_a_damaged_record_is_a_corrupt_file(tmp_path, monkeypatch, payload, why):
    path = tmp_path / "bad.pjz"
    _save_raw_record(path, payload, monkeypatch)
    with pytest.raises(CorruptFileError) as err:
        pj.load(path, pj.models.LeNet300())
    assert str(err.value).startswith(f"{path}: bad structure record (__penjing_structure__): {why}")
    with pytest.raises(CorruptFileError):
        pj.load(path)  # even without a model: the file is damaged


def test_a_malformed_step_says_so(tmp_path, monkeypatch):
    path = tmp_path / "bad.pjz"
    step = {"kind": "lowrank", "modules": [{"name": "fc1", "method": "svd", "shape": [300, 64]}]}  # no rank
    _save_raw_record(path, json.dumps({"format": 1, "steps": [step]}).encode(), monkeypatch)
    with pytest.raises(ValueError) as err:
        pj.load(path, pj.models.LeNet300())
    assert str(err.value) == f"{path}: bad structure record: a lowrank step is malformed (KeyError: 'rank')"


def test_an_oversized_record_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "big.pjz"
    _save_raw_record(path, json.dumps({"format": 1, "steps": []}).encode(), monkeypatch)
    monkeypatch.setattr(codec_file, "MAX_RECORD_BYTES", 30)
    with pytest.raises(CorruptFileError, match=r"bad structure record .*: 32 bytes, over the limit of 30$"):
        inspect(path)
    # a zlib bomb: a few hundred bytes that would inflate to 100 MB stop at the limit
    _save_raw_record(path, b" " * 100_000_000, monkeypatch)
    monkeypatch.setattr(codec_file, "MAX_RECORD_BYTES", 1 << 24)
    with pytest.raises(CorruptFileError, match="inflates to more than 16,777,216 bytes"):
        inspect(path)


@pytest.mark.parametrize("data, why", [(b"plain json", "not zlib-compressed JSON (Error -3 while decompressing"),
                                       (zlib.compress(b"[]")[:-3], "the compressed JSON is truncated")])
def test_a_record_that_is_not_zlib_is_refused(tmp_path, monkeypatch, data, why):
    path = tmp_path / "bad.pjz"
    _save_raw_record(path, data, monkeypatch, compress=False)
    with pytest.raises(CorruptFileError, match=re.escape(why)):
        inspect(path)


# ---------------------------------------------------------------------------- more rewrites

def _round_trip(model, fresh, tmp_path, x, kinds, runtime="dense"):
    pj.save(model, tmp_path / "m.pjz")
    assert [s["kind"] for s in inspect(tmp_path / "m.pjz").structure or []] == kinds
    loaded = pj.load(tmp_path / "m.pjz", fresh, runtime=runtime)
    _same(model, loaded, x)
    return loaded


def test_binary_inputs_and_multiplication_free_ternary_come_back(tmp_path):
    x = _inputs()
    model = build("lenet300", 0)
    pj.binarize(model, activations=["fc2"], progress=False)
    _round_trip(model, build("lenet300", 5), tmp_path, x, ["binary_input"])
    model = build("lenet300", 0)
    pj.ternarize(model, keep_first_last=False, progress=False)
    to_multiplication_free(model)
    _round_trip(model, build("lenet300", 5), tmp_path, x, ["ternary_linear"])


def test_a_fake_quantized_model_comes_back(tmp_path):
    """BatchNorms folded, static input quantizers: fold_bn (noted) and act_quant (derived)."""
    x = _inputs()
    model = build("resnet", 0)
    pj.quantize(model, bits=8, data=[x], progress=False)
    _round_trip(model, build("resnet", 5), tmp_path, x, ["fold_bn", "act_quant"])


def test_pruning_after_low_rank_replays_in_that_order(tmp_path):
    x = _inputs()
    model = build("lenet300", 0)
    pj.lowrank(model, rank=40, layers=["fc1", "fc2"], example_inputs=x, progress=False)
    channel(model, x)
    loaded = _round_trip(model, build("lenet300", 5), tmp_path, x, ["lowrank", "prune_channels"])
    assert loaded.fc1[0].out_features < 40  # the rank dimension itself was pruned


def test_a_verb_run_on_a_submodule_is_recorded_under_its_name(tmp_path):
    x = _inputs()
    model = nn.Sequential(build("lenet300", 0)).eval()
    lowrank(model[0], x)
    loaded = _round_trip(model, nn.Sequential(build("lenet300", 5)), tmp_path, x, ["lowrank"])
    assert inspect(tmp_path / "m.pjz").structure[0]["modules"][0]["name"] == "0.fc1"
    assert type(loaded[0].fc1).__name__ == "LowRankLinear"


def test_a_loaded_model_compressed_again_keeps_the_whole_history(tmp_path):
    x = _inputs()
    model = build("attention", 0)
    channel(model, x)
    pj.save(model, tmp_path / "a.pjz")
    again = pj.load(tmp_path / "a.pjz", build("attention", 5), runtime="dense")
    lowrank(again, x)
    pj.save(again, tmp_path / "b.pjz")
    kinds = [s["kind"] for s in inspect(tmp_path / "b.pjz").structure]
    assert kinds == ["split_attention", "prune_channels", "lowrank"]
    _same(again, pj.load(tmp_path / "b.pjz", build("attention", 7), runtime="dense"), x)


def test_the_plain_state_dict_has_no_record_and_old_int8_files_still_load(tmp_path):
    x = _inputs()
    model = build("lenet300", 0)
    pj.quantize(model, bits=8, data=[x], progress=False)
    pj.convert(model, graph=False)
    save_quantized(model, tmp_path / "new.pjz")
    assert "__penjing_structure__" not in pj.load(tmp_path / "new.pjz")
    # the layout save_quantized wrote before the structure record: its own key and JSON
    old = inspect(tmp_path / "new.pjz").structure[0]["modules"]
    state = dict(model.state_dict())
    state[codec_file.OLD_INT8_KEY] = torch.frombuffer(
        bytearray(json.dumps({"format": 1, "modules": old}).encode()), dtype=torch.uint8).clone()
    pj.save(state, tmp_path / "old.pjz")
    _same(model, load_quantized(tmp_path / "old.pjz", build("lenet300", 5)), x)
    plain = build("lenet300", 0)
    pj.save(plain, tmp_path / "plain.pjz")
    assert inspect(tmp_path / "plain.pjz").structure is None
    with pytest.raises(ValueError, match="holds no quantized-model structure"):
        load_quantized(tmp_path / "plain.pjz", build("lenet300", 5))


def test_split_by_hand_before_loading_still_works(tmp_path):
    """What docs/pruning.md told users to do before the record: split_attention(fresh) first."""
    from penjing.core.attention import split_attention

    x = _inputs()
    model = build("attention", 0)
    channel(model, x)
    pj.save(model, tmp_path / "m.pjz")
    fresh = build("attention", 5)
    split_attention(fresh)
    _same(model, pj.load(tmp_path / "m.pjz", fresh, runtime="dense"), x)


@pytest.mark.parametrize("m", [2, None])
def test_the_winograd_tile_comes_back(tmp_path, m):
    """Outputs alone cannot tell F(2) from F(6) on a small net (both within float rounding)."""
    from penjing.winograd_conv import WinogradConv2d

    x = _inputs()
    model = build("resnet", 0)
    pj.winograd(model, m=m, measure=False, progress=False)
    pj.save(model, tmp_path / "w.pjz")
    loaded = pj.load(tmp_path / "w.pjz", build("resnet", 5), runtime="dense")
    tiles = {n: mod.m for n, mod in loaded.named_modules() if isinstance(mod, WinogradConv2d)}
    assert tiles == {n: mod.m for n, mod in model.named_modules() if isinstance(mod, WinogradConv2d)}
    assert len(tiles) == 5 and set(tiles.values()) == {m}  # the stride-2 convs stay direct
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("step, why", [
    ({"kind": "lowrank", "modules": [{"name": "fc1", "method": "svd", "shape": [300, 64], "rank": 10**9}]},
     "bad structure record: rank 1000000000 for fc1 (svd, weight [300, 64]) is outside 1..64"),
    ({"kind": "lowrank", "modules": [{"name": "fc1", "method": "svd", "shape": [300, 64], "rank": 0}]},
     "bad structure record: rank 0 for fc1 (svd, weight [300, 64]) is outside 1..64"),
    ({"kind": "prune_channels", "modules": [{"name": "fc1", "type": "Linear", "attrs": {},
                                             "was": {"weight": [300, 64], "bias": [300]},
                                             "now": {"weight": [10**9, 64], "bias": [300]}}]},
     "bad structure record: the prune_channels entry of fc1 gives weight the shape [1000000000, 64], "
     "not within [300, 64]"),
])
def test_a_record_cannot_make_load_allocate_more_than_the_model(tmp_path, monkeypatch, step, why):
    path = tmp_path / "bomb.pjz"
    _save_raw_record(path, json.dumps({"format": 1, "steps": [step]}).encode(), monkeypatch)
    with pytest.raises(ValueError) as err:
        pj.load(path, pj.models.LeNet300(), runtime="dense")
    assert str(err.value) == f"{path}: {why}"


def test_the_commands_take_a_file_with_a_record(tmp_path, capsys):
    """penjing eval / inspect / decompress / bench on a low-rank + int8 LeNet-300-100 (issue 22, 2)."""
    from safetensors import safe_open

    from penjing.cli import main
    from penjing.train import evaluate

    x = _inputs()
    model = build("lenet300", 0)
    lowrank(model, x)
    pj.quantize(model, bits=8, data=[x], progress=False)
    pj.convert(model, graph=False)
    path = tmp_path / "m.pjz"
    pj.save(model, path)
    capsys.readouterr()
    assert main(["eval", str(path)]) == 0
    accuracy = evaluate(model, pj.data.digits()[1])
    assert capsys.readouterr().out.strip() == (f"{path}: lenet300 on digits: accuracy {100 * accuracy:.2f}% "
                                               "(450 test samples)")
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "structure record: 2 rewrite(s)" in out
    assert "1. lowrank: fc1 (svd rank 4), fc2 (svd rank 4), fc3 (svd rank 4)" in out
    assert "2. int8: fc1.0 (Int8Linear), fc1.1 (Int8Linear)" in out
    assert main(["decompress", str(path), "-o", str(tmp_path / "s.safetensors")]) == 0
    assert "the file records 2 structural rewrite(s)" in capsys.readouterr().out
    with safe_open(str(tmp_path / "s.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["penjing_structure"]) == inspect(path).structure
        assert "__penjing_structure__" not in f.keys()
    assert main(["bench", str(path), "--runtime", "dense", "--batch", "1", "--rounds", "1", "--probe-mb", "1"]) == 0
    assert f"{path}: {path.stat().st_size:,} bytes; runtime dense" in capsys.readouterr().out
