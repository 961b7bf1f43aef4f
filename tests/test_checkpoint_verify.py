"""Checkpoints are verified on read (SHA-256 seal), range-checked, and leave no orphans (#20 item 5)."""

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from penjing.train.checkpoint import (
    SEAL,
    load_checkpoint,
    rng_state,
    save_checkpoint,
)


def payload(**changes):
    model = nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": None, "rng": rng_state(),
             "step": 4, "epoch": 1, "batch": 2, "sums": [1.5, 3, 8], "history": {"loss": [0.5]},
             "data_seed": 7, "batch_size": 4, "callbacks": [], "dsd": None, "precision": {"mode": "fp32"},
             "distill": None}
    state.update(changes)
    return state


def test_round_trip_and_plain_torch_load(tmp_path):
    written = payload()
    path = save_checkpoint(tmp_path / "run.ckpt", written)
    state = load_checkpoint(path)
    assert state["step"] == 4 and torch.equal(state["model"]["weight"], written["model"]["weight"])
    assert torch.equal(state["rng"]["torch"], written["rng"]["torch"])
    assert torch.load(path, weights_only=True)["version"] == 2  # still a plain torch zip
    assert path.read_bytes()[-40:].startswith(SEAL)


def test_every_flipped_bit_region_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "run.ckpt", payload())
    good = path.read_bytes()
    # one bit in the tensor data, in the pickled structure, in the zip directory, in the seal
    for i in (len(good) // 3, len(good) // 2, len(good) - 100, len(good) - 5, 40):
        bad = bytearray(good)
        bad[i] ^= 0x01
        path.write_bytes(bytes(bad))
        with pytest.raises(ValueError, match="is damaged: its SHA-256 does not match|not a readable"):
            load_checkpoint(path)


def test_a_flipped_weight_bit_is_refused_by_the_loop(tmp_path):
    """The issue's repro: torch.load alone resumes silently from a checkpoint with one flipped
    weight bit; load_checkpoint refuses it."""
    from torch.utils.data import TensorDataset

    from penjing.train import fit

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(32, 3), torch.randint(0, 2, (32,)))
    path = tmp_path / "run.ckpt"
    fit(nn.Linear(3, 2), data, steps=2, batch_size=8, checkpoint=path, progress=False)
    blob = bytearray(path.read_bytes())
    weight = torch.load(path, weights_only=True)["model"]["weight"]
    at = bytes(blob).find(weight.numpy().tobytes())
    assert at > 0
    blob[at] ^= 0x01
    path.write_bytes(bytes(blob))
    assert not torch.equal(torch.load(path, weights_only=True)["model"]["weight"], weight)  # torch takes it
    with pytest.raises(ValueError, match="is damaged: its SHA-256 does not match the contents"):
        fit(nn.Linear(3, 2), data, steps=4, batch_size=8, resume=path, progress=False)


@pytest.mark.parametrize("change, message", [
    ({"step": -5}, "checkpoint field 'step' must be a non-negative integer, got -5"),
    ({"epoch": 1.5}, "checkpoint field 'epoch' must be a non-negative integer, got 1.5"),
    ({"batch": True}, "checkpoint field 'batch' must be a non-negative integer, got True"),
    ({"batch_size": 0}, "checkpoint field 'batch_size' must be a positive integer, got 0"),
    ({"rng": {"torch": torch.zeros(3, dtype=torch.uint8)}}, "checkpoint field 'rng' must hold the torch RNG state"),
    ({"optimizer": {"state": {}}}, "checkpoint field 'optimizer' is not an optimizer state_dict"),
    ({"model": {"w": 3}}, r"checkpoint field 'model' must be a state_dict \(str -> Tensor\)"),
    ({"sums": [0.0, -1, 2]}, r"checkpoint field 'sums' must be \[loss sum, correct, count\]"),
    ({"sums": [float("nan"), 1, 2]}, r"checkpoint field 'sums' must be \[loss sum, correct, count\]"),
    ({"history": []}, "checkpoint field 'history' must be a dict"),
    ({"scheduler": 3}, "checkpoint field 'scheduler' must be a dict or None"),
])
def test_out_of_range_fields_are_refused(tmp_path, change, message):
    path = save_checkpoint(tmp_path / "run.ckpt", payload(**change))
    with pytest.raises(ValueError, match=message):
        load_checkpoint(path)


@pytest.mark.parametrize("key", ["rng", "history", "sums", "data_seed", "optimizer"])
def test_missing_field_is_named(tmp_path, key):
    """A hand-edited checkpoint used to give KeyError tracebacks from inside the loop."""
    state = payload()
    del state[key]
    path = save_checkpoint(tmp_path / "run.ckpt", state)
    with pytest.raises(ValueError, match=f"checkpoint has no '{key}' entry"):
        load_checkpoint(path)


def test_version_1_files_are_read_and_crc_checked(tmp_path):
    path = tmp_path / "old.ckpt"
    written = payload()
    torch.save({"format": "penjing-train-checkpoint", "version": 1, **written}, path)
    assert load_checkpoint(path)["step"] == 4
    blob = bytearray(path.read_bytes())
    at = bytes(blob).find(written["rng"]["torch"].numpy().tobytes()[:64])
    assert at > 0
    blob[at + 10] ^= 0x40
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="is damaged: CRC mismatch in"):
        load_checkpoint(path)


def test_orphan_temp_files_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    orphan = tmp_path / f".run.ckpt.{dead}.tmp"
    orphan.write_bytes(b"half a checkpoint")
    live = tmp_path / f".run.ckpt.{os.getppid()}.tmp"  # a live process (our parent) may be writing
    live.write_bytes(b"in progress")
    other = tmp_path / ".other.ckpt.1.tmp"  # another checkpoint's temp file: not ours to touch
    other.write_bytes(b"x")
    save_checkpoint(tmp_path / "run.ckpt", payload())
    assert not orphan.exists() and live.exists() and other.exists()
    assert load_checkpoint(tmp_path / "run.ckpt")["step"] == 4
