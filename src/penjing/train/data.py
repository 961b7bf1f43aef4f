"""Data order that a resumed run can reproduce exactly.

The shuffle of epoch ``e`` is drawn from a generator seeded with ``(seed, e)`` alone (the
scheme of ``DistributedSampler.set_epoch``), so a run resumed in the middle of epoch ``e``
redraws the same permutation and skips the samples already consumed, instead of depending
on how much random state earlier epochs used.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffle seed of ``epoch`` (a fixed mix of the two; stays in int64)."""
    return (seed * 1_000_003 + epoch) % (2**63 - 1)


class EpochSampler(Sampler[int]):
    """A shuffling sampler whose order depends only on ``(seed, epoch)``; can start mid-epoch."""

    def __init__(self, size: int, seed: int):
        self.size = size
        self.seed = seed
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Shuffle for ``epoch``, skipping its first ``start`` samples (already consumed)."""
        self.epoch = epoch
        self.start = start

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        yield from torch.randperm(self.size, generator=generator)[self.start:].tolist()

    def __len__(self) -> int:
        return max(self.size - self.start, 0)


def train_loader(data: Dataset | DataLoader, batch_size: int, seed: int,
                 sampler: Sampler | None = None) -> DataLoader:
    """The training loader: ``data`` as is when it is a DataLoader, else a resumable shuffle.

    ``sampler`` replaces the shuffle (e.g. a ``DistributedSampler``); its ``set_epoch`` is
    called every epoch when it has one.
    """
    if isinstance(data, DataLoader) or not isinstance(data, Dataset):
        return data  # a DataLoader or an iterable of ready batches (list of dicts...): as given
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sampler = sampler if sampler is not None else EpochSampler(len(data), seed)
    # A private generator: DataLoader draws a base seed from it at every iter(); with the
    # global one that draw would shift the model's random stream (dropout) across a resume.
    return DataLoader(data, batch_size=batch_size, sampler=sampler,
                      generator=torch.Generator().manual_seed(seed))


def start_epoch(loader: DataLoader, epoch: int, skip_batches: int) -> int:
    """Position ``loader`` at batch ``skip_batches`` of ``epoch``; returns batches left to skip.

    Our own sampler skips by index (no data is loaded for the consumed batches); any other
    sampler gets ``set_epoch`` and the caller discards the returned number of batches.
    """
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, EpochSampler):
        sampler.set_epoch(epoch, skip_batches * (loader.batch_size or 1))
        return 0
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    return skip_batches
