"""``pj.lowrank``: choose ranks, factorise, swap, and record what happened per layer."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from penjing.core import structure
from penjing.core.batch import first_batch
from penjing.core.config import Run, verb
from penjing.core.layers import pick_layers
from penjing.core.override import per_layer
from penjing.core.select import swap
from penjing.low_rank import budget, sensitivity
from penjing.low_rank.config import LowRankConfig
from penjing.low_rank.modules import CONV_METHODS, LowRankEmbedding, LowRankLinear, Tucker2Conv2d
from penjing.low_rank.plan import (
    Candidate,
    State,
    build_candidate,
    measure_positions,
    skip_reason,
    weighted_macs,
)


@dataclass
class LayerResult:
    """What happened to one selected layer. ``rank`` is None when it was kept dense, and
    ``reason`` then says why."""

    name: str
    type: str
    method: str
    shape: tuple[int, ...]
    rank: State = None
    params_before: int = 0
    params_after: int = 0
    flops_before: int | None = None
    flops_after: int | None = None
    error: float = 0.0  # relative Frobenius error ||W - W_r|| / ||W||
    reason: str = ""
    spectrum: list[float] = field(default_factory=list)
    break_even: int | None = None  # the largest rank that still pays (single-rank methods)


@dataclass
class LowRankResult:
    """The per-layer record of one ``pj.lowrank`` call, kept in
    ``pj.last_report(model).extra["plan"]`` (``.table()``, ``.to_markdown()``,
    ``.plot_spectra(path)`` in :mod:`penjing.low_rank.report`).

    ``params_*`` count the whole model; ``budget_*`` the factorisable weights the budget
    is over (in parameters, or MACs for a flops budget).
    """

    model: nn.Module
    layers: list[LayerResult]
    params_before: int
    params_after: int
    flops_before: int | None
    flops_after: int | None
    config: LowRankConfig
    budget_metric: str = "params"
    budget_before: int = 0
    budget_after: int = 0

    @property
    def ranks(self) -> dict[str, State]:
        """The chosen rank per factorised layer: pass it back as ``LowRankConfig(rank=...)``
        (with ``conv_method``) to rebuild the same structure, e.g. before loading weights."""
        return {r.name: r.rank for r in self.layers if r.rank is not None}

    @property
    def param_ratio(self) -> float:
        return self.params_after / self.params_before

    @property
    def flop_ratio(self) -> float | None:
        if self.flops_before is None or self.flops_after is None:
            return None
        return self.flops_after / self.flops_before

    def table(self):
        from penjing.low_rank.report import rich_table

        return rich_table(self)

    def to_markdown(self) -> str:
        from penjing.low_rank.report import to_markdown

        return to_markdown(self)

    def plot_spectra(self, path):
        from penjing.low_rank.report import plot_spectra

        return plot_spectra(self, path)


def factorise(cand: Candidate, state: State, refine: bool = False) -> nn.Sequential:
    """Build the factorised replacement of ``cand.module`` at ``state``."""
    if cand.method == "svd":
        return LowRankLinear.from_module(cand.module, state)
    if cand.method == "embedding":
        return LowRankEmbedding.from_module(cand.module, state)
    if cand.method == "tucker":
        return Tucker2Conv2d.from_module(cand.module, state, refine=refine)
    return CONV_METHODS[cand.method].from_module(cand.module, state)


def _check_rank(cand: Candidate, rank) -> State:
    if cand.method == "tucker":
        r_in, r_out = rank if isinstance(rank, tuple) else (rank, rank)
        n, c = cand.matrix_shape
        if r_in > c or r_out > n:
            raise ValueError(f"rank {rank} for layer '{cand.name}' is larger than its channels: "
                             f"tucker ranks are (r_in <= {c}, r_out <= {n}); choose smaller ranks "
                             "or exclude the layer")
        return (r_in, r_out)
    if isinstance(rank, tuple):
        raise ValueError(f"rank {rank} for layer '{cand.name}': a pair of ranks is for tucker only")
    if rank > cand.max_rank:
        rows, cols = cand.matrix_shape
        what = "" if cand.method in ("svd", "embedding") else \
            f" of its {cand.method}-split matrix ({rows}x{cols})"
        raise ValueError(f"rank {rank} for layer '{cand.name}' is larger than min(out, in) = "
                         f"{cand.max_rank}{what}; choose rank <= {cand.max_rank} or exclude the layer")
    return rank


def _describe(module: nn.Module) -> str:
    return f"dense {'x'.join(map(str, module.weight.shape))}"


def _example(run: Run):
    if run.example_inputs is not None:
        return run.example_inputs
    if run.data is not None:
        return first_batch(run.data)
    return None


@verb(LowRankConfig)
def lowrank(model: nn.Module, config: LowRankConfig, run: Run) -> None:
    """Replace the selected layers of ``model`` by low-rank factorisations, in place: Linear by
    truncated SVD, Conv2d split in two (channel or spatial) or three (Tucker-2), Embedding
    tables as ``E = A B`` (see :class:`LowRankConfig` for the rank rules). Fine-tune
    afterwards with :func:`penjing.fit`.

    ``data`` is needed for ``sensitivity=True``; its first batch doubles as the example input
    for counting MACs when ``example_inputs`` is not given. Layers where the chosen rank does
    not pay (a factorisation no smaller than the dense layer) are kept dense; layers that
    cannot be factorised (depthwise/grouped convs, MultiheadAttention...) are skipped; both
    with the reason in ``pj.last_report(model)``, whose ``extra["plan"]`` is the per-layer
    :class:`LowRankResult` (ranks, parameters, MACs, errors, spectra).
    """
    rule = config.rule
    metric = "flops" if rule == "flops" else "params"
    params_before = sum(p.numel() for p in model.parameters())
    example = _example(run)
    def supports(name: str, module: nn.Module) -> str | None:
        # looked up now, not before pick_layers: it may have split attention into new modules
        parent = model.get_submodule(name.rpartition(".")[0]) if name else None
        return skip_reason(module, parent, rule)

    chosen = pick_layers(model, config.layers, config.exclude, verb="lowrank", supports=supports,
                         report=run.report)
    convs = [(n, m) for n, m in chosen if isinstance(m, nn.Conv2d)]
    conv_methods = per_layer(config.conv_method, convs, "LowRankConfig.conv_method", default="channel")
    rows: dict[str, LayerResult] = {}
    candidates: list[Candidate] = []
    for name, module in chosen:
        method = conv_methods.get(name, "svd" if isinstance(module, nn.Linear) else "embedding")
        rows[name] = LayerResult(name=name, type=type(module).__name__, method=method,
                                 shape=tuple(module.weight.shape), params_before=module.weight.numel(),
                                 params_after=module.weight.numel())
        cand = build_candidate(name, module, method)
        if rule in ("energy", "params", "flops") and cand.method == "cp":
            raise ValueError(f"method 'cp' has no singular values to choose a rank from "
                             f"({rule}=...); give an explicit rank for layer '{name}'")
        rows[name].spectrum = [float(s) for s in cand.spectra[0]]
        candidates.append(cand)

    all_macs = None
    if example is not None:
        measure_positions(model, candidates, example, run.forward_fn)
        all_macs = weighted_macs(model, example, run.forward_fn)
        for name, row in rows.items():
            row.flops_before = row.flops_after = all_macs.get(name, 0 if row.method == "embedding" else None)
    elif metric == "flops":
        raise ValueError("a flops budget needs an example input to count MACs: pass "
                         "example_inputs= or data=")
    if metric == "flops":
        unreached = [c for c in candidates if c.positions is None]
        for cand in unreached:
            rows.pop(cand.name)
            run.report.skip(cand.name, cand.module, "not reached by the example input (its MACs "
                            "are unknown)")
        candidates = [c for c in candidates if c.positions is not None]
    for cand in candidates:
        rows[cand.name].break_even = cand.break_even(metric)

    # --- choose the states ------------------------------------------------------------------
    states: dict[str, State] = {}
    if rule == "rank":
        ranks = per_layer(config.rank, [(c.name, c.module) for c in candidates], "LowRankConfig.rank")
        for cand in candidates:
            states[cand.name] = _check_rank(cand, ranks[cand.name]) if cand.name in ranks else None
            if cand.name not in ranks:
                rows[cand.name].reason = "no LowRankConfig.rank key matches this layer"
    elif rule == "energy":
        states = {c.name: c.energy_state(config.energy) for c in candidates}
    else:
        if config.sensitivity:
            if run.data is None:
                raise ValueError("sensitivity=True measures each layer's loss on data: pass data=")
            measured = sensitivity.measure(
                model, candidates, run.data, samples=config.sensitivity_samples,
                factorise=lambda c, s: factorise(c, s, config.refine), forward_fn=run.forward_fn,
                loss_fn=run.loss_fn)
            run.report.extra["sensitivity"] = measured
        fraction = config.params if metric == "params" else config.flops
        # The budget is over the layers lowrank acts on: what it cannot touch (biases, norms,
        # skipped layers) would otherwise eat the budget (52% of a BERT is its embeddings).
        total = sum(c.cost(None, metric) for c in candidates)
        states = budget.budget_states(candidates, metric=metric, fraction=fraction, total=total, fixed=0)

    # --- factorise where it pays ----------------------------------------------------------------
    budget_before = sum(c.cost(None, metric) for c in candidates)
    budget_after = budget_before
    factorised: list[dict] = []
    for cand in candidates:
        row, state = rows[cand.name], states.get(cand.name)
        if state is None:
            row.reason = row.reason or "kept dense by the budget"
            run.report.skip(cand.name, cand.module, row.reason)
            continue
        if not cand.pays(state, metric):
            unit = "parameters" if metric == "params" else "MACs"
            row.reason = (f"rank {state} does not pay ({cand.cost(state, metric):,} vs "
                          f"{cand.cost(None, metric):,} {unit})")
            run.report.skip(cand.name, cand.module, row.reason)
            continue
        before = _describe(cand.module)
        new = factorise(cand, state, config.refine)
        with torch.no_grad():
            w = cand.module.weight.detach().double()
            row.error = float((new.dense_weight().double() - w).norm() / w.norm()) if w.norm() > 0 else 0.0
        swap(model, cand.name, new)
        factorised.append({"name": cand.name, "method": new.method, "shape": list(cand.module.weight.shape),
                           "rank": [int(r) for r in state] if isinstance(state, tuple) else int(state)})
        row.rank = state
        row.params_after = cand.params(state)
        row.flops_after = cand.flops(state)
        budget_after += cand.cost(state, metric) - cand.cost(None, metric)
        rank = "x".join(map(str, state)) if isinstance(state, tuple) else str(state)
        run.report.touch(cand.name, cand.module, before, f"{new.method} rank {rank}",
                         f"{row.params_before:,} -> {row.params_after:,} weights; rel. error "
                         f"{row.error:.3f}")

    structure.note(model, "lowrank", factorised)
    flops_before = flops_after = None
    if all_macs is not None:
        flops_before = sum(all_macs.values())
        flops_after = flops_before + sum(r.flops_after - r.flops_before for r in rows.values()
                                         if r.rank is not None and r.flops_after is not None
                                         and r.flops_before is not None)
    result = LowRankResult(model=model, layers=list(rows.values()), params_before=params_before,
                           params_after=sum(p.numel() for p in model.parameters()),
                           flops_before=flops_before, flops_after=flops_after, config=config,
                           budget_metric=metric, budget_before=budget_before,
                           budget_after=budget_after)
    run.report.extra["plan"] = result
    unit = "MACs per sample" if metric == "flops" else "weights"
    run.report.note(f"factorisable layers: {budget_before:,} -> {budget_after:,} {unit}; model "
                    f"parameters {params_before:,} -> {result.params_after:,}")
