"""Knowledge distillation (Hinton et al. 2015) and hint/feature distillation (FitNets).

The student learns from the teacher's softened output distribution as well as from the
labels::

    loss = alpha * T^2 * KL(p_teacher^T || p_student^T) + (1 - alpha) * CE(z_student, y)

with ``p^T = softmax(z / T)``. The ``T^2`` keeps the soft term's gradient on the same scale as
the hard term's when T changes. The KL divergence is taken from the teacher's distribution
to the student's (``F.kl_div(log p_s, log p_t)``), the direction whose gradient is Hinton's
soft cross-entropy: ``(p_s - p_t) / T`` per logit.

Hints: ``hints={"fc1": "fc2"}`` adds ``hint_weight * MSE(proj(student.fc1), teacher.fc2)``
where ``proj`` is a learned linear map (a 1x1 convolution for feature maps) trained with the
student; it is dropped after training.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from penjing.core.batch import default_forward, logits_of, to_device


@dataclass(frozen=True)
class DistillConfig:
    """Distillation settings: temperature ``T`` (> 0), soft-loss weight ``alpha`` in [0, 1].

    ``hints`` maps student layer names to teacher layer names (or is a list of such pairs);
    ``hint_weight`` multiplies the summed hint losses.
    """

    T: float = 4.0
    alpha: float = 0.9
    hints: Mapping[str, str] | Sequence[tuple[str, str]] = field(default_factory=dict)
    hint_weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.T > 0:
            raise ValueError(f"distillation temperature T must be > 0, got {self.T}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"distillation alpha must be in [0, 1], got {self.alpha}")
        if not self.hint_weight >= 0:
            raise ValueError(f"hint_weight must be >= 0, got {self.hint_weight}")

    @property
    def hint_pairs(self) -> list[tuple[str, str]]:
        return list(self.hints.items()) if isinstance(self.hints, Mapping) else [tuple(p) for p in self.hints]


def check_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"teacher output shape {tuple(teacher_logits.shape)} differs from the student's "
            f"{tuple(student_logits.shape)}; teacher and student must predict the same classes"
        )


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                 target: torch.Tensor | None, T: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, target)``.

    Without a target (unlabelled data) only the soft term remains: ``alpha`` must then be 1."""
    DistillConfig(T=T, alpha=alpha)  # the same validation as the config
    check_logits(student_logits, teacher_logits)
    s, t = student_logits.float(), teacher_logits.float()
    soft = F.kl_div(F.log_softmax(s / T, dim=1), F.log_softmax(t / T, dim=1),
                    reduction="batchmean", log_target=True)
    if target is None:
        if alpha != 1.0:
            raise ValueError(f"the batch has no labels, so distillation can only use the teacher's "
                             f"soft targets: set DistillConfig(alpha=1.0) (got alpha={alpha})")
        return T * T * soft
    hard = F.cross_entropy(s, target)
    return alpha * T * T * soft + (1.0 - alpha) * hard


def _layer(model: nn.Module, name: str, role: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        names = [n for n in modules if n][:12]
        raise ValueError(f"hint layer {name!r} not found in the {role}; its layers include {names}")
    return modules[name]


def _projection(student: torch.Tensor, teacher: torch.Tensor, names: tuple[str, str]) -> nn.Module:
    if student.dim() == 4 and teacher.dim() == 4:
        if student.shape[2:] != teacher.shape[2:]:
            raise ValueError(f"hint {names[0]} -> {names[1]}: feature maps differ in size "
                             f"({tuple(student.shape[2:])} vs {tuple(teacher.shape[2:])})")
        return nn.Conv2d(student.shape[1], teacher.shape[1], kernel_size=1)
    return nn.Sequential(nn.Flatten(1), nn.Linear(student[0].numel(), teacher[0].numel()))


class Distiller:
    """The teacher side of :func:`~penjing.train.fit`: frozen teacher, hint hooks, the loss."""

    def __init__(self, teacher: nn.Module, config: DistillConfig, student: nn.Module,
                 example, device: torch.device, forward_fn=None):
        if not isinstance(teacher, nn.Module):
            raise TypeError(f"teacher must be an nn.Module, got {type(teacher).__name__}")
        self.teacher = teacher.to(device)
        self.forward_fn = forward_fn or default_forward
        self.config = config
        self._teacher_mode = teacher.training
        self.teacher.eval()
        self.pairs = config.hint_pairs
        self._student_feats: dict[str, torch.Tensor] = {}
        self._teacher_feats: dict[str, torch.Tensor] = {}
        self._hooked: int | None = None
        self._student_hooks: list = []
        self._teacher_hooks = [
            _layer(teacher, t, "teacher").register_forward_hook(self._keep(self._teacher_feats, t))
            for _, t in self.pairs
        ]
        self.projections = nn.ModuleList(self._probe(student, to_device(example, device))).to(device)

    @staticmethod
    def _keep(store: dict, name: str):
        def hook(module, args, output):
            store[name] = output
        return hook

    @torch.no_grad()
    def _probe(self, student: nn.Module, example: torch.Tensor) -> list[nn.Module]:
        """One forward of both models on a sample: check shapes early, size the projections."""
        was_training = student.training
        student.eval()
        feats: dict[str, torch.Tensor] = {}
        hooks = [_layer(student, s, "student").register_forward_hook(self._keep(feats, s))
                 for s, _ in self.pairs]
        try:
            check_logits(logits_of(self.forward_fn(student, example)),
                         logits_of(self.forward_fn(self.teacher, example)))
        finally:
            for h in hooks:
                h.remove()
            student.train(was_training)
        return [_projection(feats[s], self._teacher_feats[t], (s, t)) for s, t in self.pairs]

    def parameters(self) -> list[nn.Parameter]:
        """The learned hint projections (trained with the student)."""
        return list(self.projections.parameters())

    def attach(self, module: nn.Module) -> None:
        """Capture hint features from ``module``, the module that runs this step's forward."""
        if not self.pairs or self._hooked == id(module):
            return
        for h in self._student_hooks:
            h.remove()
        self._student_hooks = [
            _layer(module, s, "student").register_forward_hook(self._keep(self._student_feats, s))
            for s, _ in self.pairs
        ]
        self._hooked = id(module)

    def loss(self, logits: torch.Tensor, batch, y: torch.Tensor | None,
             autocast: contextlib.AbstractContextManager) -> torch.Tensor:
        """The distillation loss of one batch, given the student's ``logits`` on ``batch``."""
        with torch.no_grad(), autocast:
            teacher_logits = logits_of(self.forward_fn(self.teacher, batch))
        loss = distill_loss(logits, teacher_logits, y, self.config.T, self.config.alpha)
        for (s, t), proj in zip(self.pairs, self.projections, strict=True):
            student_feat = self._student_feats.pop(s).float()
            teacher_feat = self._teacher_feats.pop(t).float()
            loss = loss + self.config.hint_weight * F.mse_loss(proj(student_feat).flatten(1),
                                                               teacher_feat.flatten(1))
        return loss

    def state_dict(self) -> dict:
        return self.projections.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.projections.load_state_dict(state)

    def close(self) -> None:
        for h in self._student_hooks + self._teacher_hooks:
            h.remove()
        self.teacher.train(self._teacher_mode)
