"""Checks every weight method runs before touching a model: real values (not the meta
device), finite weights, and weights tied between modules (one Parameter held by two layers,
e.g. GPT-2's ``lm_head`` and ``wte``), which must be changed once, together."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from penjing.core.params import original
from penjing.core.select import type_name


def check_model(model: nn.Module, verb: str,
                layers: Sequence[tuple[str, nn.Module]] | None = None) -> None:
    """Refuse a model whose tensors are on the meta device and, for ``layers``, any weight or
    bias holding NaN or Inf (a threshold or a k-means cannot place it), naming the layer."""
    if layers is None:
        meta = next((n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta), None)
        if meta is not None:
            raise ValueError(f"{verb}: the model's tensors are on the meta device ({meta} has a shape "
                             "but no values): materialize them first, e.g. model.to_empty(device="
                             "'cpu') then model.load_state_dict(...)")
        return
    for name, module in layers:
        for tensor_name in ("weight", "bias"):
            tensor = getattr(module, tensor_name, None)
            if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
                continue
            bad = int((~torch.isfinite(tensor.detach())).sum())
            if bad:
                raise ValueError(f"{verb}: layer {name or '(root)'} ({type_name(module)}) has {bad} "
                                 f"NaN/Inf value(s) in its {tensor_name}; fix or retrain the model "
                                 "before compressing it")


def weight_holders(model: nn.Module) -> dict[int, list[tuple[str, nn.Module]]]:
    """``id(dense weight) -> [(name, module), ...]`` for every module holding a ``weight``; a
    list longer than one is a tie."""
    holders: dict[int, list[tuple[str, nn.Module]]] = {}
    for name, module in model.named_modules():
        if isinstance(getattr(module, "weight", None), torch.Tensor):
            holders.setdefault(id(original(module)), []).append((name, module))
    return holders


def tied_groups(model: nn.Module, layers: Sequence[tuple[str, nn.Module]]
                ) -> list[tuple[tuple[str, nn.Module], list[tuple[str, nn.Module]]]]:
    """``layers`` with ties folded: each entry is ``((name, module), others)`` where ``others``
    are the other modules of the model holding the same weight (selected or not)."""
    holders = weight_holders(model)
    done: set[int] = set()
    out = []
    for name, module in layers:
        key = id(original(module))
        if key in done:
            continue
        done.add(key)
        out.append(((name, module), [(n, m) for n, m in holders.get(key, []) if m is not module]))
    return out
