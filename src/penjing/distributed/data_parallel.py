"""Data parallel training: :func:`penjing.train.fit` with its model wrapped in
``DistributedDataParallel`` and its data sharded across the ranks.

Every rank holds a full copy of the model and trains on its own shard; DDP averages the
gradients with an all-reduce, so every copy takes the same step. Run it under ``torchrun``
(or :func:`penjing.distributed.spawn`) after :func:`penjing.distributed.init`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from penjing.distributed.env import is_main, rank, world_size
from penjing.train.data import EpochSampler, epoch_seed


class ShardedSampler(EpochSampler):
    """This rank's share of the single-process shuffle.

    Rank ``r`` of ``W`` takes positions ``r, r+W, r+2W...`` of the permutation that a
    single-process run would use for the same ``(seed, epoch)``, so that one global batch of
    ``B`` (``B/W`` per rank) covers exactly the samples of the single-process batch of ``B``:
    DDP then reproduces single-process training. The tail that does not divide by ``W`` is
    dropped so every rank takes the same number of steps (an uneven rank would hang DDP).
    """

    def __init__(self, size: int, seed: int, rank: int, world: int):
        super().__init__(size, seed)
        self.rank, self.world = rank, world

    def __iter__(self) -> Iterator[int]:
        # The same draw as EpochSampler's, so the shards partition the single-process order.
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        usable = self.size - self.size % self.world
        shard = torch.randperm(self.size, generator=generator)[:usable][self.rank::self.world]
        yield from shard[self.start:].tolist()

    def __len__(self) -> int:
        return max((self.size - self.size % self.world) // self.world - self.start, 0)


def ddp_wrapper(comm_hook: Callable | None = None, hook_state: Any = None) -> Callable[[nn.Module], nn.Module]:
    """``wrap=`` for :func:`fit`: DDP on this rank's device, with an optional comm hook
    (e.g. :func:`penjing.distributed.dgc_hook`, or PyTorch's fp16 / PowerSGD hooks)."""

    def wrap(module: nn.Module) -> nn.Module:
        device_ids = [torch.cuda.current_device()] if next(module.parameters()).is_cuda else None
        ddp = DistributedDataParallel(module, device_ids=device_ids)
        if comm_hook is not None:
            ddp.register_comm_hook(hook_state, comm_hook)
        return ddp

    return wrap


def fit_ddp(model: nn.Module, train: Dataset, *, batch_size: int = 64, seed: int = 0,
            comm_hook: Callable | None = None, hook_state: Any = None, **fit_kwargs: Any) -> dict[str, Any]:
    """Train ``model`` with DDP across the process group; ``batch_size`` is the *global* batch.

    Every other keyword goes to :func:`penjing.train.fit` (epochs, lr, precision, teacher,
    callbacks, checkpoint/resume...). Only rank 0 shows progress and writes checkpoints; the
    returned per-epoch losses are averaged over the ranks.
    """
    from penjing.train import fit

    if not dist.is_initialized():
        raise RuntimeError("fit_ddp needs a process group: call penjing.distributed.init() under torchrun")
    world = world_size()
    if batch_size % world:
        raise ValueError(f"the global batch_size {batch_size} must divide by the world size {world}")
    if isinstance(train, torch.utils.data.DataLoader):
        raise TypeError("fit_ddp shards the data itself: pass the Dataset, not a DataLoader")
    sampler = ShardedSampler(len(train), seed, rank(), world)
    history = fit(model, train, batch_size=batch_size // world, seed=seed, sampler=sampler,
                  wrap=ddp_wrapper(comm_hook, hook_state), main_process=is_main(), **fit_kwargs)
    losses = history.get("loss")
    if losses:
        reduced = torch.tensor(losses, dtype=torch.float64)
        dist.all_reduce(reduced)
        history["loss"] = (reduced / world).tolist()
    return history
