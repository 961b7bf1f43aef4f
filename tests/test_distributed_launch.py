"""penjing train --nproc: every flag reaches the workers or is refused, setup failures are
quick and clear, and the launcher's workers never outlive it (#20 items 6-7)."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from dist_scenarios import descendants
from penjing.cli import build_parser, main
from penjing.commands.train import worker_argv
from penjing.distributed import worker
from penjing.distributed.env import DistributedSetupError, init
from penjing.distributed.launch import LaunchError, run

#: ``penjing train`` options with no worker flag of their own, and why
NOT_PASSED = {"nproc": "the number of workers", "max_restarts": "the launcher's own",
              "no_progress": "workers never draw progress bars", "out": "passed as --save",
              "checkpoint_every": "passed (defaults to 50 with --checkpoint)", "func": "argparse",
              "command": "argparse", "input_shape": "refused (train uses the data's inputs)",
              "input_dtype": "goes with --input-shape, which train refuses"}


def train_args(*extra: str, tmp_path=None):
    return build_parser().parse_args(["train", "--nproc", "2", *extra])


def test_every_train_option_reaches_the_worker(tmp_path):
    weights = tmp_path / "w.pt"
    torch.save({}, weights)
    resume = tmp_path / "r.ckpt"
    resume.write_bytes(b"x")
    args = train_args("--steps", "7", "--weights", str(weights), "--resume", str(resume), "--scheduler", "cosine",
                      "--eval-every", "3", "--device", "cpu", "--epochs", "4", "--lr", "0.0123", "--seed", "5",
                      "--batch-size", "32", "--precision", "bf16", "--model", "lenet5", "--data", "digits",
                      "--checkpoint", str(tmp_path / "c.ckpt"), "--checkpoint-every", "9", "--out",
                      str(tmp_path / "o.pt"))
    parsed = worker.build_parser().parse_args(worker_argv(args))
    for name, value in vars(args).items():
        if name in NOT_PASSED:
            continue
        assert getattr(parsed, name) == value, name
    assert parsed.save == args.out and parsed.checkpoint_every == 9
    # a new `penjing train` option must be passed on or listed in NOT_PASSED with a reason
    train_parser = build_parser()._subparsers._group_actions[0].choices["train"]
    options = {a.dest for a in train_parser._actions if a.dest != "help"}
    assert options - NOT_PASSED.keys() <= set(vars(parsed)), options - NOT_PASSED.keys() - set(vars(parsed))


def test_the_issues_dropped_flags_are_refused_before_any_worker_starts(tmp_path, capsys):
    """`penjing train --nproc 2 --steps 7 --weights /nonexistent.pt --resume /x --scheduler bogus`
    used to exit 0 after a full epoch."""
    started = time.monotonic()
    code = main(["train", "--nproc", "2", "--steps", "7", "--weights", "/nonexistent.pt", "--resume", "/x",
                 "--scheduler", "bogus", "--out", str(tmp_path / "o.pt")])
    assert code != 0 and time.monotonic() - started < 5
    assert "--weights /nonexistent.pt not found" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown --scheduler 'bogus'; use one of cosine, linear, onecycle"):
        worker_argv(train_args("--scheduler", "bogus"))
    with pytest.raises(FileNotFoundError, match="--resume /x not found"):
        worker_argv(train_args("--resume", "/x"))
    with pytest.raises(ValueError, match="--batch-size 63 .* must divide by --nproc 2"):
        worker_argv(train_args("--batch-size", "63"))


def test_a_busy_rendezvous_port_is_reported_at_once(monkeypatch):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        monkeypatch.delenv("PENJING_STORE", raising=False)
        for k, v in dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="2").items():
            monkeypatch.setenv(k, v)
        started = time.monotonic()
        with pytest.raises(DistributedSetupError, match=rf"the rendezvous port 127.0.0.1:{port} is already in use"):
            init(timeout_s=30)
        assert time.monotonic() - started < 5


def test_a_configuration_error_in_a_worker_is_not_retried(capsys):
    started = time.monotonic()
    with pytest.raises(LaunchError, match=r"worker rank \d exited with code 2 \(a configuration error"):
        run(["--model", "no_such_model", "--steps", "1"], 2, max_restarts=3, log=print)
    assert "restarting" not in capsys.readouterr().out  # no attempt was repeated
    assert time.monotonic() - started < 60




def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is gone for our purpose
        return f.read().split(")")[-1].split()[0] != "Z"


@pytest.mark.slow  # starts 2 workers that import torch: ~20 s on 2 cores
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_die_with_a_killed_launcher(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "penjing.cli", "train", "--nproc", "2", "--epochs", "200",
                             "--no-progress", "--out", str(tmp_path / "o.pt")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    workers: list[int] = []
    while time.monotonic() < deadline and len(workers) < 2:
        workers = [p for p in descendants(proc.pid)]
        time.sleep(0.5)
    assert len(workers) >= 2
    # the workers listen on the loopback interface only (file rendezvous, gloo pinned to lo)
    ours: list[str] = []
    while time.monotonic() < deadline + 60 and len(ours) < 2:
        time.sleep(0.5)
        listening = subprocess.run(["ss", "-tlnp"], capture_output=True, text=True).stdout.splitlines()
        ours = [line for line in listening if any(f"pid={p}," in line for p in workers)]
    assert len(ours) >= 2 and all(line.split()[3].startswith("127.0.0.1:") for line in ours), ours
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.2)
    assert not any(_alive(p) for p in workers)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("rendezvous", [pytest.param("file", marks=pytest.mark.slow), "tcp"])
def test_a_two_process_job_listens_on_loopback_only(rendezvous):
    """#20: "the rendezvous store listens on all interfaces although penjing passes 127.0.0.1".
    Both rendezvous kinds: the file store (penjing's launcher, no socket at all) and the TCPStore
    rank 0 hosts (torch's own server binds ``*:port``; penjing hands it a socket bound to the
    address asked). Gloo's sockets are pinned to the loopback interface in both."""
    import dist_scenarios as sc
    from penjing.distributed import spawn

    per_rank = spawn(sc.listening_after_allreduce, 2, rendezvous=rendezvous, timeout_s=60)
    assert all(per_rank), per_rank  # each rank has gloo's listener at least
    addresses = {ip for sockets in per_rank for ip, _ in sockets}
    assert addresses == {"127.0.0.1"}, per_rank
    if rendezvous == "tcp":  # rank 0 also hosts the store: one more listener than rank 1
        assert len(per_rank[0]) == len(per_rank[1]) + 1, per_rank
