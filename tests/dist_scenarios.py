"""Functions run inside spawned processes by tests/test_distributed.py (module-level so that
the 'spawn' start method can import them)."""

from __future__ import annotations

import subprocess

import torch
from torch.utils.data import TensorDataset

from penjing.data import digits
from penjing.models import LeNet300

SAMPLES = 1280  # divides by every batch and world size used here: no ragged last batch


def subset() -> TensorDataset:
    train, _ = digits()
    return TensorDataset(*(t[:SAMPLES] for t in train.tensors))


def fresh_model() -> LeNet300:
    torch.manual_seed(0)
    return LeNet300()


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def single_process(epochs: int, batch_size: int, lr: float) -> dict[str, torch.Tensor]:
    from penjing.train import fit

    model = fresh_model()
    fit(model, subset(), epochs=epochs, batch_size=batch_size, seed=0, progress=False,
        optimizer=torch.optim.SGD(model.parameters(), lr=lr))
    return weights(model)


def ddp(epochs: int, batch_size: int, lr: float, hook: str | None = None) -> dict:
    from penjing.distributed import fit_ddp
    from penjing.distributed.dgc import DGCConfig, DGCState, dgc_hook

    model = fresh_model()
    kwargs = {}
    if hook == "dgc-dense":  # sparsity 0, no momentum: must equal plain DDP exactly
        kwargs = {"comm_hook": dgc_hook, "hook_state": DGCState(DGCConfig(sparsity=0.0, momentum=0.0))}
    fit_ddp(model, subset(), epochs=epochs, batch_size=batch_size, seed=0, progress=False,
            optimizer=torch.optim.SGD(model.parameters(), lr=lr), **kwargs)
    return weights(model)


def parameter_server(epochs: int, batch_size: int, lr: float, mode: str = "sync",
                     max_staleness: int | None = None) -> dict:
    from penjing.distributed import train_parameter_server

    model = fresh_model()
    result = train_parameter_server(model, subset(), epochs=epochs, batch_size=batch_size, lr=lr,
                                    mode=mode, seed=0, max_staleness=max_staleness)
    return {"weights": weights(model), "role": result.role, "updates": result.updates,
            "dropped": result.dropped, "staleness": result.max_staleness_seen}


def pipeline_grads(schedule: str) -> dict:
    import torch.distributed as dist

    from penjing.distributed import PipelineRunner

    model = fresh_model()
    x, y = subset().tensors
    x, y = x[:32], y[:32]
    runner = PipelineRunner(model, ["fc2"], x[:8], microbatches=4, schedule=schedule)
    losses = runner.step(x, y)
    grads = {n: p.grad.clone() for n, p in runner.module.named_parameters()}
    return {"rank": dist.get_rank(), "grads": grads,
            "loss": float(torch.stack(losses).mean()) if losses else None}


def listening_sockets(pid: int | str = "self") -> list[tuple[str, int]]:
    """The TCP addresses process ``pid`` listens on, from /proc (Linux): its socket inodes
    matched against /proc/net/tcp and tcp6 (state 0A = LISTEN)."""
    import ipaddress
    import os
    import struct

    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            next(f)
            for line in f:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state != "0A" or inode not in inodes:
                    continue
                hex_ip, hex_port = local.split(":")
                words = struct.unpack("<" + "I" * (len(hex_ip) // 8), bytes.fromhex(hex_ip))
                packed = struct.pack(">" + "I" * len(words), *words)
                found.append((str(ipaddress.ip_address(packed)), int(hex_port, 16)))
    return sorted(found)


def listening_after_allreduce() -> list[tuple[str, int]]:
    """This rank's listening TCP sockets once the group has formed and exchanged data."""
    import torch.distributed as dist

    t = torch.ones(4)
    dist.all_reduce(t)
    assert float(t[0]) == dist.get_world_size()
    return listening_sockets()


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from ``ps``): what a test checks is gone after a run."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        p, pp = map(int, line.split())
        children.setdefault(pp, []).append(p)
    found, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.append(c)
            todo.append(c)
    return found
