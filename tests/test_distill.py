"""Knowledge distillation: the loss, the frozen teacher, hints, bad input, and that it helps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from penjing.data import digits
from penjing.models import get_model
from penjing.train import Callback, DistillConfig, DSDConfig, distill, distill_loss, evaluate, fit

torch.set_num_threads(1)


def student_mlp(seed: int = 0, hidden: int = 64) -> nn.Module:
    """64-64-10: 4,810 parameters, 10.5x fewer than LeNet-300-100's 50,610."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def test_loss_is_hintons_formula():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 10, generator=g), 3 * torch.randn(8, 10, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    T, alpha = 3.0, 0.7
    p_s, p_t = F.softmax(s / T, 1), F.softmax(t / T, 1)
    kl = (p_t * (p_t.log() - p_s.log())).sum(1).mean()
    expected = alpha * T * T * kl + (1 - alpha) * F.cross_entropy(s, y)
    assert distill_loss(s, t, y, T=T, alpha=alpha).item() == pytest.approx(expected.item(), rel=1e-5)
    assert distill_loss(s, t, y, T=T, alpha=0.0).item() == pytest.approx(F.cross_entropy(s, y).item(), rel=1e-6)
    # The soft term's gradient is T * (p_s - p_t) / batch: Hinton's, scaled back by T^2.
    s.requires_grad_(True)
    distill_loss(s, t, y, T=T, alpha=1.0).backward()
    assert torch.allclose(s.grad, T * (p_s - p_t) / 8, atol=1e-6)


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="distillation temperature T must be > 0, got 0"):
        DistillConfig(T=0)
    with pytest.raises(ValueError, match="distillation temperature T must be > 0, got -2"):
        distill_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), T=-2)
    with pytest.raises(ValueError, match=r"distillation alpha must be in \[0, 1\], got 1.5"):
        DistillConfig(alpha=1.5)
    with pytest.raises(ValueError, match=r"distillation alpha must be in \[0, 1\], got -0.1"):
        DistillConfig(alpha=-0.1)
    train, _ = digits()
    five_classes = nn.Sequential(nn.Flatten(), nn.Linear(64, 5))
    with pytest.raises(ValueError, match=r"teacher output shape \(2, 5\) differs from the student's \(2, 10\)"):
        fit(student_mlp(), train, steps=1, teacher=five_classes, progress=False)
    with pytest.raises(ValueError, match="distill= needs a teacher= model"):
        fit(student_mlp(), train, steps=1, distill=DistillConfig(), progress=False)
    with pytest.raises(ValueError, match="hint layer 'nope' not found in the student"):
        fit(student_mlp(), train, steps=1, teacher=get_model("lenet300"),
            distill=DistillConfig(hints={"nope": "fc1"}), progress=False)


@pytest.fixture(scope="module")
def teacher_and_data():
    train, test = digits()
    torch.manual_seed(0)
    teacher = get_model("lenet300")
    fit(teacher, train, epochs=8, lr=3e-3, seed=0, progress=False)
    return teacher, train, test


def test_the_teacher_alone_can_teach_with_labels_scrambled(teacher_and_data):
    """alpha=1: the labels are not used. With them replaced by noise, a student that still
    learns digits can only have learned from the frozen, eval-mode teacher."""
    teacher, train, test = teacher_and_data
    x, _ = train.tensors
    noise = TensorDataset(x, torch.randint(0, 10, (len(x),), generator=torch.Generator().manual_seed(1)))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    modes = []
    hook = teacher.register_forward_hook(lambda m, a, out: modes.append(m.training))
    student = student_mlp()
    out = distill(student, DistillConfig(T=4, alpha=1.0), teacher=teacher, data=noise, epochs=6,
                  lr=3e-3, progress=False)
    assert out is student
    hook.remove()
    assert evaluate(teacher, test) > 0.9
    assert evaluate(student, test) > 0.85
    assert modes and not any(modes)  # the teacher always ran in eval mode
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # frozen


def test_hint_distillation_trains_a_projection(teacher_and_data):
    teacher, train, test = teacher_and_data
    student = student_mlp()
    # The student's 64-unit hidden layer is taught the teacher's 100-unit fc2 via a learned map.
    optimizer = torch.optim.Adam(student.parameters(), lr=3e-3)
    init = []
    grab = Callback()
    grab.on_train_begin = lambda model: init.append(optimizer.param_groups[1]["params"][0].detach().clone())
    history = fit(student, train, epochs=4, optimizer=optimizer, teacher=teacher, test=test,
                  distill=DistillConfig(hints={"2": "fc2"}, hint_weight=0.1), callbacks=[grab],
                  progress=False)
    projection = optimizer.param_groups[1]["params"]
    assert [tuple(p.shape) for p in projection] == [(100, 64), (100,)]
    assert not torch.equal(projection[0].detach(), init[0])  # trained with the student
    assert history["test_acc"] > 0.7


@pytest.mark.slow
def test_kd_beats_labels_alone_averaged_over_three_seeds():
    """The issue's bar: a ~10x smaller student (4,810 vs 50,610 parameters), 100 epochs each
    way, KD (T=4, alpha=0.9) vs labels alone; measured 97.78% vs 97.33% mean test accuracy."""
    train, test = digits()
    torch.manual_seed(0)
    teacher = get_model("lenet300")
    fit(teacher, train, epochs=60, seed=0, progress=False)
    kd, scratch = [], []
    for seed in range(3):
        s = student_mlp(seed)
        fit(s, train, epochs=100, lr=3e-3, seed=seed, progress=False)
        scratch.append(evaluate(s, test))
        s = student_mlp(seed)
        fit(s, train, epochs=100, lr=3e-3, seed=seed, teacher=teacher, distill=DistillConfig(T=4, alpha=0.9),
            progress=False)
        kd.append(evaluate(s, test))
    assert sum(kd) / 3 - sum(scratch) / 3 >= 0.002, (kd, scratch)


def test_all_options_of_the_one_loop_together(teacher_and_data):
    """The API's example: distillation + fp16 master weights + DSD in one fit call."""
    teacher, train, test = teacher_and_data
    final = {}
    for precision in ("fp32", "fp16-master"):
        student = student_mlp()
        history = fit(student, train, epochs=9, lr=3e-3, teacher=teacher, test=test,
                      distill=DistillConfig(T=4, alpha=0.9), precision=precision,
                      dsd=DSDConfig(sparsity=0.5), progress=False)
        assert [p["phase"] for p in history["phases"]] == ["dense", "sparse", "re-dense"]
        assert history["phases"][1]["sparsity"] == pytest.approx(0.5, abs=1e-3)
        assert all(p.dtype == torch.float32 for p in student.parameters())
        final[precision] = history["test_acc"]
    # Measured over data orders seed 0-5: 0.840-0.864 in both precisions, fp16-master within
    # 0.007 of fp32 at the end (0.02 in the earlier phases).
    assert final["fp16-master"] >= 0.82, final
    assert abs(final["fp16-master"] - final["fp32"]) <= 0.02, final
