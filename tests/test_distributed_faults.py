"""The distributed fault drill (#20 "Must show"): ``kill -9`` each rank in turn at a random
point of ``penjing train --nproc 2``, 10 runs; each run finishes bit-identical to a clean run
or exits with a clear error within 60 s of the kill, and no process is left behind."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from dist_scenarios import descendants
from penjing.models.user import load_state_dict

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")]

STEPS, EVERY = 300, 20


def command(tmp, name):
    return [sys.executable, "-m", "penjing.cli", "train", "--nproc", "2", "--steps", str(STEPS), "--no-progress",
            "--checkpoint", str(tmp / f"{name}.ckpt"), "--checkpoint-every", str(EVERY),
            "--out", str(tmp / f"{name}.pt"), "--max-restarts", "3"]




def rank_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        return int(env[b"RANK"]) if b"RANK" in env else None
    except (OSError, ValueError):
        return None


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_kill_each_rank_in_turn(tmp_path):
    clean = subprocess.run(command(tmp_path, "clean"), capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0, clean.stderr
    reference = load_state_dict(tmp_path / "clean.pt")  # safetensors (penjing train --out), any suffix
    rng = random.Random(20)
    outcomes = []
    for run in range(10):
        victim = run % 2
        name = f"run{run}"
        proc = subprocess.Popen(command(tmp_path, name), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seen: set[int] = set()
        killed_at = None
        deadline = time.monotonic() + 120
        while killed_at is None and proc.poll() is None and time.monotonic() < deadline:
            seen.update(descendants(proc.pid))
            if (tmp_path / f"{name}.ckpt").exists():  # training is under way
                time.sleep(rng.uniform(0, 1.5))
                for pid in descendants(proc.pid):
                    if rank_of(pid) == victim:
                        os.kill(pid, signal.SIGKILL)
                        killed_at = time.monotonic()
                        break
            time.sleep(0.05)
        try:
            out, err = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"run {run}: neither finished nor exited 180 s after the kill")
        ended = time.monotonic()
        leftovers = [p for p in seen if alive(p)]
        assert not leftovers, f"run {run}: processes left behind: {leftovers}"
        if proc.returncode == 0:
            state = load_state_dict(tmp_path / f"{name}.pt")
            assert state.keys() == reference.keys()
            assert all(torch.equal(state[k], reference[k]) for k in state), f"run {run}: weights differ"
            outcomes.append("finished identical" + ("" if killed_at else " (ended before the kill)"))
        else:
            last = err.strip().splitlines()[-1]
            assert last.startswith("penjing train: error: "), err
            assert killed_at is not None and ended - killed_at < 60, f"run {run}: {ended - killed_at:.0f} s"
            outcomes.append(f"clear error: {last}")
        print(f"run {run} (kill rank {victim}): {outcomes[-1]}"
              + (f", {ended - killed_at:.1f} s from kill to end" if killed_at else ""))
    assert sum(o.startswith("finished") for o in outcomes) + sum(o.startswith("clear") for o in outcomes) == 10
    assert any("before the kill" not in o for o in outcomes)  # the drill really killed workers
