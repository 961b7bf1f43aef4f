"""atheris (libFuzzer) harness for the CIFAR-10 python-batch reader (its own pickle parser).

    python fuzz/atheris_cifar.py -max_total_time=600 -timeout=1 -rss_limit_mb=512 fuzz/corpus_cifar

Anything other than a ``ValueError`` (the reader's one error for a bad file) is a crash; so is
an input over the issue's limits (:mod:`limits`: 1 s of CPU, a peak-RSS rise over 4x the file's
size, the bytes that back its arrays). ``PENJING_FUZZ_STATS=FILE`` writes the run's maxima.
"""

from __future__ import annotations

import pickle
import sys
import tempfile
from pathlib import Path

import atheris
import numpy as np

with atheris.instrument_imports(include=["penjing.data.local"]):
    from penjing.data.local import _cifar_python_batch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import atheris_refs  # noqa: E402
from limits import Watch  # noqa: E402

_TMP = Path(tempfile.mkdtemp()) / "batch"
_watch = Watch(len)  # a batch's arrays are built from its own bytes


def _read(data: bytes) -> None:
    _TMP.write_bytes(data)
    try:
        _cifar_python_batch(_TMP)
    except ValueError:
        pass


test_one_input = atheris_refs.fuzz_target(_watch, _read)


def write_corpus(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    batch = {b"batch_label": b"training batch 1 of 5", b"labels": [int(v) for v in rng.integers(0, 10, 2)],
             b"data": rng.integers(0, 256, (2, 3072)).astype(np.uint8), b"filenames": [b"a.png", b"b.png"]}
    for protocol in range(1, 6):
        (folder / f"p{protocol}").write_bytes(pickle.dumps(batch, protocol=protocol))


if __name__ == "__main__":
    corpus = [a for a in sys.argv[1:] if not a.startswith("-")]
    if corpus and not any(Path(corpus[0]).glob("*")):
        write_corpus(Path(corpus[0]))
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
