"""One decomposable layer and what each rank would cost it: parameters, MACs and error.

A layer's *state* is its rank (an int; an ``(r_in, r_out)`` pair for Tucker-2) or ``None``
for "kept dense". The error of a state is the relative squared Frobenius error of the
truncation, read off the singular values (exact for the SVD-based splits; for Tucker-2 the
HOSVD bound, the sum of what both modes discard). Rank rules and the global budget work on
these numbers alone, so no layer is factorised until its rank is decided.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from penjing.core.batch import batch_size_of, run_forward, to_device
from penjing.low_rank import decompose

State = int | tuple[int, int] | None


@dataclass
class Candidate:
    """A Linear, Conv2d or Embedding the chosen method can factorise.

    ``positions`` is the number of output positions per sample (rows for a Linear, ``Ho*Wo``
    for a conv, looked-up tokens for an Embedding) and ``in_positions`` the input ones
    (``Hin*Win``); ``in_width``/``out_width``
    are needed because the spatial and CP splits run their first factor at full input width.
    They are None when no example input was given (then MACs are unknown).
    """

    name: str
    module: nn.Module
    method: str  # "svd" Linear; "embedding"; "channel" | "spatial" | "tucker" | "cp" for Conv2d
    spectra: tuple[torch.Tensor, ...]
    energy: float  # ||W||_F^2
    positions: int | None = None
    in_positions: int | None = None
    in_width: int | None = None
    out_width: int | None = None
    weight_sensitivity: float = 1.0

    # --- shapes ---------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.module.weight.shape)

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """Shape of the matrix whose rank is truncated (Tucker: ``(N, C)``, the two modes)."""
        w = self.module.weight
        if self.method in ("svd", "embedding"):
            return tuple(w.shape)
        n, c, kh, kw = w.shape
        return {"channel": (n, c * kh * kw), "spatial": (c * kh, n * kw), "tucker": (n, c),
                "cp": (n, c * kh * kw)}[self.method]

    @property
    def max_rank(self) -> int:
        return min(self.matrix_shape)

    def break_even(self, metric: str = "params") -> int | None:
        """The largest single rank that still pays (None for Tucker-2 or if none does)."""
        if self.method == "tucker" or not self.pays(1, metric):
            return None
        low, high = 1, self.max_rank  # cost grows with rank: bisect for the last paying one
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if self.pays(mid, metric) else (low, mid - 1)
        return low

    def min_state(self) -> State:
        return (1, 1) if self.method == "tucker" else 1

    # --- costs ----------------------------------------------------------------------------
    def params(self, state: State) -> int:
        """Weight parameters (the bias is the same either way and left out)."""
        w = self.module.weight
        if state is None:
            return w.numel()
        if self.method in ("svd", "embedding"):
            return state * (w.shape[0] + w.shape[1])
        n, c, kh, kw = w.shape
        if self.method == "channel":
            return state * (c * kh * kw + n)
        if self.method == "spatial":
            return state * (c * kh + n * kw)
        if self.method == "tucker":
            r_in, r_out = state
            return c * r_in + r_in * r_out * kh * kw + r_out * n
        return state * (c + kh + kw + n)  # cp

    def flops(self, state: State) -> int | None:
        """Multiply-accumulates per sample (None without an example input)."""
        if self.positions is None:
            return None
        w = self.module.weight
        if self.method == "embedding":  # a lookup is free; the factor's Linear is not
            return 0 if state is None else self.positions * state * w.shape[1]
        if self.method == "svd" or state is None:
            return self.positions * self.params(state)
        n, c, kh, kw = w.shape
        out_pos, in_pos = self.positions, self.in_positions
        # The first factor of the spatial/CP splits keeps the input width (kernel 1 wide).
        tall_pos = out_pos // self.out_width * self.in_width
        if self.method == "channel":
            return out_pos * state * (c * kh * kw + n)
        if self.method == "spatial":
            return tall_pos * state * c * kh + out_pos * n * state * kw
        if self.method == "tucker":
            r_in, r_out = state
            return in_pos * c * r_in + out_pos * (r_in * r_out * kh * kw + r_out * n)
        return in_pos * c * state + tall_pos * state * kh + out_pos * state * (kw + n)  # cp

    def cost(self, state: State, metric: str) -> int:
        return self.params(state) if metric == "params" else self.flops(state)

    def pays(self, state: State, metric: str = "params") -> bool:
        """A factorisation is only worth it when it is smaller than the dense layer."""
        return state is not None and self.cost(state, metric) < self.cost(None, metric)

    # --- error ----------------------------------------------------------------------------
    def error(self, state: State) -> float:
        """Relative squared Frobenius error of truncating to ``state`` (0 when dense)."""
        if state is None or self.energy == 0:
            return 0.0
        if self.method == "cp":
            raise ValueError("the CP error is only known after the decomposition is computed")
        if self.method == "tucker":
            r_in, r_out = state
            s_out, s_in = self.spectra
            tail = float((s_out[r_out:] ** 2).sum() + (s_in[r_in:] ** 2).sum())
        else:
            tail = float((self.spectra[0][state:] ** 2).sum())
        # Not clamped at 1: for Tucker-2 this is a bound that can exceed 1 at tiny ranks, and
        # clamping would hide the gain of the first singular values from the budget.
        return tail / self.energy

    def weighted_error(self, state: State) -> float:
        return self.weight_sensitivity * self.error(state)

    def next_states(self, state: State) -> list[State]:
        """States one singular value richer than ``state``."""
        if state is None:
            return []
        if self.method == "tucker":
            n, c = self.matrix_shape
            r_in, r_out = state
            return ([(r_in + 1, r_out)] if r_in < c else []) + ([(r_in, r_out + 1)] if r_out < n else [])
        return [state + 1] if state < self.max_rank else []

    def energy_state(self, fraction: float) -> State:
        """The smallest rank keeping ``fraction`` of the squared singular values (per mode for
        Tucker-2)."""
        def smallest(s: torch.Tensor) -> int:
            cumulative = torch.cumsum(s**2, 0)
            total = float(cumulative[-1])
            if total == 0:
                return 1
            # A hair of tolerance so that energy=1.0 means the numerical rank, not "every
            # singular value down to rounding noise".
            return int((cumulative < fraction * total * (1 - 1e-12)).sum()) + 1

        if self.method == "tucker":
            return (smallest(self.spectra[1]), smallest(self.spectra[0]))
        return min(smallest(self.spectra[0]), self.max_rank)


def build_candidate(name: str, module: nn.Module, method: str) -> Candidate:
    """Compute the spectra ``method`` truncates for ``module``."""
    w = module.weight.detach()
    if isinstance(module, nn.Linear):
        method = "svd"
        spectra = (decompose.singular_values(w),)
    elif isinstance(module, nn.Embedding):
        method = "embedding"
        spectra = (decompose.singular_values(w),)
    elif method == "channel":
        spectra = (decompose.singular_values(decompose.channel_matrix(w)),)
    elif method == "spatial":
        spectra = (decompose.singular_values(decompose.spatial_matrix(w)),)
    elif method == "tucker":
        spectra = decompose.tucker_spectra(w)
    else:  # cp: no spectrum; the channel one is shown in plots as a guide
        spectra = (decompose.singular_values(decompose.channel_matrix(w)),)
    return Candidate(name=name, module=module, method=method, spectra=spectra,
                     energy=float((w.double() ** 2).sum()))


def skip_reason(module: nn.Module, parent: nn.Module | None, rule: str) -> str | None:
    """Why ``module`` (a child of ``parent``) cannot be factorised under ``rule`` (None: it can)."""
    from penjing.core.params import is_parametrized
    from penjing.low_rank.modules import FACTORISED_TYPES

    if isinstance(parent, FACTORISED_TYPES):
        return "already a factor of a low-rank layer"
    if isinstance(parent, nn.MultiheadAttention):
        return ("a projection of nn.MultiheadAttention, which reads its weight directly: a "
                "factorised module cannot stand in")
    if isinstance(module, nn.MultiheadAttention):
        return "its q/k/v projections are one packed in_proj_weight, not a layer to swap"
    if is_parametrized(module):
        return "has parametrizations (bake them first with penjing.bake)"
    if isinstance(module, nn.Linear):
        return None
    if type(module) is nn.Embedding:
        if module.max_norm is not None:
            return "max_norm renormalises rows of the whole table at lookup; E = A B cannot keep that"
        if rule == "flops":
            return ("an embedding lookup has no multiply-accumulates to save (a factorised table "
                    "adds rank x dim per token); use params= or rank= to factorise it")
        return None
    if type(module) is not nn.Conv2d:
        return f"{type(module).__name__} is not supported (Linear, Conv2d and Embedding are)"
    if module.groups != 1:
        kind = "depthwise" if module.groups == module.in_channels == module.out_channels else "grouped"
        return f"{kind} conv (groups={module.groups}): a split would mix the groups"
    return None


@torch.no_grad()
def measure_positions(model: nn.Module, candidates: list[Candidate], example, forward_fn=None) -> None:
    """Run ``example`` (a batch) once and record each candidate's input/output positions per
    sample."""
    handles = []
    batch = batch_size_of(example)

    def hook(cand: Candidate):
        def record(module, inputs, output):
            x = inputs[0]
            if isinstance(module, nn.Embedding):
                cand.positions = cand.in_positions = x.numel() // batch
            elif isinstance(module, nn.Linear):
                cand.positions = cand.in_positions = x.numel() // x.shape[-1] // batch
            else:
                cand.in_positions = x.shape[-2] * x.shape[-1]
                cand.positions = output.shape[-2] * output.shape[-1]
                cand.in_width, cand.out_width = x.shape[-1], output.shape[-1]
        return record

    for cand in candidates:
        handles.append(cand.module.register_forward_hook(hook(cand)))
    try:
        _run(model, example, forward_fn)
    finally:
        for h in handles:
            h.remove()


def weighted_macs(model: nn.Module, example, forward_fn=None) -> dict[str, int]:
    """Multiply-accumulates per sample of every Linear/Conv layer of ``model`` on ``example``
    (a batch; a layer's MACs = its output positions x its weight size, groups included),
    counted by the one tracer, :func:`penjing.core.trace.trace`, on the batch's model inputs
    (``forward_fn`` is accepted for the callers' shape; the tracer feeds the inputs itself)."""
    from penjing.core.batch import model_inputs
    from penjing.core.select import WEIGHTED_TYPES, select
    from penjing.core.trace import layer_macs, trace

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    inputs = to_device(model_inputs(example), device)
    per_layer = layer_macs(trace(model, inputs))
    batch = batch_size_of(example)
    return {name: per_layer[name] // batch for name, _ in select(model, types=WEIGHTED_TYPES)
            if name in per_layer}


def _run(model: nn.Module, example, forward_fn=None) -> None:
    """One eval-mode forward pass of ``example`` on the model's device (mode restored)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        run_forward(model, to_device(example, device), forward_fn)
    finally:
        model.train(was_training)
