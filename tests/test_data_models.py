"""Bundled digits, local MNIST/CIFAR loaders (on files the tests write) and reference models."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from penjing.data import cifar10, digits, get_data, mnist
from penjing.data.local import read_idx
from penjing.models import MODELS, get_model, pretrained
from penjing.models.registry import cache_dir
from penjing.train import evaluate


def test_digits_split_is_fixed_and_complete():
    (tr, te), (_tr2, te2) = digits(), digits()
    assert len(tr) + len(te) == 1797 and len(te) == 450
    assert torch.equal(te.tensors[0], te2.tensors[0])
    x, y = tr.tensors
    assert x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert set(y.tolist()) == set(range(10))


def write_idx(path, array, code=0x08, compress=False):
    data = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.astype(">u1" if code == 0x08 else ">i4").tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def test_mnist_reads_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 5), ("t10k", 3)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n), compress=True)
    train, test = mnist(tmp_path)
    assert train.tensors[0].shape == (5, 1, 28, 28) and len(test) == 3
    assert float(train.tensors[0].max()) <= 1.0


def test_idx_rejects_bad_magic_and_wrong_length(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x08\x01" + b"\0" * 8)
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(struct.pack(">HBBI", 0, 8, 1, 1_000_000) + b"\0" * 10)
    with pytest.raises(ValueError, match=r"header says shape \(1000000,\)"):
        read_idx(short)
    with pytest.raises(FileNotFoundError, match="none of"):
        mnist(tmp_path)


def test_cifar10_python_and_binary_batches(tmp_path):
    rng = np.random.default_rng(0)
    py, binary = tmp_path / "py", tmp_path / "bin"
    py.mkdir()
    binary.mkdir()
    for name in ("data_batch_1", "test_batch"):
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [1, 2, 3, 9]}
        (py / name).write_bytes(pickle.dumps(batch))
        records = np.concatenate([np.array([[1], [2], [3], [9]], np.uint8), batch[b"data"]], axis=1)
        (binary / f"{name}.bin").write_bytes(records.tobytes())
    for root in (py, binary):
        train, test = cifar10(root)
        assert train.tensors[0].shape == (4, 3, 32, 32) and test.tensors[1].tolist() == [1, 2, 3, 9]
    assert torch.equal(cifar10(py)[0].tensors[0], cifar10(binary)[0].tensors[0])


def test_cifar10_refuses_code_in_a_pickle(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    (tmp_path / "test_batch").write_bytes(b"")
    with pytest.raises(ValueError, match="builtins.print, which a data batch never holds"):
        cifar10(tmp_path)


def test_get_data_errors():
    with pytest.raises(ValueError, match="unknown data set 'imagenet'"):
        get_data("imagenet")
    with pytest.raises(ValueError, match="give the location"):
        get_data("mnist")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_reference_models_fit_digits_and_mnist_shapes(name):
    for shape in ((2, 1, 8, 8), (2, 1, 28, 28), (2, 3, 32, 32)):
        x = torch.randn(shape)
        assert get_model(name, x)(x).shape == (2, 10)
    with pytest.raises(ValueError, match="unknown model 'vgg99'"):
        get_model("vgg99")


def test_pretrained_baseline_is_accurate_and_cached(digits_data):
    train, test = digits_data
    model = pretrained("lenet300", train, progress=False, epochs=20)
    assert evaluate(model, test) > 0.95
    cached = list((cache_dir() / "baselines").glob("lenet300-*.safetensors"))
    assert len(cached) == 1
    again = pretrained("lenet300", train, progress=False, epochs=20)  # loads, does not retrain
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))
