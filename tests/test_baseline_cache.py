"""The trained-baseline cache (#20 item 8, #21): sealed safetensors; a damaged, edited, stale or
hostile cache file is retrained with a warning naming what was wrong, never a traceback; old
torch.save caches are read with weights_only and rewritten."""

import pickle
import warnings

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from penjing.models import baseline_cache, pretrained
from penjing.models.lenet import LeNet300
from penjing.models.registry import _fingerprint, cache_dir

EPOCHS = 1  # a cheap baseline: what is tested is the cache, not the training


@pytest.fixture
def trained(digits_data, tmp_path, monkeypatch):
    monkeypatch.setenv("PENJING_CACHE", str(tmp_path / "cache"))  # this test's own: files are poisoned
    train, _ = digits_data
    model = pretrained("lenet300", train, progress=False, epochs=EPOCHS)
    (path,) = (cache_dir() / "baselines").glob("lenet300-*")
    return train, path, {k: v.clone() for k, v in model.state_dict().items()}


def no_training(monkeypatch):
    import penjing.train

    def refuse(*a, **k):
        raise AssertionError("the baseline was trained again")

    monkeypatch.setattr(penjing.train, "fit", refuse)


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_cache_is_sealed_safetensors_and_loaded_without_training(trained, monkeypatch):
    train, path, state = trained
    assert path.suffix == ".safetensors" and path.name == f"lenet300-{_fingerprint('lenet300', train, EPOCHS, 0)}.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "penjing-baseline" and meta["sha256"] == baseline_cache.digest(state)
    no_training(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = pretrained("lenet300", train, progress=False, epochs=EPOCHS)
    assert same(again.state_dict(), state)


def _flip_a_weight_byte(path):
    blob = bytearray(path.read_bytes())
    blob[-100] ^= 0x04  # inside the last tensor's data
    path.write_bytes(bytes(blob))


def _truncate(path):
    path.write_bytes(path.read_bytes()[:1000])


def _garbage(path):
    path.write_bytes(b"\x00" * 64)


def _nan_resealed(path):  # an edit that recomputes the seal: the values are checked too
    state = LeNet300(in_features=64).state_dict()
    state["fc1.weight"][0, 0] = float("nan")
    model = LeNet300(in_features=64)
    model.load_state_dict(state)
    baseline_cache.write(path, model, path.stem.split("-", 1)[1])


def _other_model(path):
    state = {"fc.weight": torch.zeros(3, 3)}
    save_file(state, str(path), metadata={"format": "penjing-baseline", "version": "1",
                                          "fingerprint": path.stem.split("-", 1)[1],
                                          "sha256": baseline_cache.digest(state)})


def _unsealed(path):
    save_file(LeNet300(in_features=64).state_dict(), str(path))


CASES = {
    "flipped byte": (_flip_a_weight_byte, r"its tensors do not match their SHA-256 seal \(damaged or edited\)"),
    "truncated": (_truncate, r"not a readable safetensors file"),
    "garbage": (_garbage, r"not a readable safetensors file"),
    "NaN, resealed": (_nan_resealed, r"fc1.weight holds NaN or Inf values"),
    "another model": (_other_model, r"its tensors are not the model's \(missing \['fc1.bias'"),
    "no seal": (_unsealed, r"not a penjing baseline of version 1 \(format None, version None\)"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_poisoned_cache_is_retrained_with_a_warning(trained, case):
    train, path, state = trained
    poison, reason = CASES[case]
    poison(path)
    with pytest.warns(UserWarning, match=rf"penjing: the cached baseline .*lenet300-\w+\.safetensors cannot be "
                                         rf"used \({reason}.*\); training it again"):
        model = pretrained("lenet300", train, progress=False, epochs=EPOCHS)
    assert same(model.state_dict(), state)  # retrained: the same seed gives the same baseline
    assert baseline_cache.read(path, LeNet300(in_features=64), path.stem.split("-", 1)[1]).keys() == state.keys()


def test_an_old_torch_save_cache_is_read_with_weights_only_and_rewritten(trained, monkeypatch):
    train, path, state = trained
    legacy = path.with_suffix(".pt")
    path.unlink()
    torch.save(state, legacy)
    no_training(monkeypatch)
    model = pretrained("lenet300", train, progress=False, epochs=EPOCHS)
    assert same(model.state_dict(), state)
    assert path.exists() and not legacy.exists()


class _Exploit:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_a_pickle_in_an_old_cache_runs_nothing_and_is_retrained(trained, tmp_path, monkeypatch):
    train, path, state = trained
    legacy = path.with_suffix(".pt")
    path.unlink()
    legacy.write_bytes(pickle.dumps({"fc1.weight": _Exploit()}))
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match=r"lenet300-\w+\.pt cannot be used \(not a readable PyTorch file"):
        model = pretrained("lenet300", train, progress=False, epochs=EPOCHS)
    assert not (tmp_path / "PWNED").exists()
    assert same(model.state_dict(), state) and path.exists() and not legacy.exists()


def test_the_cli_warns_about_a_poisoned_cache_and_carries_on(trained, monkeypatch, capsys, tmp_path):
    from penjing.cli import main
    from penjing.models import registry

    train, path, state = trained
    _flip_a_weight_byte(path)
    monkeypatch.setitem(registry.BASELINE_EPOCHS, "lenet300", EPOCHS)
    with pytest.warns(UserWarning, match="do not match their SHA-256 seal"):
        code = main(["prune", "--model", "lenet300", "--sparsity", "0.5", "--finetune-epochs", "0", "--no-progress",
                     "--out", str(tmp_path / "o")])
    assert code == 0, capsys.readouterr().err
    assert "Traceback" not in capsys.readouterr().err
