"""``penjing.winograd(model, config)``: swap every eligible conv for a ``WinogradConv2d``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from penjing.core.select import LayerSelector, select, swap
from penjing.winograd_conv.autotune import choose_tile_by_cost, measure_tiles
from penjing.winograd_conv.conv import WinogradConv2d, _check_supported, check_tile
from penjing.winograd_conv.cost import conv_multiplications


@dataclass
class WinogradConfig:
    """What to convert and how.

    * ``layers`` / ``exclude``: which convs (a :func:`penjing.select` selector; default all).
    * ``m``: the output tile for every layer; ``None`` chooses per layer among ``tiles``.
    * ``tiles``: candidate tiles for the automatic choice. (2, 4) by default: in float32
      F(6x6) is about 10x less accurate again than F(4x4) (``docs/winograd.md``); add 6 if
      your tolerance allows.
    * ``kernel_sizes``: the square kernels to convert (3x3 and 5x5 by default).
    * ``example_input``: a batch shaped like the real input. With it, each layer's input
      shape is known, the multiplications are counted, and ``measure=True`` times direct vs
      each tile on that shape (median of ``reps`` interleaved runs) and keeps the fastest;
      ``skip_slower`` then leaves a layer alone when the direct conv was faster. Without it
      the cost model picks m at run time for each input shape.
    """

    layers: LayerSelector = None
    exclude: LayerSelector = ()
    m: int | None = None
    tiles: Sequence[int] = (2, 4)
    kernel_sizes: Sequence[int] = (3, 5)
    example_input: torch.Tensor | None = None
    measure: bool = True
    skip_slower: bool = True
    reps: int = 5

    def __post_init__(self) -> None:
        if self.m is not None:
            check_tile(self.m)
        if not self.tiles:
            raise ValueError("tiles must name at least one output tile size, e.g. (2, 4)")
        self.tiles = tuple(check_tile(m) for m in self.tiles)
        self.kernel_sizes = tuple(int(k) for k in self.kernel_sizes)
        if any(k < 2 for k in self.kernel_sizes):
            raise ValueError(f"kernel_sizes must be >= 2, got {self.kernel_sizes}")
        if self.reps < 1:
            raise ValueError(f"reps must be >= 1, got {self.reps}")


@dataclass
class LayerDecision:
    """What happened to one conv layer."""

    name: str
    shape: str                          # "K x C x r x r"
    converted: bool
    reason: str                         # why it was converted with this m, or why skipped
    m: int | None = None                # None with converted=True: chosen at run time
    input_shape: tuple[int, ...] | None = None
    direct_mults: int | None = None
    winograd_mults: int | None = None
    times_ms: dict[str, float] = field(default_factory=dict)

    @property
    def reduction(self) -> float | None:
        if self.direct_mults is None or not self.winograd_mults:
            return None
        return self.direct_mults / self.winograd_mults


@dataclass
class WinogradReport:
    """Per-layer decisions of one conversion; printable as a rich table or Markdown."""

    layers: list[LayerDecision]

    @property
    def converted(self) -> list[LayerDecision]:
        return [d for d in self.layers if d.converted]

    @property
    def skipped(self) -> list[LayerDecision]:
        return [d for d in self.layers if not d.converted]

    def totals(self) -> tuple[int, int]:
        """(direct, after) multiplications over the layers whose input shape is known; a
        skipped layer counts its direct multiplications on both sides."""
        direct = after = 0
        for d in self.layers:
            if d.direct_mults is None:
                continue
            direct += d.direct_mults
            after += d.winograd_mults if d.converted and d.winograd_mults else d.direct_mults
        return direct, after

    @property
    def measured(self) -> bool:
        return any(d.times_ms for d in self.layers)

    def header(self) -> list[str]:
        timing = ["ms direct / F(m)"] if self.measured else []
        return ["layer", "weight", "input", "status", "m", "mults direct", "mults winograd",
                "saving", *timing, "reason"]

    def rows(self) -> list[list[str]]:
        out = []
        for d in self.layers:
            times = ""
            if d.times_ms:
                times = " / ".join(f"{v:.2f}" for v in d.times_ms.values())
            out.append([
                d.name, d.shape, "x".join(map(str, d.input_shape)) if d.input_shape else "-",
                "winograd" if d.converted else "skipped",
                ("auto" if d.converted else "-") if d.m is None else str(d.m),
                f"{d.direct_mults:,}" if d.direct_mults is not None else "-",
                f"{d.winograd_mults:,}" if d.winograd_mults is not None and d.converted else "-",
                f"{d.reduction:.2f}x" if d.reduction is not None and d.converted else "-",
                *([times] if self.measured else []), d.reason,
            ])
        return out

    def summary_line(self) -> str:
        direct, after = self.totals()
        line = f"{len(self.converted)} conv(s) converted to Winograd, {len(self.skipped)} skipped"
        if direct:
            line += (f"; multiplications of the convs seen by the example input {direct:,} -> "
                     f"{after:,} ({direct / after:.2f}x fewer, input/output transforms included)")
        return line

    def rich_table(self):
        from rich.table import Table

        table = Table(title="Winograd conversion")
        for col in self.header():
            table.add_column(col, overflow="fold")
        for row in self.rows():
            table.add_row(*row)
        return table

    def to_markdown(self) -> str:
        lines = ["| " + " | ".join(self.header()) + " |",
                 "|" + "---|" * len(self.header())]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows()]
        return "\n".join(lines) + f"\n\n{self.summary_line()}\n"

    def __str__(self) -> str:
        return self.to_markdown()


def _ineligible(module: nn.Conv2d, config: WinogradConfig) -> str | None:
    if isinstance(module, WinogradConv2d):
        return "already a WinogradConv2d"
    try:
        _check_supported("conv", module.kernel_size, module.stride, module.dilation, module.groups,
                         module.padding_mode)
    except ValueError as exc:
        return str(exc).removeprefix("conv: ")
    if module.kernel_size[0] not in config.kernel_sizes:
        return f"{module.kernel_size[0]}x{module.kernel_size[0]} kernel not in kernel_sizes {config.kernel_sizes}"
    if parametrize.is_parametrized(module):
        return "has parametrizations (bake them first with penjing.bake)"
    return None


@torch.no_grad()
def _record_inputs(model: nn.Module, names: list[str], example: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run ``example`` through ``model`` (eval mode) and keep each named conv's input."""
    inputs: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:
        def hook(_module, args, name=name):
            inputs.setdefault(name, args[0].detach())
        handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
    was_training = model.training
    try:
        model.eval()
        model(example)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return inputs


def convert(model: nn.Module, config: WinogradConfig | None = None) -> WinogradReport:
    """Swap the eligible convs of ``model`` in place; return the per-layer report."""
    config = config or WinogradConfig()
    candidates = list(select(model, config.layers, exclude=config.exclude, types=(nn.Conv2d,)))
    decisions: dict[str, LayerDecision] = {}
    eligible: list[str] = []
    for name, module in candidates:
        k, c, kh, kw = module.weight.shape
        decision = LayerDecision(name=name, shape=f"{k}x{c}x{kh}x{kw}", converted=False, reason="")
        reason = _ineligible(module, config)
        if reason:
            decision.reason = reason
        else:
            eligible.append(name)
        decisions[name] = decision

    inputs = {}
    if config.example_input is not None and eligible:
        inputs = _record_inputs(model, eligible, config.example_input)

    for name in eligible:
        module = model.get_submodule(name)
        d = decisions[name]
        r, c = module.kernel_size[0], module.in_channels
        x = inputs.get(name)
        if config.example_input is not None and x is None:
            d.reason = "not reached by the example input"
            continue
        m = config.m
        if x is not None:
            d.input_shape = tuple(x.shape)
            left, right, top, bottom = module._reversed_padding_repeated_twice
            ho, wo = x.shape[2] + top + bottom - r + 1, x.shape[3] + left + right - r + 1
            tiles = (m,) if m is not None else config.tiles
            if config.measure:
                times = measure_tiles(module, x, tiles, reps=config.reps)
                d.times_ms = {str(key): 1e3 * v for key, v in times.items()}
                best = min(tiles, key=lambda t: times[t])
                if config.skip_slower and times["direct"] < times[best]:
                    d.direct_mults = conv_multiplications(c, module.out_channels, ho, wo, r, best,
                                                          x.shape[0]).direct
                    d.reason = (f"direct conv faster on this shape ({1e3 * times['direct']:.2f} ms vs "
                                f"{1e3 * times[best]:.2f} ms with F({best}))")
                    continue
                m = best
                d.reason = (f"measured {times['direct'] / times[best]:.2f}x vs direct"
                            + (f"; fastest of F{list(tiles)}" if len(tiles) > 1 else ""))
            elif m is None:
                m = choose_tile_by_cost(c, module.out_channels, ho, wo, r, x.shape[0], config.tiles)
                d.reason = f"cost model picks F({m}) of {list(config.tiles)}"
            else:
                d.reason = "fixed m"
            count = conv_multiplications(c, module.out_channels, ho, wo, r, m, x.shape[0])
            d.direct_mults, d.winograd_mults = count.direct, count.winograd
        else:
            d.reason = "fixed m" if m is not None else "m chosen per input shape by the cost model"
        swap(model, name, WinogradConv2d.from_conv(module, m))
        d.converted, d.m = True, m
    return WinogradReport([decisions[name] for name, _ in candidates])


def winograd(model: nn.Module, config: WinogradConfig | None = None, *,
             verbose: bool = False) -> nn.Module:
    """Swap every eligible stride-1 3x3/5x5 ``nn.Conv2d`` of ``model`` for a
    :class:`WinogradConv2d` (in place) and return the model.

    The per-layer report (what was swapped with which m, and why the others were skipped) is
    kept as ``model.winograd_report`` and printed when ``verbose``; use :func:`convert` to get
    it directly.
    """
    report = convert(model, config)
    model.winograd_report = report
    if verbose:
        from rich.console import Console

        console = Console(width=max(Console().width, 150))  # wide table: keep rows on one line
        console.print(report.rich_table())
        console.print(report.summary_line())
    return model
