"""Structured (filter / channel) pruning that physically shrinks the model.

Removing filter ``i`` of a conv removes channel ``i`` everywhere it flows: the input channel
of the next conv or Linear, the BatchNorm's statistics, and, across a residual add, the same
channel of every tensor added to it. Finding these couplings in an arbitrary graph is what
`torch-pruning`'s DepGraph (Fang et al., CVPR 2023) does: it traces the model once and groups
every coupled slice, so we score and remove whole groups. We measured it on
``penjing.models.SmallResNet`` (residual adds with and without 1x1 projection shortcuts, BN)
and on user ``nn.Sequential`` models: the pruned models run and their ``state_dict`` loads
into the smaller architecture (tests), so we use it rather than re-deriving the couplings.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch_pruning as tp
from torch import nn

#: Layers whose output channels structured pruning removes (the roots of DepGraph groups).
ROOT_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


def _graph(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    return tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)


def output_layers(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """Layers whose output channels reach the model's output without passing through another
    conv/Linear (e.g. the classifier): removing them would change what the model returns."""
    graph = _graph(model, example)
    found = []
    for module, node in graph.module2node.items():
        if not isinstance(module, ROOT_TYPES):
            continue
        seen, todo = set(), list(node.outputs)
        reaches_output = not node.outputs
        while todo and not reaches_output:
            nxt = todo.pop()
            if id(nxt) in seen:
                continue
            seen.add(id(nxt))
            if isinstance(nxt.module, ROOT_TYPES):
                continue  # consumed by a layer: the channel dimension ends there
            if not nxt.outputs:
                reaches_output = True
            todo.extend(nxt.outputs)
        if reaches_output:
            found.append(module)
    return found


def importance(criterion: str) -> tp.importance.Importance:
    """Group importance: the L1 (``magnitude``/``l1``, as in Li et al. 2017) or L2 norm of each
    filter, summed over every coupled slice of the group (conv, BN, next layer's inputs)."""
    return tp.importance.GroupMagnitudeImportance(p=2 if criterion == "l2" else 1)


def structured_pruner(model: nn.Module, example: torch.Tensor, *, targets: dict[nn.Module, float],
                      criterion: str, global_scope: bool, rounds: int) -> tp.pruner.BasePruner:
    """A DepGraph pruner removing ``targets[layer]`` of each target layer's filters in ``rounds``
    equal steps; every other conv/Linear is left whole (it only shrinks where coupled)."""
    ignored = [m for m in model.modules() if isinstance(m, ROOT_TYPES) and m not in targets]
    ratios = set(targets.values())
    uniform = len(ratios) == 1
    return tp.pruner.BasePruner(
        model,
        example,
        importance=importance(criterion),
        global_pruning=global_scope,
        pruning_ratio=next(iter(ratios)) if uniform else 0.0,
        pruning_ratio_dict=None if uniform else dict(targets),
        iterative_steps=rounds,
        ignored_layers=ignored,
    )


def prune_structured(model: nn.Module, example: torch.Tensor, *, targets: dict[nn.Module, float],
                     criterion: str, global_scope: bool, rounds: int,
                     after_round: Callable[[int], None] | None = None) -> None:
    """Physically remove filters: ``rounds`` steps, calling ``after_round(i)`` after each
    (where the iterative schedule fine-tunes)."""
    pruner = structured_pruner(model, example, targets=targets, criterion=criterion,
                               global_scope=global_scope, rounds=rounds)
    for i in range(1, rounds + 1):
        pruner.step()
        if after_round is not None:
            after_round(i)


def resize_like(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Shrink the layers of a freshly built (dense) ``model`` to the shapes in ``state_dict``
    (from a structured-pruned copy of the same architecture), in place, so that the state
    loads: ``resize_like(MyNet(), state).load_state_dict(state)``.

    Handles Linear, Conv (groups kept for depthwise convs) and BatchNorm layers.
    """
    from penjing.core.select import swap

    for name, module in list(model.named_modules()):
        weight = state_dict.get(f"{name}.weight" if name else "weight")
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            mean = state_dict.get(f"{name}.running_mean")
            size = (weight if weight is not None else mean)
            if size is not None and size.shape[0] != module.num_features:
                swap(model, name, type(module)(size.shape[0], module.eps, module.momentum,
                                               module.affine, module.track_running_stats))
            continue
        if weight is None or tuple(weight.shape) == tuple(module.weight.shape):
            continue
        has_bias = getattr(module, "bias", None) is not None
        if isinstance(module, nn.Linear):
            swap(model, name, nn.Linear(weight.shape[1], weight.shape[0], bias=has_bias))
        elif isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
            depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
            groups = weight.shape[0] if depthwise else module.groups
            swap(model, name, type(module)(
                weight.shape[1] * groups, weight.shape[0], module.kernel_size, module.stride,
                module.padding, module.dilation, groups, has_bias, module.padding_mode))
        else:
            raise ValueError(f"cannot resize {name} ({type(module).__name__}) to {tuple(weight.shape)}; "
                             "load into a deepcopy of the pruned model instead")
    return model
