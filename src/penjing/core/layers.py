"""Which layers a verb acts on, the one way: weighted layers, explicit vs default selection,
and each weight's layout.

A *weighted layer* is a module holding a weight matrix or kernel of its own (a direct
``weight`` with two or more dimensions, parametrized or not, or an ``nn.MultiheadAttention``
with its packed projections). Norm layers (1-D weights) are not weighted layers.

The rule every verb follows (:func:`pick_layers`):

* default selector (``layers=None``): every weighted layer is a candidate; one the method
  cannot handle is *recorded as skipped* with the reason;
* explicit selector: every entry must pick at least one weighted layer (a typo such as
  ``"fc9"`` is an error naming the entry), and a picked layer the method cannot handle is an
  error naming the layer and the reason;
* nothing chosen at all is an error.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from penjing.core.attention import split_attention
from penjing.core.report import Report
from penjing.core.select import LayerSelector, _direct_tensors, _matches, type_name

#: ``supports(name, module) -> None`` when the method handles the layer, else the reason not.
Support = Callable[[str, nn.Module], str | None]


def is_hf_conv1d(module: nn.Module) -> bool:
    """Hugging Face's ``Conv1D`` (GPT-2 and its kin): a Linear whose weight is stored
    transposed, ``[in, out]``. Checked without importing transformers."""
    utils = sys.modules.get("transformers.pytorch_utils")
    conv1d = getattr(utils, "Conv1D", None) if utils is not None else None
    return conv1d is not None and isinstance(module, conv1d)


def is_weighted(module: nn.Module) -> bool:
    """Does ``module`` hold a weight matrix/kernel of its own (the layers methods act on)?"""
    if isinstance(module, nn.MultiheadAttention):
        return True
    if "weight" not in _direct_tensors(module):
        return False
    weight = getattr(module, "weight", None)
    return weight is not None and weight.dim() >= 2


def weighted_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every weighted layer of ``model``, in registration order."""
    return [(n, m) for n, m in model.named_modules() if is_weighted(m)]


def _entries(selector: LayerSelector) -> list:
    if selector is None or selector == ():
        return []
    if isinstance(selector, str | type) or callable(selector):
        return [selector]
    if isinstance(selector, tuple) and all(isinstance(s, type) for s in selector):
        return [selector]
    return list(selector)


def pick_layers(model: nn.Module, layers: LayerSelector, exclude: LayerSelector, *, verb: str,
                supports: Support, report: Report,
                split_mha: bool = True) -> list[tuple[str, nn.Module]]:
    """The layers ``verb`` acts on, by the rule in the module docstring.

    Skips (default selector, unsupported layer) are recorded in ``report``. ``split_mha``: the
    verb acts on ``nn.Linear``, so every ``nn.MultiheadAttention`` is first rewritten into
    q/k/v/out Linears it can reach; a verb that never acts on Linear (Winograd: 2-D convs only)
    passes ``False`` and the attention module stays as it is (a candidate its ``supports``
    records as skipped).
    """
    # Packed attention projections are invisible to weight methods: split them into Linears.
    split = split_attention(model) if split_mha else []
    if split:
        report.note(f"split {len(split)} MultiheadAttention into q/k/v/out Linear")
    candidates = weighted_layers(model)
    if not candidates:
        raise ValueError(f"{verb}: the model has no layer with a weight matrix or kernel "
                         "(Linear, ConvNd, Embedding, MultiheadAttention...)")
    for where, selector in (("layers", layers), ("exclude", exclude)):
        for entry in _entries(selector):
            if not any(_matches(entry, n, m) for n, m in candidates):
                raise ValueError(f"{verb}: {where} entry {entry!r} matches no layer with weights; "
                                 f"the weighted layers are {_names(candidates)}")
    explicit = layers is not None
    chosen = []
    for name, module in candidates:
        if explicit and not _matches(layers, name, module):
            continue
        if _entries(exclude) and _matches(exclude, name, module):
            continue
        reason = supports(name, module)
        if reason is None:
            chosen.append((name, module))
        elif explicit:
            raise ValueError(f"{verb}: layer {name or '(root)'} ({type_name(module)}) was selected "
                             f"but {reason}; leave it out of layers= or add it to exclude=")
        else:
            report.skip(name, module, reason)
    if not chosen:
        why = "; ".join(f"{s.name}: {s.reason}" for s in report.skipped[:5])
        raise ValueError(f"{verb}: no layer to act on" + (f" ({why})" if why else ""))
    return chosen


def _names(layers: Sequence[tuple[str, nn.Module]], limit: int = 12) -> str:
    names = [n or "(root)" for n, _ in layers]
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


@dataclass(frozen=True)
class Layout:
    """Where a weight keeps its output and input dimensions."""

    out_axis: int
    in_axis: int


def weight_layout(module: nn.Module) -> Layout:
    """Axes of ``module.weight``: Linear and ConvNd ``(out, in, ...)``; ConvTransposeNd
    ``(in, out, ...)``; Embedding ``(entries, dim)``: each entry is a row, its features the
    "input" axis that N:M groups and per-row scales follow."""
    if isinstance(module, _ConvTransposeNd):
        return Layout(out_axis=1, in_axis=0)
    if isinstance(module, nn.Linear | _ConvNd | nn.Embedding | nn.EmbeddingBag):
        return Layout(out_axis=0, in_axis=1)
    weight = getattr(module, "weight", None)
    if weight is not None and weight.dim() >= 2:
        return Layout(out_axis=0, in_axis=1)
    raise TypeError(f"{type_name(module)} has no weight matrix whose layout penjing knows")
