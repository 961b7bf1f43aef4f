"""One-call front doors to :func:`~penjing.train.fit` for distillation and DSD.

They have the verbs' shape: model in, model out (trained in place), the run recorded as the
model's :class:`~penjing.core.report.Report` (``pj.last_report(model).extra["history"]``
holds ``fit``'s history).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from penjing.core.report import Report, record
from penjing.train.distillation import DistillConfig
from penjing.train.dsd_schedule import DSDConfig
from penjing.train.loop import fit


def _finish(model: nn.Module, verb: str, history: dict[str, Any]) -> nn.Module:
    report = Report(verb, extra={"history": history})
    if history.get("test_acc") is not None:
        report.note(f"test accuracy after training: {100 * history['test_acc']:.2f}%")
    for phase in history.get("phases", []):
        report.note(f"DSD phase {phase}")
    record(model, report)
    return model


def distill(student: nn.Module, config: DistillConfig | None = None, *, teacher: nn.Module,
            data: Any, **fit_kwargs: Any) -> nn.Module:
    """Train ``student`` on ``data`` to match ``teacher`` (frozen) and the labels; returns the
    student. ``fit_kwargs`` go to :func:`~penjing.train.fit` (epochs, lr, test, ...)."""
    history = fit(student, data, teacher=teacher, distill=config or DistillConfig(), **fit_kwargs)
    return _finish(student, "distill", history)


def dsd(model: nn.Module, config: DSDConfig | None = None, *, data: Any,
        **fit_kwargs: Any) -> nn.Module:
    """Dense-Sparse-Dense training of ``model`` on ``data`` over ``fit``'s budget
    (``epochs``/``steps``); returns the model.

    ``pj.last_report(model).extra["history"]["phases"]`` holds the test accuracy (pass
    ``test=``) and the weight sparsity after each phase.
    """
    history = fit(model, data, dsd=config or DSDConfig(), **fit_kwargs)
    return _finish(model, "dsd", history)
