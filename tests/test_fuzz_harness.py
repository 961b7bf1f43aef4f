"""The atheris harnesses' own machinery: the reference-leak workaround and the per-input limits
(fuzz/README.md). The harness runs themselves are the 10-minute campaign, not the test suite."""

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

FUZZ = Path(__file__).resolve().parents[1] / "fuzz"
sys.path.insert(0, str(FUZZ))

from limits import LimitExceeded, Watch  # noqa: E402

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# Runs under libFuzzer: the native comparison tracer is only installed once fuzzing starts.
_PROBE = """
import os, sys
sys.path.insert(0, {fuzz!r})
import atheris, atheris_refs
calls = [0]
def one(data):
    calls[0] += 1
    if calls[0] == 2:
        before = atheris_refs.surplus_references()
        atheris_refs.install()
        print("SURPLUS", before, atheris_refs.surplus_references(), flush=True)
        os._exit(0)
atheris.Setup([sys.argv[0], "-runs=10"], one)
atheris.Fuzz()
"""


def test_atheris_comparison_results_keep_no_extra_reference():
    """atheris's native _trace_cmp leaves every comparison result one reference too many, which
    leaked every array compared in the decoders (the RSS of a 10-minute run grew 273 -> 517 MB);
    atheris_refs.install() must bring the surplus to 0."""
    pytest.importorskip("atheris")
    out = subprocess.run([sys.executable, "-c", _PROBE.format(fuzz=str(FUZZ))], capture_output=True, text=True,
                         timeout=120)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("SURPLUS")]
    assert line == ["SURPLUS 1 0"], out.stdout + out.stderr[-2000:]


@linux_only
def test_an_input_that_allocates_more_than_4x_its_tensor_is_a_finding():
    def allocate(mb: int):
        a = np.ones(mb * 2**20 // 8)  # touched: resident
        return float(a[-1])

    tight = Watch(lambda data: 2**20, slack_mb=8, stats_path="")  # 1 MB tensor: limit 4 + 8 MB
    with pytest.raises(LimitExceeded, match=r"a 3-byte input raised the RSS by (6\d|7\d)\.\d MB; its largest "
                                            r"legitimate tensor is 1.00 MB \(limit 4x \+ 8 MB\)"):
        tight.run(lambda data: allocate(64), b"abc")
    roomy = Watch(lambda data: 32 * 2**20, slack_mb=8, stats_path="")  # 4 x 32 + 8 MB > 64 MB
    roomy.run(lambda data: allocate(64), b"abc")
    assert 60 < roomy.stats["max_rss_rise_mb"] < 80, roomy.stats  # 64 MB, give or take pages
    assert roomy.stats["max_rss_rise_budget_mb"] == 32


@linux_only
def test_the_rise_is_the_inputs_own_peak_not_the_process_high_water_mark():
    watch = Watch(lambda data: 16 * 2**20, slack_mb=8, stats_path="")
    watch.run(lambda data: np.ones(48 * 2**20 // 8).sum(), b"big")  # 48 MB, freed at once
    assert watch.stats["max_rss_rise_mb"] > 45
    watch.stats["max_rss_rise_mb"] = 0.0
    watch.run(lambda data: np.ones(1000).sum(), b"small")  # below the earlier peak, measured anew
    assert watch.stats["max_rss_rise_mb"] < 8, watch.stats


def test_an_input_over_a_cpu_second_is_a_finding():
    def spin(data):
        t0 = time.process_time()
        while time.process_time() - t0 < 0.3:
            pass

    watch = Watch(lambda data: 0, cpu_limit_s=0.2, stats_path="")
    with pytest.raises(LimitExceeded, match=r"a 4-byte input took 0\.\d\d s of CPU \(limit 0.2 s\)"):
        watch.run(spin, b"slow")
