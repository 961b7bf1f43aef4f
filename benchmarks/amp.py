"""Mixed precision vs fp32 in the one training loop: step time, peak memory, accuracy.

    python benchmarks/amp.py                      # CPU: 784-300-100-10 MLP, batch 256 + digits accuracy
    python benchmarks/amp.py --model big --device cuda --no-accuracy   # the GPU run (1024-4096-4096-1000)

Every figure is measured in this run and reported as a ratio to fp32 measured in the same run.
Step time: median wall time of a training step of ``penjing.train.fit`` (after warm-up).
Peak memory on CPU: the peak of live tensor bytes during one full training step (model,
fp16 copy, gradients, optimizer state, activations, temporaries), counted by a
``TorchDispatchMode`` that sees every tensor an op creates and a weakref on its storage that
sees it freed; on CUDA: ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import weakref

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.data import TensorDataset

from penjing.data import digits
from penjing.models import get_model
from penjing.train import Callback, evaluate, fit

MODES = ("fp32", "fp16-master", "fp16", "bf16")
SIZES = {"small": (784, 300, 100, 10), "big": (1024, 4096, 4096, 1000)}


def mlp(sizes: tuple[int, ...]) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(sizes, sizes[1:], strict=False)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class LiveBytes(TorchDispatchMode):
    """Peak bytes of live tensor storage while active (CPU tensors included)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._refs: dict[int, weakref.ref] = {}

    def add(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or key in self._refs:
            return

        def freed(_, key=key, size=size):
            self._refs.pop(key, None)
            self.live -= size

        self._refs[key] = weakref.ref(storage, freed)
        self.live += size
        self.peak = max(self.peak, self.live)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # A view (or an in-place op) returns the storage of an input: no new memory. Inputs
        # created before tracking (the data set a batch is sliced from) are not counted either.
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.add(t)
        return out


class StepTimes(Callback):
    def __init__(self, device: torch.device):
        self.device = device
        self.times: list[float] = []

    def on_train_begin(self, model):
        self._sync()
        self.last = time.perf_counter()

    def on_step_end(self, model, step, loss):
        self._sync()
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.last = now

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def peak_memory(sizes, data, mode: str, batch: int, device: torch.device) -> int:
    """Peak bytes over one training step from a fresh model (optimizer state created inside)."""
    torch.manual_seed(0)
    model = mlp(sizes).to(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        fit(model, data, steps=1, batch_size=batch, precision=mode, progress=False, device=device)
        return torch.cuda.max_memory_allocated()
    tracker = LiveBytes()
    for t in [*model.parameters(), *model.buffers()]:
        tracker.add(t)
    with tracker:
        fit(model, data, steps=1, batch_size=batch, precision=mode, progress=False, device=device)
    return tracker.peak


def saved_activations(sizes, data, mode: str, batch: int, device: torch.device) -> int:
    """Bytes autograd saves for backward in one step (what mixed precision halves)."""
    torch.manual_seed(0)
    model = mlp(sizes).to(device)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:  # weights are counted as model memory, not here
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fit(model, data, steps=1, batch_size=batch, precision=mode, progress=False, device=device)
    return sum(seen.values())


def step_time(sizes, data, mode: str, batch: int, steps: int, device: torch.device) -> float:
    torch.manual_seed(0)
    model = mlp(sizes).to(device)
    timer = StepTimes(device)
    fit(model, data, steps=steps, batch_size=batch, precision=mode, progress=False, device=device,
        callbacks=[timer])
    return statistics.median(timer.times[2:])  # the first steps build the fp16 copy, warm caches


def accuracy(mode: str, epochs: int) -> float:
    train, test = digits()
    torch.manual_seed(0)
    model = get_model("lenet300")
    fit(model, train, epochs=epochs, lr=1e-3, seed=0, precision=mode, progress=False)
    return evaluate(model, test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(SIZES), default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=12, help="timed training steps per mode")
    parser.add_argument("--epochs", type=int, default=60, help="digits training epochs for accuracy")
    parser.add_argument("--no-accuracy", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sizes = SIZES[args.model]
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.rand(args.batch * args.steps, sizes[0], generator=g),
                         torch.randint(0, sizes[-1], (args.batch * args.steps,), generator=g))
    print(f"# {'-'.join(map(str, sizes))} MLP, batch {args.batch}, Adam, {device} "
          f"({platform.processor() or platform.machine()}), torch {torch.__version__}, "
          f"{args.threads} thread(s)\n")
    rows = {}
    for mode in MODES:
        rows[mode] = (step_time(sizes, data, mode, args.batch, args.steps, device),
                      peak_memory(sizes, data, mode, args.batch, device),
                      saved_activations(sizes, data, mode, args.batch, device))
    base_t, base_m, base_a = rows["fp32"]
    print("| precision | step time (ms) | vs fp32 | peak memory (MiB) | vs fp32 "
          "| saved activations (MiB) | vs fp32 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for mode, (t, m, a) in rows.items():
        print(f"| {mode} | {1e3 * t:.2f} | {t / base_t:.2f}x | {m / 2**20:.2f} | {m / base_m:.2f}x "
              f"| {a / 2**20:.2f} | {a / base_a:.2f}x |")
    if args.no_accuracy:
        return
    print(f"\n# LeNet-300-100 on digits, {args.epochs} epochs, Adam lr 1e-3, seed 0: test accuracy\n")
    print("| precision | test accuracy | vs fp32 (points) |")
    print("|---|---:|---:|")
    accs = {mode: accuracy(mode, args.epochs) for mode in MODES}
    for mode, acc in accs.items():
        print(f"| {mode} | {100 * acc:.2f}% | {100 * (acc - accs['fp32']):+.2f} |")


if __name__ == "__main__":
    main()
