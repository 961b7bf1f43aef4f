"""Start N training processes on this machine and restart them when one dies (what
``penjing train --nproc N`` runs; torchrun is for several machines).

Why not torchrun here: its c10d rendezvous reuses one TCPStore across restarts, its store
listens on every interface, a busy port makes it wait silently, and killing it leaves its
workers running. This supervisor instead:

* gives every attempt a fresh *file* rendezvous (``PENJING_STORE``: no listening socket, no
  key left over from a previous attempt) and pins gloo to the loopback interface;
* watches its workers every 0.1 s: when one exits with an error the others are killed at
  once (they would otherwise block in an all-reduce until gloo's timeout) and all are
  restarted, resuming from the last checkpoint, up to ``max_restarts`` times;
* stops without restarting when a worker exits with code 2 (a configuration error, the same
  on every attempt) or when an attempt outlives ``attempt_timeout_s``;
* starts each worker in its own process group with ``PR_SET_PDEATHSIG`` (Linux), and kills
  the groups when it is interrupted or terminated: no worker outlives it, even under kill -9.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from penjing.distributed.env import LOOPBACK

CONFIG_ERROR = 2  # a worker's exit code for a mistake no restart can fix


class LaunchError(RuntimeError):
    """The job did not finish: the message says which rank failed, how, and on which attempt."""


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the supervisor dies (Linux prctl PR_SET_PDEATHSIG)."""
    os.setsid()
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)


def _kill(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for proc in procs:
        proc.wait()


def run(worker_argv: Sequence[str], nproc: int, *, max_restarts: int = 3, attempt_timeout_s: float | None = None,
        log=print) -> int:
    """Run ``python -m penjing.distributed.worker *worker_argv`` in ``nproc`` processes until
    all succeed (returns 0); raises :class:`LaunchError` when the job cannot finish."""
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    if max_restarts < 0:
        raise ValueError(f"max_restarts must be >= 0, got {max_restarts}")
    folder = Path(tempfile.mkdtemp(prefix="penjing-launch-"))
    procs: list[subprocess.Popen] = []

    def stop(signum, frame):  # the supervisor is interrupted: take the workers down with it
        _kill(procs)
        shutil.rmtree(folder, ignore_errors=True)
        raise SystemExit(128 + signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        for attempt in range(max_restarts + 1):
            store = folder / f"attempt-{attempt}"
            env = {**os.environ, "PENJING_STORE": str(store), "WORLD_SIZE": str(nproc),
                   "TORCHELASTIC_RESTART_COUNT": str(attempt), "TORCHELASTIC_MAX_RESTARTS": str(max_restarts),
                   "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", LOOPBACK),
                   "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
            procs[:] = [subprocess.Popen([sys.executable, "-m", "penjing.distributed.worker", *worker_argv],
                                         env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                                         preexec_fn=_die_with_parent)
                        for r in range(nproc)]
            started = time.monotonic()
            failed = None
            while failed is None:
                codes = [p.poll() for p in procs]
                if all(c == 0 for c in codes):
                    return 0
                bad = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
                if bad:
                    failed = bad[0]
                elif attempt_timeout_s is not None and time.monotonic() - started > attempt_timeout_s:
                    failed = (None, None)
                else:
                    time.sleep(0.1)
            _kill(procs)
            rank, code = failed
            if rank is None:
                raise LaunchError(f"attempt {attempt + 1} ran past {attempt_timeout_s:g} s; stopped every worker")
            how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            if code == CONFIG_ERROR:
                raise LaunchError(f"worker rank {rank} {how} (a configuration error; see its message above)")
            if attempt == max_restarts:
                raise LaunchError(f"worker rank {rank} {how} on attempt {attempt + 1}; gave up after "
                                  f"{max_restarts} restart(s)")
            log(f"[launch] worker rank {rank} {how} on attempt {attempt + 1}; restarting all {nproc} "
                f"(restart {attempt + 1} of {max_restarts})")
        raise AssertionError("unreachable")
    finally:
        _kill(procs)
        for s, handler in previous.items():
            signal.signal(s, handler)
        shutil.rmtree(folder, ignore_errors=True)
