"""The extension point of :func:`penjing.train.fit`.

Masks, quantizers, schedules and teachers plug in as callbacks (or as options that ``fit``
turns into callbacks, like DSD): there is no second training loop.
"""

from __future__ import annotations

from torch import nn


class Callback:
    """Override what you need. ``step`` counts optimizer steps from 1.

    A callback that keeps state across a resume returns it from :meth:`state_dict` (plain
    numbers, strings, lists, dicts, tensors: the checkpoint is read with
    ``weights_only=True``) and takes it back in :meth:`load_state_dict`, which runs *before*
    the model's weights are loaded (so it can rebuild structure, such as a mask, first).
    """

    def on_train_begin(self, model: nn.Module) -> None: ...
    def on_epoch_begin(self, model: nn.Module, epoch: int) -> None: ...
    def on_step_end(self, model: nn.Module, step: int, loss: float) -> None: ...
    def on_epoch_end(self, model: nn.Module, epoch: int) -> None: ...
    def on_train_end(self, model: nn.Module) -> None: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, model: nn.Module, state: dict) -> None: ...
