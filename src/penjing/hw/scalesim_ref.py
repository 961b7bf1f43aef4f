"""Run the reference, SCALE-Sim 3.0.0 (``pip install scalesim==3.0.0``), on penjing's inputs.

Used by the parity tests and ``benchmarks/scalesim.py``; penjing's own simulator never imports
SCALE-Sim. SCALE-Sim writes its reports (and, unless told not to, traces) to disk: every run
here happens in a fresh temporary folder that is deleted afterwards.

Compatibility shim: SCALE-Sim 3.0.0 calls ``int()`` on one-element numpy arrays, which numpy
>= 2.3 refuses. Around a run (only then), ``int`` inside ``scalesim.memory.read_buffer`` is a
function that unwraps one-element arrays first, and the write buffer's per-line cycles are
returned flat. Neither changes a number SCALE-Sim computes.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib
import io
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from penjing.hw.scalesim_io import ConvShape, ScaleSimConfig, read_report, write_topology


def available() -> str | None:
    """``None`` if SCALE-Sim 3.0.0 can run here, else the reason it cannot."""
    try:
        from importlib.metadata import version

        import scalesim.scale_sim  # noqa: F401
    except ImportError:
        return "SCALE-Sim is not installed (pip install scalesim==3.0.0, or penjing's bench extra)"
    v = version("scalesim")
    if v != "3.0.0":
        return f"SCALE-Sim {v} is installed; the parity checks are for 3.0.0"
    return None


def _unwrap_int(x, *args):
    import numpy as np

    if isinstance(x, np.ndarray) and x.size == 1:
        x = x.reshape(-1)[0]
    return builtins.int(x, *args)


@contextlib.contextmanager
def _numpy_shim():
    import numpy as np

    rb = importlib.import_module("scalesim.memory.read_buffer")
    wb = importlib.import_module("scalesim.memory.write_buffer")
    original = wb.write_buffer.service_writes

    def flat_service_writes(self, *args, **kwargs):
        return np.asarray(original(self, *args, **kwargs)).reshape(-1)

    rb.int = _unwrap_int
    wb.write_buffer.service_writes = flat_service_writes
    try:
        yield
    finally:
        del rb.int
        wb.write_buffer.service_writes = original


@dataclass
class ReferenceRun:
    """SCALE-Sim's three reports (rows of numbers, LayerID first) and its CPU time."""

    compute: list[list[float]]
    bandwidth: list[list[float]]
    detailed: list[list[float]]
    cpu_s: float


def run_scalesim(layers: list[ConvShape], config: ScaleSimConfig) -> ReferenceRun:
    """Run SCALE-Sim 3.0.0 on ``layers`` (a convolution topology) under ``config``."""
    reason = available()
    if reason:
        raise RuntimeError(reason)
    from scalesim.scale_sim import scalesim

    with tempfile.TemporaryDirectory(prefix="penjing-scalesim-") as tmp:
        tmp_path = Path(tmp)
        cfg = tmp_path / "arch.cfg"
        cfg.write_text(config.to_cfg())
        topo = write_topology(layers, tmp_path / "topology.csv")
        layout = tmp_path / "layout.csv"
        layout.write_text("Layer name,\n")  # SCALE-Sim 3.0.0 opens a layout file even when unused
        start = time.process_time()
        with _numpy_shim(), contextlib.redirect_stdout(io.StringIO()):
            sim = scalesim(save_disk_space=True, verbose=False, config=str(cfg), topology=str(topo),
                           layout=str(layout))
            sim.run_scale(top_path=str(tmp_path / "out"))
        cpu = time.process_time() - start
        reports = tmp_path / "out" / config.run_name
        return ReferenceRun(compute=read_report(reports / "COMPUTE_REPORT.csv"),
                            bandwidth=read_report(reports / "BANDWIDTH_REPORT.csv"),
                            detailed=read_report(reports / "DETAILED_ACCESS_REPORT.csv"), cpu_s=cpu)
