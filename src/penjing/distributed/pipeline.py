"""Pipeline model parallelism with ``torch.distributed.pipelining``.

The model is split into stages at named modules (each split point starts a new stage), one
stage per rank; a batch is cut into micro-batches that flow through the stages with a GPipe
schedule (all forwards, then all backwards) or 1F1B (one forward, one backward, alternating,
which bounds the activations held per stage).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.pipelining import Schedule1F1B, ScheduleGPipe, SplitPoint, pipeline

from penjing.distributed.env import rank, world_size

SCHEDULES = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}


class PipelineRunner:
    """This rank's stage of ``model`` split before each module named in ``split_before``.

    ``example`` is one micro-batch of inputs (used to trace the model once). Call
    :meth:`step` on every rank with the full batch (inputs matter on the first stage, targets
    on the last); it runs forward and backward for all micro-batches, leaving the gradients on
    this stage's parameters, and returns the micro-batch losses on the last stage.
    """

    def __init__(self, model: nn.Module, split_before: Sequence[str], example: torch.Tensor,
                 microbatches: int, *, schedule: str = "gpipe",
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 device: torch.device | str = "cpu"):
        if not dist.is_initialized():
            raise RuntimeError("pipeline parallelism needs a process group: call penjing.distributed.init()")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {schedule!r}")
        names = dict(model.named_modules())
        unknown = [n for n in split_before if n not in names]
        if unknown:
            raise ValueError(f"split points {unknown} are not modules of the model; modules are {sorted(names)[:12]}...")
        if len(split_before) + 1 != world_size():
            raise ValueError(f"{len(split_before)} split points make {len(split_before) + 1} stages, "
                             f"but the world has {world_size()} ranks (one stage per rank)")
        self.microbatches = microbatches
        pipe = pipeline(model, mb_args=(example,),
                        split_spec={name: SplitPoint.BEGINNING for name in split_before})
        self.stage = pipe.build_stage(rank(), torch.device(device))
        self.is_first, self.is_last = rank() == 0, rank() == world_size() - 1
        self.schedule = SCHEDULES[schedule](self.stage, microbatches, loss_fn=loss_fn or nn.CrossEntropyLoss())

    @property
    def module(self) -> nn.Module:
        """This rank's part of the model (its parameters get the gradients)."""
        return self.stage.submod

    def step(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        if len(x) % self.microbatches:
            raise ValueError(f"batch of {len(x)} does not split into {self.microbatches} micro-batches")
        losses: list[torch.Tensor] = []
        if self.is_first and self.is_last:
            self.schedule.step(x, target=y, losses=losses)
        elif self.is_first:
            self.schedule.step(x)
        elif self.is_last:
            self.schedule.step(target=y, losses=losses)
        else:
            self.schedule.step()
        return losses
