"""The one batch protocol: what ``fit``, ``evaluate``, calibration, sensitivity, tracing and
the recipe runner do with a batch, whatever its shape.

``data`` is a ``Dataset`` (batched with a ``DataLoader``), a ``DataLoader``, or any iterable
of batches (a list, a generator factory's list...). A *batch* is

* a tensor: the model's input, no target;
* a tuple / list: ``(input, target, ...)``;
* a mapping (a dict, a Hugging Face ``BatchEncoding``): keyword inputs of the model; a
  ``labels`` / ``label`` / ``targets`` / ``target`` key is the target and is not passed to the
  model.

Three callables say how to use a batch, each with a default for classification:

* ``forward_fn(model, batch) -> output`` (default :func:`default_forward`);
* ``loss_fn(output, batch) -> scalar`` (default :func:`default_loss`: cross-entropy on the
  logits against the target);
* ``metric(outputs, batches) -> float`` (default: top-1 accuracy), computed over the whole
  evaluation set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

Batch = Any
ForwardFn = Callable[[nn.Module, Batch], Any]
LossFn = Callable[[Any, Batch], torch.Tensor]
Metric = Callable[[list[Any], list[Batch]], float]

TARGET_KEYS = ("labels", "label", "targets", "target")


def to_device(batch: Batch, device: torch.device | str) -> Batch:
    """``batch`` with every tensor in it moved to ``device`` (structure and mapping type kept)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        moved = {k: to_device(v, device) for k, v in batch.items()}
        try:
            return type(batch)(moved)
        except Exception:  # a mapping type that cannot be rebuilt from a dict
            return moved
    if isinstance(batch, tuple | list):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def model_inputs(batch: Batch) -> Batch:
    """The part of ``batch`` the model consumes (the input, or the non-target keys)."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, Mapping):
        return {k: v for k, v in batch.items() if k not in TARGET_KEYS}
    if isinstance(batch, tuple | list):
        if not batch:
            raise ValueError("an empty tuple is not a batch")
        return batch[0]
    raise TypeError(f"a batch is a tensor, a tuple/list or a mapping, got {type(batch).__name__}; "
                    "pass forward_fn=f(model, batch) for other shapes")


def target_of(batch: Batch) -> Any:
    """The target of ``batch``, or ``None`` when it carries none."""
    if isinstance(batch, Mapping):
        return next((batch[k] for k in TARGET_KEYS if k in batch), None)
    if isinstance(batch, tuple | list) and len(batch) >= 2:
        return batch[1]
    return None


def default_forward(model: nn.Module, batch: Batch) -> Any:
    """``model(input)`` for a tensor or tuple batch, ``model(**inputs)`` for a mapping."""
    inputs = model_inputs(batch)
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(inputs)


def logits_of(output: Any) -> torch.Tensor:
    """The prediction tensor in a model's output (a tensor, ``.logits``, or the first item)."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot find logits in a {type(output).__name__} output; pass loss_fn= / "
                    "metric= (or forward_fn= returning a tensor)")


def default_loss(output: Any, batch: Batch) -> torch.Tensor:
    """Cross-entropy of the output's logits against the batch's target."""
    target = target_of(batch)
    if target is None:
        raise ValueError("this batch has no target (labels) for the default cross-entropy loss: "
                         "pass loss_fn=f(output, batch)")
    return F.cross_entropy(logits_of(output).float(), target)


def correct_count(output: Any, batch: Batch) -> tuple[int, int]:
    """``(correct, count)`` of top-1 predictions in one batch (0, 0 when it has no class target)."""
    target = target_of(batch)
    if not isinstance(target, torch.Tensor) or target.is_floating_point():
        return 0, 0
    logits = logits_of(output)
    if logits.dim() != 2 or logits.shape[0] != target.shape[0] or target.dim() != 1:
        return 0, 0
    return int((logits.detach().argmax(1) == target).sum()), int(target.numel())


def accuracy(outputs: list[Any], batches: list[Batch]) -> float:
    """Top-1 accuracy over ``outputs`` / ``batches`` (the default metric)."""
    correct = total = 0
    for output, batch in zip(outputs, batches, strict=True):
        if target_of(batch) is None:
            raise ValueError("the data has no targets for the default accuracy metric: pass "
                             "metric=f(outputs, batches)")
        c, n = correct_count(output, batch)
        correct, total = correct + c, total + n
    if total == 0:
        raise ValueError("cannot evaluate on an empty data set")
    return correct / total


def batches(data: Dataset | DataLoader | Iterable[Batch] | torch.Tensor, batch_size: int = 512,
            *, shuffle: bool = False, generator: torch.Generator | None = None) -> Iterable[Batch]:
    """``data`` as an iterable of batches (a Dataset is batched, anything iterable kept)."""
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        return DataLoader(data, batch_size=batch_size, shuffle=shuffle,
                          generator=generator if generator is not None else torch.Generator())
    if isinstance(data, torch.Tensor | Mapping):
        return [data]
    if isinstance(data, Iterable):
        return data
    raise TypeError(f"data must be a Dataset, a DataLoader or an iterable of batches, got "
                    f"{type(data).__name__}")


def first_batch(data: Any) -> Batch:
    """The first batch of ``data`` (for tracing and example inputs)."""
    for batch in batches(data, batch_size=2):
        return batch
    raise ValueError("the data yielded no batch")


def example_from(example_inputs: Any, data: Any, what: str) -> Batch:
    """``example_inputs`` if given, else the first batch of ``data``; an error names ``what``."""
    if example_inputs is not None:
        return example_inputs
    if data is None:
        raise ValueError(f"{what} runs the model: pass example_inputs= (one input batch) or data=")
    return first_batch(data)


def run_forward(model: nn.Module, batch: Batch, forward_fn: ForwardFn | None = None) -> Any:
    """``forward_fn(model, batch)``, or the default forward when ``batch`` is only inputs."""
    return (forward_fn or default_forward)(model, batch)


def batch_size_of(batch: Batch) -> int:
    """Number of samples in ``batch`` (its first tensor's leading dimension)."""
    for value in _tensors(batch):
        return int(value.shape[0]) if value.dim() else 1
    return 1


def _tensors(batch: Batch):
    if isinstance(batch, torch.Tensor):
        yield batch
    elif isinstance(batch, Mapping):
        for v in batch.values():
            yield from _tensors(v)
    elif isinstance(batch, Sequence) and not isinstance(batch, str):
        for v in batch:
            yield from _tensors(v)
