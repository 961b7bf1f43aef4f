"""Deep Gradient Compression (Lin et al., ICLR 2018) as a DDP communication hook.

Each rank sends only the largest ``1 - sparsity`` fraction of its gradient (values and
indices, gathered by every rank and summed); the rest accumulates locally until it grows
large enough to be sent. The four tricks of the paper that keep accuracy:

* **momentum correction**: momentum is applied *before* sparsification, on the local
  accumulated velocity ``u = m u + g; v = v + u`` (so use plain SGD, momentum 0, as the
  optimizer: the hook already carries it);
* **local gradient clipping** of ``g`` to ``clip_norm / sqrt(world)`` before accumulating;
* **momentum factor masking**: where a value was sent, both ``v`` and ``u`` are reset;
* **warm-up**: the sparsity rises exponentially 75% -> 93.75% -> 98.4% -> 99.6% -> 99.9%
  over ``warmup_steps``.

Bytes each rank puts on the wire (payload, values + int32 indices) are counted in
``state.bytes_sent``; :func:`counting_allreduce_hook` counts plain DDP the same way.
"""

# No "from __future__ import annotations": DDP checks the hook's bucket annotation at runtime.
import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass
class DGCConfig:
    sparsity: float = 0.999
    momentum: float = 0.9
    clip_norm: float | None = None
    warmup_steps: int = 0
    warmup_stages: tuple[float, ...] = (0.75, 0.9375, 0.984375, 0.996)

    def __post_init__(self):
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")


@dataclass
class DGCState:
    config: DGCConfig = field(default_factory=DGCConfig)
    step: int = 0
    bytes_sent: int = 0
    dense_bytes: int = 0
    velocity: dict[int, torch.Tensor] = field(default_factory=dict)
    accumulated: dict[int, torch.Tensor] = field(default_factory=dict)

    def sparsity(self) -> float:
        c = self.config
        if self.step >= c.warmup_steps or not c.warmup_stages:
            return c.sparsity
        stage = self.step * len(c.warmup_stages) // c.warmup_steps
        return min(c.warmup_stages[stage], c.sparsity)


def dgc_hook(state: DGCState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP comm hook: top-k sparse exchange with momentum correction (see module docstring)."""
    c, world = state.config, dist.get_world_size()
    grad = bucket.buffer()
    key = bucket.index()
    if c.clip_norm is not None:
        limit = c.clip_norm / math.sqrt(world)
        norm = grad.norm()
        if norm > limit:
            grad = grad * (limit / norm)
    u = state.velocity.setdefault(key, torch.zeros_like(grad))
    v = state.accumulated.setdefault(key, torch.zeros_like(grad))
    u.mul_(c.momentum).add_(grad)
    v.add_(u)
    k = max(1, math.ceil(grad.numel() * (1.0 - state.sparsity())))
    _, indices = v.abs().topk(k, sorted=False)
    values = v[indices]
    v[indices] = 0.0          # sent: clear the accumulation...
    u[indices] = 0.0          # ...and the momentum there (momentum factor masking)
    gathered_values = [torch.empty_like(values) for _ in range(world)]
    idx32 = indices.to(torch.int32)  # 4-byte indices on the wire, as a real format sends
    gathered_indices = [torch.empty_like(idx32) for _ in range(world)]
    dist.all_gather(gathered_values, values)
    dist.all_gather(gathered_indices, idx32)
    state.bytes_sent += values.numel() * values.element_size() + idx32.numel() * idx32.element_size()
    state.dense_bytes += grad.numel() * grad.element_size()
    dense = torch.zeros_like(grad)
    for vals, idx in zip(gathered_values, gathered_indices, strict=True):
        dense.index_add_(0, idx.long(), vals)
    if bucket.is_last():
        state.step += 1
    future: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    future.set_result(dense / world)
    return future


@dataclass
class AllReduceCounter:
    """State for :func:`counting_allreduce_hook`: the payload bytes of plain DDP."""

    bytes_sent: int = 0
    compress_fp16: bool = False


def counting_allreduce_hook(state: AllReduceCounter, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP's default all-reduce (or PyTorch's fp16 compression hook), counting payload bytes."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    buffer = bucket.buffer()
    state.bytes_sent += buffer.numel() * (2 if state.compress_fp16 else buffer.element_size())
    if state.compress_fp16:
        return default_hooks.fp16_compress_hook(None, bucket)
    return default_hooks.allreduce_hook(None, bucket)
