"""The roofline model (Williams, Waterman & Patterson, CACM 2009) of a simulated accelerator.

Attainable performance at operational intensity ``I`` (operations per DRAM byte) is
``min(peak ops/s, I * DRAM bandwidth)``; the ridge point ``peak / bandwidth`` separates
memory-bound layers (left of it) from compute-bound ones. Two ridge definitions are in use,
and both are reported, named:

* :func:`ridge` (**Williams et al.**): operations (2 per MAC) per DRAM byte, all DRAM bytes;
  the TPU v1 (91.75 TOPS, 34 GB/s) has its ridge at 2,699 ops/byte;
* :func:`ridge_jouppi` (**Jouppi et al. 2017**, the TPU paper's Figure 5): MACs per *weight*
  byte read from DRAM; the same TPU is at 1,349 MACs/weight-byte (the paper's ~1,350).

Each GEMM layer of a :class:`~penjing.hw.systolic.SimReport` is placed at its intensity (its DRAM bytes after the
buffer reuse of the simulation) and its *achieved* performance (ops / simulated time), which
is below the roof by the array's utilisation. The TPU paper (Jouppi et al. 2017, Fig. 5-8)
draws the same plot: its MLPs and LSTMs sit on the slanted, memory-bound part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from penjing.hw.presets import HardwareConfig


@dataclass
class RooflinePoint:
    name: str
    intensity: float  # ops / DRAM byte
    achieved: float  # ops / s
    attainable: float  # ops / s, the roof at this intensity
    memory_bound: bool


def ridge(hw: HardwareConfig) -> float:
    """Operational intensity (ops/byte) where the bandwidth slope meets peak compute."""
    return hw.peak_ops_per_s / (hw.dram_gbps * 1e9)


def ridge_jouppi(hw: HardwareConfig) -> float:
    """The TPU paper's ridge: MACs per weight byte where bandwidth meets peak (Jouppi et al.)."""
    return hw.peak_macs_per_s / (hw.dram_gbps * 1e9)


def ridges(hw: HardwareConfig) -> dict[str, float]:
    """Both ridge points, named by their definitions."""
    return {"williams_ops_per_dram_byte": ridge(hw), "jouppi_macs_per_weight_byte": ridge_jouppi(hw)}


def roofline_points(report) -> list[RooflinePoint]:
    """One point per GEMM layer of a :class:`~penjing.hw.systolic.SimReport`."""
    hw = report.hw
    bw = hw.dram_gbps * 1e9
    clock = hw.clock_mhz * 1e6
    points = []
    for r in report.rows:
        if r.kind != "gemm" or r.cycles == 0:
            continue
        intensity = r.intensity
        attainable = hw.peak_ops_per_s if math.isinf(intensity) else min(hw.peak_ops_per_s, intensity * bw)
        points.append(RooflinePoint(name=r.name, intensity=intensity,
                                    achieved=2 * r.macs / (r.cycles / clock), attainable=attainable,
                                    memory_bound=intensity < ridge(hw)))
    return points


def plot_roofline(report, path: str | Path, title: str | None = None) -> Path:
    """Write the roofline of ``report``'s hardware with its layers on it (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hw = report.hw
    points = roofline_points(report)
    finite = [p.intensity for p in points if math.isfinite(p.intensity)]
    r = ridge(hw)
    lo = min([r / 100, *finite]) / 2
    hi = max([r * 100, *finite]) * 2
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [lo, r, hi]
    ax.loglog(xs, [min(hw.peak_ops_per_s, x * hw.dram_gbps * 1e9) for x in xs], "k-", lw=2,
              label=f"roof: {hw.peak_ops_per_s / 1e12:.3g} TOPS, {hw.dram_gbps:g} GB/s")
    ax.axvline(r, color="gray", ls=":", lw=1,
               label=f"ridge {r:,.0f} ops/DRAM byte (Williams); {ridge_jouppi(hw):,.0f} MACs/weight byte (Jouppi)")
    for p in points:
        x = p.intensity if math.isfinite(p.intensity) else hi / 1.5
        ax.scatter([x], [p.achieved], color="tab:red" if p.memory_bound else "tab:blue", s=25, zorder=3)
        ax.annotate(p.name, (x, p.achieved), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.scatter([], [], color="tab:red", label="memory-bound layer")
    ax.scatter([], [], color="tab:blue", label="compute-bound layer")
    ax.set_xlabel("operational intensity (ops / DRAM byte)")
    ax.set_ylabel("ops / s")
    ax.set_title(title or f"roofline: {hw.name} ({report.dataflow}, batch {report.batch})")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, which="both", alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
