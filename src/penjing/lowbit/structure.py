"""Binary/ternary rewrites in the structure record. Binary and ternary *weights* need none
(they are baked into plain tensors and coded as 1-/2-bit codebooks); what does change a model
is binarizing a layer's inputs (a forward pre-hook) and the multiplication-free
:class:`~penjing.lowbit.mulfree.TernaryLinear` swap."""

from __future__ import annotations

import torch
from torch import nn

from penjing.core import structure
from penjing.core.select import swap
from penjing.lowbit.binary import binarize_input
from penjing.lowbit.mulfree import TernaryLinear


def _replay_binary_input(model: nn.Module, step: dict, state) -> None:
    for entry in step["modules"]:
        binarize_input(structure.module_at(model, entry["name"], "binary_input"))


def _count(state, key: str, name: str) -> int:
    if key not in state:
        raise structure.mismatch(name, "ternary_linear", f"needs {key!r}, which the file does not hold")
    return int(state[key].shape[0])


def _replay_ternary_linear(model: nn.Module, step: dict, state) -> None:
    """An empty TernaryLinear of the recorded shape, with as many +1/-1 entries as the file."""
    for entry in step["modules"]:
        name = entry["name"]
        module = structure.module_at(model, name, "ternary_linear")
        if isinstance(module, TernaryLinear):
            continue
        if type(module) is not nn.Linear or [module.out_features, module.in_features] != entry["shape"]:
            what = (f"Linear {module.out_features}x{module.in_features}" if isinstance(module, nn.Linear)
                    else type(module).__name__)
            raise structure.mismatch(name, "ternary_linear", f"is a {what}; the file made a Linear "
                                     f"{entry['shape'][0]}x{entry['shape'][1]} multiplication-free")
        pos = torch.zeros(_count(state, f"{name}.pos_rows", name), 2, dtype=torch.int64)
        neg = torch.zeros(_count(state, f"{name}.neg_rows", name), 2, dtype=torch.int64)
        scale = torch.zeros((), dtype=module.weight.dtype)
        bias = None if module.bias is None else torch.zeros(module.out_features, dtype=module.weight.dtype)
        swap(model, name, TernaryLinear(module.in_features, module.out_features, pos, neg, scale, scale, bias))


structure.register_rewrite("binary_input", _replay_binary_input)
structure.register_rewrite("ternary_linear", _replay_ternary_linear)
