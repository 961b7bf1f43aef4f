"""Recipe step ``encode``: write the compressed file (sparse index, codebooks, Huffman) and
check that what loads back from it is the model.

```yaml
- encode: {huffman: true, index_bits: {conv: 8, fc: 5}}
```

Writes ``<out>/model.pjz``, sets ``ctx.file_bytes`` (so the final table reports the real file
size) and adds the Deep Compression table (per layer and per stage) to the report.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import nn

from penjing.recipe.schema import StepParams


class Params(StepParams):
    huffman: bool = True
    #: relative sparse index width: one int, or by tensor/module name, "conv", "fc", "*"
    index_bits: int | dict[str, int] | None = None
    file: str = Field(default="model.pjz", min_length=1)

    @field_validator("index_bits")
    @classmethod
    def _range(cls, v):
        for b in ([] if v is None else v.values() if isinstance(v, dict) else [v]):
            if not 1 <= b <= 16:
                raise ValueError(f"index_bits must be in [1, 16], got {b}")
        return v


def _decoded_model(model: nn.Module, state: dict[str, torch.Tensor], ctx) -> nn.Module:
    """A plain model holding the decoded tensors: a copy of the dense model when the
    architecture is unchanged, else ``model`` itself, baked."""
    from penjing.core.params import bake

    dense = ctx.artifacts.get("dense_model")
    if dense is not None:
        plain = copy.deepcopy(dense)
        try:
            plain.load_state_dict(state, strict=True)
            return plain
        except RuntimeError:
            pass  # a module rewrite changed the architecture: fall back to the model itself
    bake(model)
    model.load_state_dict(state, strict=True)
    return model


def run(model: nn.Module, params: Params, ctx) -> None:
    from penjing.codec import load, save
    from penjing.codec.dtypes import to_bits
    from penjing.codec.file import baked_state_dict
    from penjing.train import evaluate

    path = ctx.out_dir / params.file
    expected = baked_state_dict(model)
    info = save(model, path, huffman=params.huffman, index_bits=params.index_bits)
    state = load(path)
    for name, tensor in expected.items():
        # bit-identical (an affine-coded -0.0 may come back as +0.0: equal values)
        if not (np.array_equal(to_bits(state[name]), to_bits(tensor)) or torch.equal(state[name], tensor)):
            raise RuntimeError(f"{path}: {name} does not decode to the model's values")
    accuracy = evaluate(model, ctx.test)
    decoded = evaluate(_decoded_model(model, state, ctx), ctx.test)
    if decoded != accuracy:
        raise RuntimeError(f"the model loaded from {path} scores {decoded:.4f}, the model {accuracy:.4f}")
    ctx.file_bytes = info.bytes
    ctx.artifacts["file"] = info
    ctx.artifacts.setdefault("stages", []).append((f"decoded from {path.name}", decoded, len(ctx.summaries)))
    section, table = stage_table(model, info, ctx)
    ctx.artifacts.setdefault("sections", []).append(section)
    if ctx.echo:
        from rich.console import Console

        Console().print(table)


def _stages(ctx) -> list[tuple[str, float | None]]:
    """Accuracy after every stage: the runner's measurements plus what steps recorded between
    them (``ctx.artifacts["stages"]``: ``(label, accuracy, after how many summaries)``)."""
    extras = ctx.artifacts.get("stages", [])
    out = []
    for i, s in enumerate(ctx.summaries):
        out.append((s.title, s.accuracy))
        out += [(label, acc) for label, acc, *pos in extras if (pos[0] if pos else None) == i + 1]
    out += [(label, acc) for label, acc, *pos in extras if not pos or pos[0] > len(ctx.summaries)]
    return out


def stage_table(model: nn.Module, info, ctx):
    """The Deep Compression table (per layer: weights, kept %, bits, file bytes, ratio) as
    Markdown and as a rich renderable fitting the terminal, plus the accuracy after every stage."""
    from penjing.core.report import RATIO_BASIS, dense_fp32_bytes, ratio_text
    from penjing.core.stats import layer_stats
    from penjing.report.summary import human_bytes, summary
    from penjing.report.text_table import FitText, render

    names = {t.name: t for t in info.tensors}
    head = ["layer", "weights", "kept %", "bits", "codec", "file bytes", "ratio"]
    rows = []
    for r in layer_stats(model):
        prefix = "" if r.name == "(root)" else f"{r.name}."
        tensors = [names[k] for k in (f"{prefix}weight", f"{prefix}bias") if k in names]
        size = sum(t.total for t in tensors)
        codec = names[f"{prefix}weight"].codec if f"{prefix}weight" in names else "-"
        rows.append([r.name, f"{r.params:,}", f"{100 * r.kept:.1f}", f"{r.bits:g}", codec, f"{size:,}",
                     ratio_text(r.dense_bytes, size)])
    dense = ctx.artifacts.get("dense_model")
    dense_bytes = dense_fp32_bytes(dense) if dense is not None else summary(model).reference_bytes
    weights = sum(r.params for r in layer_stats(model))
    kept = sum(r.nonzeros for r in layer_stats(model))
    rows.append(["total (whole file)", f"{weights:,}", f"{100 * kept / max(weights, 1):.1f}", "", "",
                 f"{info.bytes:,}", ratio_text(dense_bytes, info.bytes)])
    lines = ["### Deep Compression", "",
             f"Dense float32 parameters: {human_bytes(dense_bytes)} ({dense_bytes:,} bytes); "
             f"compressed file `{info.path.name}`: {info.bytes:,} bytes "
             f"(**{ratio_text(dense_bytes, info.bytes)}**). {RATIO_BASIS}; per layer, the layer's own "
             f"dense float32 over its stored bytes (its bias and header entries included); the total "
             f"includes the file's {info.overhead} bytes of framing.", "",
             "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", "| stage | test accuracy |", "|---|---:|"]
    stages = _stages(ctx)
    lines += [f"| {label} | {100 * acc:.2f}% |" for label, acc in stages if acc is not None]
    title = (f"Deep Compression: {ratio_text(dense_bytes, info.bytes)} ({info.bytes:,} bytes; "
             "original fp32 / file)")
    accuracies = [[label, f"{100 * acc:.2f}%"] for label, acc in stages if acc is not None]
    table = FitText(lambda width: render(head, rows, width, short_header={"file bytes": "bytes"}, title=title)
                    + "\n" + render(["stage", "test accuracy"], accuracies, width))
    return "\n".join(lines) + "\n", table
