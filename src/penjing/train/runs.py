"""One-call front doors to :func:`~penjing.train.fit` for distillation and DSD."""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.utils.data import DataLoader, Dataset

from penjing.train.distillation import DistillConfig
from penjing.train.dsd_schedule import DSDConfig
from penjing.train.loop import fit


def distill(student: nn.Module, teacher: nn.Module, train: Dataset | DataLoader,
            config: DistillConfig | None = None, **fit_kwargs: Any) -> dict[str, Any]:
    """Train ``student`` to match ``teacher`` (frozen) and the labels; ``fit``'s history."""
    return fit(student, train, teacher=teacher, distill=config or DistillConfig(), **fit_kwargs)


def dsd(model: nn.Module, train: Dataset | DataLoader, config: DSDConfig | None = None,
        **fit_kwargs: Any) -> dict[str, Any]:
    """Dense-Sparse-Dense training of ``model`` over ``fit``'s budget (``epochs``/``steps``).

    ``history["phases"]`` holds the test accuracy (pass ``test=``) and the weight sparsity
    after each phase.
    """
    return fit(model, train, dsd=config or DSDConfig(), **fit_kwargs)
