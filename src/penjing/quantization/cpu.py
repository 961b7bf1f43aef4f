"""What the CPU can do for int8: VNNI (``u8 x s8`` dot products summed in int32, so full
8-bit activations *and* weights cannot saturate) or not (AVX2 ``vpmaddubsw`` adds product
pairs in int16, which saturates unless one side keeps 7 bits)."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags (Linux ``/proc/cpuinfo``; empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def has_vnni() -> bool:
    """Does this CPU sum ``u8 x s8`` products in int32 (AVX512-VNNI, AVX-VNNI or AMX)?"""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    return any(f in cpu_flags() for f in _VNNI_FLAGS)
