"""The data-parallel training job that ``torchrun`` (or ``penjing train --nproc N``) runs.

    torchrun --nproc-per-node 2 --max-restarts 3 -m penjing.distributed.worker \\
        --model lenet300 --epochs 20 --checkpoint out/ddp.ckpt

Elastic restarts: when a worker dies, the launcher (torchrun or :mod:`penjing.distributed.launch`)
restarts every process of the job; each one finds the last checkpoint written by rank 0 and
resumes from it, so nothing that was checkpointed is lost. The log says which restart this
is and where it resumed. A configuration error (a missing --weights file, an unknown
scheduler...) or a diverging loss exits with code 2 and one line, which penjing's launcher
does not retry.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from penjing.train import Callback


class _FailOnce(Callback):
    """Fault injection for tests and drills: rank ``rank`` exits hard at ``step`` on the first
    attempt only (torchrun's restart counter is 0), like a machine that dies."""

    def __init__(self, step: int, rank: int):
        self.step, self.rank = step, rank

    def on_step_end(self, model, step, loss):
        from penjing.distributed.env import rank

        if (step == self.step and rank() == self.rank
                and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"):
            print(f"[rank {self.rank}] injected failure at step {step}", file=sys.stderr, flush=True)
            os._exit(17)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m penjing.distributed.worker",
                                description="DDP training of a model under torchrun or penjing's launcher.")
    p.add_argument("--model", default="lenet300", help="a reference model name or FILE.py:Class")
    p.add_argument("--weights", help="a state_dict (.safetensors, or .pt read with weights_only) to start from")
    p.add_argument("--data", default="digits")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps", type=int, help="train exactly this many optimizer steps instead of --epochs")
    p.add_argument("--batch-size", type=int, default=64, help="global batch (split over ranks)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--scheduler", default=None, help="cosine, linear or onecycle")
    p.add_argument("--device", default=None, help="cpu or cuda (each rank takes cuda:LOCAL_RANK)")
    p.add_argument("--eval-every", type=int, help="rank 0 evaluates on the test split every N steps")
    p.add_argument("--checkpoint", help="checkpoint file; resumed from when it exists")
    p.add_argument("--checkpoint-every", type=int, default=10, help="steps between checkpoints")
    p.add_argument("--resume", help="start the first attempt from this checkpoint (restarts use --checkpoint)")
    p.add_argument("--save", help="rank 0 writes the trained state_dict here (safetensors)")
    p.add_argument("--result", help="rank 0 writes final accuracy/steps here (JSON)")
    p.add_argument("--fail-at-step", type=int, help="drill: rank --fail-rank exits at this step, first attempt only")
    p.add_argument("--fail-rank", type=int, default=1)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the rendezvous")
    return p


def _device(spec: str | None) -> str | None:
    if spec is None or not spec.startswith("cuda") or ":" in spec:
        return spec
    return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except (ValueError, FileNotFoundError, TypeError, NotImplementedError, FloatingPointError) as exc:
        # FloatingPointError: the loss diverged (NaN/Inf); a restart from the last checkpoint
        # with the same learning rate diverges again
        from penjing.distributed.env import rank

        print(f"[rank {rank()}] error: {exc}", file=sys.stderr, flush=True)
        return 2  # the same on every attempt: the launcher does not retry it


def _main(argv: list[str] | None) -> int:
    from penjing.commands.train import fresh_model
    from penjing.data import get_data
    from penjing.distributed.data_parallel import fit_ddp
    from penjing.distributed.env import DistributedSetupError, init, is_main, rank
    from penjing.train import evaluate

    args = build_parser().parse_args(argv)
    try:
        init(timeout_s=args.timeout)
    except DistributedSetupError as exc:  # may be transient (a peer died): worth a restart
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    train, test = get_data(args.data)
    model = fresh_model(args.model, args.weights, train, args.seed)
    resume = args.checkpoint if args.checkpoint and Path(args.checkpoint).exists() else args.resume
    if is_main():
        where = f"resuming from {resume}" if resume else "starting fresh"
        print(f"[rank {rank()}] attempt {restart + 1}: {where}", flush=True)
    callbacks = [_FailOnce(args.fail_at_step, args.fail_rank)] if args.fail_at_step else []
    history = fit_ddp(model, train, epochs=args.epochs, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                      seed=args.seed, precision=args.precision, scheduler=args.scheduler,
                      device=_device(args.device), test=test if args.eval_every else None,
                      eval_every=args.eval_every, checkpoint=args.checkpoint,
                      checkpoint_every=args.checkpoint_every if args.checkpoint else None,
                      resume=resume, callbacks=callbacks, progress=False)
    if is_main():
        for step, acc in history.get("eval", []):
            print(f"[rank 0] step {step}: test accuracy {100 * acc:.2f}%", flush=True)
        accuracy = evaluate(model, test)
        summary = {"accuracy": accuracy, "steps": history.get("steps"), "restarts": restart,
                   "loss": history.get("loss", [])[-1:]}
        print(f"[rank 0] done: accuracy {100 * accuracy:.2f}%, steps {summary['steps']}", flush=True)
        if args.save:
            from penjing.commands.train import save_weights

            print(f"[rank 0] weights: {save_weights(model, args.save)}", flush=True)
        if args.result:
            Path(args.result).write_text(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
