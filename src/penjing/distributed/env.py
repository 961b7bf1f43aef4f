"""Joining a process group, and starting N processes on this machine.

``init`` reads the standard variables ``torchrun`` sets (``MASTER_ADDR``, ``MASTER_PORT``,
``RANK``, ``WORLD_SIZE``) and fails within ``timeout_s`` with a message that says what to
check, instead of hanging on an unreachable address or a world size that never fills up.
"""

from __future__ import annotations

import os
import pickle
import socket
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


class DistributedSetupError(RuntimeError):
    """The process group could not be formed (rendezvous unreachable, wrong world size...)."""


def init(backend: str | None = None, timeout_s: float = 60.0) -> None:
    """Join the process group described by the environment (as set by torchrun)."""
    if dist.is_initialized():
        return
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE") if v not in os.environ]
    if missing:
        raise DistributedSetupError(
            f"environment variables {missing} are not set: start the job with torchrun "
            "(e.g. `torchrun --nproc-per-node 2 ...`) or penjing.distributed.spawn"
        )
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    addr, port = os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]
    world, rank_ = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    if not 0 <= rank_ < world:
        raise DistributedSetupError(f"RANK={rank_} is outside WORLD_SIZE={world}")
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        # The store can be reached before every rank has arrived; a barrier proves the whole
        # world is here, within the same bounded time.
        dist.barrier()
    except Exception as exc:  # torch raises DistStoreError, RuntimeError, TimeoutError...
        if dist.is_initialized():
            dist.destroy_process_group()
        raise DistributedSetupError(
            f"rank {rank_} could not form a group of {world} processes at {addr}:{port} within "
            f"{timeout_s:g} s ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
            "Check that the address is reachable from every node, the port is open, and exactly "
            f"WORLD_SIZE={world} processes were started."
        ) from None


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """True on rank 0 (or without a process group): the process that logs and checkpoints."""
    return rank() == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(local_rank: int, fn: Callable, world: int, port: int, timeout_s: float,
           queue: Any, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(local_rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(local_rank))
    torch.set_num_threads(1)  # one core per process on a small machine
    init(timeout_s=timeout_s)
    try:
        # Plain pickle copies tensor bytes; torch's queue would share them through file
        # descriptors that vanish when this process exits before the parent reads.
        queue.put((local_rank, pickle.dumps(fn(*args))))
    finally:
        dist.destroy_process_group()


def spawn(fn: Callable, nproc: int, *args: Any, timeout_s: float = 60.0) -> list[Any]:
    """Run ``fn(*args)`` in ``nproc`` fresh processes joined by gloo/NCCL on 127.0.0.1 and
    return each rank's result (rank order). ``fn`` must be importable (a module-level function).
    """
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    context = mp.start_processes(_entry, args=(fn, nproc, free_port(), timeout_s, queue, args),
                                 nprocs=nproc, join=False, start_method="spawn")
    # Read before joining: a child blocks on a full pipe until its result is taken.
    results = {}
    while len(results) < nproc:
        if not queue.empty():
            r, blob = queue.get()
            results[r] = pickle.loads(blob)
        elif context.join(timeout=0.05):  # all exited (join raises if one failed)
            break
    while not context.join():
        pass
    if len(results) < nproc:
        raise RuntimeError(f"only ranks {sorted(results)} of {nproc} returned a result")
    return [results[r] for r in range(nproc)]
