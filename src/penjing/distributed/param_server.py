"""A parameter server on torch.distributed collectives and point-to-point messages.

The seed's picture of data parallelism: *server* ranks hold the master weights and the
optimizer; *worker* ranks hold a copy of the model, compute gradients on their shard of the
data, push them to the servers and pull fresh weights. With several servers the parameters
are sharded across them (parameter ``i`` lives on server ``i % servers``).

* ``mode="sync"``: every step, the workers' gradients are summed onto each server with
  ``reduce``, averaged, applied, and the new weights ``broadcast`` back. This is the same
  arithmetic as DDP with the same global batch, so it gives the same weights.
* ``mode="async"``: each worker pushes its gradient (tagged with the weight version it was
  computed on) with ``send`` and waits for fresh weights; a server applies gradients in the
  order they arrive. A fast worker can push several times while a slow one computes, so
  staleness is not bounded by itself; ``max_staleness`` bounds it by dropping (and counting)
  gradients computed on weights more than that many versions old.

The worker side is :func:`penjing.train.fit` with :class:`PushPull` as its optimizer: the
one training loop, whose ``optimizer.step()`` talks to the servers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from penjing.distributed.env import rank, world_size

_DONE, _GRAD = 0.0, 1.0


@dataclass
class ParameterServerResult:
    role: str                      # "server" or "worker"
    updates: int = 0               # gradients applied (server) or pushed (worker)
    dropped: int = 0               # stale gradients a server refused
    max_staleness_seen: int = 0
    history: dict[str, Any] = field(default_factory=dict)


def _shards(params: list[nn.Parameter], servers: int) -> list[list[nn.Parameter]]:
    return [params[s::servers] for s in range(servers)]


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors]) if tensors else torch.zeros(0)


def _unflatten_into(flat: torch.Tensor, tensors: list[torch.Tensor]) -> None:
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


class PushPull(torch.optim.Optimizer):
    """A worker's optimizer: ``step()`` pushes gradients to the servers and pulls weights."""

    def __init__(self, params, servers: int, mode: str):
        super().__init__(list(params), {})
        self.servers, self.mode = servers, mode
        self.params = [p for g in self.param_groups for p in g["params"]]
        self.shards = _shards(self.params, servers)
        self.versions = [0] * servers
        self.pushed = 0

    def _grads(self, shard: list[nn.Parameter]) -> torch.Tensor:
        return _flat([p.grad if p.grad is not None else torch.zeros_like(p) for p in shard])

    @torch.no_grad()
    def step(self, closure=None):
        self.pushed += 1
        for s, shard in enumerate(self.shards):
            grads = self._grads(shard)
            if self.mode == "sync":
                dist.reduce(grads, dst=s)          # summed on server s
            else:
                dist.send(torch.tensor([_GRAD, float(self.versions[s])], dtype=torch.float64), dst=s)
                dist.send(grads, dst=s)
                reply = torch.zeros(1, dtype=torch.float64)
                dist.recv(reply, src=s)
                self.versions[s] = int(reply.item())
                fresh = torch.empty_like(grads)
                dist.recv(fresh, src=s)
                _unflatten_into(fresh, shard)
        if self.mode == "sync":
            for s, shard in enumerate(self.shards):
                flat = _flat([p.detach() for p in shard])
                dist.broadcast(flat, src=s)
                _unflatten_into(flat, shard)

    def finish(self) -> None:
        if self.mode == "async":
            for s in range(self.servers):
                dist.send(torch.tensor([_DONE, 0.0], dtype=torch.float64), dst=s)


def _serve(model: nn.Module, server: int, servers: int, workers: int, mode: str, steps: int,
           optimizer: torch.optim.Optimizer, shard: list[nn.Parameter],
           max_staleness: int | None) -> ParameterServerResult:
    result = ParameterServerResult(role="server")
    all_shards = _shards(list(model.parameters()), servers)

    def apply(grad_sum: torch.Tensor, count: int) -> None:
        optimizer.zero_grad(set_to_none=False)
        for p in shard:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        _unflatten_into(grad_sum / count, [p.grad for p in shard])
        optimizer.step()
        result.updates += 1

    if mode == "sync":
        for _ in range(steps):
            for s, other in enumerate(all_shards):   # every rank joins every reduce
                buf = torch.zeros(sum(p.numel() for p in other))
                dist.reduce(buf, dst=s)
                if s == server:
                    apply(buf, workers)
            for s, other in enumerate(all_shards):
                flat = _flat([p.detach() for p in other])
                dist.broadcast(flat, src=s)
                with torch.no_grad():
                    _unflatten_into(flat, other)
        return result

    version, active = 0, workers
    size = sum(p.numel() for p in shard)
    while active:
        header = torch.zeros(2, dtype=torch.float64)
        sender = dist.recv(header)                   # from whichever worker is first
        if header[0].item() == _DONE:
            active -= 1
            continue
        grads = torch.empty(size)
        dist.recv(grads, src=sender)
        staleness = version - int(header[1].item())
        result.max_staleness_seen = max(result.max_staleness_seen, staleness)
        if max_staleness is not None and staleness > max_staleness:
            result.dropped += 1
        else:
            apply(grads, 1)
            version += 1
        dist.send(torch.tensor([float(version)], dtype=torch.float64), dst=sender)
        dist.send(_flat([p.detach() for p in shard]), dst=sender)
    return result


def train_parameter_server(
    model: nn.Module,
    train: Dataset,
    *,
    servers: int = 1,
    mode: str = "sync",
    epochs: int = 1,
    batch_size: int = 64,
    lr: float = 0.05,
    momentum: float = 0.0,
    seed: int = 0,
    max_staleness: int | None = None,
    progress: bool = False,
) -> ParameterServerResult:
    """Train ``model`` with ``servers`` server ranks and ``world_size - servers`` workers.

    ``batch_size`` is the global batch of one synchronous step (split over the workers); in
    async mode each worker steps with ``batch_size / workers`` samples. The servers run SGD
    (``lr``, ``momentum``). At the end every rank holds the servers' final weights.
    """
    from penjing.distributed.data_parallel import ShardedSampler
    from penjing.train import fit

    if mode not in {"sync", "async"}:
        raise ValueError(f"mode must be 'sync' or 'async', got {mode!r}")
    if not dist.is_initialized():
        raise RuntimeError("the parameter server needs a process group: call penjing.distributed.init()")
    world, me = world_size(), rank()
    workers = world - servers
    if servers < 1 or workers < 1:
        raise ValueError(f"need at least 1 server and 1 worker; world size {world} with {servers} server(s)")
    if batch_size % workers:
        raise ValueError(f"batch_size {batch_size} must divide by the number of workers ({workers})")
    params = list(model.parameters())
    with torch.no_grad():                             # everyone starts from rank 0's weights
        for p in params:
            dist.broadcast(p, src=0)
    per_worker = batch_size // workers
    usable = len(train) - len(train) % workers
    steps_per_epoch = -(-(usable // workers) // per_worker)
    if me < servers:
        shard = _shards(params, servers)[me]
        optimizer = torch.optim.SGD(shard, lr=lr, momentum=momentum)
        result = _serve(model, me, servers, workers, mode, epochs * steps_per_epoch, optimizer, shard,
                        max_staleness)
    else:
        pushpull = PushPull(params, servers, mode)
        sampler = ShardedSampler(len(train), seed, me - servers, workers)
        history = fit(model, train, epochs=epochs, batch_size=per_worker, optimizer=pushpull, seed=seed,
                      sampler=sampler, progress=progress and me == servers, main_process=me == servers,
                      desc="worker")
        pushpull.finish()
        result = ParameterServerResult(role="worker", updates=pushpull.pushed, history=history)
    if mode == "async":                               # hand everyone the final weights
        for s, shard in enumerate(_shards(params, servers)):
            flat = _flat([p.detach() for p in shard])
            dist.broadcast(flat, src=s)
            with torch.no_grad():
                _unflatten_into(flat, shard)
    return result
