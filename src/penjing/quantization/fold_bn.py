"""Fold BatchNorm into the convolution or linear layer that feeds it.

In inference ``BN(conv(x)) = gamma * (W x + b - mu) / sqrt(var + eps) + beta`` is itself an
affine map, so it folds into new weights and bias of the conv (PyTorch's own
``fuse_conv_bn_weights`` / ``fuse_linear_bn_weights`` do the arithmetic) and the BN becomes an
``Identity``. Quantizing the folded weight is what an integer kernel will run, so PTQ folds
first.

Pairs are found on a ``torch.fx`` trace of the model (a BN whose only input is a conv/linear
whose only user is that BN); models fx cannot trace fall back to consecutive children of
``nn.Sequential`` containers. A folded conv keeps any pruning mask on its weight: the
per-output-channel BN scale multiplies the dense tensor under the mask, which commutes with it.

A *norm + activation* module (timm's ``BatchNormAct2d``: a ``BatchNorm2d`` subclass whose
forward is the batch norm, then its ``drop`` and ``act`` children) folds the same way, and is
replaced by what follows its norm (its ``act``, after its ``drop`` when that is not an
identity), so the activation stays and can fuse into the int8 conv.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

from penjing.core import structure
from penjing.core.params import original, parametrizations
from penjing.core.select import swap

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _norm_act(bn: nn.Module) -> bool:
    """timm's norm + activation layout: a BN subclass with exactly ``drop`` and ``act`` children."""
    return type(bn) not in _BN and sorted(bn._modules) == ["act", "drop"]


def _foldable_bn(module: nn.Module | None) -> bool:
    return type(module) in _BN or (isinstance(module, _BN) and _norm_act(module))


def after_norm(bn: nn.Module) -> nn.Module:
    """What replaces a folded BN: ``Identity``, or a norm + activation module's ``drop`` / ``act``."""
    if not _norm_act(bn):
        return nn.Identity()
    rest = [m for m in (bn.drop, bn.act) if type(m) is not nn.Identity]
    return nn.Identity() if not rest else rest[0] if len(rest) == 1 else nn.Sequential(*rest)


def _pairs_fx(model: nn.Module) -> list[tuple[str, str]]:
    import torch.fx

    class _BNLeaves(torch.fx.Tracer):  # a norm + act subclass is a BN too: keep it one call
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return _foldable_bn(m) or super().is_leaf_module(m, qualname)

    graph = _BNLeaves().trace(model)
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not _foldable_bn(modules.get(node.target)):
            continue
        if len(node.args) != 1 or not isinstance(node.args[0], torch.fx.Node) or node.kwargs:
            continue
        src = node.args[0]
        # Fold only when the layer's output reaches nothing but this BN, and neither module
        # runs anywhere else: folding rewrites the layer's output for *every* user and call.
        if (src.op == "call_module" and isinstance(modules.get(src.target), _FOLDABLE)
                and len(src.users) == 1 and calls[src.target] == 1 and calls[node.target] == 1):
            pairs.append((src.target, node.target))
    return pairs


def _pairs_sequential(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (a_name, a), (b_name, b) in zip(children, children[1:], strict=False):
            if isinstance(a, _FOLDABLE) and _foldable_bn(b):
                prefix = f"{name}." if name else ""
                pairs.append((prefix + a_name, prefix + b_name))
    return pairs


def find_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(layer_name, bn_name)`` for every BatchNorm that directly follows a conv/linear."""
    if not any(isinstance(m, _BN) for m in model.modules()):
        return []
    try:
        return _pairs_fx(model)
    except Exception:  # noqa: BLE001 -- fx cannot trace data-dependent control flow; fall back
        return _pairs_sequential(model)


@torch.no_grad()
def fold_batchnorm(model: nn.Module, undo: list | None = None) -> list[tuple[str, str]]:
    """Fold every foldable BatchNorm of ``model`` into its producer (in place).

    Returns the folded ``(layer, bn)`` pairs. The model computes the same function in eval
    mode afterwards, up to float rounding; the BN's ``eps`` is part of the fold (a dead
    channel, running variance 0, stays finite). ``undo`` (a list) receives what
    :func:`unfold_batchnorm` needs to put the model back.
    """
    pairs = find_bn_pairs(model)
    for layer_name, bn_name in pairs:
        layer = model.get_submodule(layer_name)
        bn = model.get_submodule(bn_name)
        # with parametrizations, scale the dense tensor under them (masks commute with it)
        dense = original(layer) if parametrizations(layer) else layer.weight
        probe = dense.detach().clone()
        bias = layer.bias.detach() if layer.bias is not None else None
        if undo is not None:
            undo.append((layer_name, bn_name, bn, probe, None if bias is None else bias.clone()))
        if isinstance(layer, nn.Linear):
            new_w, new_b = fuse_linear_bn_weights(probe, bias, bn.running_mean, bn.running_var, bn.eps,
                                                  bn.weight if bn.affine else torch.ones_like(bn.running_mean),
                                                  bn.bias if bn.affine else torch.zeros_like(bn.running_mean))
        else:
            transpose = isinstance(layer, nn.modules.conv._ConvTransposeNd)
            new_w, new_b = fuse_conv_bn_weights(probe, bias, bn.running_mean, bn.running_var, bn.eps,
                                                bn.weight if bn.affine else None,
                                                bn.bias if bn.affine else None, transpose=transpose)
        dense.data.copy_(new_w.detach())
        if layer.bias is None:
            layer.bias = nn.Parameter(new_b.detach().clone())
        else:
            layer.bias.data.copy_(new_b.detach())
        swap(model, bn_name, after_norm(bn))
    structure.note(model, "fold_bn", [{"name": layer, "bn": bn} for layer, bn in pairs])
    return pairs


@torch.no_grad()
def unfold_batchnorm(model: nn.Module, undo: list) -> None:
    """Put back what :func:`fold_batchnorm` changed (``undo`` as it filled it), newest first."""
    for layer_name, bn_name, bn, weight, bias in reversed(undo):
        layer = model.get_submodule(layer_name)
        dense = original(layer) if parametrizations(layer) else layer.weight
        dense.data.copy_(weight)
        if bias is None:
            layer.bias = None
        else:
            layer.bias.data.copy_(bias)
        swap(model, bn_name, bn)
    structure.forget(model, "fold_bn", {entry[0] for entry in undo})
    undo.clear()
