"""Fold each ``nn.ReLU`` that only ever follows an int8 layer into that layer's kernel.

The x86 int8 kernels apply a ReLU to their output for free (fbgemm's ``..._relu_output_fp32``
linear, oneDNN's ``relu`` post-op), so ``int8 layer -> ReLU`` becomes one kernel call that
writes its output once, instead of a kernel plus a float pass over the activations. On small
layers that separate pass is several percent of the time (see ``benchmarks/results/quantize.md``).

Which ReLUs are safe to fold is read from a ``torch.fx`` trace (int8 layers kept as leaves),
never guessed from module order: a ReLU module is replaced by ``nn.Identity`` only when every
place it is called takes the output of an int8 layer that is called once and feeds nothing
else. A ReLU module shared with a residual sum, a functional ``F.relu``, or a model ``fx``
cannot trace is left as it is (correct, just not fused).
"""

from __future__ import annotations

from collections import defaultdict

from torch import fx, nn

from penjing.core.select import swap


def fuse_relu(model: nn.Module, int8_types: tuple[type, ...]) -> list[str]:
    """Fold safe ``int8 layer -> nn.ReLU`` pairs of ``model`` in place; returns the fused layers."""
    pairs = _foldable(model, int8_types)
    fused = []
    for relu_names, layer_names in pairs:
        for name in layer_names:
            model.get_submodule(name).fused_relu = True
            fused.append(name)
        for name in relu_names:
            swap(model, name, nn.Identity())
    return sorted(fused)


class _LeafTracer(fx.Tracer):
    def __init__(self, leaves: tuple[type, ...]):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.leaves) or super().is_leaf_module(m, qualname)


def _foldable(model: nn.Module, int8_types: tuple[type, ...]) -> list[tuple[list[str], list[str]]]:
    """``(names of one ReLU module, int8 layers feeding it)`` for each ReLU that can be folded."""
    try:
        graph = _LeafTracer(int8_types).trace(model)
    except Exception:  # noqa: BLE001 -- data-dependent control flow etc.: no fusion, still correct
        return []
    names_of: dict[int, list[str]] = defaultdict(list)  # a module registered under several names
    for name, module in model.named_modules(remove_duplicate=False):
        if name:
            names_of[id(module)].append(name)
    calls: dict[int, list[fx.Node]] = defaultdict(list)
    for node in graph.nodes:
        if node.op == "call_module":
            calls[id(model.get_submodule(node.target))].append(node)

    out = []
    for key, sites in calls.items():
        relu = model.get_submodule(sites[0].target)
        if type(relu) is not nn.ReLU:
            continue
        producers = []
        for site in sites:
            src = _through_identities(model, site.args[0]) if site.args else None
            ok = (isinstance(src, fx.Node) and src.op == "call_module" and len(site.args) == 1 and not site.kwargs
                  and isinstance(model.get_submodule(src.target), int8_types) and len(src.users) == 1
                  and len(calls[id(model.get_submodule(src.target))]) == 1)
            if not ok:
                break
            producers.append(src.target)
        else:
            out.append((names_of[key], producers))
    return out


def _through_identities(model: nn.Module, node):
    """The producer behind a chain of single-use ``nn.Identity`` calls (e.g. a folded BatchNorm)."""
    while (isinstance(node, fx.Node) and node.op == "call_module" and len(node.users) == 1
           and type(model.get_submodule(node.target)) is nn.Identity and len(node.args) == 1):
        node = node.args[0]
    return node
