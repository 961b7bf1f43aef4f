"""``nn.MultiheadAttention`` rewritten with four ``nn.Linear`` projections, so that every weight
method reaches attention.

torch's ``nn.MultiheadAttention`` keeps q/k/v in one packed ``in_proj_weight`` (a bare
Parameter, not a layer) and calls ``F.multi_head_attention_forward`` on raw tensors, so a mask
parametrization, a codebook or an int8 swap of a ``Linear`` never sees it.
:class:`SplitMultiheadAttention` computes exactly the same function through ``q_proj``,
``k_proj``, ``v_proj`` and ``out_proj`` (plain ``nn.Linear`` modules called as modules), and
attention through ``F.scaled_dot_product_attention`` when no weights are asked for -- the same
steps, in the same order, as ``F.multi_head_attention_forward`` (torch 2.4 to 2.14):

* ``batch_first`` both ways, unbatched (2-D) inputs, ``kdim`` / ``vdim``, ``bias`` or not;
* ``key_padding_mask`` and ``attn_mask`` boolean (True = not attended) or float (added),
  ``attn_mask`` 2-D ``(L, S)`` or 3-D ``(N * heads, L, S)``;
* ``need_weights`` with ``average_attn_weights``; ``is_causal`` as torch's hint: it needs
  ``attn_mask``, and only when no weights are asked for and there is no key padding mask does
  it run causal attention (ignoring the mask's values), otherwise the mask is used;
* ``add_bias_kv`` (``bias_k`` / ``bias_v`` kept as Parameters) and ``add_zero_attn``;
* dropout on the attention weights in training mode.

The state_dict maps to and from torch's layout (:func:`split_state`, :func:`packed_state`), and
a split module also loads a torch-layout state_dict directly (``in_proj_weight`` is split on
load), so old checkpoints keep working.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from penjing.core import structure
from penjing.core.select import swap

_PACKED = ("in_proj_weight", "in_proj_bias", "q_proj_weight", "k_proj_weight", "v_proj_weight")


def _float_mask(mask: Tensor | None, name: str, dtype: torch.dtype) -> Tensor | None:
    """torch's canonical mask: boolean True -> -inf, float kept, anything else refused."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros_like(mask, dtype=dtype).masked_fill_(mask, float("-inf"))
    if not torch.is_floating_point(mask):
        raise TypeError(f"only bool and floating types of {name} are supported, got {mask.dtype}")
    return mask


class SplitMultiheadAttention(nn.Module):
    """Multi-head attention with separate ``q_proj`` / ``k_proj`` / ``v_proj`` / ``out_proj``
    ``nn.Linear`` layers; the same arguments, outputs and state as ``nn.MultiheadAttention``
    (see the module docstring). Build one from a torch module with :meth:`from_torch`."""

    # Read by nn.TransformerEncoder(Layer)'s fused fast-path checks: no packed weights here,
    # so they take the slow path, which calls this module.
    in_proj_weight = None
    in_proj_bias = None
    _qkv_same_embed_dim = False

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim: int | None = None,
                 vdim: int | None = None, batch_first: bool = False, device=None, dtype=None):
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0:
            raise ValueError(f"embed_dim and num_heads must be > 0, got {embed_dim} and {num_heads}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        kw = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, dropout
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.batch_first, self.add_zero_attn = batch_first, add_zero_attn
        self.head_dim = embed_dim // num_heads
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **kw)
        self.k_proj = nn.Linear(self.kdim, embed_dim, bias=bias, **kw)
        self.v_proj = nn.Linear(self.vdim, embed_dim, bias=bias, **kw)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **kw)
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.empty(1, 1, embed_dim, **kw))
            self.bias_v = nn.Parameter(torch.empty(1, 1, embed_dim, **kw))
            nn.init.xavier_normal_(self.bias_k)
            nn.init.xavier_normal_(self.bias_v)
        else:
            self.bias_k = self.bias_v = None
        self._register_load_state_dict_pre_hook(_accept_packed_state)

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention) -> SplitMultiheadAttention:
        """The split equivalent of ``mha`` (weights copied; same device, dtype and mode)."""
        weight = mha.in_proj_weight if mha.in_proj_weight is not None else mha.q_proj_weight
        new = cls(mha.embed_dim, mha.num_heads, mha.dropout, bias=mha.in_proj_bias is not None,
                  add_bias_kv=mha.bias_k is not None, add_zero_attn=mha.add_zero_attn,
                  kdim=mha.kdim, vdim=mha.vdim, batch_first=mha.batch_first,
                  device=weight.device, dtype=weight.dtype)
        new.load_state_dict(split_state(mha.state_dict()))
        new.train(mha.training)
        return new

    def to_torch(self) -> nn.MultiheadAttention:
        """The packed ``nn.MultiheadAttention`` with the current weights (for export)."""
        w = self.q_proj.weight
        mha = nn.MultiheadAttention(self.embed_dim, self.num_heads, self.dropout,
                                    bias=self.q_proj.bias is not None,
                                    add_bias_kv=self.bias_k is not None,
                                    add_zero_attn=self.add_zero_attn, kdim=self.kdim,
                                    vdim=self.vdim, batch_first=self.batch_first,
                                    device=w.device, dtype=w.dtype)
        mha.load_state_dict(packed_state(self.state_dict(), same_dim=mha._qkv_same_embed_dim))
        mha.train(self.training)
        return mha

    def forward(self, query: Tensor, key: Tensor, value: Tensor,
                key_padding_mask: Tensor | None = None, need_weights: bool = True,
                attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        batched = query.dim() == 3
        if query.dim() not in (2, 3):
            raise ValueError(f"query should be unbatched 2-D or batched 3-D, got {query.dim()}-D")
        if batched and self.batch_first:
            query, key, value = (x.transpose(1, 0) for x in (query, key, value))
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        tgt_len, bsz, _ = query.shape
        src_len = key.shape[0]
        heads, head_dim = self.num_heads, self.embed_dim // self.num_heads
        embed = self.embed_dim

        key_padding_mask = _float_mask(key_padding_mask, "key_padding_mask", query.dtype)
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint (as "
                               "nn.MultiheadAttention): pass the causal mask too")
        if is_causal and key_padding_mask is None and not need_weights:
            attn_mask = None  # SDPA's own causal mask
        else:
            attn_mask = _float_mask(attn_mask, "attn_mask", query.dtype)
            if key_padding_mask is not None:
                is_causal = False  # the merged mask is no longer causal

        q, k, v = self.q_proj(query), self.k_proj(key), self.v_proj(value)
        if attn_mask is not None:
            if attn_mask.dim() == 2:
                if tuple(attn_mask.shape) != (tgt_len, src_len):
                    raise RuntimeError(f"The shape of the 2D attn_mask is {tuple(attn_mask.shape)}, "
                                       f"but should be {(tgt_len, src_len)}.")
                attn_mask = attn_mask.unsqueeze(0)
            elif attn_mask.dim() == 3:
                if tuple(attn_mask.shape) != (bsz * heads, tgt_len, src_len):
                    raise RuntimeError(f"The shape of the 3D attn_mask is {tuple(attn_mask.shape)}, "
                                       f"but should be {(bsz * heads, tgt_len, src_len)}.")
            else:
                raise RuntimeError(f"attn_mask's dimension {attn_mask.dim()} is not supported")
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.repeat(1, bsz, 1)])
            v = torch.cat([v, self.bias_v.repeat(1, bsz, 1)])
            attn_mask = F.pad(attn_mask, (0, 1)) if attn_mask is not None else None
            key_padding_mask = F.pad(key_padding_mask, (0, 1)) if key_padding_mask is not None else None
        q = q.reshape(tgt_len, bsz * heads, head_dim).transpose(0, 1)
        k = k.reshape(k.shape[0], bsz * heads, head_dim).transpose(0, 1)
        v = v.reshape(v.shape[0], bsz * heads, head_dim).transpose(0, 1)
        if self.add_zero_attn:
            zeros = torch.zeros((bsz * heads, 1, head_dim), dtype=k.dtype, device=k.device)
            k, v = torch.cat([k, zeros], dim=1), torch.cat([v, zeros], dim=1)
            attn_mask = F.pad(attn_mask, (0, 1)) if attn_mask is not None else None
            key_padding_mask = F.pad(key_padding_mask, (0, 1)) if key_padding_mask is not None else None
        src_len = k.size(1)
        if key_padding_mask is not None:
            if tuple(key_padding_mask.shape) != (bsz, src_len):
                raise RuntimeError(f"expecting key_padding_mask shape of {(bsz, src_len)}, but got "
                                   f"{tuple(key_padding_mask.shape)}")
            key_padding_mask = (key_padding_mask.view(bsz, 1, 1, src_len).expand(-1, heads, -1, -1)
                                .reshape(bsz * heads, 1, src_len))
            attn_mask = key_padding_mask if attn_mask is None else attn_mask + key_padding_mask
        dropout_p = self.dropout if self.training else 0.0

        if need_weights:
            q_scaled = q * math.sqrt(1.0 / float(q.shape[-1]))
            if attn_mask is not None:
                weights = torch.baddbmm(attn_mask, q_scaled, k.transpose(-2, -1))
            else:
                weights = torch.bmm(q_scaled, k.transpose(-2, -1))
            weights = F.softmax(weights, dim=-1)
            if dropout_p > 0.0:
                weights = F.dropout(weights, p=dropout_p)
            out = torch.bmm(weights, v).transpose(0, 1).reshape(tgt_len * bsz, embed)
            out = self.out_proj(out).view(tgt_len, bsz, -1)
            weights = weights.view(bsz, heads, tgt_len, src_len)
            if average_attn_weights:
                weights = weights.mean(dim=1)
            if not batched:
                out, weights = out.squeeze(1), weights.squeeze(0)
        else:
            if attn_mask is not None:
                attn_mask = (attn_mask.unsqueeze(0) if attn_mask.size(0) == 1 and attn_mask.dim() == 3
                             else attn_mask.view(bsz, heads, -1, src_len))
            q = q.view(bsz, heads, tgt_len, head_dim)
            k = k.view(bsz, heads, src_len, head_dim)
            v = v.view(bsz, heads, src_len, head_dim)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal)
            out = out.permute(2, 0, 1, 3).reshape(bsz * tgt_len, embed)
            out = self.out_proj(out).view(tgt_len, bsz, -1)
            weights = None
            if not batched:
                out = out.squeeze(1)
        if batched and self.batch_first:
            out = out.transpose(1, 0)
        return out, weights

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}, "
                f"batch_first={self.batch_first}")


def split_state(state: dict[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """A ``nn.MultiheadAttention`` state_dict (keys under ``prefix``) in the split layout:
    ``in_proj_weight`` / ``in_proj_bias`` (or ``q/k/v_proj_weight``) become
    ``q_proj.weight``... ; ``out_proj.*``, ``bias_k`` and ``bias_v`` are kept."""
    out = {k: v for k, v in state.items() if not (k.startswith(prefix) and k[len(prefix):] in _PACKED)}
    packed = state.get(prefix + "in_proj_weight")
    if packed is not None:
        for name, w in zip("qkv", packed.chunk(3), strict=True):
            out[f"{prefix}{name}_proj.weight"] = w
    for name in "qkv":
        if prefix + f"{name}_proj_weight" in state:
            out[f"{prefix}{name}_proj.weight"] = state[prefix + f"{name}_proj_weight"]
    bias = state.get(prefix + "in_proj_bias")
    if bias is not None:
        for name, b in zip("qkv", bias.chunk(3), strict=True):
            out[f"{prefix}{name}_proj.bias"] = b
    return out


def packed_state(state: dict[str, Tensor], prefix: str = "", *, same_dim: bool = True) -> dict[str, Tensor]:
    """The inverse of :func:`split_state`: the torch layout (``in_proj_weight`` when the key and
    value dims equal ``embed_dim``, else ``q/k/v_proj_weight``)."""
    names = [f"{prefix}{n}_proj.{p}" for n in "qkv" for p in ("weight", "bias")]
    out = {k: v for k, v in state.items() if k not in names}
    weights = [state[f"{prefix}{n}_proj.weight"] for n in "qkv"]
    if same_dim:
        out[prefix + "in_proj_weight"] = torch.cat(weights)
    else:
        for n, w in zip("qkv", weights, strict=True):
            out[f"{prefix}{n}_proj_weight"] = w
    if f"{prefix}q_proj.bias" in state:
        out[prefix + "in_proj_bias"] = torch.cat([state[f"{prefix}{n}_proj.bias"] for n in "qkv"])
    return out


def _accept_packed_state(state_dict, prefix, *_args) -> None:
    """Load-time hook: a torch-layout state_dict loads into the split module."""
    if any(prefix + name in state_dict for name in _PACKED):
        converted = split_state(state_dict, prefix)
        state_dict.clear()
        state_dict.update(converted)


def split_attention(model: nn.Module) -> list[str]:
    """Replace every ``nn.MultiheadAttention`` in ``model`` (in place) by its
    :class:`SplitMultiheadAttention`; returns the names of the replaced modules.

    The model must call attention as a module (``self.attn(q, k, v, ...)``), as torchvision,
    timm and ``nn.TransformerEncoderLayer`` do; code reading ``attn.in_proj_weight`` directly
    (``nn.TransformerEncoderLayer``'s fused fast path checks it, then falls back) keeps working
    through the slow path.
    """
    names = [n for n, m in model.named_modules() if type(m) is nn.MultiheadAttention]
    if isinstance(model, nn.MultiheadAttention) and type(model) is nn.MultiheadAttention:
        raise ValueError("the model is a bare nn.MultiheadAttention: use "
                         "SplitMultiheadAttention.from_torch(model) instead")
    entries = [{"name": name, **_config(model.get_submodule(name))} for name in names]
    for name in names:
        swap(model, name, SplitMultiheadAttention.from_torch(model.get_submodule(name)))
    structure.note(model, "split_attention", entries)
    return names


def _config(mha: nn.Module) -> dict:
    """What a split must find in a fresh model's ``nn.MultiheadAttention`` (from either form)."""
    bias = (mha.in_proj_bias is not None if type(mha) is nn.MultiheadAttention
            else mha.q_proj.bias is not None)
    return {"embed_dim": mha.embed_dim, "num_heads": mha.num_heads, "kdim": mha.kdim, "vdim": mha.vdim,
            "bias": bias, "add_bias_kv": mha.bias_k is not None, "add_zero_attn": bool(mha.add_zero_attn),
            "batch_first": bool(mha.batch_first)}


def _replay_split(model: nn.Module, step: dict, state) -> None:
    """Structure replay: split the fresh model's attention modules named in ``step``."""
    for entry in step["modules"]:
        name = entry["name"]
        module = structure.module_at(model, name, "split_attention")
        if not isinstance(module, nn.MultiheadAttention | SplitMultiheadAttention):
            raise structure.mismatch(name, "split_attention", f"is a {type(module).__name__}, not an "
                                     "nn.MultiheadAttention")
        expected = {k: v for k, v in entry.items() if k != "name"}
        found = _config(module)
        differs = [f"{k} {found[k]} (the file's: {v})" for k, v in expected.items() if found.get(k) != v]
        if differs:
            raise structure.mismatch(name, "split_attention", "has " + ", ".join(differs))
        if type(module) is nn.MultiheadAttention:
            swap(model, name, SplitMultiheadAttention.from_torch(module))


structure.register_rewrite("split_attention", _replay_split)
