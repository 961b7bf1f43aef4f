"""Structured (filter / channel) pruning that physically shrinks the model, right or refusing.

Removing filter ``i`` of a conv removes channel ``i`` everywhere it flows: the input channel
of the next conv or Linear, the norm layers' statistics, and, across a residual add, the same
channel of every tensor added to it. Finding these couplings in an arbitrary graph is what
`torch-pruning`'s DepGraph (Fang et al., CVPR 2023) does: it traces the model once and groups
every coupled slice, so we score and remove whole groups.

* Only the selected layers set how much of a group goes (``pruning_ratio_dict``); layers
  outside the selection are not roots of their own but shrink where coupled to a selected
  one, so an unselected Linear never blocks a selected conv's group (ConvNeXt with
  ``layers="Conv2d"``). Ignored (kept whole) are only the layers whose outputs are the
  model's outputs and the q/k/v projections of attention (their outputs are heads).
* After pruning, the model runs on the example input and a fresh copy of the original
  architecture, resized with :func:`resize_like` (copies of the modules, resized: every
  module keeps its configuration, e.g. timm's ``BatchNormAct2d`` its activation), loads the
  pruned state_dict strictly and computes the same outputs; otherwise pruning raises naming
  the first layer that differs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from penjing.core import structure
from penjing.core.attention import SplitMultiheadAttention
from penjing.core.batch import model_inputs, run_forward
from penjing.core.config import Run
from penjing.core.select import swap, type_name

#: Layers whose output channels structured pruning removes (the roots of DepGraph groups).
ROOT_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


def _forward(run_forward_fn: Callable | None) -> Callable[[nn.Module, Any], Any]:
    def call(model: nn.Module, example: Any) -> Any:
        out = run_forward(model, example, run_forward_fn)
        if isinstance(out, torch.Tensor):
            return out
        if isinstance(out, dict) or hasattr(out, "values"):
            return [v for v in out.values() if isinstance(v, torch.Tensor)]
        return out

    return call


def _graph(model: nn.Module, example: Any, forward_fn: Callable | None = None) -> tp.DependencyGraph:
    return tp.DependencyGraph().build_dependency(model, example_inputs=example,
                                                 forward_fn=_forward(forward_fn), verbose=False)


def output_layers(model: nn.Module, example: Any, forward_fn: Callable | None = None) -> list[nn.Module]:
    """Layers whose output channels reach the model's output without passing through another
    conv/Linear (e.g. the classifier): removing them would change what the model returns."""
    graph = _graph(model, example, forward_fn)
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


def structured_pruner(model: nn.Module, example: Any, *, targets: dict[nn.Module, float],
                      ignored: list[nn.Module], criterion: str, global_scope: bool, rounds: int,
                      forward_fn: Callable | None = None) -> tp.pruner.BasePruner:
    """A DepGraph pruner removing ``targets[layer]`` of each target layer's filters in
    ``rounds`` equal steps (one ratio over all of them with ``global_scope``); groups holding
    no target are left whole (ratio 0), and ``ignored`` layers keep their outputs."""
    if global_scope:
        ratios = {tuple(targets): next(iter(targets.values()))}
    else:
        ratios = dict(targets)
    return tp.pruner.BasePruner(model, example, importance=importance(criterion),
                                global_pruning=global_scope, pruning_ratio=0.0,
                                pruning_ratio_dict=ratios, iterative_steps=rounds,
                                ignored_layers=ignored, forward_fn=_forward(forward_fn))


def _refuse_parametrized(model: nn.Module) -> None:
    from torch.nn.utils import parametrize

    if any(parametrize.is_parametrized(m) for m in model.modules()):
        raise ValueError("prune: structured pruning rebuilds layers, but this model has "
                         "parametrizations (masks, quantizers...) attached: bake them first with "
                         "penjing.bake(model), or prune structurally before the other methods")


def _shapes(model: nn.Module) -> dict[str, str]:
    return {n: "x".join(map(str, m.weight.shape)) for n, m in model.named_modules()
            if isinstance(getattr(m, "weight", None), torch.Tensor)}


def prune_structurally(model: nn.Module, config, targets: list, example: Any, rounds: int,
                       finish_round: Callable[[int, int], None], run: Run) -> None:
    """The structured branch of :func:`penjing.prune` (see the module docstring)."""
    _refuse_parametrized(model)
    example = example if run.forward_fn is not None else _as_inputs(example)
    was_training = model.training
    # Tracing runs a forward pass: in eval mode, so BatchNorm statistics are not updated by
    # the example (and a batch of one is fine for BatchNorm1d).
    model.eval()
    try:
        dense = copy.deepcopy(model)
        outputs = output_layers(model, example, run.forward_fn)
        heads = [m for a in model.modules() if isinstance(a, SplitMultiheadAttention)
                 for m in (a.q_proj, a.k_proj, a.v_proj)]
        chosen: dict[nn.Module, float] = {}
        kept = []
        for t in targets:
            if t.module in outputs:
                run.report.skip(t.name, t.module, "its outputs are the model's outputs, so its "
                                "filters cannot be removed")
            elif any(t.module is h for h in heads):
                run.report.skip(t.name, t.module, "an attention q/k/v projection: its outputs are "
                                "heads, kept whole (its inputs shrink with the model width)")
            elif t.sparsity:
                chosen[t.module] = t.sparsity
                kept.append(t)
        if not chosen:
            raise ValueError("prune: no layer left to prune structurally: every selected layer "
                             "feeds the model's output, is an attention projection or has "
                             "sparsity 0")
        ignored = [*outputs, *heads]
        for name, reason in _blockers(model, example, chosen, ignored, config, run.forward_fn):
            module = model.get_submodule(name)
            run.report.skip(name, module, f"kept whole: pruning the channels it emits breaks the "
                            f"model's forward ({reason})")
            ignored.append(module)
            if module in chosen:
                del chosen[module]
                kept = [t for t in kept if t.module is not module]
        if not chosen:
            raise ValueError("prune: no layer left to prune structurally: pruning the selected "
                             "layers' channels breaks the model (see the skipped layers)")
        before = _shapes(model)
        targets[:] = kept
        pruner = structured_pruner(model, example, targets=chosen, ignored=ignored,
                                   criterion=config.criterion, global_scope=config.scope == "global",
                                   rounds=rounds, forward_fn=run.forward_fn)
        try:
            for i in range(1, rounds + 1):
                pruner.step()
                model.eval()
                finish_round(i, rounds)
                model.eval()
            verify(model, dense, example, run.forward_fn)
        except Exception:
            _restore(model, dense)  # refused: the user's model is left as it was
            raise
        structure.note(model, "prune_channels", pruned_modules(dense, model, pruner.pruning_history()))
        after = _shapes(model)
        for name, shape in after.items():
            if shape != before.get(name):
                module = model.get_submodule(name)
                selected = any(t.module is module for t in kept)
                run.report.touch(name, module, before.get(name, "?"), shape,
                                 detail="pruned" if selected else "shrunk with a pruned layer")
    finally:
        model.train(was_training)


def _restore(model: nn.Module, dense: nn.Module) -> None:
    """Put ``dense``'s modules and tensors back into ``model`` (in place)."""
    for name, child in list(dense.named_children()):
        setattr(model, name, child)
    model._parameters.update(dense._parameters)
    model._buffers.update(dense._buffers)
    model.__dict__.update({k: v for k, v in dense.__dict__.items()
                           if k not in ("_parameters", "_buffers", "_modules")})


class LayerError(ValueError):
    """A structured-pruning check failed at one layer (``layer``: its name)."""

    def __init__(self, message: str, layer: str | None, reason: str = ""):
        super().__init__(message)
        self.layer, self.reason = layer, reason


#: how many layers a probe may find whose channels the model's own code fixes
MAX_BLOCKERS = 8


def _blockers(model: nn.Module, example: Any, chosen: dict[nn.Module, float],
              ignored: list[nn.Module], config, forward_fn: Callable | None) -> list[tuple[str, str]]:
    """Layers whose output channels cannot be removed although DepGraph couples them (the
    model's code fixes a width: a reshape to a stored ``hidden_dim``, an attribute...): found
    by pruning a copy once and checking it, until the copy is right. Returns ``(name, why)``."""
    names = {id(m): n for n, m in model.named_modules()}
    found: list[tuple[str, str]] = []
    for _ in range(MAX_BLOCKERS + 1):
        trial = copy.deepcopy(model)
        modules = dict(trial.named_modules())
        skip = {n for n, _ in found}
        targets = {modules[names[id(m)]]: r for m, r in chosen.items() if names[id(m)] not in skip}
        if not targets:
            return found
        keep = [modules[names[id(m)]] for m in ignored] + [modules[n] for n in skip]
        pruner = structured_pruner(trial, example, targets=targets, ignored=keep,
                                   criterion=config.criterion, global_scope=config.scope == "global",
                                   rounds=1, forward_fn=forward_fn)
        pruner.step()
        trial.eval()
        try:
            verify(trial, model, example, forward_fn)
            return found
        except LayerError as exc:
            if exc.layer is None or exc.layer in skip or exc.layer not in modules:
                raise ValueError(str(exc)) from None
            found.append((exc.layer, exc.reason))
    raise ValueError(f"prune: structured pruning breaks this model at more than {MAX_BLOCKERS} "
                     f"layers ({', '.join(n for n, _ in found)}); select fewer layers")


def _as_inputs(example: Any) -> Any:
    """What DepGraph calls the model with: a tensor, or keyword inputs (a tuple batch's target
    left out)."""
    inputs = model_inputs(example)
    return dict(inputs) if isinstance(inputs, dict) else inputs


def verify(model: nn.Module, dense: nn.Module, example: Any, forward_fn: Callable | None = None) -> None:
    """The pruned ``model`` runs on ``example``, and ``dense`` (the unpruned original),
    resized to the pruned state_dict, loads it strictly and computes the same; else raise
    naming the first layer at fault."""
    call = _forward(forward_fn)
    with torch.no_grad():
        outputs = _module_outputs(model, lambda: call(model, example), "the pruned model")
        state = model.state_dict()
        try:
            rebuilt = resize_like(copy.deepcopy(dense), state)
            rebuilt.load_state_dict(state)
        except (ValueError, RuntimeError) as exc:
            raise ValueError(f"prune: the pruned state_dict does not load into the architecture "
                             f"rebuilt from the original: {exc}") from None
        rebuilt.eval()
        again = _module_outputs(rebuilt, lambda: call(rebuilt, example), "the rebuilt model")
    for name, out in outputs.items():
        other = again.get(name)
        if other is None or other.shape != out.shape or not torch.allclose(other, out, atol=1e-5, rtol=1e-4):
            module = model.get_submodule(name)
            raise LayerError(f"prune: after structured pruning, layer {name} ({type_name(module)}) "
                             "computes differently in the pruned model and in the architecture "
                             "rebuilt from its state_dict: penjing cannot rebuild this layer type; "
                             "add it (or the layers feeding it) to exclude=", name,
                             "the architecture rebuilt from its state_dict computes differently")


def _module_outputs(model: nn.Module, call: Callable[[], Any], what: str) -> dict[str, torch.Tensor]:
    """Each leaf module's first tensor output while ``call()`` runs; a crash names the layer."""
    outputs: dict[str, torch.Tensor] = {}
    entered: list[str] = []
    hooks = []
    for name, module in model.named_modules():
        if any(True for _ in module.children()):
            continue
        hooks.append(module.register_forward_pre_hook(lambda _m, _a, n=name: entered.append(n)))

        def keep(_m, _a, out, n=name):
            tensor = out if isinstance(out, torch.Tensor) else next(
                (o for o in out if isinstance(o, torch.Tensor)), None) if isinstance(out, tuple) else None
            if tensor is not None:
                outputs.setdefault(n, tensor.detach().clone())

        hooks.append(module.register_forward_hook(keep))
    try:
        call()
    except Exception as exc:
        where = entered[-1] if entered else "(before the first layer)"
        layer = model.get_submodule(where) if entered else None
        kind = f" ({type_name(layer)})" if layer is not None else ""
        raise LayerError(f"prune: {what} fails at layer {where}{kind} after structured pruning: "
                         f"{type(exc).__name__}: {exc}", where if entered else None,
                         f"{type(exc).__name__}: {exc}") from None
    finally:
        for h in hooks:
            h.remove()
    return outputs


#: attribute updates after a module's tensors were resized: type -> f(module)
def _fix_linear(m: nn.Linear) -> None:
    m.out_features, m.in_features = m.weight.shape


def _fix_conv(m: nn.modules.conv._ConvNd, old_in: int, old_out: int, old_groups: int) -> None:
    w = m.weight.shape
    depthwise = old_groups > 1 and old_groups == old_in
    if m.transposed:
        m.in_channels, m.out_channels = w[0], w[1] * (w[0] if depthwise else old_groups)
        m.groups = w[0] if depthwise else old_groups
    else:
        m.groups = w[0] // (old_out // old_groups) if depthwise else old_groups
        m.out_channels, m.in_channels = w[0], w[1] * m.groups


def _fix_norm(m: nn.Module) -> None:
    size = next((t.shape[0] for t in (m.weight, getattr(m, "running_mean", None)) if t is not None), None)
    if isinstance(m, nn.modules.batchnorm._NormBase):
        m.num_features = size
    elif isinstance(m, nn.GroupNorm):
        m.num_channels = size
    elif isinstance(m, nn.LayerNorm):
        m.normalized_shape = tuple(m.weight.shape)


def _fix_embedding(m: nn.Embedding | nn.EmbeddingBag) -> None:
    m.num_embeddings, m.embedding_dim = m.weight.shape


def resize_like(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Shrink the layers of a freshly built (dense) ``model`` to the shapes in ``state_dict``
    (from a structured-pruned copy of the same architecture), in place, so that the state
    loads: ``resize_like(MyNet(), state).load_state_dict(state)``.

    Each module whose tensors differ in shape is *copied* and its tensors resized, so it keeps
    its whole configuration (eps, momentum, activation of timm's ``BatchNormAct2d``, padding,
    groups of a depthwise conv...); the size attributes of Linear, conv, norm and embedding
    layers are updated. Values are not copied: load the state_dict afterwards.
    """
    for name, module in list(model.named_modules()):
        prefix = f"{name}." if name else ""
        changed = {}
        for kind in ("_parameters", "_buffers"):
            for key, tensor in getattr(module, kind).items():
                new = state_dict.get(prefix + key)
                if tensor is not None and new is not None and tuple(new.shape) != tuple(tensor.shape):
                    changed[(kind, key)] = new.shape
        if not changed:
            continue
        old = (getattr(module, "in_channels", 0), getattr(module, "out_channels", 0),
               getattr(module, "groups", 1))
        new_module = copy.copy(module)  # shallow: children shared, own tensor dicts below
        new_module._parameters = dict(module._parameters)
        new_module._buffers = dict(module._buffers)
        new_module._modules = dict(module._modules)
        for (kind, key), shape in changed.items():
            tensor = getattr(module, kind)[key]
            fresh = torch.zeros(shape, dtype=tensor.dtype, device=tensor.device)
            getattr(new_module, kind)[key] = (nn.Parameter(fresh, tensor.requires_grad)
                                              if kind == "_parameters" else fresh)
        if isinstance(new_module, nn.Linear):
            _fix_linear(new_module)
        elif isinstance(new_module, nn.modules.conv._ConvNd):
            _fix_conv(new_module, *old)
        elif isinstance(new_module, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm):
            _fix_norm(new_module)
        elif isinstance(new_module, nn.Embedding | nn.EmbeddingBag):
            _fix_embedding(new_module)
        if name:
            swap(model, name, new_module)
        else:
            model = new_module
    return model


# ---------------------------------------------------------------------------- structure record

def _tensor_shapes(module: nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for d in (module._parameters, module._buffers) for k, v in d.items()
            if v is not None}


def _size_attrs(module: nn.Module) -> dict:
    """The module's own integer / integer-tuple attributes (sizes, groups, normalized_shape...)."""
    out = {}
    for key, value in vars(module).items():
        if key.startswith("_") or isinstance(value, bool):
            continue
        if isinstance(value, int) or (isinstance(value, tuple | list) and value
                                      and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            out[key] = list(value) if isinstance(value, tuple | list) else value
    return out


def _kept(history: list, dense: nn.Module) -> dict[str, list[int]]:
    """Output indices of the original layer each pruned root kept, composed over the rounds."""
    kept: dict[str, list[int]] = {}
    for name, is_out, idxs in history:
        if not is_out:
            continue
        module = dense.get_submodule(name)
        axis = 1 if getattr(module, "transposed", False) else 0
        current = kept.setdefault(name, list(range(module.weight.shape[axis])))
        drop = {int(i) for i in idxs}
        kept[name] = [k for i, k in enumerate(current) if i not in drop]
    return kept


def pruned_modules(dense: nn.Module, model: nn.Module, history: list) -> list[dict]:
    """The structure record of one structured pruning: per module whose tensors or size
    attributes changed, its type, the shapes before (``was``) and after (``now``), the changed
    attributes and, for pruned layers, the output indices kept."""
    kept = _kept(history, dense)
    before = dict(dense.named_modules())
    out = []
    for name, module in model.named_modules():
        old = before.get(name)
        if old is None or type(old) is not type(module):
            continue
        was, now = _tensor_shapes(old), _tensor_shapes(module)
        old_attrs, new_attrs = _size_attrs(old), _size_attrs(module)
        attrs = {k: v for k, v in new_attrs.items() if old_attrs.get(k) != v}
        if was == now and not attrs:
            continue
        entry = {"name": name, "type": type(module).__name__, "was": was, "now": now, "attrs": attrs}
        if name in kept:
            entry["kept"] = kept[name]
        out.append(entry)
    return out


def _replay_prune(model: nn.Module, step: dict, state) -> None:
    """Structure replay: give each recorded module of the fresh model its pruned shapes and
    size attributes (values come from the file afterwards)."""
    kind = "prune_channels"
    for entry in step["modules"]:
        name = entry["name"]
        module = structure.module_at(model, name, kind)
        if type(module).__name__ != entry["type"]:
            raise structure.mismatch(name, kind, f"is a {type(module).__name__}; the file pruned a "
                                     f"{entry['type']}")
        current = _tensor_shapes(module)
        was, now = entry["was"], entry["now"]
        if set(current) != set(was) or (current != was and current != now):
            have = ", ".join(f"{k} {v}" for k, v in current.items()) or "no tensors"
            expected = ", ".join(f"{k} {v}" for k, v in was.items()) or "no tensors"
            raise structure.mismatch(name, kind, f"has {have}; the file's model had {expected} "
                                     "before pruning")
        grown = [k for k, shape in now.items() if k not in was or len(shape) != len(was[k])
                 or any(not isinstance(d, int) or not 0 <= d <= w for d, w in zip(shape, was[k], strict=False))]
        if grown:  # pruning only shrinks: a record cannot make load allocate more than the model
            raise ValueError(f"bad structure record: the prune_channels entry of {name} gives "
                             f"{grown[0]} the shape {now[grown[0]]}, not within {was.get(grown[0])}")
        if "kept" in entry:
            _check_kept(name, module, entry)
        for key, shape in now.items():
            for table in (module._parameters, module._buffers):
                tensor = table.get(key)
                if tensor is None or list(tensor.shape) == shape:
                    continue
                fresh = torch.zeros(shape, dtype=tensor.dtype, device=tensor.device)
                table[key] = nn.Parameter(fresh, tensor.requires_grad) if table is module._parameters else fresh
        for key, value in entry["attrs"].items():
            old = getattr(module, key, None)
            setattr(module, key, tuple(value) if isinstance(old, tuple | list) or isinstance(value, list) else value)


def _check_kept(name: str, module: nn.Module, entry: dict) -> None:
    kept = entry["kept"]
    axis = 1 if getattr(module, "transposed", False) else 0
    before, after = entry["was"]["weight"][axis], entry["now"]["weight"][axis]
    if (len(kept) != after or any(not isinstance(i, int) or not 0 <= i < before for i in kept)
            or any(a >= b for a, b in zip(kept, kept[1:], strict=False))):
        raise ValueError(f"bad structure record: the prune_channels entry of {name} keeps "
                         f"{len(kept)} channel indices for {after} channels of {before}")


structure.register_rewrite("prune_channels", _replay_prune)
