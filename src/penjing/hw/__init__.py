"""Hardware models: what a (compressed) model costs on hardware, not only its size.

* :func:`energy` -- memory-access-centred energy per inference (45 nm table, Horowitz 2014);
* :func:`simulate` -- an analytical TPU-like systolic-array simulator, SCALE-Sim 3.0.0's
  counting by default (cycles, utilisation,
  buffer and DRAM traffic, stalls, energy) with ``os``/``ws``/``is`` dataflows, presets
  ``tpu-v1`` and ``edge`` or a YAML file; ``report.roofline("plot.png")`` draws the roofline;
* :func:`training_step` -- the cost of a training step, fp32 vs mixed fp16/fp32;
* :mod:`penjing.hw.comm` -- alpha-beta projection of data-parallel step time (ring
  all-reduce vs parameter server, with or without gradient compression).

Every model starts from :func:`trace`, one forward pass of the model on an example input.
"""

from penjing.hw.energy import EnergyReport, EnergyTable, energy, load_table
from penjing.hw.memory import simulate_layer, simulate_topology
from penjing.hw.presets import EDGE, PRESETS, TPU_V1, HardwareConfig, load_hw
from penjing.hw.roofline import plot_roofline, ridges, roofline_points
from penjing.hw.scalesim_io import (
           ConvShape,
           ScaleSimConfig,
           read_config,
           read_topology,
           write_reports,
)
from penjing.hw.systolic import SimReport, gemm_cost, simulate, simulate_layers
from penjing.hw.trace import Layer, trace
from penjing.hw.training import TrainingCost, training_step

__all__ = ["EDGE", "PRESETS", "TPU_V1", "ConvShape", "EnergyReport", "EnergyTable", "HardwareConfig", "Layer",
           "ScaleSimConfig", "read_config", "read_topology", "ridges", "simulate_layer", "simulate_topology",
           "write_reports",
           "SimReport", "TrainingCost", "energy", "gemm_cost", "load_hw", "load_table",
           "plot_roofline", "roofline_points", "simulate", "simulate_layers", "trace",
           "training_step"]
