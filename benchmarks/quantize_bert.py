"""int8 on a BERT-style encoder: per-row dynamic activations, SmoothQuant, int8 embeddings.

    python benchmarks/quantize.py --bert            # needs transformers (/work/venv-tv)

An HF ``BertModel`` from a small config (random init, nothing downloaded), with and without
injected outliers: a few LayerNorm output channels scaled so they reach about +-30, as in
pretrained encoders. The output is the mean-pooled last hidden state (masked). Fidelity:
cosine to the float embeddings over 40 varied inputs (lengths 8-64, random tokens, padded
in batches of 8); speed: batch 32 x 64 tokens, one thread, interleaved rounds (the order
reversed every other round), median; the ratio to fp32 also in thread CPU time
(``time.thread_time``), which leaves out the time a shared machine kept the process waiting.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
from torch import nn

from penjing.quantization import QuantConfig, convert, quantize

OUTLIER_CHANNELS = (7, 91, 200, 333)


def build(outliers: bool) -> nn.Module:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=8000, hidden_size=384, num_hidden_layers=4, num_attention_heads=6,
                     intermediate_size=1536, max_position_embeddings=128)
    model = BertModel(cfg, add_pooling_layer=False).eval()
    if outliers:
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.LayerNorm):
                    for i, c in enumerate(OUTLIER_CHANNELS):
                        m.weight[c] *= (8.0, 12.0, 15.0, 10.0)[i]
                        m.bias[c] += (2.0, -3.0, 1.0, 0.0)[i]
    return model


def pooled(model: nn.Module, batch: dict) -> torch.Tensor:
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return (out * mask).sum(1) / mask.sum(1)


def batches(n: int, size: int, seed: int, vocab: int = 8000) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, size):
        k = min(size, n - start)
        lengths = torch.randint(8, 65, (k,), generator=g)
        ids = torch.randint(1, vocab, (k, int(lengths.max())), generator=g)
        mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
        out.append({"input_ids": ids * mask, "attention_mask": mask})
    return out


def int8_bert(model: nn.Module, calib: list[dict], smooth) -> nn.Module:
    m = copy.deepcopy(model)
    quantize(m, QuantConfig(activations="dynamic", smooth_alpha=smooth), data=calib, forward_fn=pooled,
             progress=False)
    return convert(m)


@torch.no_grad()
def bert_table(rounds: int) -> list[str]:
    lines = ["| model | variant | Linear layers int8 | min cosine (40 inputs) | mean cosine | ms @32x64 (min-max) "
             "| x fp32 time, median of per-round ratios (min-max) | same, thread CPU time (min-max) |",
             "|---|---|---|---|---|---|---|---|"]
    for outliers in (True, False):
        model = build(outliers)
        calib = batches(32, 8, seed=1)
        probe = batches(40, 8, seed=2)
        variants = {"fp32": model,
                    "int8 dynamic per-row": int8_bert(model, calib, None),
                    "int8 dynamic per-row + SmoothQuant (auto alpha)": int8_bert(model, calib, "auto")}
        ref = torch.cat([pooled(model, b) for b in probe])
        x = {"input_ids": torch.randint(1, 8000, (32, 64)), "attention_mask": torch.ones(32, 64, dtype=torch.long)}
        samples: dict[str, list[float]] = {k: [] for k in variants}
        cpu: dict[str, list[float]] = {k: [] for k in variants}
        for m in variants.values():
            pooled(m, x)
        for r in range(rounds):
            for k in (list(variants) if r % 2 == 0 else list(reversed(variants))):
                start, start_cpu = time.perf_counter(), time.thread_time()
                pooled(variants[k], x)
                samples[k].append((time.perf_counter() - start) * 1e3)
                cpu[k].append((time.thread_time() - start_cpu) * 1e3)
        med = {k: statistics.median(v) for k, v in samples.items()}
        for k, m in variants.items():
            y = torch.cat([pooled(m, b) for b in probe])
            cos = torch.nn.functional.cosine_similarity(y, ref, dim=1)
            ratios = [a / f for a, f in zip(samples[k], samples["fp32"], strict=True)]  # paired by round
            cpu_ratios = [a / f for a, f in zip(cpu[k], cpu["fp32"], strict=True)]
            from penjing.quantization import Int8Linear

            linears = sum(isinstance(x, nn.Linear | Int8Linear) for x in m.modules())
            int8 = sum(isinstance(x, Int8Linear) for x in m.modules())
            lines.append(f"| BERT 4x384 {'with' if outliers else 'without'} outliers | {k} | {int8}/{linears} "
                         f"| {float(cos.min()):.4f} | {float(cos.mean()):.4f} | {med[k]:.1f} "
                         f"({min(samples[k]):.1f}-{max(samples[k]):.1f}) | {statistics.median(ratios):.2f} "
                         f"({min(ratios):.2f}-{max(ratios):.2f}) | {statistics.median(cpu_ratios):.2f} "
                         f"({min(cpu_ratios):.2f}-{max(cpu_ratios):.2f}) |")
            print(lines[-1], flush=True)
    return lines
