"""What every benchmark prints in its header: the machine it ran on."""

from __future__ import annotations

import platform
import subprocess


def cpu_name() -> str:
    """The CPU model from ``lscpu`` (falls back to ``platform.processor()``)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"


def machine_header(command: str) -> str:
    """Markdown header lines: command, date, CPU with its SIMD flags, torch, load average."""
    import datetime
    import os

    import torch

    from penjing.runtime.build import REPORTED_FLAGS, cpu_flags

    flags = cpu_flags()
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    return "  \n".join([
        f"Command: `{command}`",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"CPU: {cpu_name()} ({os.cpu_count()} cores visible), {platform.machine()}; flags: "
        f"{', '.join(f for f in REPORTED_FLAGS if f in flags) or 'none of ' + ', '.join(REPORTED_FLAGS)}",
        f"torch {torch.__version__}; load average at start {load}",
    ])
