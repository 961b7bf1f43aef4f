"""Low-rank factorisation in the structure record: which layers were factorised, how, at what
rank; replayed on a fresh model by building the same (empty) factorised modules."""

from __future__ import annotations

from torch import nn

from penjing.core import structure
from penjing.core.select import swap
from penjing.low_rank.modules import (
    CONV_METHODS,
    FACTORISED_TYPES,
    LowRankEmbedding,
    LowRankLinear,
    _spatial_kwargs,
)

KIND = "lowrank"


def _expects(method: str) -> type[nn.Module]:
    return {"svd": nn.Linear, "embedding": nn.Embedding}.get(method, nn.Conv2d)


def empty_factorisation(module: nn.Module, method: str, rank) -> nn.Sequential:
    """The factorised replacement of ``module`` at ``rank``, with uninitialised factors (on the
    module's device and dtype): the structure only, weights to be loaded."""
    if method == "svd":
        new = LowRankLinear(module.in_features, module.out_features, rank, module.bias is not None)
    elif method == "embedding":
        new = LowRankEmbedding(module.num_embeddings, module.embedding_dim, rank, module.padding_idx,
                               module.scale_grad_by_freq, module.sparse)
    elif method in CONV_METHODS:
        rank = tuple(rank) if method == "tucker" else rank
        new = CONV_METHODS[method](module.in_channels, module.out_channels, module.kernel_size, rank,
                                   module.bias is not None, **_spatial_kwargs(module))
    else:
        raise ValueError(f"bad structure record: unknown low-rank method {method!r}")
    weight = module.weight
    return new.to(device=weight.device, dtype=weight.dtype)


def _check_rank(name: str, method: str, rank, module: nn.Module) -> None:
    """A rank within the layer's own bound (so a record cannot make load allocate more than
    the fresh model holds): ``1 <= rank <= min`` of the truncated matrix, Tucker per side."""
    shape = tuple(module.weight.shape)
    if method in ("svd", "embedding"):
        bounds = [min(shape)]
    else:
        n, c, kh, kw = shape
        bounds = {"channel": [min(n, c * kh * kw)], "spatial": [min(c * kh, n * kw)], "tucker": [c, n],
                  "cp": [min(n, c * kh * kw)]}[method]
    ranks = rank if isinstance(rank, list) else [rank]
    if len(ranks) != len(bounds) or any(isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= b
                                        for r, b in zip(ranks, bounds, strict=False)):
        raise ValueError(f"bad structure record: rank {rank} for {name} ({method}, weight "
                         f"{list(shape)}) is outside 1..{'/'.join(map(str, bounds))}")


def _replay(model: nn.Module, step: dict, state) -> None:
    for entry in step["modules"]:
        name, method, rank = entry["name"], entry["method"], entry["rank"]
        module = structure.module_at(model, name, KIND)
        if isinstance(module, FACTORISED_TYPES):
            have = list(module.rank) if isinstance(module.rank, tuple) else module.rank
            if module.method == method and have == rank:
                continue  # already factorised the same way
            raise structure.mismatch(name, KIND, f"is already factorised ({module.method} rank "
                                     f"{module.rank}); the file's is {method} rank {rank}")
        wanted = _expects(method)
        if type(module) is not wanted:
            raise structure.mismatch(name, KIND, f"is a {type(module).__name__}; the file factorised "
                                     f"a {wanted.__name__} ({method})")
        if list(module.weight.shape) != entry["shape"]:
            raise structure.mismatch(name, KIND, f"has a {list(module.weight.shape)} weight; the file "
                                     f"factorised a {entry['shape']} one")
        _check_rank(name, method, rank, module)
        swap(model, name, empty_factorisation(module, method, rank))


structure.register_rewrite(KIND, _replay)
