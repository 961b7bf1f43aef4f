"""atheris (libFuzzer) harness for the ``.pjz`` decoder.

    python fuzz/atheris_pjz.py -max_total_time=600 -timeout=1 -rss_limit_mb=512 fuzz/corpus_pjz

Any exception other than :class:`penjing.codec.CorruptFileError` is a crash; so is an input
over the issue's limits (:mod:`limits`: 1 s of CPU, a peak-RSS rise over 4x the largest tensor
the file legitimately holds), and libFuzzer's ``-timeout`` (wall clock) and ``-rss_limit_mb``
(the whole process) stay as backstops. ``PENJING_FUZZ_STATS=FILE`` writes the run's maxima. Inputs that parse as a well-framed file are also
mutated structurally (:mod:`pjz_mutations`: fields changed, CRCs recomputed), so that the
fuzzer reaches the tensor decoders and does not stop at the checksums.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports(include=["penjing.codec"]):
    from penjing.codec import CorruptFileError, loads

import atheris_refs  # noqa: E402
import pjz_mutations  # noqa: E402  (after the instrumented import, on purpose: not instrumented)
from limits import Watch  # noqa: E402


def largest_legitimate_tensor(data: bytes) -> int:
    """Bytes of the largest tensor in ``data`` that penjing accepts: of the whole file when it
    loads, else of each entry that loads on its own (one entry may be valid and the next not).
    Only called when an input sets a new RSS peak, so its cost does not matter."""
    try:
        return max((t.numel() * t.element_size() for t in loads(data).values()), default=0)
    except CorruptFileError:
        pass
    try:
        entries = pjz_mutations.parse(data)
    except Exception:  # not even framed: nothing in it is legitimate
        return 0
    best = 0
    for entry in entries:
        try:
            tensors = loads(pjz_mutations.build([entry]))
        except CorruptFileError:
            continue
        best = max([best] + [t.numel() * t.element_size() for t in tensors.values()])
    return best


_watch = Watch(largest_legitimate_tensor)


def _load(data: bytes) -> None:
    try:
        loads(data)
    except CorruptFileError:
        pass


test_one_input = atheris_refs.fuzz_target(_watch, _load)


def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    # Byte mutations are done here too (pjz_mutations.mutate_bytes), so that one seed decides
    # the whole mutation and a saved input can be reproduced from the log.
    rng = random.Random(seed)
    if rng.random() < 0.6:
        try:
            out = pjz_mutations.mutate(data, rng)
            if len(out) <= max_size:
                return out
        except Exception:  # not a well-framed file: byte mutations instead
            pass
    return pjz_mutations.mutate_bytes(data, rng)[:max_size]


def write_corpus(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, blob in enumerate(pjz_mutations.seed_files()):
        (folder / f"seed{i}.pjz").write_bytes(blob)


if __name__ == "__main__":
    corpus = [a for a in sys.argv[1:] if not a.startswith("-")]
    if corpus and not any(Path(corpus[0]).glob("*")):
        write_corpus(Path(corpus[0]))
    # PJZ_FUZZ_BYTES=1: libFuzzer's byte mutations only (mostly stopped by the CRCs)
    plain = os.environ.get("PJZ_FUZZ_BYTES") == "1"
    atheris.Setup(sys.argv, test_one_input, **({} if plain else {"custom_mutator": custom_mutator}))
    atheris.Fuzz()
