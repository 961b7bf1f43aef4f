"""The per-input limits of the hardening issue, checked inside the atheris harnesses.

libFuzzer's own limits are coarser than the issue's: ``-timeout`` is wall-clock seconds (on a
loaded machine an input can wait seconds for a core) and ``-rss_limit_mb`` bounds the whole
process (about 270 MB of it is Python, torch and numpy before the first input). :class:`Watch`
measures each input itself:

* its CPU time (``time.process_time``); over ``cpu_limit_s`` (1 s) is a finding;
* how far it pushed the process's peak RSS above the RSS it started from, whenever it set a new
  peak (an input that stays under an earlier peak cannot have grown more than that peak, which
  was checked when it was set); over ``4 x`` the input's memory budget plus ``slack_mb`` is a
  finding. The budget is the size in bytes of the largest tensor the file declares (``.pjz``)
  or of the file (a CIFAR batch, whose arrays are backed by its bytes); ``slack_mb`` absorbs
  the allocator's granularity (glibc and torch take memory from the system in blocks of
  hundreds of KB to a few MB).

A finding raises :class:`LimitExceeded`, which libFuzzer reports as a crash and saves the input.
The running maxima are written to ``PENJING_FUZZ_STATS`` (JSON) every 5,000 inputs and on
every new maximum, so a run's figures survive however libFuzzer ends it.
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Callable

_PAGE = os.sysconf("SC_PAGE_SIZE")


class LimitExceeded(Exception):
    """An input took more CPU or memory than the issue allows."""


def current_rss() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


class Watch:
    """Measure every input; raise :class:`LimitExceeded` past the limits (see the module)."""

    def __init__(self, budget: Callable[[bytes], int], *, cpu_limit_s: float = 1.0, slack_mb: float = 8.0,
                 stats_path: str | None = None):
        self.budget, self.cpu_limit_s, self.slack = budget, cpu_limit_s, int(slack_mb * 2**20)
        self.stats_path = stats_path if stats_path is not None else os.environ.get("PENJING_FUZZ_STATS")
        self.stats = {"inputs": 0, "max_cpu_s": 0.0, "max_cpu_input_bytes": 0, "max_rss_rise_mb": 0.0,
                      "max_rss_rise_budget_mb": 0.0, "peak_rss_mb": 0.0, "start_rss_mb": current_rss() / 2**20}

    def run(self, fn: Callable[[bytes], object], data: bytes) -> None:
        rss_before, peak_before = current_rss(), peak_rss()
        t0 = time.process_time()
        try:
            fn(data)
        finally:
            cpu = time.process_time() - t0
            peak_after = peak_rss()
            self._record(data, cpu, rss_before, peak_before, peak_after)

    def _record(self, data: bytes, cpu: float, rss_before: int, peak_before: int, peak_after: int) -> None:
        s = self.stats
        s["inputs"] += 1
        new_max = False
        if cpu > s["max_cpu_s"]:
            s["max_cpu_s"], s["max_cpu_input_bytes"], new_max = cpu, len(data), True
        if peak_after > peak_before:
            rise, budget = peak_after - rss_before, self.budget(data)
            s["peak_rss_mb"] = peak_after / 2**20
            if rise / 2**20 > s["max_rss_rise_mb"]:
                s["max_rss_rise_mb"], s["max_rss_rise_budget_mb"], new_max = rise / 2**20, budget / 2**20, True
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
