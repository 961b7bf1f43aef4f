"""Compile the C kernels on first use and pick the variant the running CPU supports.

``csrc/kernels.c`` is compiled once per instruction-set variant (``generic``; ``avx2`` with
FMA; ``avx512`` with F/BW/VL/DQ) into one shared library under
``platformdirs.user_cache_dir("penjing")/kernels/<key>/``, where the key hashes the source,
the compiler's version, the flags and the CPU's relevant feature flags -- so a new penjing, a
new gcc or a different CPU (these machines change from one day to the next) gets a fresh
build, and nothing links against torch's C++ ABI (a torch upgrade cannot break it).

Environment: ``PENJING_KERNELS=off`` forces the PyTorch fallback; ``PENJING_ISA=generic|avx2|
avx512`` forces a variant (it must be one the CPU supports); ``PENJING_THREADS=pool`` keeps the
kernels off torch's OpenMP team (:func:`threading_mode`); ``CC`` picks the compiler.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).with_name("csrc") / "kernels.c"
#: -ffp-contract=off: the epilogues' (sum * scale) + bias must not become an fma (see kernels.c);
#: the inner loops are intrinsics, so their fmas stay
COMMON_FLAGS = ["-O3", "-fPIC", "-pthread", "-fno-strict-aliasing", "-std=gnu11", "-ffp-contract=off"]
#: variant -> (gcc flags, CPU flags from /proc/cpuinfo it needs)
VARIANTS: dict[str, tuple[list[str], set[str]]] = {
    "generic": ([], set()),
    "avx2": (["-mavx2", "-mfma", "-mf16c"], {"avx2", "fma", "f16c"}),
    "avx512": (["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c",
                "-mprefer-vector-width=512"],
               {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx2", "fma", "f16c"}),
}
PREFERENCE = ["avx512", "avx2", "generic"]
#: The flags the results header and the cache key mention (VNNI/AMX are reported, not used:
#: these kernels take float activations).
REPORTED_FLAGS = ["avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "amx_tile"]


def cpu_flags() -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def supported_variants(flags: set[str] | None = None) -> list[str]:
    """Variants this CPU can run, best first (x86 only for the SIMD ones)."""
    flags = cpu_flags() if flags is None else flags
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    return [v for v in PREFERENCE if v == "generic" or (x86 and VARIANTS[v][1] <= flags)]


@dataclass
class Kernels:
    """The loaded library and the variant its ``pj_*`` calls dispatch to."""

    lib: ctypes.CDLL
    isa: str
    path: Path
    #: ``"openmp"`` (torch's OpenMP team) or ``"pool"`` (the kernels' own threads)
    threading: str = "pool"

    def fn(self, name: str):
        return getattr(self.lib, f"{name}_{self.isa}")


class KernelsUnavailable(RuntimeError):
    """Why the compiled kernels cannot be had here (the PyTorch fallback runs instead)."""


_lock = threading.Lock()
_cached: Kernels | KernelsUnavailable | None = None
_warned = False


def _compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise KernelsUnavailable("no C compiler found (install gcc, or set CC)")
    return cc


def _compile(cc: str, variants: list[str], out: Path) -> None:
    """Build the library; with OpenMP (``-fopenmp``) where the compiler has it, else without
    (the kernels then always use their own thread pool)."""
    try:
        _compile_with(cc, variants, out, ["-fopenmp"])
    except KernelsUnavailable:
        _compile_with(cc, variants, out, [])


def _compile_with(cc: str, variants: list[str], out: Path, extra: list[str]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="build-", dir=out.parent))
    try:
        objects = []
        for v in variants:
            obj = tmp / f"{v}.o"
            cmd = [cc, *COMMON_FLAGS, *extra, *VARIANTS[v][0], f"-DSUFFIX={v}", "-c", str(SOURCE), "-o", str(obj)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode:
                raise KernelsUnavailable(f"compiling the {v} kernels failed: {res.stderr.strip()[-2000:]}")
            objects.append(str(obj))
        lib = tmp / "libpenjing_kernels.so"
        res = subprocess.run([cc, "-shared", "-pthread", *extra, *objects, "-o", str(lib)], capture_output=True,
                             text=True)
        if res.returncode:
            raise KernelsUnavailable(f"linking the kernels failed: {res.stderr.strip()[-2000:]}")
        os.replace(lib, out)  # atomic: a concurrent process sees the whole library or none
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def torch_openmp_symbol() -> int | None:
    """Address of ``omp_get_max_threads`` in the OpenMP runtime torch's CPU library is bound to."""
    import torch

    try:
        lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        return ctypes.cast(lib.omp_get_max_threads, ctypes.c_void_p).value
    except (OSError, AttributeError):
        return None


def shares_torch_openmp(lib: ctypes.CDLL, isa: str) -> bool:
    """Is the library bound to the very OpenMP runtime torch uses? (Other runtimes a process
    maps, such as scikit-learn's vendored libgomp, do not matter: each library is bound to one.)"""
    ours = getattr(lib, f"pj_openmp_symbol_{isa}", None)
    if ours is None:
        return False
    ours.restype = ctypes.c_void_p
    theirs = torch_openmp_symbol()
    return theirs is not None and ours() == theirs


def threading_mode(lib: ctypes.CDLL, isa: str) -> str:
    """``"openmp"`` when the kernels run on torch's own OpenMP team: the library was built with
    OpenMP and is bound to torch's runtime (:func:`shares_torch_openmp`). Otherwise ``"pool"``
    (the kernels' own threads). ``PENJING_THREADS=pool`` forces the pool."""
    setter = getattr(lib, f"pj_set_openmp_{isa}", None)
    shared = setter is not None and shares_torch_openmp(lib, isa) and not _forked
    on = shared and os.environ.get("PENJING_THREADS", "").lower() != "pool"
    if setter is not None:
        setter.argtypes = [ctypes.c_int]
        setter(1 if on else 0)
    return "openmp" if on else "pool"


def cache_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(os.environ.get("PENJING_CACHE") or user_cache_dir("penjing")) / "kernels"


def build(force_isa: str | None = None) -> Kernels:
    """Compile (or find in the cache) and load the kernels; raises :class:`KernelsUnavailable`."""
    if os.environ.get("PENJING_KERNELS", "").lower() in ("0", "off", "no", "false"):
        raise KernelsUnavailable("PENJING_KERNELS=off")
    flags = cpu_flags()
    variants = supported_variants(flags)
    isa = force_isa or os.environ.get("PENJING_ISA") or variants[0]
    if isa not in variants:
        raise KernelsUnavailable(f"instruction set {isa!r} is not supported by this CPU (it has {variants})")
    cc = _compiler()
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError) as exc:
        raise KernelsUnavailable(f"{cc} --version failed: {exc}") from None
    key = hashlib.sha256()
    key.update(SOURCE.read_bytes())
    key.update(repr((version, COMMON_FLAGS, [VARIANTS[v][0] for v in variants], sorted(flags & set(REPORTED_FLAGS)),
                     platform.machine())).encode())
    out = cache_dir() / key.hexdigest()[:20] / "libpenjing_kernels.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        _compile(cc, variants, out)
    try:
        lib = ctypes.CDLL(str(out))
    except OSError as exc:
        raise KernelsUnavailable(f"loading {out} failed: {exc}") from None
    return Kernels(lib, isa, out, threading_mode(lib, isa))


def kernels() -> Kernels | None:
    """The process-wide kernels, built on first call; ``None`` (after one warning) when they
    cannot be had, in which case every layer runs its PyTorch fallback."""
    global _cached, _warned
    with _lock:
        if _cached is None:
            try:
                _cached = build()
            except KernelsUnavailable as exc:
                _cached = exc
        if isinstance(_cached, KernelsUnavailable):
            if not _warned:
                _warned = True
                warnings.warn(f"penjing runtime: compiled kernels unavailable ({_cached}); "
                              "compressed layers run a slower pure-PyTorch fallback", RuntimeWarning, stacklevel=3)
            return None
        return _cached


def reset(isa: str | None = None) -> Kernels | None:
    """Rebuild the process-wide kernels, optionally forcing a variant (tests use this to check
    every variant the CPU can run). ``isa="off"`` selects the fallback."""
    global _cached, _warned
    with _lock:
        _warned = True  # a deliberate choice, not a failure to warn about
        if isa == "off":
            _cached = KernelsUnavailable("disabled by reset('off')")
            return None
        try:
            _cached = build(isa)
        except KernelsUnavailable as exc:
            _cached = exc
            return None
        return _cached


#: set in a child process made by fork: GNU OpenMP's team does not survive a fork, so a child's
#: first parallel region would wait forever for threads that are gone (as torch's own ops do);
#: the kernels there use their own pool, whose caller runs every chunk no thread has claimed
_forked = False


def _after_fork_in_child() -> None:
    global _forked
    _forked = True
    if isinstance(_cached, Kernels) and _cached.threading == "openmp":
        _cached.threading = threading_mode(_cached.lib, _cached.isa)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
