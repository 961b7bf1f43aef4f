"""The per-input limits of the hardening issue, checked inside the atheris harnesses.

libFuzzer's own limits are coarser than the issue's: ``-timeout`` is wall-clock seconds (on a
loaded machine an input can wait seconds for a core) and ``-rss_limit_mb`` bounds the whole
process (about 270 MB of it is Python, torch and numpy before the first input). :class:`Watch`
measures each input itself:

* its CPU time (``time.process_time``); over ``cpu_limit_s`` (1 s) is a finding;
* how far its peak RSS rose above the RSS it started from: before each input the kernel's
  high-water mark is reset (``/proc/self/clear_refs`` = 5, Linux >= 4.0) and ``VmHWM`` read
  after it, so the figure is that one input's own peak. Over ``4 x`` the input's memory budget
  plus ``slack_mb`` is a finding. The budget is the size in bytes of the largest tensor the
  file legitimately holds (``.pjz``) or of the file (a CIFAR batch, whose arrays are backed by
  its bytes); ``slack_mb`` absorbs the allocator's granularity (glibc, numpy and torch take
  memory from the system in blocks of up to a few MB).

Because of the reset, libFuzzer's own ``peak_rss_mb`` only covers the time since the last
input began; the run's peak is the ``peak_rss_mb`` of the stats written here.

A finding raises :class:`LimitExceeded`, which libFuzzer reports as a crash and saves the input.
The running maxima are written to ``PENJING_FUZZ_STATS`` (JSON) every 5,000 inputs and on
every new maximum, and at exit, so a run's figures survive however libFuzzer ends it.
"""

from __future__ import annotations

import atexit
import json
import os
import time
from collections.abc import Callable

_PAGE = os.sysconf("SC_PAGE_SIZE")


class LimitExceeded(Exception):
    """An input took more CPU or memory than the issue allows."""


def current_rss() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss() -> int:
    """The peak RSS since the last :func:`reset_peak_rss` (``VmHWM``), in bytes."""
    with open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


class Watch:
    """Measure every input; raise :class:`LimitExceeded` past the limits (see the module)."""

    def __init__(self, budget: Callable[[bytes], int], *, cpu_limit_s: float = 1.0, slack_mb: float = 8.0,
                 stats_path: str | None = None):
        self.budget, self.cpu_limit_s, self.slack = budget, cpu_limit_s, int(slack_mb * 2**20)
        self.stats_path = stats_path if stats_path is not None else os.environ.get("PENJING_FUZZ_STATS")
        atexit.register(self._save)  # the final figures, when libFuzzer ends the run by exit()
        self.stats = {"inputs": 0, "max_cpu_s": 0.0, "max_cpu_input_bytes": 0, "max_rss_rise_mb": 0.0,
                      "max_rss_rise_input_bytes": 0, "max_rss_rise_budget_mb": 0.0, "peak_rss_mb": 0.0,
                      "start_rss_mb": current_rss() / 2**20}

    def run(self, fn: Callable[[bytes], object], data: bytes) -> None:
        reset_peak_rss()
        rss_before = current_rss()
        t0 = time.process_time()
        try:
            fn(data)
        finally:
            cpu = time.process_time() - t0
            self._record(data, cpu, rss_before, peak_rss())

    def _record(self, data: bytes, cpu: float, rss_before: int, peak: int) -> None:
        s = self.stats
        s["inputs"] += 1
        new_max = False
        if cpu > s["max_cpu_s"]:
            s["max_cpu_s"], s["max_cpu_input_bytes"], new_max = cpu, len(data), True
        s["peak_rss_mb"] = max(s["peak_rss_mb"], peak / 2**20)
        rise = max(peak - rss_before, 0)
        if rise / 2**20 > s["max_rss_rise_mb"]:
            s["max_rss_rise_mb"], s["max_rss_rise_input_bytes"], new_max = rise / 2**20, len(data), True
            s["max_rss_rise_budget_mb"] = self.budget(data) / 2**20
            if self.stats_path:  # the input, to look at
                with open(f"{self.stats_path}.max_rise_input", "wb") as f:
                    f.write(data)
        if rise > self.slack:
            budget = self.budget(data)
            if rise > 4 * budget + self.slack:
                self._save()
                raise LimitExceeded(f"a {len(data)}-byte input raised the RSS by {rise / 2**20:.1f} MB; its "
                                    f"largest legitimate tensor is {budget / 2**20:.2f} MB (limit 4x + "
                                    f"{self.slack / 2**20:g} MB)")
        if cpu > self.cpu_limit_s:
            self._save()
            raise LimitExceeded(f"a {len(data)}-byte input took {cpu:.2f} s of CPU (limit {self.cpu_limit_s:g} s)")
        if new_max or s["inputs"] % 5000 == 0:
            self._save()

    def _save(self) -> None:
        if self.stats_path:
            tmp = f"{self.stats_path}.tmp"
            with open(tmp, "w") as f:
                json.dump(self.stats, f, indent=1)
            os.replace(tmp, self.stats_path)
