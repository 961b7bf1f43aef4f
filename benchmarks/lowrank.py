"""Low-rank benchmark: where the FLOP saving turns into time, and what accuracy it costs.

Part 1 (speed): a 4096x4096 Linear at rank 256 and a 3x3 conv 256->256 at 14x14 split by
each method (ranks chosen so every split keeps about 25% of the conv's parameters), latency
at batch 1 and 32 as a ratio to the original layer timed in the same run, with the FLOP
(MAC) and parameter ratios next to it. Variants are timed in interleaved rounds and the best
round's median is kept, so a burst from another process hits every variant alike.

Part 2 (accuracy): LeNet-300-100, LeNet-5 and SmallResNet on the bundled digits, factorised
at 5 parameter budgets by the global greedy budget, fine-tuned 5 epochs each; plus the conv
methods side by side at 50% and the budget with and without measured sensitivity.

    python benchmarks/lowrank.py                 # both parts, markdown to stdout
    python benchmarks/lowrank.py --speed-only
    python benchmarks/lowrank.py --plot benchmarks/results/lowrank_accuracy.png
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn
from torch.utils import benchmark as tbench

from penjing.core.report import last_report
from penjing.low_rank import (
    ChannelSplitConv2d,
    CPConv2d,
    LowRankConfig,
    LowRankLinear,
    SpatialSplitConv2d,
    Tucker2Conv2d,
    accuracy_curve,
    lowrank,
)
from penjing.low_rank.curve import curve_markdown, plot_curve
from penjing.low_rank.plan import weighted_macs


def _plan(model, config, **kwargs):
    lowrank(model, config, **kwargs)
    return last_report(model).extra["plan"]


def _conv_method_rows(name, base, dense, train, test, epochs, config_for) -> list[str]:
    """One table row per conv method: factorise a copy of ``base``, fine-tune, measure."""
    from penjing.train import evaluate, fit

    rows = []
    for method in ("channel", "spatial", "tucker"):
        model = copy.deepcopy(base)
        result = _plan(model, config_for(method), data=train)
        before = evaluate(model, test)
        fit(model, train, epochs=epochs, lr=3e-4, progress=False)
        after = evaluate(model, test)
        ranks = ", ".join(f"{k}: {v}" for k, v in result.ranks.items())
        rows.append(f"| {name} | {method} | {ranks} | {100 * result.param_ratio:.1f}% | "
                    f"{100 * result.flop_ratio:.1f}% | {100 * before:.2f}% | {100 * after:.2f}% | "
                    f"{100 * (after - dense):+.2f} |")
    return rows


def median_seconds(fn, x: torch.Tensor, min_time: float) -> float:
    timer = tbench.Timer(stmt="fn(x)", globals={"fn": fn, "x": x}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_time).median


def time_variants(variants: dict[str, nn.Module], x: torch.Tensor, rounds: int, min_time: float) -> dict[str, float]:
    best = {name: float("inf") for name in variants}
    with torch.inference_mode():
        for module in variants.values():  # warm-up (allocator, oneDNN primitive caches)
            module(x)
        for _ in range(rounds):
            for name, module in variants.items():
                best[name] = min(best[name], median_seconds(module, x, min_time))
    return best


def speed(rounds: int, min_time: float) -> str:
    torch.manual_seed(0)
    lines = ["| layer | variant | rank | params ratio | MAC ratio | batch | latency (ms) | latency ratio | speed-up |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    linear = nn.Linear(4096, 4096).eval()
    conv = nn.Conv2d(256, 256, 3, padding=1).eval()
    dense_conv_params = conv.weight.numel()

    def largest(params_of, limit):
        r = 1
        while params_of(r + 1) <= limit:
            r += 1
        return r

    quarter = 0.25 * dense_conv_params
    conv_ranks = {
        "channel": largest(lambda r: r * (256 * 9 + 256), quarter),
        "spatial": largest(lambda r: r * (256 * 3 + 256 * 3), quarter),
        "tucker": largest(lambda r: 256 * r + r * r * 9 + r * 256, quarter),
        "cp": largest(lambda r: r * (256 + 3 + 3 + 256), quarter),
    }
    builders = {"channel": ChannelSplitConv2d, "spatial": SpatialSplitConv2d, "tucker": Tucker2Conv2d}
    conv_variants: dict[str, tuple[nn.Module, object]] = {"original": (conv, "-")}
    for method, r in conv_ranks.items():
        if method == "cp":
            try:  # CP needs tensorly (optional); its speed does not depend on the fitted values
                import tensorly  # noqa: F401
            except ImportError:
                continue
            module = CPConv2d(256, 256, 3, r, padding=1)
        else:
            rank = (r, r) if method == "tucker" else r
            module = builders[method].from_module(conv, rank)
        conv_variants[method] = (module.eval(), f"{r}x{r}" if method == "tucker" else r)
    # rank 256 is the case asked for; 1024 and 2048 (the break-even: 2048 * 8192 = 4096^2)
    # show where the saving stops turning into time.
    linear_variants = {"original": (linear, "-")}
    for r in (256, 1024, 2048):
        linear_variants[f"svd r={r}"] = (LowRankLinear.from_module(linear, r).eval(), r)

    for label, variants, shape in (("Linear 4096x4096", linear_variants, (4096,)),
                                   ("Conv2d 256->256 3x3 @14x14", conv_variants, (256, 14, 14))):
        example = torch.randn(1, *shape)
        macs = {name: sum(weighted_macs(m, example).values()) for name, (m, _) in variants.items()}
        params = {name: sum(p.numel() for p in m.parameters()) for name, (m, _) in variants.items()}
        for batch in (1, 32):
            x = torch.randn(batch, *shape)
            times = time_variants({n: m for n, (m, _) in variants.items()}, x, rounds, min_time)
            base = times["original"]
            for name, (_, rank) in variants.items():
                lines.append(f"| {label} | {name} | {rank} | {params[name] / params['original']:.3f} | "
                             f"{macs[name] / macs['original']:.3f} | {batch} | {1e3 * times[name]:.3f} | "
                             f"{times[name] / base:.3f} | {base / times[name]:.2f}x |")
    return "\n".join(lines) + "\n"


def accuracy(plot_path: str | None, epochs: int, budgets: list[float]) -> str:
    from penjing.data import digits
    from penjing.models import pretrained
    from penjing.train import evaluate, fit

    train, test = digits()
    out = []
    curves = {}
    for name in ("lenet300", "lenet5", "resnet"):
        model = pretrained(name, train, progress=False)
        t0 = time.time()
        dense, points = accuracy_curve(model, train, test, budgets, epochs=epochs, lr=3e-4)
        curves[name] = (dense, points)
        out += [f"#### {name} (channel split for convs; {time.time() - t0:.0f} s)", "",
                curve_markdown(dense, points, sum(p.numel() for p in model.parameters()))]
    if plot_path:
        plot_curve(curves, plot_path)

    out += ["#### conv methods at 50% of the parameters (fine-tuned 5 epochs)", "",
            "| model | method | ranks | params kept | MACs kept | accuracy (no fine-tune) | accuracy (fine-tuned) | vs dense |",
            "|---|---|---|---:|---:|---:|---:|---:|"]
    for name in ("lenet5", "resnet"):
        base = pretrained(name, train, progress=False)
        dense = evaluate(base, test)
        out += _conv_method_rows(name, base, dense, train, test, epochs,
                                 lambda method: LowRankConfig(params=0.5, conv_method=method))

    out += ["", "#### convs only: each split at 70% spectrum energy (Linear layers left dense; fine-tuned)", "",
            "| model | method | ranks | params kept | MACs kept | accuracy (no fine-tune) | accuracy (fine-tuned) | vs dense |",
            "|---|---|---|---:|---:|---:|---:|---:|"]
    for name in ("lenet5", "resnet"):
        base = pretrained(name, train, progress=False)
        dense = evaluate(base, test)
        out += _conv_method_rows(name, base, dense, train, test, epochs,
                                 lambda method: LowRankConfig(energy=0.7, conv_method=method, layers="Conv2d"))

    out += ["", "#### budget with and without measured sensitivity (30% of the parameters)", "",
            "| model | sensitivity | ranks | accuracy (no fine-tune) | accuracy (fine-tuned) |",
            "|---|---|---|---:|---:|"]
    for name in ("lenet300", "lenet5", "resnet"):
        base = pretrained(name, train, progress=False)
        for sens in (False, True):
            model = copy.deepcopy(base)
            result = _plan(model, LowRankConfig(params=0.3, sensitivity=sens), data=train)
            before = evaluate(model, test)
            fit(model, train, epochs=epochs, lr=3e-4, progress=False)
            ranks = ", ".join(f"{k}: {v}" for k, v in result.ranks.items())
            out.append(f"| {name} | {'yes' if sens else 'no'} | {ranks} | {100 * before:.2f}% | "
                       f"{100 * evaluate(model, test):.2f}% |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speed-only", action="store_true")
    parser.add_argument("--accuracy-only", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier on a shared machine)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-time", type=float, default=0.3, help="seconds per timing block")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--budgets", default="0.2,0.3,0.4,0.5,0.7")
    parser.add_argument("--plot", help="write the accuracy-vs-parameters PNG here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s)\n")
    if not args.accuracy_only:
        print("### Speed: factorised layer vs the original, same run\n")
        print(speed(args.rounds, args.min_time))
    if not args.speed_only:
        print("### Accuracy vs parameters on digits\n")
        print(accuracy(args.plot, args.epochs, [float(b) for b in args.budgets.split(",")]))


if __name__ == "__main__":
    main()
