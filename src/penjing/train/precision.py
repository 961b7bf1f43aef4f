"""Mixed precision for :func:`penjing.train.fit`: the seed's explicit FP16/FP32 scheme and
PyTorch's native autocast.

``precision=`` picks one of:

- ``"fp32"``: plain float32 (the default).
- ``"fp16-master"``: the scheme of the lecture (Micikevicius et al. 2018). The user's model
  stays in float32 and *is* the master copy that the optimizer updates; a float16 copy of it
  runs forward and backward. The loss is multiplied by a dynamic loss scale so that small
  gradients do not flush to zero in float16; the float16 gradients are copied to the masters,
  unscaled in float32 and checked: on inf/NaN the step is skipped and the scale backs off,
  after ``growth_interval`` clean steps it grows. Updates accumulate in float32, so an update
  far smaller than float16's spacing (lr x small gradient) is not lost.
- ``"fp16"`` / ``"bf16"``: ``torch.autocast`` (ops run in half precision where PyTorch deems
  it safe, the weights stay float32) with ``torch.amp.GradScaler`` for float16; bfloat16 has
  float32's exponent range and needs no scaling.

Every strategy exposes the same four operations to the loop (``module``, ``autocast``,
``backward_and_step``, ``state_dict``), which is what keeps the loop itself precision-agnostic.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch
from torch import nn

PRECISIONS = ("fp32", "fp16-master", "fp16", "bf16")


@dataclass(frozen=True)
class MixedPrecision:
    """How :func:`~penjing.train.fit` handles precision (``precision=`` also takes the mode name).

    ``init_scale``, ``growth_factor``, ``backoff_factor`` and ``growth_interval`` drive the
    dynamic loss scale of ``fp16-master`` and ``fp16`` (the same meaning as in
    ``torch.amp.GradScaler``); ``bf16`` and ``fp32`` ignore them.
    """

    mode: str = "fp16-master"
    init_scale: float = 2.0**16
    growth_factor: float = 2.0
    backoff_factor: float = 0.5
    growth_interval: int = 2000

    def __post_init__(self) -> None:
        if self.mode not in PRECISIONS:
            raise ValueError(f"unknown precision {self.mode!r}; choose one of {', '.join(PRECISIONS)}")
        if not self.init_scale > 0:
            raise ValueError(f"init_scale must be > 0, got {self.init_scale}")
        if not self.growth_factor > 1:
            raise ValueError(f"growth_factor must be > 1, got {self.growth_factor}")
        if not 0 < self.backoff_factor < 1:
            raise ValueError(f"backoff_factor must be in (0, 1), got {self.backoff_factor}")
        if self.growth_interval < 1:
            raise ValueError(f"growth_interval must be >= 1, got {self.growth_interval}")


def as_precision(precision: str | MixedPrecision | None) -> MixedPrecision:
    """Normalise ``precision=`` (a mode name, a config or None for fp32)."""
    if precision is None:
        return MixedPrecision("fp32")
    if isinstance(precision, MixedPrecision):
        return precision
    if isinstance(precision, str):
        return MixedPrecision(precision)
    raise TypeError(f"precision must be a mode name or MixedPrecision, got {type(precision).__name__}")


class LossScaler:
    """Dynamic loss scale: back off on inf/NaN gradients, grow after N clean steps."""

    def __init__(self, config: MixedPrecision):
        self.scale = float(config.init_scale)
        self.growth_factor = config.growth_factor
        self.backoff_factor = config.backoff_factor
        self.growth_interval = config.growth_interval
        self.clean_steps = 0
        self.skipped = 0

    def update(self, found_inf: bool) -> None:
        if found_inf:
            self.scale *= self.backoff_factor
            self.clean_steps = 0
            self.skipped += 1
            return
        self.clean_steps += 1
        if self.clean_steps >= self.growth_interval:
            self.scale *= self.growth_factor
            self.clean_steps = 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "clean_steps": self.clean_steps, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state["scale"])
        self.clean_steps = int(state["clean_steps"])
        self.skipped = int(state["skipped"])


class Strategy:
    """FP32: forward the model itself, a plain backward and optimizer step."""

    mode = "fp32"

    def __init__(self, config: MixedPrecision, device: torch.device):
        self.config = config
        self.device = device

    @property
    def skipped(self) -> int:
        """Optimizer steps skipped because of inf/NaN gradients."""
        return 0

    @property
    def scale(self) -> float | None:
        return None

    def module(self, model: nn.Module) -> nn.Module:
        """The module that runs forward/backward for this step (the model, or its fp16 copy)."""
        return model

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def backward_and_step(self, loss: torch.Tensor, model: nn.Module,
                          optimizer: torch.optim.Optimizer) -> bool:
        """Backpropagate ``loss`` and update; False when the step was skipped."""
        loss.backward()
        optimizer.step()
        return True

    def after_step(self, model: nn.Module) -> None:
        """Called once per step after the update (the fp16 copy gives back its buffers)."""

    def state_dict(self) -> dict:
        return {"mode": self.mode}

    def load_state_dict(self, state: dict) -> None:
        if state.get("mode") != self.mode:
            raise ValueError(f"the checkpoint was trained with precision {state.get('mode')!r}, "
                             f"this run uses {self.mode!r}; resume with the same precision")


class NativeAMP(Strategy):
    """``torch.autocast`` (fp16 or bf16) with ``torch.amp.GradScaler`` for fp16."""

    def __init__(self, config: MixedPrecision, device: torch.device):
        super().__init__(config, device)
        self.mode = config.mode
        self.dtype = torch.float16 if config.mode == "fp16" else torch.bfloat16
        self.scaler = torch.amp.GradScaler(
            device.type, init_scale=config.init_scale, growth_factor=config.growth_factor,
            backoff_factor=config.backoff_factor, growth_interval=config.growth_interval,
            enabled=config.mode == "fp16",
        )
        self._skipped = 0

    @property
    def skipped(self) -> int:
        return self._skipped

    @property
    def scale(self) -> float | None:
        return self.scaler.get_scale() if self.scaler.is_enabled() else None

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward_and_step(self, loss, model, optimizer) -> bool:
        if not self.scaler.is_enabled():
            loss.backward()
            optimizer.step()
            return True
        before = self.scaler.get_scale()
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()
        # GradScaler only lowers its scale when it found inf/NaN and skipped optimizer.step().
        stepped = self.scaler.get_scale() >= before
        self._skipped += not stepped
        return stepped

    def state_dict(self) -> dict:
        return {"mode": self.mode, "scaler": self.scaler.state_dict(), "skipped": self._skipped}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self._skipped = int(state.get("skipped", 0))


class FP16Master(Strategy):
    """FP16 copy for forward/backward, FP32 master weights for accumulation and updates."""

    mode = "fp16-master"

    def __init__(self, config: MixedPrecision, device: torch.device):
        super().__init__(config, device)
        self.scaler = LossScaler(config)
        self._copy: nn.Module | None = None
        self._key: tuple | None = None

    @property
    def skipped(self) -> int:
        return self.scaler.skipped

    @property
    def scale(self) -> float | None:
        return self.scaler.scale

    @staticmethod
    def _structure(model: nn.Module) -> tuple:
        return (tuple((n, p.shape) for n, p in model.named_parameters()),
                tuple((n, b.shape) for n, b in model.named_buffers()))

    def module(self, model: nn.Module) -> nn.Module:
        key = self._structure(model)
        if key != self._key:
            # First step, or a callback changed the model (e.g. DSD attached a mask): rebuild
            # the fp16 copy. The optimizer keeps pointing at the fp32 masters, untouched.
            self._copy = copy.deepcopy(model).to(torch.float16)
            for p in self._copy.parameters():
                p.grad = None
            self._key = key
            self._params = list(zip(model.parameters(), self._copy.parameters(), strict=True))
            self._buffers = list(zip(model.buffers(), self._copy.buffers(), strict=True))
        with torch.no_grad():
            for master, half in self._params:
                half.copy_(master)
            for master, half in self._buffers:
                half.copy_(master)
        self._copy.train(model.training)
        return self._copy

    def backward_and_step(self, loss, model, optimizer) -> bool:
        (loss.float() * self.scaler.scale).backward()
        grads = []
        for master, half in self._params:
            if half.grad is None:
                master.grad = None
                continue
            # Unscale in float32: a gradient that is only representable *scaled* in fp16 stays
            # representable once it lives in the master's float32.
            master.grad = half.grad.float().div_(self.scaler.scale)
            half.grad = None
            grads.append(master.grad)
        found_inf = bool(grads) and not bool(torch.stack([g.isfinite().all() for g in grads]).all())
        self.scaler.update(found_inf)
        if found_inf:
            for master, _ in self._params:
                master.grad = None
            return False
        optimizer.step()
        return True

    def after_step(self, model: nn.Module) -> None:
        # Running statistics (BatchNorm) were updated in the fp16 copy: give them back.
        with torch.no_grad():
            for master, half in self._buffers:
                if master.is_floating_point():
                    master.copy_(half)

    def state_dict(self) -> dict:
        return {"mode": self.mode, **self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.scaler.load_state_dict(state)


def make_strategy(precision: str | MixedPrecision | None, device: torch.device) -> Strategy:
    """The strategy object for ``precision`` on ``device``."""
    config = as_precision(precision)
    if config.mode == "fp32":
        return Strategy(config, device)
    if config.mode == "fp16-master":
        return FP16Master(config, device)
    return NativeAMP(config, device)
