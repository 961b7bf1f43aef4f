"""``pj.winograd(model, config)``: swap every eligible conv for a ``WinogradConv2d``.

:func:`to_winograd` is the worker (named so that it does not clash with int8's ``pj.convert``);
the verb :func:`winograd` records its decisions in the one report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from penjing.core import structure
from penjing.core.batch import first_batch, run_forward, to_device
from penjing.core.config import MethodConfig, Run, option, verb
from penjing.core.layers import pick_layers
from penjing.core.report import Report
from penjing.core.select import LayerSelector, swap, type_name
from penjing.winograd_conv.autotune import choose_tile_by_cost, measure_tiles
from penjing.winograd_conv.conv import WinogradConv2d, _check_supported, check_tile
from penjing.winograd_conv.cost import conv_multiplications


@dataclass
class WinogradConfig(MethodConfig):
    """What to convert and how.

    * ``layers`` / ``exclude``: which convs (a selector; default: every layer, and the ones
      that are not eligible stride-1 convs are recorded as skipped with the reason).
    * ``m``: the output tile for every layer; ``None`` chooses per layer among ``tiles``.
    * ``tiles``: candidate tiles for the automatic choice. (2, 4) by default: in float32
      F(6x6) is about 10x less accurate again than F(4x4) (``docs/winograd.md``); add 6 if
      your tolerance allows.
    * ``kernel_sizes``: the square kernels to convert (3x3 and 5x5 by default).
    * ``measure``: with an example input (the verb's ``example_inputs=``, or the first batch
      of ``data=``), each layer's input shape is known, the multiplications are counted, and
      ``measure=True`` times direct vs each tile on that shape (median of ``reps``
      interleaved runs) and keeps the fastest; ``skip_slower`` then leaves a layer alone when
      the direct conv was faster. Without an example the cost model picks m at run time for
      each input shape.
    """

    method: ClassVar[str] = "winograd"

    layers: LayerSelector = option(None, "which convs (name globs, type names; default: all)")
    exclude: LayerSelector = option(default_factory=tuple, help="convs to leave alone")
    m: int | None = option(None, "output tile m for every layer (default: chosen per layer)")
    tiles: tuple[int, ...] = option((2, 4), "candidate tiles for the automatic choice")
    kernel_sizes: tuple[int, ...] = option((3, 5), "the square kernel sizes to convert")
    measure: bool = option(True, "with an example input: time direct vs each tile on the real "
                           "input shape and keep the fastest (else the cost model picks)")
    skip_slower: bool = option(True, "leave a layer alone when the measured direct conv was faster")
    reps: int = option(5, "timed runs per candidate when measuring (median kept)")

    def __post_init__(self) -> None:
        if self.m is not None:
            check_tile(self.m, "WinogradConfig.m")
        self.tiles = _int_tuple(self.tiles, "WinogradConfig.tiles")
        self.kernel_sizes = _int_tuple(self.kernel_sizes, "WinogradConfig.kernel_sizes")
        if not self.tiles:
            raise ValueError("WinogradConfig.tiles must name at least one output tile size, e.g. (2, 4)")
        self.tiles = tuple(check_tile(m, "WinogradConfig.tiles") for m in self.tiles)
        if not self.kernel_sizes or any(isinstance(k, bool) or not isinstance(k, int) or k < 2
                                        for k in self.kernel_sizes):
            raise ValueError(f"WinogradConfig.kernel_sizes must be integers >= 2, got {self.kernel_sizes}")
        self.kernel_sizes = tuple(self.kernel_sizes)
        if isinstance(self.reps, bool) or not isinstance(self.reps, int) or self.reps < 1:
            raise ValueError(f"WinogradConfig.reps must be an int >= 1, got {self.reps}")


def _int_tuple(value, what: str) -> tuple:
    """One int, a sequence, or the command line's ``"2,4"`` as a tuple (entries checked later)."""
    if isinstance(value, int):
        return (value,)
    if isinstance(value, str):
        try:
            return tuple(int(v) for v in value.split(",") if v.strip())
        except ValueError:
            raise ValueError(f"{what} takes integers such as 2,4; got {value!r}") from None
    return tuple(value)


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
    """Per-layer decisions of one conversion over the eligible convs (the ineligible layers
    are skips in the verb's :class:`~penjing.core.report.Report`); printable as a rich table
    or Markdown."""

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
        line = (f"{len(self.converted)} conv(s) converted to Winograd, {len(self.skipped)} eligible "
                "left direct")
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


def _ineligible(module: nn.Module, config: WinogradConfig) -> str | None:
    if isinstance(module, WinogradConv2d):
        return "already a WinogradConv2d"
    if not isinstance(module, nn.Conv2d):
        return f"{type_name(module)} is not an nn.Conv2d (Winograd computes 2-D convolutions)"
    if parametrize.is_parametrized(module):
        return "has parametrizations (bake them first with penjing.bake)"
    if type(module) is not nn.Conv2d:
        return (f"{type_name(module)} subclasses nn.Conv2d with its own forward; only plain "
                "nn.Conv2d layers are swapped")
    try:
        _check_supported("conv", module.kernel_size, module.stride, module.dilation, module.groups,
                         module.padding_mode)
    except ValueError as exc:
        return str(exc).removeprefix("conv: ")
    if module.kernel_size[0] not in config.kernel_sizes:
        return f"{module.kernel_size[0]}x{module.kernel_size[0]} kernel not in kernel_sizes {config.kernel_sizes}"
    return None


@torch.no_grad()
def _record_inputs(model: nn.Module, names: list[str], example, forward_fn=None) -> dict[str, torch.Tensor]:
    """Run ``example`` (a batch) through ``model`` (eval mode, restored) and keep each named
    conv's input."""
    inputs: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:
        def hook(_module, args, name=name):
            inputs.setdefault(name, args[0].detach())
        handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
    was_training = model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        model.eval()
        run_forward(model, to_device(example, device), forward_fn)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return inputs


def _eligible(model: nn.Module, config: WinogradConfig, report: Report) -> list[tuple[str, nn.Module]]:
    """The convs to convert. The default selector records every other weighted layer as a
    skip (and may find none: the verb then warns); an explicit one refuses ineligible layers."""
    def supports(name: str, module: nn.Module) -> str | None:
        return _ineligible(module, config)

    # Winograd acts on Conv2d only: attention is left packed (split_mha=False), not rewritten.
    if config.layers is not None:
        return pick_layers(model, config.layers, config.exclude, verb="winograd", supports=supports,
                           report=report, split_mha=False)
    chosen = pick_layers(model, None, config.exclude, verb="winograd", supports=lambda n, m: None,
                         report=report, split_mha=False)
    eligible = []
    for name, module in chosen:
        reason = supports(name, module)
        if reason is None:
            eligible.append((name, module))
        else:
            report.skip(name, module, reason)
    return eligible


def to_winograd(model: nn.Module, config: WinogradConfig | None = None, *, example_inputs=None,
                forward_fn=None, report: Report | None = None) -> WinogradReport:
    """Swap the eligible convs of ``model`` in place; return the per-layer decisions.

    ``example_inputs`` is one batch shaped like the real input (see :class:`WinogradConfig`);
    every layer touched or skipped is also recorded in ``report`` when given. Most users call
    the verb :func:`winograd` instead, which keeps both in ``pj.last_report(model)``.
    """
    config = config or WinogradConfig()
    report = report if report is not None else Report("winograd")
    eligible = _eligible(model, config, report)
    decisions: dict[str, LayerDecision] = {}
    for name, module in eligible:
        k, c, kh, kw = module.weight.shape
        decisions[name] = LayerDecision(name=name, shape=f"{k}x{c}x{kh}x{kw}", converted=False, reason="")

    inputs = {}
    if example_inputs is not None and eligible:
        inputs = _record_inputs(model, [n for n, _ in eligible], example_inputs, forward_fn)

    for name, module in eligible:
        d = decisions[name]
        r, c = module.kernel_size[0], module.in_channels
        x = inputs.get(name)
        if example_inputs is not None and x is None:
            d.reason = "not reached by the example input"
            report.skip(name, module, d.reason)
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
                    report.skip(name, module, d.reason)
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
        tile = f"F({m}x{m}, {r}x{r})" if m is not None else f"F(m x m, {r}x{r}), m per input shape"
        saving = f"; {d.reduction:.2f}x fewer multiplications" if d.reduction else ""
        report.touch(name, module, f"direct {r}x{r} conv", f"Winograd {tile}", d.reason + saving)
    structure.note(model, KIND, [{"name": d.name, "m": None if d.m is None else int(d.m)}
                                 for d in decisions.values() if d.converted])
    return WinogradReport([decisions[name] for name, _ in eligible])


KIND = "winograd"


def _replay(model: nn.Module, step: dict, state) -> None:
    """Structure replay: the recorded convs of a fresh model become ``WinogradConv2d`` with
    the recorded tile (``None``: chosen per input shape, as when it was saved)."""
    for entry in step["modules"]:
        name, m = entry["name"], entry["m"]
        module = structure.module_at(model, name, KIND)
        if isinstance(module, WinogradConv2d):
            module.m = None if m is None else check_tile(m)
            continue
        if type(module) is not nn.Conv2d:
            raise structure.mismatch(name, KIND, f"is a {type_name(module)}, not an nn.Conv2d")
        try:
            swap(model, name, WinogradConv2d.from_conv(module, None if m is None else check_tile(m)))
        except ValueError as exc:
            raise structure.mismatch(name, KIND, f"cannot run Winograd: {exc}") from None


structure.register_rewrite(KIND, _replay)


@verb(WinogradConfig)
def winograd(model: nn.Module, config: WinogradConfig, run: Run) -> None:
    """Swap every eligible stride-1 3x3/5x5 ``nn.Conv2d`` of ``model`` for a
    :class:`WinogradConv2d` (in place): the same convolution with fewer multiplications.

    ``example_inputs`` (or the first batch of ``data``) gives each layer's input shape, so
    the tile is measured or chosen by the cost model for that shape, and the multiplications
    are counted. Every layer that stays direct is recorded with the reason in
    ``pj.last_report(model)``, whose ``extra["plan"]`` is the :class:`WinogradReport` (per-layer
    tile, multiplications, timings); on a model without an eligible conv (a transformer)
    nothing changes and the verb warns.
    """
    example = run.example_inputs
    if example is None and run.data is not None:
        example = first_batch(run.data)
    plan = to_winograd(model, config, example_inputs=example, forward_fn=run.forward_fn,
                       report=run.report)
    run.report.extra["plan"] = plan
    if plan.layers:
        run.report.note(plan.summary_line())
