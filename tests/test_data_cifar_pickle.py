"""The CIFAR-10 python-batch reader parses pickle opcodes itself and can only ever return
dicts, lists, ints, strings and numeric arrays (#20 item 1)."""

import pickle
import random

import numpy as np
import pytest

from penjing.data.local import _cifar_python_batch, _parse_pickle, cifar10


def batch(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"training batch 1 of 5", b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
            b"filenames": [f"img{i}.png".encode() for i in range(n)]}


@pytest.mark.parametrize("protocol", [1, 2, 3, 4, 5])
def test_every_binary_protocol_reads_back_exactly(tmp_path, protocol):
    """Protocol 2 written by Python 3 stores bytes as _codecs.encode(text, 'latin1'): it used
    to be refused."""
    original = batch(7, protocol)
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(original, protocol=protocol))
    data, labels = _cifar_python_batch(path)
    assert np.array_equal(data, original[b"data"].reshape(-1, 3, 32, 32))
    assert labels.tolist() == original[b"labels"]
    parsed = _parse_pickle(path.read_bytes())
    assert parsed[b"filenames"] == original[b"filenames"] and parsed[b"batch_label"] == original[b"batch_label"]


def test_cifar10_folder_of_python_batches(tmp_path):
    for name, seed in (("data_batch_1", 1), ("data_batch_2", 2), ("test_batch", 3)):
        (tmp_path / name).write_bytes(pickle.dumps(batch(4, seed), protocol=2))
    train, test = cifar10(tmp_path)
    assert len(train) == 8 and len(test) == 4
    assert float(train.tensors[0].max()) <= 1.0


def test_other_array_kinds_round_trip():
    values = {"f": np.asfortranarray(np.arange(12, dtype=">i4").reshape(3, 4)), "z": np.zeros((0, 3), np.float32),
              "b": np.array([True, False]), "t": (1, -2, None, True), "big": 2**40, "neg": -70000}
    for protocol in (2, 4, 5):
        out = _parse_pickle(pickle.dumps(values, protocol=protocol))
        for k in ("f", "z", "b"):
            assert np.array_equal(out[k], values[k]) and out[k].dtype == values[k].dtype
        assert out["t"] == values["t"] and out["big"] == 2**40 and out["neg"] == -70000


OBJECT_ARRAY_FROM_RAW_BYTES = (  # the 80-byte crash: dtype('O') over 8 attacker bytes
    b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85C\x01b\x87R"
    b"(K\x01K\x01\x85cnumpy\ndtype\nX\x02\x00\x00\x00O8\x89\x88\x87R(K\x03X\x01\x00\x00\x00|NNNJ\xff\xff\xff\xff"
    b"J\xff\xff\xff\xffK?tb\x89C\x08AAAAAAAAtb."
)


def test_object_array_from_raw_bytes_is_refused(tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(OBJECT_ARRAY_FROM_RAW_BYTES)
    with pytest.raises(ValueError, match=r"not a CIFAR-10 python batch \(numpy dtype 'O8' is not a numeric "
                                         r"dtype \(at byte 90\)\)"):
        _cifar_python_batch(path)


@pytest.mark.parametrize("payload, message", [
    (pickle.dumps(__import__("os").system, protocol=2), r"refers to posix.system, which a data batch never holds"),
    (b"\x80\x02cbuiltins\neval\nX\x04\x00\x00\x001+1q\x00\x85R.", r"refers to builtins.eval"),
    (pickle.dumps({b"data": np.array([1, "x"], dtype=object)}, protocol=4), r"numpy dtype 'O8' is not a numeric"),
    (pickle.dumps(bytearray(b"x"), protocol=2), r"refers to __builtin__.bytearray, which a data batch never holds"),
    (b"\x80\x02}q\x00.garbage", r"7 bytes after the end of the pickle \(at byte 6\)"),
    (b"\x80\x02]q\x00(K\x01e", r"a field claims 1 bytes but only 0 remain \(at byte 9\)"),
    (b"\x80\x02X\xff\xff\xff\x7f", r"a field claims 2147483647 bytes"),
    (b"\x80\x02h\x05.", r"a memo lookup of 5, which was never stored \(at byte 2\)"),
])
def test_hostile_pickles_are_one_clear_value_error(tmp_path, payload, message):
    path = tmp_path / "data_batch_1"
    path.write_bytes(payload)
    with pytest.raises(ValueError, match=message):
        _cifar_python_batch(path)


def test_batches_that_parse_but_are_not_cifar_are_refused(tmp_path):
    path = tmp_path / "data_batch_1"
    good = batch(2)
    for change, message in [({b"data": good[b"data"].astype(np.float32)}, "CIFAR-10 data must be a uint8 array"),
                            ({b"labels": ["cat", "dog"]}, "CIFAR-10 labels must be a list of ints"),
                            ({b"data": good[b"data"][:, :100]}, "are not CIFAR-10 shaped")]:
        path.write_bytes(pickle.dumps({**good, **change}, protocol=2))
        with pytest.raises(ValueError, match=message):
            _cifar_python_batch(path)
    path.write_bytes(pickle.dumps([1, 2], protocol=2))
    with pytest.raises(ValueError, match=r"a list, not a dict"):
        _cifar_python_batch(path)


def test_fuzz_mutated_pickles_raise_only_value_errors(tmp_path):
    """1500 byte-level mutations of real protocol-2/4/5 batches: a ValueError or a result made
    of the allowed types only -- never another exception, never an object array."""
    seeds = [pickle.dumps(batch(2, p), protocol=p) for p in (2, 4, 5)]
    rng = random.Random(1)
    path = tmp_path / "data_batch_1"

    def allowed(value) -> bool:
        if isinstance(value, np.ndarray):
            return value.dtype.kind in "biuf"
        if isinstance(value, (list, tuple)):
            return all(allowed(v) for v in value)
        if isinstance(value, dict):
            return all(allowed(k) and allowed(v) for k, v in value.items())
        return value is None or isinstance(value, (bytes, str, int))

    parsed = 0
    for _ in range(1500):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.choice([1, 1, 2, 3])):
            i = rng.randrange(len(data))
            op = rng.randrange(4)
            if op == 0:
                data[i] = rng.randrange(256)
            elif op == 1:
                del data[i:i + rng.randrange(1, 8)]
            elif op == 2:
                data[i:i] = bytes([rng.randrange(256)])
            else:
                data[i:i + 4] = rng.randrange(2**32).to_bytes(4, "little")
        try:
            value = _parse_pickle(bytes(data))
            parsed += 1
            assert allowed(value)
        except ValueError:
            pass
        path.write_bytes(bytes(data))
        try:
            _cifar_python_batch(path)
        except ValueError:
            pass
    assert parsed > 50  # mutations that keep a valid pickle are exercised too
