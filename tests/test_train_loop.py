"""The one training loop: length, schedule, evaluation, checkpoints, resume, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from penjing.data import digits
from penjing.models import get_model
from penjing.train import Callback, evaluate, fit, load_checkpoint

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data():
    return digits()


@pytest.fixture(scope="module")
def small(data):
    """A 256-sample slice of the training set: enough to exercise the loop, fast."""
    train, _ = data
    x, y = train.tensors
    return TensorDataset(x[:256], y[:256])


def mlp(seed: int = 0, dropout: float = 0.2) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 10))


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_train_begin(self, model):
        self.events.append(("begin",))

    def on_epoch_begin(self, model, epoch):
        self.events.append(("epoch_begin", epoch))

    def on_step_end(self, model, step, loss):
        self.events.append(("step", step))

    def on_epoch_end(self, model, epoch):
        self.events.append(("epoch_end", epoch))

    def on_train_end(self, model):
        self.events.append(("end",))


def test_fit_keeps_its_old_call_and_learns_digits(data):
    train, test = data
    torch.manual_seed(0)
    model = get_model("lenet300")
    history = fit(model, train, epochs=4, lr=3e-3, batch_size=64, optimizer=None, weight_decay=0.0,
                  seed=0, callbacks=(), progress=False, desc="t")
    assert len(history["loss"]) == 4
    assert history["loss"][-1] < history["loss"][0] / 3
    assert evaluate(model, test) > 0.93
    assert not model.training


def test_steps_mode_runs_exactly_that_many_steps_and_calls_back_in_order(small):
    rec = Recorder()
    history = fit(mlp(), small, steps=11, batch_size=32, callbacks=[rec], progress=False)
    steps = [e[1] for e in rec.events if e[0] == "step"]
    assert steps == list(range(1, 12)) and history["steps"] == 11
    # 8 batches per epoch: one full epoch, then 3 steps of the second (a partial epoch's loss).
    assert rec.events[:2] == [("begin",), ("epoch_begin", 0)]
    assert ("epoch_end", 0) in rec.events and ("epoch_end", 1) not in rec.events
    assert rec.events[-1] == ("end",) and len(history["loss"]) == 2


def test_eval_every_and_final_test_accuracy(small, data):
    _, test = data
    history = fit(mlp(), small, epochs=2, lr=1e-2, batch_size=32, test=test, eval_every=4, progress=False)
    assert [s for s, _ in history["eval"]] == [4, 8, 12, 16]
    assert history["eval"][-1][1] == history["test_acc"]
    assert 0.25 < history["test_acc"] <= 1  # learning: chance is 0.1


def test_cosine_schedule_anneals_the_learning_rate(small):
    opt_model = mlp()
    optimizer = torch.optim.SGD(opt_model.parameters(), lr=0.1)
    fit(opt_model, small, epochs=2, batch_size=32, optimizer=optimizer, scheduler="cosine", progress=False)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="unknown scheduler 'warp'"):
        fit(mlp(), small, epochs=1, scheduler="warp", progress=False)


def test_nan_loss_stops_with_a_clear_message(small):
    x, y = small.tensors
    bad = TensorDataset(torch.full_like(x[:64], float("nan")), y[:64])
    with pytest.raises(FloatingPointError, match=r"loss became nan at step 1 \(epoch 0\); lower the learning rate"):
        fit(mlp(), bad, epochs=1, progress=False)


def test_checkpoint_is_atomic_and_loads_without_pickle(small, tmp_path):
    path = tmp_path / "run.ckpt"
    fit(mlp(), small, epochs=1, batch_size=32, checkpoint=path, checkpoint_every=3, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.ckpt"]  # no temp file left
    raw = torch.load(path, weights_only=True)
    assert raw["step"] == 8 and raw["epoch"] == 1 and raw["batch"] == 0
    assert isinstance(raw["rng"]["torch"], torch.Tensor) and raw["rng"]["torch"].dtype == torch.uint8
    assert set(raw) >= {"model", "optimizer", "scheduler", "precision", "history"}
    assert load_checkpoint(path)["model"].keys() == mlp().state_dict().keys()


class Kill(Callback):
    """Simulates a crash: raises after step ``at``."""

    def __init__(self, at: int):
        self.at = at

    def on_step_end(self, model, step, loss):
        if step == self.at:
            raise KeyboardInterrupt


@pytest.mark.parametrize("precision", ["fp32", "fp16-master", "fp16"])
def test_resume_gives_bit_identical_weights(small, tmp_path, precision):
    kwargs = dict(epochs=3, batch_size=32, seed=3, scheduler="cosine", precision=precision, progress=False)
    reference = mlp(seed=1)
    expected = fit(reference, small, **kwargs)

    path = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):  # killed at step 13, after the checkpoint of step 10
        fit(mlp(seed=1), small, checkpoint=path, checkpoint_every=5, callbacks=[Kill(13)], **kwargs)
    assert load_checkpoint(path)["step"] == 10
    resumed = mlp(seed=99)  # whatever the fresh model holds is replaced by the checkpoint
    history = fit(resumed, small, checkpoint=path, checkpoint_every=5, resume=path, **kwargs)
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert history["loss"] == expected["loss"]


def test_checkpoint_from_another_model_is_refused(small, tmp_path):
    path = tmp_path / "lenet.ckpt"
    fit(get_model("lenet300"), small, steps=2, checkpoint=path, progress=False)
    with pytest.raises(ValueError, match=r"was written for a different model; missing: 1.weight, 1.bias"):
        fit(mlp(), small, steps=4, resume=path, progress=False)
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="is not a readable penjing training checkpoint"):
        fit(mlp(), small, steps=4, resume=tmp_path / "junk.ckpt", progress=False)
    with pytest.raises(FileNotFoundError, match="checkpoint .*missing.ckpt not found"):
        fit(mlp(), small, steps=4, resume=tmp_path / "missing.ckpt", progress=False)


def test_bad_arguments_are_refused(small):
    with pytest.raises(ValueError, match="checkpoint_every needs checkpoint=PATH"):
        fit(mlp(), small, checkpoint_every=2, progress=False)
    with pytest.raises(ValueError, match="eval_every needs test= data"):
        fit(mlp(), small, eval_every=2, progress=False)
    with pytest.raises(ValueError, match="epochs must be >= 0, got -1"):
        fit(mlp(), small, epochs=-1, progress=False)


def test_evaluate_leaves_the_global_random_stream_alone(small):
    model = mlp()
    state = torch.get_rng_state()
    evaluate(model, small)
    assert torch.equal(state, torch.get_rng_state())
