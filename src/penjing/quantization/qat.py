"""Quantization-aware training: fake quantization inside the one training loop.

:func:`penjing.quantization` with ``mode="qat"`` leaves the quantizers tracking: weight scales
follow the weights (or are learned with LSQ) and activation ranges follow a moving average,
while the straight-through estimator carries gradients through the rounding. After
``freeze_after`` optimizer steps :class:`FreezeQuantization` (a :class:`penjing.train.Callback`)
stops the observers and puts BatchNorm layers that were not folded in eval mode, so the last
steps fine-tune against fixed grids and fixed statistics (Krishnamoorthi 2018, sec. 3.2).
"""

from __future__ import annotations

from torch import nn
from torch.utils.data import Dataset

from penjing.quantization.config import QuantConfig
from penjing.quantization.fake_quant import ActFakeQuant, WeightFakeQuant
from penjing.quantization.ptq import quantize
from penjing.train import Callback, fit

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def freeze(model: nn.Module, observers: bool = True, batchnorm: bool = True) -> None:
    """Stop range tracking (scales stay where they are) and/or BatchNorm statistics."""
    for m in model.modules():
        if observers and isinstance(m, WeightFakeQuant):
            m.observing = False
        if observers and isinstance(m, ActFakeQuant):
            m.observe = False
        if batchnorm and isinstance(m, _BN):
            m.eval()


class FreezeQuantization(Callback):
    """Freeze observers and BatchNorm statistics once ``after`` optimizer steps are done."""

    def __init__(self, after: int):
        if after < 0:
            raise ValueError(f"freeze step must be >= 0, got {after}")
        self.after = after
        self.frozen = False

    def on_train_begin(self, model: nn.Module) -> None:
        if self.after == 0:
            self._freeze(model)

    def on_epoch_begin(self, model: nn.Module, epoch: int) -> None:
        if self.frozen:  # fit() puts the model in train mode; keep BN statistics frozen
            freeze(model, observers=False)

    def on_step_end(self, model: nn.Module, step: int, loss: float) -> None:
        if not self.frozen and step >= self.after:
            self._freeze(model)

    def _freeze(self, model: nn.Module) -> None:
        freeze(model)
        self.frozen = True


def qat_fit(model: nn.Module, config: QuantConfig, train: Dataset, *, epochs: int | None = None,
            lr: float | None = None, calibration=None, batch_size: int = 64, seed: int | None = 0,
            progress: bool = True) -> nn.Module:
    """Prepare ``model`` for QAT, train it with :func:`penjing.fit`, freeze, return it.

    ``epochs`` / ``lr`` default to ``config.qat_epochs`` / ``config.lr``; ``calibration``
    defaults to ``train`` (it initialises the activation ranges). Without
    ``config.freeze_after`` the observers freeze after 80% of the steps.
    """
    if config.mode != "qat":
        raise ValueError(f"qat_fit() needs QuantConfig(mode='qat'), got mode={config.mode!r}")
    epochs = config.qat_epochs if epochs is None else epochs
    lr = config.lr if lr is None else lr
    quantize(model, config, data=calibration if calibration is not None else train, progress=progress)
    steps = epochs * -(-len(train) // batch_size)
    after = config.freeze_after if config.freeze_after is not None else int(0.8 * steps)
    fit(model, train, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
        callbacks=[FreezeQuantization(after)], progress=progress, desc="QAT")
    freeze(model)
    return model
