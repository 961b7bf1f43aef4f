"""A damaged or hostile .pjz file gives a clear CorruptFileError (a ValueError), raised before
any large allocation, and never anything else. The decoder is fuzzed with hypothesis."""

import tracemalloc
import zlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from penjing.codec import CorruptFileError, load, save
from penjing.codec.bits import varint
from penjing.codec.file import MAGIC, VERSION

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A small file with every codec: raw, sparse, codebook, affine-free model tensors."""
    torch.manual_seed(0)
    w = torch.linspace(-1, 1, 8)[torch.randint(0, 8, (40, 30))]
    w[torch.rand(40, 30) < 0.8] = 0
    state = {"fc.weight": w, "fc.bias": torch.randn(40), "conv.weight": torch.randn(4, 2, 3, 3),
             "sparse": torch.where(torch.rand(500) < 0.05, torch.randn(500), torch.zeros(500)),
             "steps": torch.tensor(3)}
    path = tmp_path_factory.mktemp("pjz") / "good.pjz"
    save(state, path)
    return path, path.read_bytes(), state


def blob(entries: list[tuple[str, int, tuple[int, ...], int, bytes]], version: int = VERSION) -> bytes:
    """A well-framed file (valid checksums) around arbitrary header entries and payloads."""
    header = bytearray(varint(len(entries)))
    for name, dtype, shape, codec, payload in entries:
        header += varint(len(name)) + name.encode() + bytes([dtype, len(shape)])
        header += b"".join(varint(d) for d in shape) + bytes([codec]) + varint(len(payload))
    body = b"".join(e[4] for e in entries)
    header = bytes(header)
    return (MAGIC + bytes([version]) + varint(len(header)) + header + zlib.crc32(header).to_bytes(4, "little")
            + body + zlib.crc32(body).to_bytes(4, "little"))


def write(tmp_path, data: bytes):
    path = tmp_path / "bad.pjz"
    path.write_bytes(data)
    return path


def test_good_file_loads(good):
    path, _, state = good
    out = load(path)
    assert all(torch.equal(out[k], v) for k, v in state.items())


def test_every_truncation_is_refused(good, tmp_path):
    _, data, _ = good
    for n in range(len(data)):
        with pytest.raises(CorruptFileError):
            load(write(tmp_path, data[:n]))


def test_flipped_header_byte(good, tmp_path):
    _, data, _ = good
    for i in range(5, 40):  # inside the header
        bad = bytearray(data)
        bad[i] ^= 0x10
        with pytest.raises(CorruptFileError, match="checksum|claims|header|past|truncated|varint|dtype"):
            load(write(tmp_path, bytes(bad)))
    bad = bytearray(data)
    bad[10] ^= 0x01
    with pytest.raises(CorruptFileError, match="header checksum mismatch"):
        load(write(tmp_path, bytes(bad)))


def test_flipped_payload_byte(good, tmp_path):
    _, data, _ = good
    bad = bytearray(data)
    bad[-10] ^= 0xFF
    with pytest.raises(CorruptFileError, match="payload checksum mismatch"):
        load(write(tmp_path, bytes(bad)))


def test_unknown_version_and_bad_magic(tmp_path):
    with pytest.raises(CorruptFileError, match="unsupported .pjz version 9 \\(this penjing reads version 1\\)"):
        load(write(tmp_path, blob([], version=9)))
    with pytest.raises(CorruptFileError, match="not a penjing .pjz file"):
        load(write(tmp_path, b"PK\x03\x04 a zip, not ours"))


def test_huge_claimed_tensor_is_refused_before_allocating(tmp_path):
    huge = (1 << 20, 1 << 20, 1 << 10)  # 2^50 float32 values
    tracemalloc.start()
    with pytest.raises(CorruptFileError, match=r"w of shape \(1048576, 1048576, 1024\) brings the file to 1125899906842624 elements, over the limit of 268435456 .* \(at byte 10\)"):
        load(write(tmp_path, blob([("w", 0, huge, 0, b"\x00" * 16)])))
    # within the limit but not backed by data: the raw codec checks its payload length
    with pytest.raises(CorruptFileError, match="raw tensor of 100000000 x 4 bytes but its payload holds 16"):
        load(write(tmp_path, blob([("w", 0, (10**8,), 0, b"\x00" * 16)])))
    # a sparse tensor whose index stream covers far less than it claims
    sparse_payload = bytes([5]) + varint(0)  # width 5, an empty index stream
    with pytest.raises(CorruptFileError, match="sparse index covers 0 elements but the tensor claims 100000000"):
        load(write(tmp_path, blob([("w", 0, (10**8,), 1, sparse_payload)])))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 10 * 2**20


def test_length_field_past_the_end(tmp_path):
    # a stream that claims more symbols than its bytes can hold
    codebook = varint(1) + b"\x00\x00\x80\x3f"  # one entry, 1.0
    stream = varint(1000) + bytes([0, 8]) + b"\x01\x02"  # 1000 packed 8-bit indices in 2 bytes
    with pytest.raises(CorruptFileError, match=r"codebook indices claims 1000 symbols but only 4 bytes remain "
                       r"\(every symbol takes at least one bit\) \(at byte 23\)"):
        load(write(tmp_path, blob([("w", 0, (1000,), 2, codebook + stream)])))
    stream = varint(30) + bytes([0, 8]) + b"\x01\x02"  # 30 symbols could fit in 4 bytes, not in 2
    with pytest.raises(CorruptFileError, match="codebook indices packed data claims 30 bytes but only 2 remain"):
        load(write(tmp_path, blob([("w", 0, (30,), 2, codebook + stream)])))
    # a header whose payload lengths run past the end of the file
    good = blob([("w", 0, (2,), 0, b"\x00" * 8)])
    header_len_at = len(MAGIC) + 1
    header = bytearray(good[header_len_at + 1:header_len_at + 1 + good[header_len_at]])
    header[-1] = 100  # payload length 8 -> 100
    header = bytes(header)
    body = b"\x00" * 8
    bad = (MAGIC + bytes([VERSION]) + varint(len(header)) + header + zlib.crc32(header).to_bytes(4, "little")
           + body + zlib.crc32(body).to_bytes(4, "little"))
    with pytest.raises(CorruptFileError, match=r"payload length = 100 exceeds the limit 8 \(at byte \d+\)"):
        load(write(tmp_path, bad))


def test_codebook_index_out_of_range(tmp_path):
    payload = varint(2) + b"\x00" * 8 + varint(3) + bytes([0, 2]) + bytes([0b00011100])  # indices 0, 1, 3
    with pytest.raises(CorruptFileError, match="codebook index 3 past its 2 entries"):
        load(write(tmp_path, blob([("w", 0, (3,), 2, payload)])))


def test_no_pickle_anywhere(good):
    _, data, _ = good
    assert b"\x80\x02" not in data[:4] and data.startswith(MAGIC)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fuzz_mutated_files_raise_only_corrupt_file_errors(good, tmp_path, data):
    """Random byte edits, insertions and deletions; checksums re-done half the time so the
    mutations reach the tensor decoders. Whatever happens, it is a clean result or a
    CorruptFileError."""
    _, original, _ = good
    raw = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        i = data.draw(st.integers(0, len(raw) - 1))
        if op == "flip":
            raw[i] = data.draw(st.integers(0, 255))
        elif op == "insert":
            raw[i:i] = bytes([data.draw(st.integers(0, 255))])
        elif len(raw) > 1:
            del raw[i]
    if data.draw(st.booleans()):
        raw = bytearray(_refresh_checksums(bytes(raw)))
    try:
        load(write(tmp_path, bytes(raw)))  # the default budget: a lowered one would hide bombs
    except CorruptFileError:
        pass


def _refresh_checksums(raw: bytes) -> bytes:
    """Recompute both CRCs so that a mutated file gets past them (if its framing still parses)."""
    from penjing.codec.bits import Reader

    try:
        r = Reader(raw)
        r.take(len(MAGIC) + 1)
        n = r.varint()
        header = bytes(r.take(n))
        r.take(4)
        body = bytes(r.take(r.remaining - 4))
    except CorruptFileError:
        return raw
    return (raw[:len(MAGIC) + 1] + varint(n) + header + zlib.crc32(header).to_bytes(4, "little") + body
            + zlib.crc32(body).to_bytes(4, "little"))
