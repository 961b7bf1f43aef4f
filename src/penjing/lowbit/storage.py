"""Packed storage of a binary/ternary model: codes at 1 or 2 bits, scales, the rest dense.

:func:`pack` returns a plain dict of tensors, strings and ints (safe for ``torch.save`` and
``torch.load(weights_only=True)``); :func:`unpack` turns it back into the state_dict of the
baked model, every binary/ternary weight bit-identical to what the trained model computed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from penjing.core.params import is_parametrized, parametrizations
from penjing.lowbit.api import latent, lowbit_layers
from penjing.lowbit.binary import BinaryWeight
from penjing.lowbit.pack import (
    decode_ternary_entropy,
    encode_ternary_entropy,
    pack_bits,
    pack_ternary,
    unpack_bits,
    unpack_ternary,
)
from penjing.lowbit.ternary import decode_ternary

FORMAT, VERSION = "penjing.lowbit", 1
_MAX_DIMS = 8


def pack(model: nn.Module, entropy: bool = False) -> dict:
    """Pack ``model``'s binary/ternary weights (``entropy=True``: ternary codes entropy-coded
    instead of 2-bit packed); every other tensor of the baked state_dict is kept as is."""
    layers, packed_names = {}, set()
    for name, module, p in lowbit_layers(model):
        if parametrizations(module)[-1] is not p:
            continue  # another representation sits on top: store the baked weight densely
        v = latent(module, p)
        state = p.encode(v)
        entry: dict = {"shape": list(v.shape)}
        if isinstance(p, BinaryWeight):
            entry.update(kind="binary", coding="1bit", data=pack_bits(state["signs"]))
            if "alpha" in state:
                entry["alpha"] = state["alpha"]
        else:
            codes = state["codes"]
            data = encode_ternary_entropy(codes) if entropy else pack_ternary(codes)
            entry.update(kind="ternary", coding="entropy" if entropy else "2bit", data=data,
                         wp=state["wp"], wn=state["wn"])
        layers[name] = entry
        packed_names.add(f"{name}.weight" if name else "weight")
    baked = _baked_state(model)
    dense = {k: v.detach().clone() for k, v in baked.items() if k not in packed_names}
    return {"format": FORMAT, "version": VERSION, "layers": layers, "dense": dense}


def _baked_state(model: nn.Module) -> dict[str, Tensor]:
    """The state_dict ``bake(model)`` would have, without touching ``model``.

    (``bake(copy.deepcopy(model))`` is not an option: a parametrized module's class is
    generated per module and a deep copy shares it, so un-parametrizing the copy deletes the
    weight property from the original too.)
    """
    state = {k: v for k, v in model.state_dict().items() if ".parametrizations." not in f".{k}"}
    for name, module in model.named_modules():
        if is_parametrized(module):
            for tensor in module.parametrizations.keys():
                state[f"{name}.{tensor}" if name else tensor] = getattr(module, tensor).detach()
    return state


def _shape(entry: dict, name: str) -> tuple[int, ...]:
    shape = entry.get("shape")
    if (not isinstance(shape, list) or len(shape) > _MAX_DIMS
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise ValueError(f"layer {name!r}: bad shape {shape!r}")
    return tuple(shape)


def _scale(entry: dict, key: str, name: str, allowed: set[int]) -> Tensor:
    t = entry.get(key)
    if not isinstance(t, Tensor) or not t.is_floating_point() or t.numel() not in allowed:
        raise ValueError(f"layer {name!r}: {key} must be a float tensor of {sorted(allowed)} values")
    if not torch.isfinite(t).all():
        raise ValueError(f"layer {name!r}: {key} is not finite")
    return t


def unpack(state: dict) -> dict[str, Tensor]:
    """The state_dict of the baked model from :func:`pack`'s output (lengths validated)."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError("not a penjing low-bit pack (format field missing or different)")
    if state.get("version") != VERSION:
        raise ValueError(f"unsupported low-bit pack version {state.get('version')!r} (expected {VERSION})")
    layers, dense = state.get("layers"), state.get("dense")
    if not isinstance(layers, dict) or not isinstance(dense, dict):
        raise ValueError("low-bit pack must hold 'layers' and 'dense' mappings")
    out = {k: v for k, v in dense.items() if isinstance(v, Tensor)}
    for name, entry in layers.items():
        if not isinstance(entry, dict):
            raise ValueError(f"layer {name!r}: entry must be a mapping")
        shape = _shape(entry, name)
        n = math.prod(shape)
        data = entry.get("data")
        kind, coding = entry.get("kind"), entry.get("coding")
        if kind == "binary" and coding == "1bit":
            signs = unpack_bits(data, n)
            alpha = None
            if "alpha" in entry:
                alpha = _scale(entry, "alpha", name, {1, shape[0] if shape else 1})
            weight = BinaryWeight.decode(signs, alpha, shape)
        elif kind == "ternary" and coding in ("2bit", "entropy"):
            codes = unpack_ternary(data, n) if coding == "2bit" else decode_ternary_entropy(data, n)
            weight = decode_ternary(codes.reshape(shape), _scale(entry, "wp", name, {1}),
                                    _scale(entry, "wn", name, {1}))
        else:
            raise ValueError(f"layer {name!r}: unknown kind/coding {kind!r}/{coding!r}")
        out[f"{name}.weight" if name else "weight"] = weight
    return out


def packed_bytes(state: dict) -> dict[str, int]:
    """Bytes of the packed payload per part: ``codes`` (bit-packed weights), ``scales``
    (alpha / Wp / Wn as float32) and ``dense`` (every tensor kept as is)."""
    codes = sum(e["data"].numel() for e in state["layers"].values())
    scales = sum(4 * e[k].numel() for e in state["layers"].values() for k in ("alpha", "wp", "wn") if k in e)
    dense = sum(t.numel() * t.element_size() for t in state["dense"].values())
    return {"codes": codes, "scales": scales, "dense": dense}
