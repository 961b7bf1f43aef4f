"""The DDP worker in this process (world size 1, file rendezvous): what it writes, and a
diverging loss as one line with exit code 2 (no traceback; the launcher does not retry 2)."""

import pytest
import torch
import torch.distributed as dist

from penjing.distributed import worker
from penjing.models import LeNet300
from penjing.models.user import is_safetensors, load_state_dict


@pytest.fixture
def one_rank(tmp_path, monkeypatch):
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "PENJING_STORE": str(tmp_path / "store")}.items():
        monkeypatch.setenv(k, v)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def test_the_worker_writes_its_weights_as_safetensors(tmp_path, one_rank):
    out = tmp_path / "w.pt"  # whatever the suffix: safetensors, no pickle
    assert worker.main(["--steps", "4", "--save", str(out)]) == 0
    assert is_safetensors(out)
    state = load_state_dict(out)
    model = LeNet300(in_features=64)
    model.load_state_dict(state)  # the trained LeNet-300-100 on 8x8 digits
    assert set(state) == set(model.state_dict())
    assert all(torch.isfinite(v).all() for v in state.values())


def test_a_diverging_loss_is_one_line_and_exit_code_2(one_rank, capsys):
    assert worker.main(["--steps", "4", "--lr", "1e30"]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1 and lines[0].startswith("[rank 0] error: loss became nan at step "), err
    assert lines[0].endswith("lower the learning rate (1e+30) or check the data for inf/NaN")
