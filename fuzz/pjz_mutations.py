"""Structured mutations of ``.pjz`` files, shared by the test suite, the 100k-mutation run and
the atheris harness.

A byte flip in a ``.pjz`` file is refused by its CRC-32s; to reach the tensor decoders a
mutation has to keep the framing valid. :func:`mutate` parses a legitimate file into its
header entries and payloads, changes one thing -- a payload byte, a run of bytes, a varint
spliced in with an extreme value, a payload cut or grown, a header field (dtype, shape,
codec) -- and writes the file again with consistent lengths and freshly computed CRCs.
:func:`seed_files` builds small legitimate files that use every codec and stream mode.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

import torch

from penjing.codec.bits import Reader, varint
from penjing.codec.file import MAGIC, VERSION

#: Values a hostile file would try: edges of the widths and lengths the format uses.
EXTREMES = [0, 1, 2, 7, 8, 15, 16, 31, 32, 33, 63, 64, 65, 127, 128, 255, 256, 4095, 4096, 16384, 16385,
            2**16 - 1, 2**16, 2**24, 2**28, 2**28 + 1, 2**31 - 1, 2**31, 2**32, 2**32 + 1, 2**62, 2**63 - 1]


@dataclass
class Entry:
    name: bytes
    dtype: int
    shape: list[int]
    codec: int
    payload: bytes


def parse(blob: bytes) -> list[Entry]:
    """The header entries and payloads of a well-formed file (no checks: it is ours)."""
    r = Reader(blob)
    r.take(len(MAGIC) + 1)
    header = Reader(bytes(r.take(r.varint())))
    r.take(4)
    body = bytes(r.take(r.remaining - 4))
    entries, offset = [], 0
    for _ in range(header.varint()):
        name = bytes(header.take(header.varint()))
        dtype, ndim = header.u8(), header.u8()
        shape = [header.varint() for _ in range(ndim)]
        codec = header.u8()
        length = header.varint()
        entries.append(Entry(name, dtype, shape, codec, body[offset:offset + length]))
        offset += length
    return entries


def build(entries: list[Entry], version: int = VERSION) -> bytes:
    """A file with valid framing and checksums around ``entries`` (whatever they hold)."""
    header = bytearray(varint(len(entries)))
    for e in entries:
        header += varint(len(e.name)) + e.name + bytes([e.dtype & 0xFF, len(e.shape) & 0xFF])
        header += b"".join(varint(d) for d in e.shape) + bytes([e.codec & 0xFF]) + varint(len(e.payload))
    body = b"".join(e.payload for e in entries)
    header = bytes(header)
    return (MAGIC + bytes([version]) + varint(len(header)) + header + zlib.crc32(header).to_bytes(4, "little")
            + body + zlib.crc32(body).to_bytes(4, "little"))


def _mutate_payload(payload: bytes, rng: random.Random) -> bytes:
    data = bytearray(payload)
    op = rng.randrange(8)
    i = rng.randrange(len(data) + 1)
    if op == 0 and data:  # flip bits of one byte
        data[min(i, len(data) - 1)] ^= 1 << rng.randrange(8)
    elif op == 1 and data:  # an interesting byte
        data[min(i, len(data) - 1)] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, 0x0F, 0xF0, 16, 32, 33, 64])
    elif op == 2:  # splice an extreme varint over the bytes there
        v = varint(rng.choice(EXTREMES))
        data[i:i + rng.randrange(1, 4)] = v
    elif op == 3:  # cut
        del data[i:i + rng.randrange(1, 64)]
    elif op == 4:  # grow
        data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
    elif op == 5:  # repeat a run (copies of real structure)
        j = rng.randrange(len(data) + 1)
        data[i:i] = data[j:j + rng.randrange(1, 32)]
    elif op == 6 and data:  # randomise a run
        for k in range(i, min(len(data), i + rng.randrange(1, 8))):
            data[k] = rng.randrange(256)
    else:  # truncate
        data = data[:i]
    return bytes(data)


def mutate_bytes(blob: bytes, rng: random.Random) -> bytes:
    """Plain byte mutations of the whole file (the checksums are not fixed up)."""
    for _ in range(rng.choice([1, 1, 2, 4])):
        blob = _mutate_payload(blob, rng)
    return blob


def mutate(blob: bytes, rng: random.Random, rounds: int | None = None) -> bytes:
    """One structured mutation (or a few) of the well-formed file ``blob``, re-framed."""
    entries = parse(blob)
    for _ in range(rounds or rng.choice([1, 1, 1, 2, 3])):
        if not entries:
            break
        e = rng.choice(entries)
        what = rng.randrange(10)
        if what < 6:
            e.payload = _mutate_payload(e.payload, rng)
        elif what == 6:
            e.dtype = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 255])
        elif what == 7:
            e.codec = rng.choice([0, 1, 2, 3, 4, 5, 255])
        elif what == 8:
            if e.shape and rng.random() < 0.7:
                e.shape[rng.randrange(len(e.shape))] = rng.choice(EXTREMES)
            else:
                e.shape = [rng.choice(EXTREMES) for _ in range(rng.randrange(0, 4))] + rng.choice([[], [0]])
        else:
            other = rng.choice(entries)  # another tensor's payload under this header
            e.payload = other.payload
    return build(entries)


def seed_files() -> list[bytes]:
    """Small legitimate files covering every codec (raw, sparse-raw, codebook, sparse-codebook,
    affine), both stream modes (packed, Huffman in one block and in many), and every dtype."""
    import io
    import tempfile
    from pathlib import Path

    from penjing.codec import save

    g = torch.Generator().manual_seed(0)
    levels = torch.linspace(-1, 1, 16)
    skewed = levels[torch.multinomial(torch.tensor([64.0, 16, 8, 4, 2, 1, 1, 1] + [0.5] * 8), 6000, True,
                                      generator=g)]
    sparse = torch.where(torch.rand(9000, generator=g) < 0.08, torch.randn(9000, generator=g), torch.zeros(9000))
    shared = levels[torch.randint(0, 16, (40, 30), generator=g)]
    shared[torch.rand(40, 30, generator=g) < 0.8] = 0
    scale = torch.tensor(0.05)
    affine_w = (torch.randint(-8, 8, (20, 10), generator=g).float()) * scale
    states = [
        {"fc.weight": shared, "fc.bias": torch.randn(40, generator=g), "steps": torch.tensor(3)},
        {"skewed": skewed.reshape(60, 100), "sparse": sparse, "mask": torch.rand(300, generator=g) < 0.5},
        {"half": torch.randn(64, generator=g).half(), "bf": torch.randn(32, generator=g).bfloat16(),
         "i8": torch.randint(-5, 5, (50,), generator=g, dtype=torch.int8),
         "i64": torch.randint(0, 3, (4, 7), generator=g), "f64": torch.randn(5, generator=g).double(),
         "empty": torch.zeros(0, 3), "conv": torch.where(torch.rand(8, 4, 3, 3, generator=g) < 0.3,
                                                         torch.ones(8, 4, 3, 3), torch.zeros(8, 4, 3, 3))},
    ]
    blobs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, state in enumerate(states):
            for huffman in (True, False):
                path = Path(tmp) / f"{i}{huffman}.pjz"
                save(state, path, huffman=huffman)
                blobs.append(path.read_bytes())
        # an affine tensor (the codec is used only with a hint)
        from penjing.codec.tensors import encode_tensor

        enc = encode_tensor(affine_w, hint={"affine": {"bits": 4, "scale": scale, "zero_point": torch.tensor(0.0),
                                                       "axis": None}})
        blobs.append(build([Entry(b"affine", 0, [20, 10], enc.codec, enc.payload)]))
    del io
    return blobs
