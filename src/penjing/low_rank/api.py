"""``penjing.low_rank``: choose ranks, factorise, swap, and say what happened per layer."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import Dataset

from penjing.core.select import WEIGHTED_TYPES, select, swap
from penjing.low_rank import budget, sensitivity
from penjing.low_rank.config import LowRankConfig
from penjing.low_rank.modules import CONV_METHODS, FACTORISED_TYPES, LowRankLinear, Tucker2Conv2d
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
    """The factorised model and the per-layer record (``.table()``, ``.to_markdown()``,
    ``.plot_spectra(path)`` in :mod:`penjing.low_rank.report`)."""

    model: nn.Module
    layers: list[LayerResult]
    params_before: int
    params_after: int
    flops_before: int | None
    flops_after: int | None
    config: LowRankConfig

    @property
    def ranks(self) -> dict[str, State]:
        """The chosen rank per factorised layer: pass it back as ``LowRankConfig(rank=...)``
        (with ``method``) to rebuild the same structure, e.g. before loading saved weights."""
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
    if cand.method == "tucker":
        return Tucker2Conv2d.from_module(cand.module, state, refine=refine)
    return CONV_METHODS[cand.method].from_module(cand.module, state)


def _example(example: torch.Tensor | None, data: Dataset | None) -> torch.Tensor | None:
    if example is not None:
        return example
    if data is not None and len(data) > 0:
        return data[0][0].unsqueeze(0)
    return None


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
        what = "" if cand.method == "svd" else f" of its {cand.method}-split matrix ({rows}x{cols})"
        raise ValueError(f"rank {rank} for layer '{cand.name}' is larger than min(out, in) = "
                         f"{cand.max_rank}{what}; choose rank <= {cand.max_rank} or exclude the layer")
    return rank


def decompose_model(model: nn.Module, config: LowRankConfig | None = None, *,
                    data: Dataset | None = None, example: torch.Tensor | None = None) -> LowRankResult:
    """Factorise the selected Linear/Conv2d layers of ``model`` in place (see
    :class:`LowRankConfig` for the rank rules) and return the per-layer record.

    ``data`` (a dataset of ``(x, y)``) is needed for ``sensitivity=True``; its first sample
    doubles as the example input for counting MACs when ``example`` is not given. Layers
    where the chosen rank does not pay (a factorisation no smaller than the dense layer),
    and depthwise/grouped convs, are kept dense, with the reason in the record.
    """
    config = config or LowRankConfig()
    metric = "flops" if config.rule == "flops" else "params"
    params_before = sum(p.numel() for p in model.parameters())
    example = _example(example, data)

    factor_children = {n for n, m in model.named_modules() if isinstance(m, FACTORISED_TYPES)}
    rows: dict[str, LayerResult] = {}
    candidates: list[Candidate] = []
    for name, module in select(model, config.layers, exclude=config.exclude, types=WEIGHTED_TYPES):
        parent = name.rpartition(".")[0]
        method = "svd" if isinstance(module, nn.Linear) else config.conv_method(name)
        row = LayerResult(name=name, type=type(module).__name__, method=method,
                          shape=tuple(module.weight.shape), params_before=module.weight.numel(),
                          params_after=module.weight.numel())
        rows[name] = row
        reason = "already a factor of a low-rank layer" if parent in factor_children else skip_reason(module)
        if reason:
            row.reason = reason
            continue
        cand = build_candidate(name, module, method)
        if config.rule in ("energy", "params", "flops") and cand.method == "cp":
            raise ValueError(f"method 'cp' has no singular values to choose a rank from "
                             f"({config.rule}=...); give an explicit rank for layer '{name}'")
        row.spectrum = [float(s) for s in cand.spectra[0]]
        candidates.append(cand)
    if not rows:
        raise ValueError("no layer selected: check layers= / exclude= (Linear and Conv2d layers "
                         "can be factorised)")

    all_macs = None
    if example is not None:
        measure_positions(model, candidates, example)
        all_macs = weighted_macs(model, example)
        for name, row in rows.items():
            row.flops_before = row.flops_after = all_macs.get(name)
    elif metric == "flops":
        raise ValueError("a flops budget needs an example input to count MACs: pass example= or data=")

    for cand in candidates:
        rows[cand.name].break_even = cand.break_even(metric)

    # --- choose the states ------------------------------------------------------------------
    states: dict[str, State] = {}
    if config.rule == "rank":
        for cand in candidates:
            rank = config.rank_for(cand.name)
            states[cand.name] = None if rank is None else _check_rank(cand, rank)
            if rank is None:
                rows[cand.name].reason = "no rank given for this layer"
    elif config.rule == "energy":
        states = {c.name: c.energy_state(config.energy) for c in candidates}
    else:
        if config.sensitivity:
            if data is None:
                raise ValueError("sensitivity=True measures each layer's loss on data: pass data=")
            sensitivity.measure(model, candidates, data, samples=config.sensitivity_samples,
                                factorise=lambda c, s: factorise(c, s, config.refine))
        fraction = config.params if metric == "params" else config.flops
        if metric == "params":
            total = params_before
        else:
            total = sum(all_macs.values())
        fixed = total - sum(c.cost(None, metric) for c in candidates)
        states = budget.budget_states(candidates, metric=metric, fraction=fraction, total=total, fixed=fixed)

    # --- factorise where it pays ----------------------------------------------------------------
    for cand in candidates:
        row, state = rows[cand.name], states.get(cand.name)
        if state is None:
            row.reason = row.reason or "kept dense by the budget"
            continue
        if not cand.pays(state, metric):
            unit = "parameters" if metric == "params" else "MACs"
            row.reason = (f"rank {state} does not pay ({cand.cost(state, metric):,} vs "
                          f"{cand.cost(None, metric):,} {unit})")
            continue
        new = factorise(cand, state, config.refine)
        with torch.no_grad():
            w = cand.module.weight.detach().double()
            row.error = float((new.dense_weight().double() - w).norm() / w.norm()) if w.norm() > 0 else 0.0
        swap(model, cand.name, new)
        row.rank = state
        row.params_after = cand.params(state)
        row.flops_after = cand.flops(state)

    flops_before = flops_after = None
    if all_macs is not None:
        flops_before = sum(all_macs.values())
        flops_after = flops_before + sum(r.flops_after - r.flops_before for r in rows.values()
                                         if r.rank is not None)
    return LowRankResult(model=model, layers=list(rows.values()), params_before=params_before,
                         params_after=sum(p.numel() for p in model.parameters()),
                         flops_before=flops_before, flops_after=flops_after, config=config)


def lowrank(model: nn.Module, config: LowRankConfig | None = None, *, data: Dataset | None = None,
            example: torch.Tensor | None = None) -> nn.Module:
    """Replace the selected layers of ``model`` by low-rank factorisations (in place) and
    return it: Linear by truncated SVD, Conv2d split in two (channel or spatial) or three
    (Tucker-2). Fine-tune afterwards with :func:`penjing.fit`. For the per-layer record
    (ranks, parameters, MACs, errors) use :func:`decompose_model`.
    """
    return decompose_model(model, config, data=data, example=example).model
