"""The models people bring, built small and random-initialised (nothing is downloaded), with
batches in the shape each one takes.

torchvision, timm and transformers are imported lazily: this module loads without them, and a
model whose library is missing is skipped with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Spec:
    """How to build one model and feed it."""

    name: str
    build: Callable[[], nn.Module]
    batches: Callable[[], list[Any]]  # a few small batches (tuples or dicts with labels)
    example: Callable[[], Any]  # one input batch for tracing (a tensor)
    forward_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None  # -> a float tensor
    family: str = "cnn"  # cnn | transformer | user
    needs: str = ""  # the library it comes from


def _images(shape, classes=10, n=2, batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, *shape, generator=g), torch.randint(0, classes, (batch,), generator=g))
            for _ in range(n)]


def _tokens(vocab, length=16, n=2, batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (batch, length), generator=g)
        mask = torch.ones(batch, length, dtype=torch.long)
        mask[0, length // 2:] = 0  # one padded sentence: the mask must reach the model
        out.append({"input_ids": ids, "attention_mask": mask, "labels": ids[:, 0] % 2})
    return out


def _hidden(model: nn.Module, batch) -> torch.Tensor:
    """An HF model's last hidden state for a dict batch, an (images, labels) tuple or a bare
    input tensor (token ids or pixels)."""
    if isinstance(batch, dict):
        return model(**{k: v for k, v in batch.items() if k != "labels"}).last_hidden_state
    if isinstance(batch, tuple | list):
        return model(pixel_values=batch[0]).last_hidden_state
    return model(batch).last_hidden_state


def _seeded(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        torch.manual_seed(0)
        return build()

    return make


@torch.no_grad()
def build_model(spec: Spec) -> nn.Module:
    """``spec``'s model in eval mode; BatchNorm statistics warmed on random inputs (random-init
    statistics of mean 0 / variance 1 make deep nets blow up, as the issues' benchmarks note)."""
    model = spec.build()
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        example = spec.example()
        g = torch.Generator().manual_seed(1)
        model.train()
        for _ in range(3):
            model(torch.randn((8, *example.shape[1:]), generator=g))
    return model.eval()


class UserNet(nn.Module):
    """A user's own model: embedding, depthwise conv, residual, MultiheadAttention, LayerNorm."""

    def __init__(self, vocab: int = 100, dim: int = 32, classes: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.depthwise = nn.Conv1d(dim, dim, 3, padding=1, groups=dim)
        self.pointwise = nn.Conv1d(dim, dim, 1)
        self.attn = nn.MultiheadAttention(dim, 4, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, classes)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(input_ids)                                  # (B, L, D)
        h = h + self.pointwise(F.relu(self.depthwise(h.transpose(1, 2)))).transpose(1, 2)
        a, _ = self.attn(h, h, h, need_weights=False)
        h = self.norm(h + a)
        h = h + self.mlp(h)
        return self.head(h.mean(1))


def _user_batches():
    return [(b["input_ids"], b["labels"]) for b in _tokens(100)]


def specs() -> list[Spec]:
    """Every model of the matrix."""

    def tv(name, **kw):
        import torchvision

        return torchvision.models.get_model(name, weights=None, **kw)

    def tv_vit():
        from torchvision.models import VisionTransformer

        return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4,
                                 hidden_dim=64, mlp_dim=128, num_classes=10)

    def timm_model(name):
        import timm

        return timm.create_model(name, pretrained=False, num_classes=10)

    def bert():
        from transformers import BertConfig, BertModel

        return BertModel(BertConfig(vocab_size=500, hidden_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, intermediate_size=128,
                                    max_position_embeddings=64), add_pooling_layer=False)

    def gpt2():
        from transformers import GPT2Config, GPT2Model

        return GPT2Model(GPT2Config(vocab_size=500, n_embd=64, n_layer=2, n_head=4, n_positions=64))

    def hf_vit():
        from transformers import ViTConfig, ViTModel

        return ViTModel(ViTConfig(image_size=32, patch_size=8, num_hidden_layers=2, hidden_size=64,
                                  num_attention_heads=4, intermediate_size=128),
                        add_pooling_layer=False)

    img64, img32 = (3, 64, 64), (3, 32, 32)
    out = [
        Spec("tv_resnet18", _seeded(lambda: tv("resnet18", num_classes=10)),
             lambda: _images(img64), lambda: torch.randn(1, *img64), needs="torchvision"),
        Spec("tv_mobilenet_v2", _seeded(lambda: tv("mobilenet_v2", num_classes=10)),
             lambda: _images(img64), lambda: torch.randn(1, *img64), needs="torchvision"),
        Spec("tv_efficientnet_b0", _seeded(lambda: tv("efficientnet_b0", num_classes=10)),
             lambda: _images(img64), lambda: torch.randn(1, *img64), needs="torchvision"),
        Spec("tv_convnext_tiny", _seeded(lambda: tv("convnext_tiny", num_classes=10)),
             lambda: _images(img64), lambda: torch.randn(1, *img64), needs="torchvision"),
        Spec("tv_vit", _seeded(tv_vit), lambda: _images(img32), lambda: torch.randn(1, *img32),
             family="transformer", needs="torchvision"),
        Spec("timm_resnet18", _seeded(lambda: timm_model("resnet18")), lambda: _images(img64),
             lambda: torch.randn(1, *img64), needs="timm"),
        Spec("timm_mobilenetv3", _seeded(lambda: timm_model("mobilenetv3_small_100")),
             lambda: _images(img64), lambda: torch.randn(1, *img64), needs="timm"),
        Spec("hf_bert", _seeded(bert), lambda: _tokens(500), lambda: torch.randint(0, 500, (1, 16)),
             _hidden, family="transformer", needs="transformers"),
        Spec("hf_gpt2", _seeded(gpt2), lambda: _tokens(500), lambda: torch.randint(0, 500, (1, 16)),
             _hidden, family="transformer", needs="transformers"),
        Spec("hf_vit", _seeded(hf_vit), lambda: [(x, y) for x, y in _images(img32)],
             lambda: torch.randn(1, *img32), _hidden, family="transformer", needs="transformers"),
        Spec("user", _seeded(UserNet), _user_batches, lambda: torch.randint(0, 100, (1, 16)),
             family="user"),
    ]
    return out
