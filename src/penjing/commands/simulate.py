"""``penjing simulate``: what a model costs on a TPU-like accelerator (and in training)."""

from __future__ import annotations

import argparse
import statistics
import time

EPILOG = """\
examples:
  penjing simulate --model lenet300 --hw tpu-v1
  penjing simulate --model lenet5 --hw edge --dataflow os --batch 64 --out out/
  penjing simulate --model my.py:MyNet --weights my.pt --hw my_npu.yaml
  penjing simulate --model lenet300 --train --workers 64 --bandwidth 10Gbit
  penjing simulate --scalesim-config scale.cfg --topology resnet18.csv --reports out/
  penjing simulate --gemm 128,256,768 --hw edge --dataflow os
"""


def register(subparsers) -> None:
    from penjing.commands._common import add_model_args

    p = subparsers.add_parser(
        "simulate", help="per-layer cycles, utilisation, DRAM traffic, energy on a systolic array",
        description="Simulate a model on a TPU-like systolic array (analytical model): per-layer "
                    "cycles, utilisation, DRAM bytes, energy and whether it is compute- or "
                    "memory-bound; writes the roofline plot.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--scalesim-config", default=None,
                   help="a SCALE-Sim .cfg file: simulate --topology under it, SCALE-Sim counting")
    p.add_argument("--topology", default=None, help="a SCALE-Sim topology CSV (conv form; --gemm-topology for M,N,K rows)")
    p.add_argument("--gemm-topology", action="store_true", help="--topology rows are GEMMs: name, M, N, K")
    p.add_argument("--gemm", default=None, metavar="M,K,N", help="simulate one bare GEMM M x K by K x N")
    p.add_argument("--reports", default=None,
                   help="folder for SCALE-Sim's COMPUTE/BANDWIDTH/DETAILED_ACCESS report CSVs")
    p.add_argument("--counting", choices=["scalesim", "penjing"], default="scalesim",
                   help="cycle counting: scalesim (SCALE-Sim 3.0.0 compatible, default) or penjing")
    p.add_argument("--hw", default="tpu-v1", help="tpu-v1, edge or a hardware YAML file (default: tpu-v1)")
    p.add_argument("--dataflow", choices=["os", "ws", "is"], default=None,
                   help="output/weight/input stationary (default: the hardware's)")
    p.add_argument("--batch", type=int, default=1, help="batch size of the simulated pass (default: 1)")
    p.add_argument("--table", default=None, help="energy table YAML (default: 45 nm, Horowitz 2014)")
    p.add_argument("--out", default="out", help="folder for roofline.png (default: out/)")
    p.add_argument("--train", action="store_true",
                   help="also cost one training step (fp32 vs mixed fp16/fp32) and, with "
                        "--workers, project data-parallel step time")
    p.add_argument("--workers", type=int, default=None, help="data-parallel workers to project")
    p.add_argument("--bandwidth", default="10Gbit", help="link bandwidth, e.g. 10Gbit, 1.25GB/s")
    p.add_argument("--latency-us", type=float, default=50.0, help="per-message latency (alpha), us")
    p.add_argument("--density", type=float, default=0.001,
                   help="gradient compression density for the compressed rows (default 0.001)")
    p.add_argument("--compute-ms", type=float, default=None,
                   help="compute time of one step per worker; default: measured here on the CPU")
    p.set_defaults(func=run)


def _model_and_example(args):

    from penjing.data import get_data
    from penjing.models import MODELS, get_model
    from penjing.models.user import load_user_model

    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    train, _ = get_data(args.data)
    x = train.tensors[0]
    reps = -(-args.batch // len(x))
    example = x.repeat(reps, *([1] * (x.dim() - 1)))[: args.batch]
    if args.model in MODELS:
        # the cost depends on shapes and zeros only: no need to train a reference model
        base = get_model(args.model, x[:1])
        model = load_user_model(None, args.weights, base=base) if args.weights else base
    else:
        model = load_user_model(args.model, args.weights)
    return model.eval(), example


def measure_step_seconds(model, example, repeats: int = 5) -> float:
    """Median wall time of forward + backward of ``model`` on ``example`` on this machine."""

    model.train()
    times = []
    for i in range(repeats + 2):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        out = model(example)
        out = out[0] if isinstance(out, (tuple, list)) else out
        out.float().square().mean().backward()
        if i >= 2:  # two warm-up steps
            times.append(time.perf_counter() - start)
    model.zero_grad(set_to_none=True)
    model.eval()
    return statistics.median(times)


def _parse_gemm(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"--gemm needs three positive integers M,K,N, got {text!r}")
    M, K, N = (int(p) for p in parts)
    return M, K, N


def _config_from_hw(hw, dataflow):
    import math

    from penjing.hw.scalesim_io import ScaleSimConfig

    return ScaleSimConfig(rows=hw.rows, cols=hw.cols, ifmap_kb=max(1, math.ceil(hw.ifmap_kib)),
                          filter_kb=max(1, math.ceil(hw.weight_kib)), ofmap_kb=max(1, math.ceil(hw.ofmap_kib)),
                          dataflow=dataflow or hw.dataflow)


def run_scalesim_files(args) -> int:
    """``--scalesim-config`` / ``--topology`` / ``--gemm``: SCALE-Sim inputs, SCALE-Sim reports."""
    from dataclasses import replace

    from penjing.hw import load_hw
    from penjing.hw.memory import simulate_topology
    from penjing.hw.scalesim_io import ConvShape, read_config, read_topology, write_reports

    if args.gemm and args.topology:
        raise ValueError("give either --gemm or --topology, not both")
    config = read_config(args.scalesim_config) if args.scalesim_config else _config_from_hw(load_hw(args.hw), args.dataflow)
    if args.dataflow:
        config = replace(config, dataflow=args.dataflow)
    if args.gemm:
        M, K, N = _parse_gemm(args.gemm)
        layers = [ConvShape.gemm("gemm", M, N, K)]
    elif args.topology:
        layers = read_topology(args.topology, gemm=args.gemm_topology)
    else:
        raise ValueError("--scalesim-config needs --topology (or --gemm M,K,N)")
    results = simulate_topology(layers, config)
    print(f"SCALE-Sim counting: {config.rows}x{config.cols} {config.dataflow}, SRAM "
          f"{config.ifmap_kb}/{config.filter_kb}/{config.ofmap_kb} KiB, {config.bandwidth_mode} bandwidth")
    head = ["layer", "MxKxN", "cycles", "stall", "util %", "map eff %", "SRAM I/F/O", "DRAM I/F/O (words)"]
    print(" | ".join(head))
    for layer, r in zip(layers, results, strict=True):
        c, d = r.counts, r.dram
        print(f"{layer.name} | {layer.M}x{layer.K}x{layer.N} | {r.total_cycles:,} | {r.stall_cycles:,} | "
              f"{100 * r.overall_utilisation:.2f} | {100 * c.mapping_efficiency:.2f} | "
              f"{c.ifmap_reads:,}/{c.filter_reads:,}/{c.ofmap_writes:,} | "
              f"{d.ifmap_reads:,}/{d.filter_reads:,}/{d.ofmap_writes:,}")
    total = sum(r.total_cycles for r in results)
    print(f"total {total:,} cycles over {len(results)} layer(s)")
    if args.reports:
        for path in write_reports(results, args.reports):
            print(f"report: {path}")
    return 0


def run(args) -> int:
    from pathlib import Path

    if args.scalesim_config or args.topology or args.gemm:
        return run_scalesim_files(args)

    from penjing.hw import load_hw, load_table, simulate
    from penjing.hw.comm import parse_bandwidth, project_step
    from penjing.hw.trace import trace
    from penjing.hw.training import training_step_layers

    # check the cheap arguments before loading data and model
    hw = load_hw(args.hw)
    table = load_table(args.table)
    if args.workers is not None and not args.train:
        raise ValueError("--workers projects training: add --train")
    model, example = _model_and_example(args)
    report = simulate(model, example, hw, dataflow=args.dataflow, table=table, counting=args.counting)
    print(report)
    out = Path(args.out)
    png = report.roofline(out / "roofline.png")
    print(f"roofline plot: {png}")
    if not args.train:
        return 0
    layers = trace(model, example)
    print(f"\ntraining step on {hw.name} (batch {args.batch}; forward + dX + dW GEMMs + SGD update):")
    costs = {p: training_step_layers(layers, hw, p, dataflow=args.dataflow, table=table, batch=args.batch)
             for p in ("fp32", "mixed")}
    for cost in costs.values():
        print("  " + cost.summary())
    fp32, mixed = costs["fp32"], costs["mixed"]
    print(f"  mixed vs fp32: {fp32.cycles / mixed.cycles:.2f}x fewer cycles, "
          f"{fp32.energy_pj / mixed.energy_pj:.2f}x less energy, "
          f"{fp32.dram_bytes / mixed.dram_bytes:.2f}x less DRAM traffic")
    if args.workers is None:
        return 0
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    grad_bytes = 4 * params
    if args.compute_ms is not None:
        if args.compute_ms <= 0:
            raise ValueError(f"--compute-ms must be > 0, got {args.compute_ms}")
        compute, source = args.compute_ms / 1e3, "given"
    else:
        compute, source = measure_step_seconds(model, example), "measured on this CPU"
    bw = parse_bandwidth(args.bandwidth)
    print(f"\ndata-parallel projection: {args.workers} workers, {args.bandwidth} ({bw / 1e9:.3g} GB/s), "
          f"alpha {args.latency_us:g} us, gradient {grad_bytes:,} B, compute {compute * 1e3:.2f} ms "
          f"per step ({source}):")
    print(f"  {'scheme':<26} {'comm ms':>10} {'step ms':>10} {'speed-up':>9} {'efficiency':>10} {'sent B/worker':>14}")
    for scheme in ("ring", "ps"):
        for density in (None, args.density):
            proj = project_step(grad_bytes, compute, args.workers, bw, scheme=scheme,
                                latency=args.latency_us * 1e-6, density=density)
            label = ("ring all-reduce" if scheme == "ring" else "parameter server") + \
                (f" + DGC {density:g}" if density else "")
            print(f"  {label:<26} {proj.comm_s * 1e3:>10.3f} {proj.step_s * 1e3:>10.3f} "
                  f"{proj.speedup:>8.1f}x {100 * proj.efficiency:>9.1f}% {proj.sent_bytes:>14,.0f}")
    return 0
