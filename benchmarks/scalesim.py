"""penjing's systolic simulator side by side with SCALE-Sim 3.0.0 (the reference).

Run: ``python benchmarks/scalesim.py --cache benchmarks/results/scalesim_ref.json
--user-cache benchmarks/results/scalesim_ref_user.json``
(writes ``benchmarks/results/scalesim.md``; needs ``pip install scalesim==3.0.0``).

1. Parity (CALC mode, 64 KiB SRAMs): every ResNet-18 conv layer (224x224, padding folded into
   the ifmap) and six GEMMs, OS/WS/IS on 32x32 and 128x128 arrays. SCALE-Sim runs each layer
   in a temporary folder; its report rows are kept in ``--cache`` (a JSON of this script's own
   earlier SCALE-Sim runs, with their CPU times) so that a rerun only runs what is missing.
2. Speed on the whole ResNet-18 (20 convs + fc): SCALE-Sim's CPU time for the network is
   measured here, in this process, for one configuration (``--speed-config``, default WS, on
   ``--speed-array``, default 32x32; ``none``
   skips it); the other configurations use the per-layer CPU times of the parity runs. penjing's
   time is the median of 14 rounds of the whole topology (each distinct shape simulated once),
   7 taken before and 7 after SCALE-Sim's run, and, interleaved, of every layer on its own.
3. USER mode (bandwidth-limited), every layer x array x dataflow x ``--user-bandwidths``: total
   and stall cycles and DRAM words of both, SCALE-Sim's runs kept in ``--user-cache`` (missing
   ones run with ``--run-missing-user``).
4. Compression: ResNet-18 dense vs 2:4-pruned vs int8 through ``penjing.hw.simulate``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from _machine import cpu_name  # benchmarks/ is on sys.path when a script runs
from torch import nn

# this file is called scalesim.py: drop its folder from the path so that ``import scalesim``
# (inside penjing.hw.scalesim_ref) finds the SCALE-Sim package, not this script
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from penjing.hw.memory import simulate_layer, simulate_topology  # noqa: E402
from penjing.hw.resnet_shapes import gemm_shapes, resnet18_convs, resnet18_fc  # noqa: E402
from penjing.hw.scalesim_io import ScaleSimConfig  # noqa: E402
from penjing.hw.scalesim_ref import available, run_scalesim  # noqa: E402

ARRAYS = (32, 128)
DATAFLOWS = ("os", "ws", "is")


def reference(cache: dict, path: Path | None, layer, cfg: ScaleSimConfig, key: str) -> dict:
    if key not in cache:
        r = run_scalesim([layer], cfg)
        cache[key] = {"compute": r.compute[0], "bandwidth": r.bandwidth[0], "detailed": r.detailed[0],
                      "cpu_s": r.cpu_s}
        if path:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(cache))
            os.replace(tmp, path)
    return cache[key]


def rel(a: float, b: float) -> float:
    return a / b - 1 if b else (0.0 if a == 0 else math.inf)


def parity(cache, path, layers) -> tuple[list[str], dict]:
    lines = ["| layer | array | df | cycles penjing | cycles SCALE-Sim | equal | util/map/SRAM equal | "
             "DRAM ifmap | DRAM filter | DRAM ofmap |", "|---|---|---|---:|---:|---|---|---:|---:|---:|"]
    summary = {"pairs": 0, "cycles_equal": 0, "counts_equal": 0, "max_dram": 0.0, "within5": 0, "worst": ""}
    for layer in layers:
        for a in ARRAYS:
            for df in DATAFLOWS:
                cfg = ScaleSimConfig(rows=a, cols=a, dataflow=df)
                ref = reference(cache, path, layer, cfg, f"{layer.name}|{a}|{df}|CALC")
                me = simulate_layer(layer, cfg)
                comp, det = me.compute_report(), me.detailed_report()
                rc, rd = ref["compute"][1:], ref["detailed"][1:]
                cyc_eq = comp[1] == rc[1] and comp[2] == rc[2]
                counts_eq = all(abs(comp[i] - rc[i]) <= 1e-9 * max(1.0, abs(rc[i])) for i in (3, 4, 5)) and \
                    all(det[i] == rd[i] for i in (2, 5, 8))
                errs = [rel(det[i], rd[i]) for i in (11, 14, 17)]
                worst = max(abs(e) for e in errs)
                summary["pairs"] += 1
                summary["cycles_equal"] += cyc_eq
                summary["counts_equal"] += counts_eq
                summary["within5"] += worst <= 0.05
                if worst > summary["max_dram"]:
                    summary["max_dram"], summary["worst"] = worst, f"{layer.name} {a}x{a} {df}"
                lines.append(f"| {layer.name} | {a}x{a} | {df} | {comp[1]:,} | {int(rc[1]):,} | "
                             f"{'yes' if cyc_eq else 'NO'} | {'yes' if counts_eq else 'NO'} | "
                             + " | ".join(f"{100 * e:+.2f}%" for e in errs) + " |")
    return lines, summary


def penjing_seconds(layers, cfg, rounds=7) -> tuple[list[float], list[float]]:
    """CPU seconds of ``rounds`` whole-topology runs (each shape once) and, interleaved, of
    ``rounds`` runs simulating every layer on its own (no shape cache)."""
    topology, every = [], []
    for _ in range(rounds):
        start = time.process_time()
        simulate_topology(layers, cfg)
        topology.append(time.process_time() - start)
        start = time.process_time()
        for x in layers:
            simulate_layer(x, cfg)
        every.append(time.process_time() - start)
    return topology, every


def speed(cache, path, layers, speed_df: str, speed_array: int = 32) -> list[str]:
    lines = ["| config | SCALE-Sim CPU s | source | penjing CPU ms (median, min-max) | speed-up | "
             "every layer on its own: penjing CPU ms (median, min-max) | speed-up |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for a in ARRAYS:
        for df in DATAFLOWS:
            cfg = ScaleSimConfig(rows=a, cols=a, dataflow=df)
            before = penjing_seconds(layers, cfg)
            if a == speed_array and df == speed_df:
                start = time.process_time()
                run_scalesim(layers, cfg)  # the whole network in one SCALE-Sim run, timed here
                ref_s, source = time.process_time() - start, "whole network, this run"
            else:
                ref_s = sum(reference(cache, path, x, cfg, f"{x.name}|{a}|{df}|CALC")["cpu_s"] for x in layers)
                source = "sum of per-layer runs"
            after = penjing_seconds(layers, cfg)
            cells = []
            for ours in (before[0] + after[0], before[1] + after[1]):
                med = statistics.median(ours)
                cells.append(f"{1e3 * med:.1f} ({1e3 * min(ours):.1f}-{1e3 * max(ours):.1f}) | {ref_s / med:,.0f}x")
            lines.append(f"| {a}x{a} {df} | {ref_s:,.1f} | {source} | " + " | ".join(cells) + " |")
    return lines


def shape_key(x) -> tuple:
    return (x.ifmap_h, x.ifmap_w, x.filter_h, x.filter_w, x.channels, x.num_filters, x.stride_h, x.stride_w)


def user_config(a: int, df: str, bw: int) -> ScaleSimConfig:
    return ScaleSimConfig(rows=a, cols=a, dataflow=df, bandwidth_mode="USER", bandwidths=[bw],
                          ifmap_bw=bw, filter_bw=bw)


def user_key(user_cache: dict, first: dict, x, a: int, df: str, bw: int) -> str:
    """The cache key of ``x``'s USER run: its shape's first name, or any cached layer of that shape
    (an earlier run may have been keyed by another layer of the same shape: same SCALE-Sim input)."""
    key = f"{first[shape_key(x)]}|{a}|{df}|USER{bw}"
    if key not in user_cache:
        for name in first.get(("names", shape_key(x)), ()):
            alias = f"{name}|{a}|{df}|USER{bw}"
            if alias in user_cache:
                return alias
    return key


def user_sweep(user_cache: dict, layers, bandwidths: list[int]):
    """Every (x, array, dataflow, bandwidth, config, cache key) pair of the USER sweep, in order."""
    first = first_names(layers)
    for bw in bandwidths:
        for a in ARRAYS:
            for df in DATAFLOWS:
                cfg = user_config(a, df, bw)
                for x in layers:
                    yield x, a, df, bw, cfg, user_key(user_cache, first, x, a, df, bw)


def first_names(layers) -> dict:
    first = {}
    for x in layers:
        first.setdefault(shape_key(x), x.name)
        first.setdefault(("names", shape_key(x)), []).append(x.name)
    return first


def fill_user(path: Path, layers, bandwidths: list[int]) -> int:
    """Run SCALE-Sim for the USER pairs of the sweep missing from ``path`` and add each result to
    ``path`` as soon as it is done. Several of these workers may run side by side: under a lock
    file each re-reads ``path`` and a claims file (the keys taken by running workers, by process
    id) and takes the next free key, so none is run twice and none is lost. Keys go shortest
    first: SCALE-Sim's USER run time grows with the cycles it simulates, which penjing's replay
    predicts (the sweep's runs take from 0.1 s to hours)."""
    import fcntl
    import tempfile

    user_cache = json.loads(path.read_text()) if path.exists() else {}
    todo = {}
    for x, _, _, _, cfg, key in user_sweep(user_cache, layers, bandwidths):
        if key not in user_cache and key not in todo:
            todo[key] = (simulate_layer(x, cfg).total_cycles, x, cfg)
    order = sorted(todo, key=lambda k: todo[k][0])
    lock_path = Path(tempfile.gettempdir()) / f"{path.name}.lock"
    claims_path = Path(tempfile.gettempdir()) / f"{path.name}.claims.json"

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True

    def locked(update):
        with open(lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = json.loads(path.read_text()) if path.exists() else {}
            claims = json.loads(claims_path.read_text()) if claims_path.exists() else {}
            claims = {k: pid for k, pid in claims.items() if alive(pid) and k not in current}
            result = update(current, claims)
            claims_path.write_text(json.dumps(claims))
            return result

    def take(current, claims):
        for key in order:
            if key not in current and key not in claims:
                claims[key] = os.getpid()
                return key
        return None

    print(f"{len(order)} USER runs missing", flush=True)
    while (key := locked(take)) is not None:
        _, x, cfg = todo[key]
        print(f"{time.strftime('%H:%M:%S')} start {key} ({todo[key][0]:,} cycles)", flush=True)
        r = run_scalesim([x], cfg)
        entry = {"compute": r.compute[0], "bandwidth": r.bandwidth[0], "detailed": r.detailed[0], "cpu_s": r.cpu_s}

        def add(current, claims, key=key, entry=entry):
            current[key] = entry
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(current))
            os.replace(tmp, path)
            claims.pop(key, None)

        locked(add)
        print(f"{time.strftime('%H:%M:%S')} done {key} {r.cpu_s:.1f} s", flush=True)
    return 0


def user_mode(user_cache: dict, path: Path | None, layers, bandwidths: list[int], run_missing: bool):
    """Every layer x array x dataflow x bandwidth against SCALE-Sim's USER mode. Layers of one
    shape (ResNet-18 repeats its 3x3 convs) share one SCALE-Sim run, keyed by the first name."""
    lines = ["| layer | array | df | bw | SCALE-Sim total | SCALE-Sim stalls | penjing total | penjing stalls | "
             "difference | DRAM words equal | SCALE-Sim CPU s | penjing CPU ms |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    summary = {"pairs": 0, "equal": 0, "dram_equal": 0, "max_diff": 0.0, "missing": 0, "ref_s": 0.0, "ours_s": 0.0,
               "missing_runs": {}}
    for x, a, df, bw, cfg, key in user_sweep(user_cache, layers, bandwidths):
        if key not in user_cache and not run_missing:
            summary["missing"] += 1
            if key not in summary["missing_runs"]:  # penjing's cycles: how long SCALE-Sim would run
                summary["missing_runs"][key] = simulate_layer(x, cfg).total_cycles
            continue
        ref = reference(user_cache, path, x, cfg, key)
        start = time.process_time()
        me = simulate_layer(x, cfg)
        ours = time.process_time() - start
        total, stalls = int(ref["compute"][2]), int(ref["compute"][3])
        det, rd = me.detailed_report(), ref["detailed"]
        dram_eq = [det[11], det[14], det[17]] == [rd[12], rd[15], rd[18]]
        diff = rel(me.total_cycles, total)
        summary["pairs"] += 1
        summary["equal"] += me.total_cycles == total and me.stall_cycles == stalls
        summary["dram_equal"] += dram_eq
        summary["max_diff"] = max(summary["max_diff"], abs(diff))
        shared = key.split("|")[0] != x.name
        summary["ref_s"] += 0 if shared else ref["cpu_s"]
        if not shared and total >= 100_000:
            summary.setdefault("us_per_cycle", []).append(1e6 * ref["cpu_s"] / total)
        summary["ours_s"] += 0 if shared else ours
        lines.append(f"| {x.name} | {a}x{a} | {df} | {bw} | {total:,} | {stalls:,} | {me.total_cycles:,} | "
                     f"{me.stall_cycles:,} | {100 * diff:+.2f}% | {'yes' if dram_eq else 'NO'} | "
                     f"{ref['cpu_s']:.1f}{' (shared)' if shared else ''} | {1e3 * ours:.0f} |")
    return lines, summary


def resnet18(width=64, classes=1000):
    """ResNet-18 from plain modules (He et al. 2016): basic blocks, 1x1/2 projections."""

    class Basic(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = None if stride == 1 and cin == cout else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(y + (x if self.downsample is None else self.downsample(x)))

    layers = [nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = width
    for stage in range(4):
        cout = width * 2 ** stage
        for block in range(2):
            layers.append(Basic(cin, cout, 2 if stage and not block else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers).eval()


class Int8Grid(nn.Module):
    """8-bit symmetric weight grid; ``.bits`` is what the tracer reads."""

    bits = 8

    def __init__(self, w):
        super().__init__()
        self.scale = w.abs().max() / 127
        self.zero_point = torch.tensor(0)

    def forward(self, w):
        return torch.round(w / self.scale) * self.scale


class InputQuant(nn.Module):
    bits, enabled = 8, True

    def forward(self, x):
        return x


def compression() -> list[str]:
    from penjing.core.params import attach
    from penjing.hw import load_hw, simulate

    torch.manual_seed(0)
    x = torch.randn(1, 3, 224, 224)
    hw = load_hw("edge").with_(bits=32, arith="float", name="edge-fp32")
    models = {"dense fp32": resnet18()}
    pruned = resnet18()
    with torch.no_grad():
        for m in pruned.modules():
            if isinstance(m, nn.Conv2d) and m.in_channels % 4 == 0:  # 2:4 along the input channels
                w = m.weight.permute(0, 2, 3, 1).reshape(-1, 4)
                keep = torch.zeros_like(w).scatter_(-1, w.abs().topk(2, dim=-1).indices, 1.0)
                m.weight.copy_((w * keep).reshape(m.out_channels, m.kernel_size[0], m.kernel_size[1], -1)
                               .permute(0, 3, 1, 2))
    models["2:4 pruned"] = pruned
    q = resnet18()
    for m in q.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            attach(m, Int8Grid(m.weight.detach()))
            m.input_quant = InputQuant()
    models["int8"] = q
    lines = ["| model | cycles | stall | DRAM MB | energy | vs dense cycles | vs dense DRAM |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    base = None
    reports = {}
    for name, model in models.items():
        rep = simulate(model, x, hw, dataflow="ws")
        reports[name] = rep
        base = base or rep
        lines.append(f"| {name} | {rep.cycles:,.0f} | {rep.stall_cycles:,.0f} | {rep.dram_bytes / 1e6:.2f} | "
                     f"{rep.energy_pj / 1e6:.1f} uJ | {base.cycles / rep.cycles:.2f}x | "
                     f"{base.dram_bytes / rep.dram_bytes:.2f}x |")
    row = {n: next(r for r in rep.rows if r.name == "6.conv2") for n, rep in reports.items()}
    lines += ["", "One layer (`6.conv2`, 3x3 conv 128 -> 128 on 28x28, WS on 32x32 fp32 PEs):", "",
              "| model | GEMM | compute cycles | DRAM ifmap B | DRAM filter B | DRAM ofmap B |", "|---|---|---:|---:|---:|---:|"]
    for n, r in row.items():
        lines.append(f"| {n} | {r.gemm} | {r.compute_cycles:,} | {r.dram_ifmap_read_bytes:,.0f} | "
                     f"{r.dram_filter_read_bytes:,.0f} | {r.dram_ofmap_write_bytes:,.0f} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=None, help="JSON of SCALE-Sim CALC runs (read and extended)")
    parser.add_argument("--user-cache", type=Path, default=None, help="JSON of SCALE-Sim USER runs (read)")
    parser.add_argument("--user-bandwidths", default="10,2", help="USER-mode bandwidths (words/cycle)")
    parser.add_argument("--run-missing-user", action="store_true",
                        help="run SCALE-Sim for USER pairs missing from --user-cache (slow: ~10-120 s each)")
    parser.add_argument("--fill-user", action="store_true",
                        help="only run the USER pairs missing from --user-cache (shortest first), adding "
                             "each to --user-cache as it finishes; no report. Start several to use more cores")
    parser.add_argument("--speed-config", default="ws", choices=(*DATAFLOWS, "none"),
                        help="dataflow whose whole-network SCALE-Sim run (on --speed-array) is timed in this run; "
                             "none: every configuration from the cached per-layer CPU times")
    parser.add_argument("--speed-array", type=int, default=32, choices=ARRAYS,
                        help="array (rows = cols) of the --speed-config run")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scalesim.md"))
    parser.add_argument("--compression-only", action="store_true",
                        help="only section 4 (no SCALE-Sim), to benchmarks/results/scalesim_compression.md")
    args = parser.parse_args()
    if args.compression_only:
        load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        text = [f"Command: `python {' '.join(sys.argv)}` (repository root, venv active)",
                f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
                f"Machine: {cpu_name()}, 2 cores shared; load at start: `{load}`. Model outputs "
                "(deterministic), no timings.", "",
                "# Compression in the cycle model (ResNet-18, 224x224, WS, edge array with fp32 PEs)", "",
                *compression(), ""]
        out = args.out.with_name("scalesim_compression.md")
        out.write_text("\n".join(text))
        print("\n".join(text))
        return 0
    reason = available()
    if reason:
        print(f"cannot run: {reason}")
        return 2
    cache = json.loads(args.cache.read_text()) if args.cache and args.cache.exists() else {}
    user_cache = json.loads(args.user_cache.read_text()) if args.user_cache and args.user_cache.exists() else {}
    layers = gemm_shapes() + resnet18_convs()
    if args.fill_user:
        if not args.user_cache:
            print("--fill-user needs --user-cache")
            return 2
        return fill_user(args.user_cache, layers, [int(b) for b in args.user_bandwidths.split(",")])
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    head = [f"Command: `python {' '.join(sys.argv)}` (repository root, venv active)",
            f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            f"Machine: {cpu_name()}, 2 cores shared with other jobs; load at start: `{load}`. "
            "SCALE-Sim 3.0.0 in this process (numpy shim, see penjing/hw/scalesim_ref.py); "
            "times are CPU seconds (process_time).", ""]
    par, summ = parity(cache, args.cache, layers)
    net = resnet18_convs() + [resnet18_fc()]
    spd = speed(cache, args.cache, net, args.speed_config, args.speed_array)
    usr, us = user_mode(user_cache, args.user_cache, layers, [int(b) for b in args.user_bandwidths.split(",")],
                        args.run_missing_user)
    comp = compression()
    text = head + [
        "# penjing vs SCALE-Sim 3.0.0", "",
        "## 1. CALC-mode parity (64 KiB ifmap/filter/ofmap SRAMs)", "",
        f"{summ['pairs']} layer/config pairs (20 ResNet-18 convs + 6 GEMMs, OS/WS/IS, 32x32 and 128x128): "
        f"cycles and stalls identical on {summ['cycles_equal']}/{summ['pairs']}; overall util, mapping "
        f"efficiency, compute util and SRAM ifmap/filter/ofmap counts identical on "
        f"{summ['counts_equal']}/{summ['pairs']}; DRAM reads and writes per operand within 5% on "
        f"{summ['within5']}/{summ['pairs']} (largest difference {100 * summ['max_dram']:.2f}%, {summ['worst']}). "
        "DRAM columns: penjing / SCALE-Sim - 1.", "", *par, "",
        "## 2. Speed, whole ResNet-18 (20 convs + fc)", "",
        f"CPU time of `simulate_topology` on the {len(net)} layers, the median of 14 rounds (7 before and 7 "
        "after the SCALE-Sim side, interleaved with the every-layer rounds). It simulates each "
        f"distinct layer shape once ({len({shape_key(x) for x in net})} of the {len(net)}) and copies "
        f"the result under the other names; the last two columns simulate all {len(net)} layers one by one (`simulate_layer`, no shape cache). "
        "The SCALE-Sim side is its CPU time on the same layers: the sum of the per-layer runs of "
        "section 1 (this script's own earlier SCALE-Sim runs, kept in `--cache`), or, for the "
        "`--speed-config` dataflow on the `--speed-array` array, one whole-network run timed in this "
        "process (source: whole network, this run).", "",
        *spd, "",
        "## 3. USER mode (bandwidth-limited) total cycles", "",
        f"{us['pairs']} layer/config/bandwidth pairs with a SCALE-Sim run in `--user-cache` (64 KiB SRAMs, "
        f"the same bandwidth on all three interfaces; {us['missing']} pairs of the sweep have no run yet and "
        f"are not listed): total and stall cycles identical on {us['equal']}/{us['pairs']} (largest "
        f"difference {100 * us['max_diff']:.2f}%), DRAM reads and writes per operand identical on "
        f"{us['dram_equal']}/{us['pairs']}. penjing replays SCALE-Sim's USER memory system "
        "(penjing/hw/user_bandwidth.py). CPU time over the distinct runs: SCALE-Sim "
        f"{us['ref_s']:,.0f} s, penjing {us['ours_s']:,.1f} s ({us['ref_s'] / max(us['ours_s'], 1e-9):,.0f}x). "
        "Layers of one shape share one SCALE-Sim run (marked shared).", "",
        *([f"Not run ({len(us['missing_runs'])} distinct SCALE-Sim runs, {us['missing']} pairs; penjing's "
           "predicted total cycles in brackets; SCALE-Sim took "
           f"{min(us['us_per_cycle']):.1f}-{max(us['us_per_cycle']):.1f} CPU us per total cycle on the runs above "
           "of 100,000 cycles or more): " + ", ".join(f"{k} ({c:,})" for k, c in sorted(us["missing_runs"].items(), key=lambda kv: kv[1]))
           + ".", ""] if us["missing_runs"] else []),
        *usr, "",
        "## 4. Compression in the cycle model (ResNet-18, 224x224, WS, edge array with fp32 PEs)", "",
        *comp, ""]
    args.out.write_text("\n".join(text))
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
