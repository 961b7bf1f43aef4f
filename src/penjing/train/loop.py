"""The one training loop.

Masks, quantizers and other representations are parametrizations, so they are respected by
the plain forward/backward: a pruned weight's gradient is multiplied by its mask and it
stays zero. Everything else is an option of :func:`fit` or a :class:`Callback`: mixed
precision (``precision=``), distillation (``teacher=``, ``distill=``), DSD (``dsd=``), LR
schedules, evaluation, checkpoints and resume.

The loop is written so that data parallelism can hang off it without a second loop: the
device is explicit (``device=``), the module that runs forward can be wrapped (``wrap=``, e.g.
``DistributedDataParallel``), the sampler can be injected (``sampler=``, e.g.
``DistributedSampler``: its ``set_epoch`` is called every epoch), and only the main process
(``main_process=True``) shows progress, logs and writes checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from penjing.core.batch import (
    ForwardFn,
    LossFn,
    Metric,
    batch_size_of,
    batches,
    correct_count,
    default_forward,
    default_loss,
    first_batch,
    logits_of,
    run_forward,
    target_of,
    to_device,
)
from penjing.train.callbacks import Callback
from penjing.train.checkpoint import (
    check_model,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from penjing.train.data import start_epoch, train_loader
from penjing.train.distillation import DistillConfig, Distiller
from penjing.train.dsd_schedule import DSDConfig, DSDSchedule
from penjing.train.precision import FP16Master, MixedPrecision, make_strategy

SchedulerSpec = (str | torch.optim.lr_scheduler.LRScheduler
                 | Callable[[torch.optim.Optimizer, int], torch.optim.lr_scheduler.LRScheduler] | None)


def _half_inputs(batch: Any) -> Any:
    """fp16-master runs the model in half precision: floating inputs are cast to match."""
    if isinstance(batch, torch.Tensor):
        return batch.half() if batch.is_floating_point() else batch
    if isinstance(batch, dict):
        return {k: _half_inputs(v) for k, v in batch.items()}
    if isinstance(batch, tuple | list):
        return type(batch)(_half_inputs(v) if i == 0 else v for i, v in enumerate(batch))
    return batch


def _model_device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset | DataLoader | Iterable, batch_size: int = 512, *,
             metric: Metric | None = None, forward_fn: ForwardFn | None = None) -> float:
    """``metric`` of ``model`` on ``data`` (default: top-1 accuracy, a fraction in [0, 1]).

    ``data`` is any batches (see :mod:`penjing.core.batch`); ``metric(outputs, batches)`` gets
    every output and batch (on the CPU) when given. The model's train/eval mode is restored.
    """
    was_training = model.training
    model.eval()
    device = _model_device(model)
    # A private generator (inside batches()): iterating a DataLoader draws a seed from it, and
    # drawing from the global one would change the training run's random stream.
    correct = total = 0
    outputs: list = []
    seen: list = []
    try:
        for batch in batches(data, batch_size):
            output = run_forward(model, to_device(batch, device), forward_fn)
            if metric is not None:
                outputs.append(to_device(_detach(output), "cpu"))
                seen.append(batch)
                continue
            if target_of(batch) is None:
                raise ValueError("the data has no targets for the default accuracy metric: pass "
                                 "metric=f(outputs, batches)")
            c, n = correct_count(output, to_device(batch, device))
            correct, total = correct + c, total + n
    finally:
        model.train(was_training)
    if metric is not None:
        if not seen:
            raise ValueError("cannot evaluate on an empty data set")
        return float(metric(outputs, seen))
    if total == 0:
        raise ValueError("cannot evaluate on an empty data set")
    return correct / total


def _detach(output):
    if isinstance(output, torch.Tensor):
        return output.detach()
    if isinstance(output, tuple | list):
        return type(output)(_detach(o) for o in output)
    return output


def make_scheduler(spec: SchedulerSpec, optimizer: torch.optim.Optimizer, total_steps: int):
    """An LR scheduler stepped once per optimizer step.

    ``spec``: ``"cosine"`` (to 0 over the run), ``"linear"`` (linear decay), ``"onecycle"``
    (warm-up then anneal, peak = the optimizer's lr), an ``LRScheduler`` already built on
    ``optimizer``, or ``f(optimizer, total_steps) -> LRScheduler``.
    """
    sched = torch.optim.lr_scheduler
    if spec is None or spec == "constant":
        return None
    if isinstance(spec, sched.LRScheduler):
        if spec.optimizer is not optimizer:
            raise ValueError("the scheduler was built on another optimizer; pass the optimizer to fit "
                             "too, or pass a factory f(optimizer, total_steps)")
        return spec
    if isinstance(spec, str):
        if spec == "cosine":
            return sched.CosineAnnealingLR(optimizer, T_max=total_steps)
        if spec == "linear":
            return sched.LinearLR(optimizer, start_factor=1.0, end_factor=1.0 / total_steps,
                                  total_iters=total_steps)
        if spec == "onecycle":
            return sched.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
                                    total_steps=total_steps)
        raise ValueError(f"unknown scheduler {spec!r}; use 'cosine', 'linear', 'onecycle', 'constant', "
                         "an LRScheduler or a factory f(optimizer, total_steps)")
    if callable(spec):
        return spec(optimizer, total_steps)
    raise TypeError(f"scheduler must be a name, an LRScheduler or a factory, got {type(spec).__name__}")


def _example(train: Dataset | DataLoader | Iterable) -> Any:
    """A training batch, for checking the teacher against the student before training."""
    if isinstance(train, Dataset) and not isinstance(train, DataLoader):
        items = [train[i] for i in range(min(2, len(train)))]
        return torch.utils.data.default_collate(items)
    return first_batch(train)


class _Run:
    """One call of :func:`fit`: the state of the loop and the pieces it drives."""

    def __init__(self, model, train, *, epochs, steps, lr, batch_size, optimizer, weight_decay, seed,
                 callbacks, progress, desc, scheduler, test, eval_every, precision, teacher, distill,
                 dsd, checkpoint, checkpoint_every, resume, loss_fn, forward_fn, device, sampler,
                 wrap, main_process):
        self.model = model
        self.test = test
        self.eval_every = eval_every
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.checkpoint_every = checkpoint_every
        self.main = main_process
        self.batch_size = batch_size
        self.lr = lr
        self.wrap = wrap
        self.device = torch.device(device) if device is not None else _model_device(model)
        model.to(self.device)
        if seed is not None:
            torch.manual_seed(seed)
        saved = load_checkpoint(resume) if resume is not None else None
        if saved is not None and int(saved.get("batch_size", batch_size)) != batch_size:
            raise ValueError(f"checkpoint {resume} was trained with batch_size={saved['batch_size']}, "
                             f"this run uses {batch_size}; the data order would differ")
        # The shuffle seed: the run's seed, or (seed=None) one drawn now and kept in checkpoints.
        self.data_seed = (int(saved["data_seed"]) if saved is not None
                          else seed if seed is not None else int(torch.randint(0, 2**62, ()).item()))
        self.loader = train_loader(train, batch_size, self.data_seed, sampler)
        try:
            self.steps_per_epoch = len(self.loader)
        except TypeError:
            raise ValueError("fit needs data with a length (a Dataset, a DataLoader or a list of "
                             "batches), not a one-shot iterator") from None
        if self.steps_per_epoch == 0:
            raise ValueError("the training set is empty")
        self.total = steps if steps is not None else epochs * self.steps_per_epoch

        if distill is not None and teacher is None:
            raise ValueError("distill= needs a teacher= model")
        self.forward_fn = forward_fn or default_forward
        self.distiller = (Distiller(teacher, distill or DistillConfig(), model, _example(train),
                                    self.device, self.forward_fn) if teacher is not None else None)
        extra = self.distiller.parameters() if self.distiller else []
        if optimizer is None:
            optimizer = torch.optim.Adam([*model.parameters(), *extra], lr=lr, weight_decay=weight_decay)
        elif extra:
            optimizer.add_param_group({"params": extra})
        self.optimizer = optimizer
        self.scheduler = make_scheduler(scheduler, optimizer, max(self.total, 1))
        self.strategy = make_strategy(precision, self.device)
        self.loss_fn = loss_fn or default_loss
        self.log = tqdm.write if progress and main_process else (lambda message: None)

        self.history: dict[str, Any] = {"loss": []}
        self.user_callbacks: list = list(callbacks)
        self.dsd = (DSDSchedule(dsd, self.total, optimizer, self.scheduler, self._measure, self.log,
                                self.history) if dsd is not None else None)
        # DSD runs first, so that user callbacks see the phase that step ended in.
        self.callbacks = ([self.dsd] if self.dsd else []) + self.user_callbacks
        self.step = self.epoch = self.batch = 0
        self.sums = [0.0, 0, 0]  # loss * n, correct, n over the current epoch
        self.counted = 0  # samples with a class target this epoch (the accuracy's denominator)
        self._wrapped: tuple[int, nn.Module] | None = None
        if saved is not None:
            self._restore(resume, saved)
        self.bar = tqdm(total=self.total, initial=self.step, desc=desc,
                        disable=not (progress and main_process), leave=False)

    # -- checkpoints -------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "precision": self.strategy.state_dict(),
            "distill": self.distiller.state_dict() if self.distiller else None,
            "callbacks": [getattr(cb, "state_dict", dict)() for cb in self.user_callbacks],
            "dsd": self.dsd.state_dict() if self.dsd else None,
            "rng": rng_state(),
            "step": self.step, "epoch": self.epoch, "batch": self.batch, "sums": list(self.sums),
            "history": self.history, "data_seed": self.data_seed, "batch_size": self.batch_size,
        }

    def _restore(self, path, saved: dict[str, Any]) -> None:
        states = saved.get("callbacks", [])
        if len(states) != len(self.user_callbacks) and any(states):
            raise ValueError(f"checkpoint {path} was written with {len(states)} callback(s), this "
                             f"run has {len(self.user_callbacks)}; pass the same ones")
        for cb, state in zip(self.user_callbacks, states, strict=False):
            if state and hasattr(cb, "load_state_dict"):
                cb.load_state_dict(self.model, state)
        if (saved.get("dsd") is None) != (self.dsd is None):
            raise ValueError(f"checkpoint {path} was written by a run {'with' if saved.get('dsd') else 'without'} "
                             f"dsd=, this run is {'with' if self.dsd else 'without'}; pass the same dsd=")
        if self.dsd is not None:
            self.dsd.load_state_dict(self.model, saved["dsd"])
        check_model(path, saved["model"], self.model)
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.scheduler is not None and saved.get("scheduler") is not None:
            self.scheduler.load_state_dict(saved["scheduler"])
        self.strategy.load_state_dict(saved.get("precision") or {"mode": "fp32"})
        if self.distiller is not None and saved.get("distill") is not None:
            self.distiller.load_state_dict(saved["distill"])
        self.history.clear()
        self.history.update(saved["history"])
        self.step, self.epoch, self.batch = int(saved["step"]), int(saved["epoch"]), int(saved["batch"])
        self.sums = [float(saved["sums"][0]), int(saved["sums"][1]), int(saved["sums"][2])]
        set_rng_state(saved["rng"])

    def _save(self) -> None:
        if self.checkpoint is not None and self.main:
            save_checkpoint(self.checkpoint, self._state())

    # -- one step ----------------------------------------------------------------------
    def _forward_module(self) -> nn.Module:
        module = self.strategy.module(self.model)
        if self.distiller is not None:
            self.distiller.attach(module)
        if self.wrap is None:
            return module
        if self._wrapped is None or self._wrapped[0] != id(module):
            self._wrapped = (id(module), self.wrap(module))
        return self._wrapped[1]

    def _train_step(self, batch: Any) -> None:
        batch = to_device(batch, self.device)
        self.optimizer.zero_grad(set_to_none=True)
        forward = self._forward_module()
        inputs = _half_inputs(batch) if isinstance(self.strategy, FP16Master) else batch
        with self.strategy.autocast():
            output = self.forward_fn(forward, inputs)
            if self.distiller is not None:
                loss = self.distiller.loss(logits_of(output), batch, target_of(batch),
                                           self.strategy.autocast())
            else:
                loss = self.loss_fn(output, batch)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise TypeError(f"loss_fn must return a scalar tensor, got {type(loss).__name__}"
                            + (f" of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else ""))
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss became {loss.item()} at step {self.step + 1} (epoch {self.epoch}); lower the "
                f"learning rate ({self.lr}) or check the data for inf/NaN"
            )
        self.strategy.backward_and_step(loss, self.model, self.optimizer)
        self.strategy.after_step(self.model)
        if self.scheduler is not None:
            self.scheduler.step()
        value = loss.item()
        n = batch_size_of(batch)
        correct, counted = correct_count(output, batch)
        self.sums[0] += value * n
        self.sums[1] += correct
        self.sums[2] += n
        self.counted += counted
        self.step += 1
        self.batch += 1
        for cb in self.callbacks:
            cb.on_step_end(self.model, self.step, value)
        postfix = {"loss": f"{value:.4f}"}
        if self.counted:
            postfix["acc"] = f"{self.sums[1] / self.counted:.3f}"
        if self.history.get("eval"):
            postfix["test"] = f"{self.history['eval'][-1][1]:.3f}"
        if self.strategy.scale is not None:
            postfix["scale"] = f"{self.strategy.scale:g}"
        self.bar.update(1)
        self.bar.set_postfix(postfix, refresh=False)

    def _end_epoch(self) -> None:
        loss_sum, correct, count = self.sums
        self.history["loss"].append(loss_sum / max(count, 1))
        if self.counted:  # batches with class targets (a regression or user loss has none)
            self.history.setdefault("train_acc", []).append(correct / self.counted)
        for cb in self.callbacks:
            cb.on_epoch_end(self.model, self.epoch)
        self.epoch += 1
        self.batch = 0
        self.sums = [0.0, 0, 0]
        self.counted = 0

    def _measure(self, model: nn.Module) -> float | None:
        return evaluate(model, self.test) if self.test is not None else None

    # -- the loop ----------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        model = self.model
        model.train()
        for cb in self.callbacks:
            cb.on_train_begin(model)
        try:
            while self.step < self.total:
                if self.batch == 0:
                    for cb in self.callbacks:
                        cb.on_epoch_begin(model, self.epoch)
                discard = start_epoch(self.loader, self.epoch, self.batch)
                before = self.step
                for batch in self.loader:
                    if discard:  # a foreign sampler: drop the batches a resumed run already saw
                        discard -= 1
                        continue
                    self._train_step(batch)
                    if self.batch == self.steps_per_epoch:
                        self._end_epoch()
                    if self.test is not None and self.eval_every and self.step % self.eval_every == 0:
                        self.history.setdefault("eval", []).append([self.step, evaluate(model, self.test)])
                    if self.checkpoint_every and self.step % self.checkpoint_every == 0:
                        self._save()
                    if self.step >= self.total:
                        break
                if self.step == before:
                    raise ValueError("the training data yielded no batch")
                if self.batch and self.step < self.total:  # the loader ran short of len(loader)
                    self._end_epoch()
            if self.test is not None:
                self.history["test_acc"] = evaluate(model, self.test)
            self.history["steps"] = self.step
            self.history["skipped_steps"] = self.strategy.skipped
            self.history["loss_scale"] = self.strategy.scale
            for cb in self.callbacks:
                cb.on_train_end(model)
            self._save()
            if self.batch:  # a run that stopped mid-epoch (steps=): its last, partial epoch
                self.history["loss"].append(self.sums[0] / self.sums[2])
        finally:
            self.bar.close()
            if self.distiller is not None:
                self.distiller.close()
        model.eval()
        return self.history


#: caps every run's epochs: the docs' commands run under test in seconds (never set it for real work)
MAX_EPOCHS_ENV = "PENJING_MAX_EPOCHS"


def max_epochs_override(default: int) -> int:
    """``$PENJING_MAX_EPOCHS`` as an int >= 0 when set, else ``default``."""
    import os

    text = os.environ.get(MAX_EPOCHS_ENV)
    if text is None or text == "":
        return default
    if not text.isdigit():
        raise ValueError(f"{MAX_EPOCHS_ENV} must be an integer >= 0, got {text!r}")
    return int(text)


def fit(
    model: nn.Module,
    train: Dataset | DataLoader,
    *,
    epochs: int = 1,
    lr: float = 1e-3,
    batch_size: int = 64,
    optimizer: torch.optim.Optimizer | None = None,
    weight_decay: float = 0.0,
    seed: int | None = 0,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    desc: str = "train",
    steps: int | None = None,
    scheduler: SchedulerSpec = None,
    test: Dataset | DataLoader | None = None,
    eval_every: int | None = None,
    precision: str | MixedPrecision = "fp32",
    teacher: nn.Module | None = None,
    distill: DistillConfig | None = None,
    dsd: DSDConfig | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: str | Path | None = None,
    loss_fn: LossFn | None = None,
    forward_fn: ForwardFn | None = None,
    device: str | torch.device | None = None,
    sampler: Sampler | None = None,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
    main_process: bool = True,
) -> dict[str, Any]:
    """Train ``model`` on ``train`` (in place) and return the history.

    Length: ``epochs`` passes over the data, or exactly ``steps`` optimizer steps. Adam at
    ``lr`` unless ``optimizer`` is given; ``scheduler`` is stepped every optimizer step
    (see :func:`make_scheduler`). ``test``: evaluated every ``eval_every`` steps and at the
    end. ``precision``: ``"fp32"``, ``"fp16-master"``, ``"fp16"``, ``"bf16"`` or a
    :class:`MixedPrecision`. ``teacher`` (+ ``distill``): knowledge distillation. ``dsd``:
    Dense-Sparse-Dense phases over the run. ``checkpoint``: a file written atomically every
    ``checkpoint_every`` steps and at the end; ``resume``: continue from such a file (the
    same seed and data give bit-identical weights to an uninterrupted run). ``train`` is any
    batches (:mod:`penjing.core.batch`: tensors, tuples, dicts, HF BatchEncoding);
    ``forward_fn(model, batch)`` runs the model (default: ``model(input)`` / ``model(**dict)``)
    and ``loss_fn(output, batch)`` replaces cross-entropy (not used with a teacher). ``device``, ``sampler``, ``wrap`` and
    ``main_process`` are the hooks for distributed training.

    Returns a dict: ``loss`` and ``train_acc`` per epoch, ``eval`` ([step, accuracy] pairs),
    ``test_acc`` (final), ``steps``, ``skipped_steps`` and ``loss_scale`` (mixed precision),
    ``phases`` (DSD: accuracy and sparsity after each phase).
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    epochs = min(epochs, max_epochs_override(epochs))
    if steps is not None and steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    for name, value in (("eval_every", eval_every), ("checkpoint_every", checkpoint_every)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if checkpoint_every is not None and checkpoint is None:
        raise ValueError("checkpoint_every needs checkpoint=PATH (where to write)")
    if eval_every is not None and test is None:
        raise ValueError("eval_every needs test= data to evaluate on")
    return _Run(
        model, train, epochs=epochs, steps=steps, lr=lr, batch_size=batch_size, optimizer=optimizer,
        weight_decay=weight_decay, seed=seed, callbacks=callbacks, progress=progress, desc=desc,
        scheduler=scheduler, test=test, eval_every=eval_every, precision=precision, teacher=teacher,
        distill=distill, dsd=dsd, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
        resume=resume, loss_fn=loss_fn, forward_fn=forward_fn, device=device, sampler=sampler, wrap=wrap,
        main_process=main_process,
    ).run()
