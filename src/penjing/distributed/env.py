"""Joining a process group, and starting N processes on this machine.

``init`` reads the standard variables ``torchrun`` sets (``MASTER_ADDR``, ``MASTER_PORT``,
``RANK``, ``WORLD_SIZE``) -- or ``PENJING_STORE``, the file rendezvous of
:mod:`penjing.distributed.launch` -- and fails within ``timeout_s`` with a message that says
what to check, instead of hanging on an unreachable address, a busy port or a world size that
never fills up.

Restarts and stale addresses: under torchrun's c10d rendezvous every attempt's workers reach
the *same* TCPStore (the agent's, created once per job), and torch creates the workers' store
client without a per-attempt prefix (``torch.distributed.rendezvous._create_c10d_store``: "We
create a new TCPStore for every retry so no need to add prefix"). Gloo publishes each rank's
address under the same keys on every attempt, so a rank of attempt 2 can read the address a
killed rank of attempt 1 left there and connect to a dead socket. ``init`` therefore builds
the store itself and prefixes every key with the attempt (``TORCHELASTIC_RESTART_COUNT``).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import pickle
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

#: The loopback interface's name, for GLOO_SOCKET_IFNAME (gloo then binds to 127.0.0.1 only).
LOOPBACK = "lo" if sys.platform.startswith("linux") else "lo0"


class DistributedSetupError(RuntimeError):
    """The process group could not be formed (rendezvous unreachable, wrong world size...)."""


def init(backend: str | None = None, timeout_s: float = 60.0) -> None:
    """Join the process group described by the environment (as set by torchrun)."""
    if dist.is_initialized():
        return
    needed = ("RANK", "WORLD_SIZE") + (() if os.environ.get("PENJING_STORE") else ("MASTER_ADDR", "MASTER_PORT"))
    missing = [v for v in needed if v not in os.environ]
    if missing:
        raise DistributedSetupError(
            f"environment variables {missing} are not set: start the job with torchrun "
            "(e.g. `torchrun --nproc-per-node 2 ...`) or penjing.distributed.spawn"
        )
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    addr, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), os.environ.get("MASTER_PORT", "0")
    world, rank_ = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    if not 0 <= rank_ < world:
        raise DistributedSetupError(f"RANK={rank_} is outside WORLD_SIZE={world}")
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    timeout = timedelta(seconds=timeout_s)
    if _is_loopback(addr) and backend == "gloo":
        # Every rank is on this machine: gloo's own listening sockets on loopback too (it would
        # otherwise bind the address the host name resolves to).
        os.environ.setdefault("GLOO_SOCKET_IFNAME", LOOPBACK)
    try:
        store = _store(addr, int(port), rank_, world, timeout)
    except Exception as exc:  # DistNetworkError / RuntimeError from the store
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        busy = "address already in use" in text.lower() or "errno 98" in text.lower()
        raise DistributedSetupError(
            f"rank {rank_}: the rendezvous port {addr}:{port} is already in use by another process; "
            "pick another MASTER_PORT (or let penjing choose: penjing train --nproc N)" if busy else
            f"rank {rank_} could not reach the rendezvous at {addr}:{port} within {timeout_s:g} s "
            f"({type(exc).__name__}: {text}). Check that the address is reachable from every node "
            "and the port is open."
        ) from None
    try:
        dist.init_process_group(backend, store=dist.PrefixStore(f"penjing/attempt-{attempt}", store),
                                rank=rank_, world_size=world, timeout=timeout)
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


def _is_loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return addr == "localhost"


def _store(addr: str, port: int, rank_: int, world: int, timeout: timedelta) -> dist.Store:
    """The rendezvous store: a file (``PENJING_STORE``, from penjing's launcher: no listening
    socket at all), the torchrun agent's TCPStore, or one that rank 0 hosts, listening on
    ``addr`` only."""
    path = os.environ.get("PENJING_STORE")
    if path:
        return dist.FileStore(path, world)
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    if rank_ != 0 or agent:  # a client: of rank 0's store, or of the torchrun agent's
        return dist.TCPStore(addr, port, world, is_master=False, timeout=timeout)
    # TCPStore's own server listens on every interface (``*:port``) whatever host it is given.
    # Listen on the address that was asked for ourselves and hand the socket to the store; a
    # busy port fails here, in a second, instead of the clients' long wait.
    return dist.TCPStore(addr, port, world, is_master=True, timeout=timeout, wait_for_workers=False,
                         master_listen_fd=_listen(addr, port))


def _listen(addr: str, port: int) -> int:
    """A TCP socket bound to ``addr:port`` only and listening; returns its file descriptor
    (the caller's TCPStore owns and closes it)."""
    family, kind, proto, _, where = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as TCPStore does
        sock.bind(where)
        sock.listen(socket.SOMAXCONN)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise RuntimeError(f"address already in use ({exc})") from None
        raise RuntimeError(f"cannot listen on {addr}:{port} ({exc})") from None
    return sock.detach()


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


def _entry(local_rank: int, fn: Callable, world: int, store: str, timeout_s: float,
           queue: Any, args: tuple) -> None:
    # A file rendezvous (no listening socket) or "tcp:PORT" (rank 0 hosts a TCPStore on
    # 127.0.0.1), and gloo on the loopback interface only.
    if store.startswith("tcp:"):
        os.environ.pop("PENJING_STORE", None)
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=store.removeprefix("tcp:"))
    else:
        os.environ["PENJING_STORE"] = store
    os.environ.update(RANK=str(local_rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local_rank))
    os.environ.setdefault("GLOO_SOCKET_IFNAME", LOOPBACK)
    torch.set_num_threads(1)  # one core per process on a small machine
    init(timeout_s=timeout_s)
    try:
        # Plain pickle copies tensor bytes; torch's queue would share them through file
        # descriptors that vanish when this process exits before the parent reads.
        queue.put((local_rank, pickle.dumps(fn(*args))))
    finally:
        dist.destroy_process_group()


def spawn(fn: Callable, nproc: int, *args: Any, timeout_s: float = 60.0, rendezvous: str = "file") -> list[Any]:
    """Run ``fn(*args)`` in ``nproc`` fresh processes joined by gloo/NCCL on 127.0.0.1 and
    return each rank's result (rank order). ``fn`` must be importable (a module-level function).
    ``rendezvous``: ``"file"`` (a FileStore: no listening socket) or ``"tcp"`` (rank 0 hosts
    a TCPStore listening on 127.0.0.1 only, as a torchrun-less multi-machine job would).
    """
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    if rendezvous not in ("file", "tcp"):
        raise ValueError(f"rendezvous must be 'file' or 'tcp', got {rendezvous!r}")
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    folder = tempfile.mkdtemp(prefix="penjing-rdzv-")
    store = os.path.join(folder, "store") if rendezvous == "file" else f"tcp:{free_port()}"
    context = mp.start_processes(_entry, args=(fn, nproc, store, timeout_s, queue, args),
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
    shutil.rmtree(folder, ignore_errors=True)
    if len(results) < nproc:
        raise RuntimeError(f"only ranks {sorted(results)} of {nproc} returned a result")
    return [results[r] for r in range(nproc)]
