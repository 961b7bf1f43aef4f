"""A Hugging Face BERT-style encoder through penjing's public API only: calibrate and quantize
it, fine-tune it one epoch with your own loss on your own batches, evaluate it with your own
metric. Built from a config (random init): nothing is downloaded.

    pip install transformers        # then:
    python examples/bert_quantize.py

The task is synthetic: embed a sentence so that its mean-pooled embedding predicts whether the
sentence's first token is one of the 25 lowest ids. Batches are dicts, as a tokenizer returns them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel

import penjing as pj


def batches(n: int, seed: int, vocab: int = 50, length: int = 24, size: int = 16) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(1, vocab, (size, length), generator=g)
        lengths = torch.randint(length // 2, length + 1, (size,), generator=g)
        mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
        out.append({"input_ids": ids * mask, "attention_mask": mask,
                    "labels": (ids[:, 0] <= vocab // 2).float()})
    return out


def embed(model, batch) -> torch.Tensor:
    """The user's forward: mean-pooled last hidden state over the real tokens."""
    hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1)


class Probe(torch.nn.Module):
    """The model a user trains: the encoder plus a linear read-out of the pooled embedding."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder
        self.readout = torch.nn.Linear(encoder.config.hidden_size, 1)

    def forward(self, input_ids, attention_mask):
        return self.readout(embed(self.encoder, {"input_ids": input_ids,
                                                  "attention_mask": attention_mask})).squeeze(-1)


def loss_fn(output, batch):
    return F.binary_cross_entropy_with_logits(output, batch["labels"])


def accuracy(outputs, seen):
    predictions = torch.cat(outputs) > 0
    labels = torch.cat([b["labels"] for b in seen]) > 0.5
    return float((predictions == labels).float().mean())


def main() -> dict[str, float]:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=32)
    model = Probe(BertModel(config, add_pooling_layer=False))
    train, calib, test = batches(40, 0), batches(4, 1), batches(8, 2)
    pj.fit(model, train, epochs=5, lr=1e-3, loss_fn=loss_fn, progress=False)
    model.eval()
    float_acc = pj.evaluate(model, test, metric=accuracy)

    pj.quantize(model, pj.QuantConfig(bits=8), data=calib, progress=False)
    print(pj.last_report(model))
    pj.fit(model, train, epochs=1, lr=1e-4, loss_fn=loss_fn, progress=False)  # QAT, one epoch
    model.eval()
    quant_acc = pj.evaluate(model, test, metric=accuracy)
    with torch.no_grad():
        reference = torch.cat([model(b["input_ids"], b["attention_mask"]) for b in test])
    pj.convert(model)
    int8_acc = pj.evaluate(model, test, metric=accuracy)
    with torch.no_grad():
        out = torch.cat([model(b["input_ids"], b["attention_mask"]) for b in test])
    drift = float((out - reference).abs().max())
    print(f"accuracy: float {float_acc:.3f}, fake-quant after 1 epoch {quant_acc:.3f}, "
          f"int8 kernels {int8_acc:.3f}; max logit change int8 vs fake-quant {drift:.4f}")
    return {"float": float_acc, "qat": quant_acc, "int8": int8_acc, "drift": drift}


if __name__ == "__main__":
    main()
