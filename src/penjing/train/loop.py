"""The one training loop.

Masks, quantizers and other representations are parametrizations, so they are respected by
the plain forward/backward: a pruned weight's gradient is multiplied by its mask and it
stays zero. Anything else a method needs plugs in as a :class:`Callback`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm


class Callback:
    """Extension point of :func:`fit`; override what you need."""

    def on_train_begin(self, model: nn.Module) -> None: ...
    def on_epoch_begin(self, model: nn.Module, epoch: int) -> None: ...
    def on_step_end(self, model: nn.Module, step: int, loss: float) -> None: ...
    def on_epoch_end(self, model: nn.Module, epoch: int) -> None: ...
    def on_train_end(self, model: nn.Module) -> None: ...


def _loader(data: Dataset | DataLoader, batch_size: int, shuffle: bool, seed: int | None) -> DataLoader:
    if isinstance(data, DataLoader):
        return data
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator)


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset | DataLoader, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``data`` (a fraction in [0, 1])."""
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    correct = total = 0
    for x, y in _loader(data, batch_size, False, None):
        logits = model(x.to(device))
        correct += int((logits.argmax(1) == y.to(device)).sum())
        total += len(y)
    model.train(was_training)
    if total == 0:
        raise ValueError("cannot evaluate on an empty data set")
    return correct / total


def fit(
    model: nn.Module,
    train: Dataset | DataLoader,
    *,
    epochs: int = 1,
    lr: float = 1e-3,
    batch_size: int = 64,
    optimizer: torch.optim.Optimizer | None = None,
    weight_decay: float = 0.0,
    seed: int | None = 0,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    desc: str = "train",
) -> dict[str, list[float]]:
    """Train ``model`` on ``train`` with cross-entropy; returns the per-epoch mean loss."""
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if seed is not None:
        torch.manual_seed(seed)
    loader = _loader(train, batch_size, True, seed)
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    history: dict[str, list[float]] = {"loss": []}
    model.train()
    for cb in callbacks:
        cb.on_train_begin(model)
    step = 0
    bar = tqdm(total=epochs * len(loader), desc=desc, disable=not progress, leave=False)
    for epoch in range(epochs):
        for cb in callbacks:
            cb.on_epoch_begin(model, epoch)
        total, count = 0.0, 0
        for x, y in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x.to(device)), y.to(device))
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss became {loss.item()} at step {step}; lower the learning rate ({lr})"
                )
            loss.backward()
            optimizer.step()
            step += 1
            total += loss.item() * len(y)
            count += len(y)
            for cb in callbacks:
                cb.on_step_end(model, step, loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        history["loss"].append(total / max(count, 1))
        for cb in callbacks:
            cb.on_epoch_end(model, epoch)
    bar.close()
    for cb in callbacks:
        cb.on_train_end(model)
    model.eval()
    return history
