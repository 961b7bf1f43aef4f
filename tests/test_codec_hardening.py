"""The .pjz decoder is bounded by the bytes behind every count (#20 items 2-4): each repro of
the hardening issue is here, with the exact message and byte offset it now gets."""

import itertools
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from penjing.codec import CorruptFileError, huffman, load, loads, save
from penjing.codec.bits import varint
from penjing.codec.streams import PACKED, StreamPlan

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fuzz"))
import pjz_mutations  # noqa: E402
from pjz_mutations import Entry, build  # noqa: E402

F32, BOOL = 0, 9
RAW, SPARSE_RAW, CODEBOOK, SPARSE_CODEBOOK = 0, 1, 2, 3
ONE = b"\x00\x00\x80\x3f"  # 1.0f


def body_offset(blob: bytes, payload: bytes) -> int:
    """File offset of the first payload (the single-tensor files below have one)."""
    return len(blob) - 4 - len(payload)


def refused(blob: bytes, match: str, **kwargs) -> CorruptFileError:
    with pytest.raises(CorruptFileError, match=match) as info:
        loads(blob, **kwargs)
    return info.value


def packed(n: int, width: int, data: bytes) -> bytes:
    return varint(n) + bytes([PACKED, width]) + data


# ---------------------------------------------------------------------------- repros of item 2

def test_width_zero_stream_claiming_2_28_symbols_is_refused_before_allocating():
    """37 bytes used to decode to 3.3 GB: a width-0 stream claims 2^28 symbols backed by nothing."""
    payload = varint(1) + ONE + packed(1 << 28, 0, b"")
    blob = build([Entry(b"w", F32, [1 << 28], CODEBOOK, payload)])
    err = refused(blob, r"w: codebook indices claims 268435456 symbols but only 2 bytes remain "
                        r"\(every symbol takes at least one bit\)")
    assert err.offset == body_offset(blob, payload) + 5
    # the same stream with a count its bytes could hold: width 0 itself is refused
    payload = varint(1) + ONE + packed(4, 0, b"")
    blob = build([Entry(b"w", F32, [4], CODEBOOK, payload)])
    err = refused(blob, r"codebook indices width 0 not in \[1, 32\]")
    assert err.offset == body_offset(blob, payload) + 7


def test_claims_past_the_element_budget_are_refused_from_the_header():
    """47 bytes used to decode to 6.4 GB and 37 bytes to ask for 32 GiB: the per-file budget
    (default 2^28 elements, all tensors together) is checked before any payload is read."""
    big = [Entry(b"a", F32, [1 << 27], RAW, b""), Entry(b"b", F32, [(1 << 27) + 1], RAW, b"")]
    err = refused(build(big), r"header: b of shape \(134217729,\) brings the file to 268435457 elements, "
                              r"over the limit of 268435456 \(load\(..., max_elements=N\) raises it\)")
    assert err.offset == 20  # b's first dimension: 5 bytes of framing, 1 of count, 10 of a, 4 of b
    refused(build([Entry(b"w", 3, [1 << 32], RAW, b"")]), "dimension = 4294967296 exceeds the limit 268435456")
    # the budget is settable both ways
    small = build([Entry(b"w", F32, [3], RAW, ONE * 3)])
    refused(small, "dimension = 3 exceeds the limit 2", max_elements=2)
    assert torch.equal(loads(small, max_elements=3)["w"], torch.ones(3))
    raised = build([Entry(b"w", F32, [(1 << 28) + 1], RAW, b"")])
    refused(raised, r"raw tensor of 268435457 x 4 bytes but its payload holds 0", max_elements=1 << 29)


def test_filler_runs_cannot_exceed_the_budget():
    """8 KB of filler symbols used to decode to 1.26 GB; the tensor they cover is over budget."""
    n = 70000  # 12-bit fillers of 4095 zeros each, Huffman-coded at 1 bit each
    stream = StreamPlan(np.full(n, 4095), 12).encode()[0]
    payload = bytes([12]) + stream
    blob = build([Entry(b"w", F32, [n * 4095], SPARSE_RAW, payload)])
    assert len(blob) < 12_000
    refused(blob, r"header: dimension = 286650000 exceeds the limit 268435456")
    # within a raised budget the same file is legitimate: an all-zero tensor
    assert int(torch.count_nonzero(loads(blob, max_elements=1 << 29)["w"])) == 0


# ---------------------------------------------------------------------------- repros of item 3

def test_one_huffman_block_over_every_symbol_is_refused():
    """One block of 20000 symbols used to cost a Python step per symbol (43.6 s for 500 KB)."""
    symbols = np.arange(20000) % 3
    lengths = huffman.code_lengths(np.bincount(symbols))
    data, _, total = huffman.encode(symbols, lengths, 20000)
    table = bytes([(lengths[0] << 4) | lengths[1], lengths[2] << 4])
    stream = varint(20000) + bytes([1]) + varint(3) + table + varint(20000) + varint(total) + data
    payload = varint(3) + ONE * 3 + stream
    blob = build([Entry(b"w", F32, [20000], CODEBOOK, payload)])
    err = refused(blob, r"codebook indices block size = 20000 exceeds the limit 16384")
    assert err.offset == body_offset(blob, payload) + 1 + 12 + 3 + 1 + 1 + 2


@pytest.mark.parametrize("n, block", [(1, 1), (300, 300), (5000, 256), (40000, 256), (9000, 16384)])
def test_both_huffman_decoders_equal_the_encoder_input(n, block):
    rng = np.random.default_rng(n)
    x = rng.choice(40, n, p=rng.dirichlet(np.full(40, 0.4)))
    lengths = huffman.code_lengths(np.bincount(x))
    block = min(block, n)
    data, offsets, total = huffman.encode(x, lengths, block)
    table, width = huffman.decode_table(lengths)
    last = n - block * (len(offsets) - 1)
    ends = np.append(offsets[1:], total)
    for decoder in (huffman._decode_steps, huffman._decode_jumps):
        assert np.array_equal(decoder(data, table, width, block, last, offsets, ends, total, 0), x)
    assert np.array_equal(huffman.decode(data, n, lengths, block, offsets, total), x)


def test_both_huffman_decoders_refuse_the_same_corruptions():
    rng = np.random.default_rng(0)
    x = rng.choice(12, 3000, p=rng.dirichlet(np.full(12, 0.5)))
    lengths = huffman.code_lengths(np.bincount(x))
    lengths[lengths.argmax()] += 1  # an incomplete code: some windows are no code at all
    block = 100
    data, offsets, total = huffman.encode(x, lengths, block)
    table, width = huffman.decode_table(lengths)
    last = 3000 - block * (len(offsets) - 1)
    ends = np.append(offsets[1:], total)
    for _ in range(200):
        bad = bytearray(data)
        bad[int(rng.integers(len(bad)))] ^= 1 << int(rng.integers(8))
        verdicts = []
        for decoder in (huffman._decode_steps, huffman._decode_jumps):
            try:
                verdicts.append(decoder(bytes(bad), table, width, block, last, offsets, ends, total, 0).tolist())
            except CorruptFileError as exc:
                assert "Huffman block" in str(exc)
                verdicts.append("refused")
        assert verdicts[0] == verdicts[1]  # the same symbols, or both refuse


# ---------------------------------------------------------------------------- repros of item 4

def test_width_64_streams_are_refused():
    """Width-64 values used to wrap negative: an IndexError, or index -1 = the last centroid."""
    payload = varint(2) + ONE * 2 + packed(1, 64, b"\xff" * 8)
    blob = build([Entry(b"w", F32, [1], CODEBOOK, payload)])
    err = refused(blob, r"codebook indices width 64 not in \[1, 32\]")
    assert err.offset == body_offset(blob, payload) + 1 + 8 + 2
    refused(build([Entry(b"w", F32, [1], CODEBOOK, varint(2) + ONE * 2 + packed(1, 33, b"\xff" * 5))]),
            r"width 33 not in \[1, 32\]")


def test_sparse_index_symbols_past_the_escape_are_refused():
    """A negative run used to put two nonzeros at one position; now every symbol is checked."""
    # width-5 index, but the stream is packed at 6 bits and holds 40 (> escape 31)
    runs = packed(1, 6, bytes([40 << 2]))
    payload = bytes([5]) + runs + ONE
    blob = build([Entry(b"w", F32, [41], SPARSE_RAW, payload)])
    err = refused(blob, r"w: sparse index symbol out of range \[0, 31\]")
    assert err.offset == body_offset(blob, payload) + 1


def test_stored_zero_under_a_nonzero_position_is_refused():
    runs = packed(1, 5, bytes([0]))
    blob = build([Entry(b"w", F32, [1], SPARSE_RAW, bytes([5]) + runs + b"\x00" * 4)])
    refused(blob, "a value the sparse index marks as nonzero is zero")


def test_overflowing_shape_with_a_zero_dimension_is_a_corrupt_file_error():
    """(2^62, 2^62, 0) used to raise torch's 'numel: integer multiplication overflow'."""
    blob = build([Entry(b"w", F32, [1 << 62, 1 << 62, 0], RAW, b"")])
    refused(blob, r"dimension = 4611686018427387904 exceeds the limit 268435456")
    blob = build([Entry(b"w", F32, [1 << 20, 1 << 20, 0], RAW, b"")])
    refused(blob, r"w of shape \(1048576, 1048576, 0\) brings the file to 1099511627776 elements")
    assert loads(build([Entry(b"w", F32, [5, 0], RAW, b"")]))["w"].shape == (5, 0)


def test_bool_bytes_other_than_0_and_1_are_refused():
    blob = build([Entry(b"m", BOOL, [3], RAW, b"\x01\x00\x02")])
    err = refused(blob, r"m: bool tensor holds the byte 0x02 \(only 0 and 1 are booleans\)")
    assert err.offset == body_offset(blob, b"\x01\x00\x02")
    assert loads(build([Entry(b"m", BOOL, [3], RAW, b"\x01\x00\x01")]))["m"].tolist() == [True, False, True]


def test_huge_affine_offset_is_refused():
    from penjing.codec.bits import zigzag

    params = bytes([0]) + varint(1) + ONE + bytes([0]) + varint(1) + b"\x00" * 4
    payload = bytes([4, 255]) + params + varint(zigzag(1 << 40)) + packed(1, 4, b"\x10")
    refused(build([Entry(b"w", F32, [1], 4, payload)]), "affine offset 1099511627776 is not a 32-bit integer")


def test_every_error_carries_its_offset_in_the_message(tmp_path):
    blob = build([Entry(b"w", F32, [4], CODEBOOK, varint(1) + ONE + packed(4, 0, b""))])
    err = refused(blob, "width 0")
    assert str(err).endswith(f"(at byte {err.offset})")
    path = tmp_path / "w.pjz"
    path.write_bytes(blob[:10])
    with pytest.raises(CorruptFileError, match=r"\(at byte \d+\)$"):
        load(path)


# ---------------------------------------------------------------------------- #16: the length limiter

def _brute_force_cost(counts: np.ndarray, max_len: int) -> int:
    best = None
    for lengths in itertools.product(range(1, max_len + 1), repeat=len(counts)):
        if sum(2.0 ** -x for x in lengths) <= 1:
            cost = sum(a * b for a, b in zip(lengths, counts, strict=True))
            best = cost if best is None else min(best, cost)
    return best


def test_length_limited_codes_are_optimal_and_complete():
    """Package-merge against an exhaustive search: the limited code is the cheapest prefix code
    within the limit and gives every occurring symbol a code (the old count-halving
    heuristic was beaten by the exhaustive search on 35 of 300 of these)."""
    rng = np.random.default_rng(3)
    for _ in range(150):
        n = int(rng.integers(3, 7))
        max_len = int(np.ceil(np.log2(n))) + int(rng.integers(0, 2))
        counts = (rng.integers(1, 60, n) ** 3).astype(np.int64)
        lengths = huffman.code_lengths(counts, max_len)
        assert (lengths >= 1).all() and lengths.max() <= max_len and huffman.kraft_ok(lengths)
        assert int((lengths * counts).sum()) == _brute_force_cost(counts, max_len)
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])
    lengths = huffman.code_lengths(np.array(fib))  # unlimited depth would be 39
    assert lengths.max() == huffman.MAX_LEN and (lengths > 0).all()
    assert int((1 << (huffman.MAX_LEN - lengths)).sum()) == 1 << huffman.MAX_LEN  # complete


def test_save_refuses_to_write_what_load_would_reject(tmp_path, monkeypatch):
    """A limiter that drops the rarest symbol's code (the mutation #16 found) must not produce
    a file: save verifies every stream and payload before writing."""
    real = huffman.code_lengths

    def drops_rarest(counts, max_len=huffman.MAX_LEN):
        lengths = real(counts, max_len)
        used = np.flatnonzero(np.asarray(counts) > 0)
        lengths[used[np.argmin(np.asarray(counts)[used])]] = 0
        return lengths

    monkeypatch.setattr(huffman, "code_lengths", drops_rarest)
    rng = np.random.default_rng(0)
    levels = torch.linspace(-1, 1, 16)
    w = levels[torch.from_numpy(rng.choice(16, 5000, p=rng.dirichlet(np.full(16, 0.3))))]
    path = tmp_path / "m.pjz"
    with pytest.raises(RuntimeError, match="internal error: Huffman code lengths do not give every symbol"):
        save({"w": w}, path)
    assert not path.exists() and not list(tmp_path.iterdir())


def test_save_verifies_each_payload(tmp_path, monkeypatch):
    """Any encoder bug that would write a payload that decodes differently is caught by save."""
    from penjing.codec import file as pjz_file

    real = pjz_file.encode_tensor

    def off_by_one(tensor, **kwargs):
        enc = real(tensor, **kwargs)
        enc.payload = enc.payload[:-4] + bytes([enc.payload[-4] ^ 1]) + enc.payload[-3:]
        return enc

    monkeypatch.setattr(pjz_file, "encode_tensor", off_by_one)
    with pytest.raises(RuntimeError, match=r"internal error: w encoded as raw decodes to different values"):
        save({"w": torch.randn(7)}, tmp_path / "m.pjz")
    assert not (tmp_path / "m.pjz").exists()


# ---------------------------------------------------------------------------- fuzz (default run)

def test_structured_mutations_raise_only_corrupt_file_errors():
    """3000 structured mutations (fields changed, CRCs recomputed) of legitimate files that use
    every codec, at the default budget: each loads or raises CorruptFileError, nothing else.
    (fuzz/run_mutations.py runs the same at 100k; fuzz/atheris_pjz.py under libFuzzer.)"""
    seeds = pjz_mutations.seed_files()
    rng = random.Random(20)
    outcomes = {"loaded": 0, "refused": 0}
    for _ in range(3000):
        blob = pjz_mutations.mutate(rng.choice(seeds), rng)
        try:
            loads(blob)
            outcomes["loaded"] += 1
        except CorruptFileError as exc:
            assert exc.offset is None or 0 <= exc.offset <= len(blob)
            outcomes["refused"] += 1
    assert outcomes["loaded"] > 100 and outcomes["refused"] > 1000  # both paths are exercised


# ---------------------------------------------------------------------------- CLI

@pytest.mark.parametrize("command", [["inspect"], ["decompress"], ["eval"]])
def test_commands_print_one_line_and_exit_2_on_corrupt_files(tmp_path, capsys, command):
    from penjing.cli import main

    repros = {
        "width64.pjz": build([Entry(b"w", F32, [1], CODEBOOK, varint(2) + ONE * 2 + packed(1, 64, b"\xff" * 8))]),
        "overflow.pjz": build([Entry(b"w", F32, [1 << 62, 1 << 62, 0], RAW, b"")]),
        "bool.pjz": build([Entry(b"m", BOOL, [3], RAW, b"\x01\x00\x02")]),
        "truncated.pjz": build([Entry(b"w", F32, [3], RAW, ONE * 3)])[:-7],
        "missing.pjz": None,
    }
    for name, blob in repros.items():
        path = tmp_path / name
        if blob is not None:
            path.write_bytes(blob)
        assert main([*command, str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"penjing {command[0]}: error: ")
        assert "Traceback" not in err
