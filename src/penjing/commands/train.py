"""``penjing train``: train a model with the one training loop (mixed precision, checkpoints)."""

from __future__ import annotations

import argparse
from pathlib import Path

from torch import nn

from penjing.commands._common import add_model_args

EXAMPLES = """\
examples:
  penjing train                                        # LeNet-300-100 on digits from scratch, fp32
  penjing train --precision fp16-master                # FP16 forward/backward, FP32 master weights
  penjing train --precision bf16 --scheduler cosine --eval-every 100
  penjing train --epochs 60 --checkpoint out/train/run.ckpt --checkpoint-every 200
  penjing train --epochs 60 --checkpoint out/train/run.ckpt --resume out/train/run.ckpt   # continue
  penjing train --model my.py:MyNet --data mnist:~/data/mnist --out my.safetensors
"""


def add_training_args(p: argparse.ArgumentParser, epochs: int, lr: float) -> None:
    """The options every training command shares."""
    p.add_argument("--epochs", type=int, default=epochs, help=f"passes over the data (default: {epochs})")
    p.add_argument("--steps", type=int, help="train exactly this many optimizer steps instead of --epochs "
                   "(default: none: --epochs decides)")
    p.add_argument("--lr", type=float, default=lr, help=f"Adam learning rate (default: {lr:g})")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (default: 64)")
    p.add_argument("--precision", default="fp32",
                   help="fp32, fp16-master (FP16 copy + FP32 master weights + loss scaling), "
                   "fp16 or bf16 (torch.autocast) (default: fp32)")
    p.add_argument("--scheduler", default=None, help="LR schedule: cosine, linear or onecycle (default: none)")
    p.add_argument("--seed", type=int, default=0, help="seed for initialisation and data order (default: 0)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: where the model is)")


def training_kwargs(args: argparse.Namespace) -> dict:
    return dict(epochs=args.epochs, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                precision=args.precision, scheduler=args.scheduler, seed=args.seed, device=args.device,
                progress=not args.no_progress)


def fresh_model(spec: str, weights: str | None, train, seed: int) -> nn.Module:
    """A reference model (freshly initialised) or the user's ``FILE.py:Class``; ``weights`` loaded."""
    import torch

    from penjing.models import MODELS, get_model
    from penjing.models.user import load_user_model

    torch.manual_seed(seed)
    base = get_model(spec, train.tensors[0][:1]) if spec in MODELS else None
    return load_user_model(None if base is not None else spec, weights, base=base)


def save_weights(model: nn.Module, path: str | Path) -> Path:
    """The trained state_dict as safetensors, written atomically (loads with ``--weights``)."""
    from penjing.models.user import save_state_dict

    return save_state_dict(model.state_dict(), path)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model: mixed precision, LR schedules, checkpoints and resume",
        description="Train a model (reference models start from scratch; --weights continues from a "
        "state_dict) with penjing's training loop, and write the trained state_dict.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    add_training_args(p, epochs=30, lr=1e-3)
    p.add_argument("--eval-every", type=int, help="evaluate on the test split every N steps "
                   "(default: none: once, at the end)")
    p.add_argument("--checkpoint", help="checkpoint file, written atomically at --checkpoint-every and at the end")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default: none: only at the end)")
    p.add_argument("--resume", help="continue from this checkpoint (same seed/data: bit-identical result)")
    p.add_argument("--out", default="out/train/model.safetensors", help="where to write the trained state_dict")
    p.add_argument("--nproc", type=int, default=1,
                   help="data-parallel processes on this machine (DDP, gloo on CPU / NCCL on GPU), "
                        "restarted from --checkpoint when one dies; for many machines run torchrun "
                        "yourself with -m penjing.distributed.worker (see docs/distributed.md)")
    p.add_argument("--max-restarts", type=int, default=3,
                   help="with --nproc: restarts after a failed worker, resuming from --checkpoint")
    p.set_defaults(func=run)


SCHEDULERS = ("cosine", "linear", "onecycle", "constant")


def worker_argv(args: argparse.Namespace) -> list[str]:
    """Every ``penjing train`` option as ``penjing.distributed.worker`` flags; options that
    are wrong on every attempt are refused here, before any process starts."""
    for name in ("weights", "resume"):
        value = getattr(args, name)
        if value is not None and not Path(value).is_file():
            raise FileNotFoundError(f"--{name} {value} not found")
    if args.scheduler is not None and args.scheduler not in SCHEDULERS:
        raise ValueError(f"unknown --scheduler {args.scheduler!r}; use one of {', '.join(SCHEDULERS)}")
    if args.batch_size % args.nproc:
        raise ValueError(f"--batch-size {args.batch_size} (the global batch) must divide by --nproc {args.nproc}")
    if args.checkpoint_every is not None and args.checkpoint is None:
        raise ValueError("--checkpoint-every needs --checkpoint PATH (where to write)")
    if getattr(args, "input_shape", None) is not None:
        raise ValueError("--input-shape does not apply to penjing train: the data's inputs are used")
    argv = ["--model", args.model, "--data", args.data, "--epochs", str(args.epochs),
            "--batch-size", str(args.batch_size), "--lr", repr(args.lr), "--seed", str(args.seed),
            "--precision", args.precision, "--save", args.out]
    for flag, value in (("--weights", args.weights), ("--steps", args.steps), ("--resume", args.resume),
                        ("--scheduler", args.scheduler), ("--eval-every", args.eval_every),
                        ("--device", args.device), ("--checkpoint", args.checkpoint)):
        if value is not None:
            argv += [flag, str(value)]
    if args.checkpoint:
        argv += ["--checkpoint-every", str(args.checkpoint_every or 50)]
    return argv  # --no-progress: workers never draw progress bars


def run_distributed(args: argparse.Namespace) -> int:
    """Run ``penjing.distributed.worker`` in ``--nproc`` processes under penjing's launcher
    (fresh file rendezvous per attempt, restarts, no orphaned workers)."""
    import sys

    from penjing.distributed.launch import LaunchError, run

    argv = worker_argv(args)
    try:
        return run(argv, args.nproc, max_restarts=args.max_restarts,
                   log=lambda message: print(message, file=sys.stderr, flush=True))
    except LaunchError as exc:
        print(f"penjing train: error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    from penjing.data import get_data
    from penjing.train import fit

    if args.nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {args.nproc}")
    if args.nproc > 1:
        return run_distributed(args)
    train, test = get_data(args.data)
    model = fresh_model(args.model, args.weights, train, args.seed)
    history = fit(model, train, test=test, eval_every=args.eval_every, checkpoint=args.checkpoint,
                  checkpoint_every=args.checkpoint_every, resume=args.resume, desc=f"train {args.model}",
                  **training_kwargs(args))
    for step, acc in history.get("eval", []):
        print(f"step {step}: test accuracy {100 * acc:.2f}%")
    scale = f", final loss scale {history['loss_scale']:g}" if history["loss_scale"] is not None else ""
    print(f"{args.model} ({args.precision}): {history['steps']} steps, final train loss "
          f"{history['loss'][-1]:.4f}, test accuracy {100 * history['test_acc']:.2f}%, "
          f"{history['skipped_steps']} step(s) skipped on inf/NaN gradients{scale}")
    print(f"weights: {save_weights(model, args.out)}")
    if args.checkpoint:
        print(f"checkpoint: {args.checkpoint}")
    return 0
