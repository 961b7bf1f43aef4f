"""``penjing distill``: train a small student from a teacher (knowledge distillation)."""

from __future__ import annotations

import argparse

from torch import nn

from penjing.commands.train import add_training_args, fresh_model, save_weights, training_kwargs

EXAMPLES = """\
examples:
  penjing distill                               # LeNet-300-100 teacher -> 64-64-10 MLP student (10x fewer params)
  penjing distill --baseline                    # also train the student on labels alone, and compare
  penjing distill --T 2 --alpha 0.5 --student mlp:32
  penjing distill --teacher resnet --student lenet5 --hint fc1=fc
  penjing distill --teacher my.py:Big --teacher-weights big.pt --student my.py:Small
"""


def _hint(text: str) -> tuple[str, str]:
    student, sep, teacher = text.partition("=")
    if not sep or not student or not teacher:
        raise argparse.ArgumentTypeError(f"--hint takes STUDENT_LAYER=TEACHER_LAYER, got {text!r}")
    return student, teacher


def student_model(spec: str, weights: str | None, train, seed: int) -> nn.Module:
    """``mlp:H1[,H2...]`` (an MLP on the flattened input), a reference model or ``FILE.py:Class``;
    ``weights`` (a state_dict) loaded into it, for every kind of student."""
    if not spec.startswith("mlp:"):
        return fresh_model(spec, weights, train, seed)
    import torch

    try:
        hidden = [int(h) for h in spec[4:].split(",")]
    except ValueError:
        raise ValueError(f"student {spec!r}: write mlp:H1[,H2...] with integer widths") from None
    torch.manual_seed(seed)
    sizes = [train.tensors[0][0].numel(), *hidden, int(train.tensors[1].max()) + 1]
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(sizes, sizes[1:], strict=False)):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
    from penjing.models.user import load_user_model

    return load_user_model(None, weights, base=nn.Sequential(*layers))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "distill", help="knowledge distillation: a small student learns from a teacher's soft targets",
        description="Train --student with loss = alpha*T^2*KL(teacher||student at temperature T) + "
        "(1-alpha)*CE(labels), the teacher frozen in eval mode; optional hint (feature) losses "
        "between named layers through a learned projection.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--teacher", default="lenet300",
                   help="a reference model (trained once and cached) or FILE.py:Class (default: lenet300)")
    p.add_argument("--teacher-weights", help="state_dict for a FILE.py:Class teacher")
    p.add_argument("--student", default="mlp:64",
                   help="mlp:H1[,H2...], a reference model (from scratch) or FILE.py:Class (default: mlp:64)")
    p.add_argument("--weights", help="state_dict to start the student from")
    p.add_argument("--data", default="digits", help="digits (bundled), mnist:PATH or cifar10:PATH")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_training_args(p, epochs=100, lr=3e-3)
    p.add_argument("--T", type=float, default=4.0, help="temperature (default: 4)")
    p.add_argument("--alpha", type=float, default=0.9, help="weight of the soft loss, in [0, 1] (default: 0.9)")
    p.add_argument("--hint", type=_hint, action="append", default=[],
                   help="STUDENT_LAYER=TEACHER_LAYER feature loss (repeatable)")
    p.add_argument("--hint-weight", type=float, default=1.0, help="weight of the hint losses (default: 1)")
    p.add_argument("--baseline", action="store_true", help="also train the student on labels alone and compare")
    p.add_argument("--out", default="out/distill/student.safetensors", help="where to write the student's state_dict")
    p.set_defaults(func=run)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def run(args: argparse.Namespace) -> int:
    from penjing.commands._common import announce_baseline
    from penjing.core.report import dense_fp32_bytes, ratio_text
    from penjing.data import get_data
    from penjing.models import MODELS, pretrained
    from penjing.train import DistillConfig, evaluate, fit

    config = DistillConfig(T=args.T, alpha=args.alpha, hints=dict(args.hint), hint_weight=args.hint_weight)
    train, test = get_data(args.data)
    if args.teacher in MODELS and not args.teacher_weights:
        announce_baseline(args.teacher, train, "distill")
        teacher = pretrained(args.teacher, train, progress=not args.no_progress)
    else:
        teacher = fresh_model(args.teacher, args.teacher_weights, train, args.seed)
    student = student_model(args.student, args.weights, train, args.seed)
    t_params, s_params = _params(teacher), _params(student)
    print(f"teacher {args.teacher}: {t_params:,} params, test accuracy {100 * evaluate(teacher, test):.2f}%; "
          f"student {args.student}: {s_params:,} params "
          f"({ratio_text(dense_fp32_bytes(teacher), dense_fp32_bytes(student))} smaller as float32)")
    history = fit(student, train, test=test, teacher=teacher, distill=config, desc="distill",
                  **training_kwargs(args))
    print(f"student with KD (T={args.T:g}, alpha={args.alpha:g}): {100 * history['test_acc']:.2f}%")
    if args.baseline:
        scratch = student_model(args.student, args.weights, train, args.seed)
        fit(scratch, train, desc="labels alone", **training_kwargs(args))
        base = evaluate(scratch, test)
        print(f"student on labels alone: {100 * base:.2f}% (KD {100 * (history['test_acc'] - base):+.2f} points)")
    print(f"weights: {save_weights(student, args.out)}")
    return 0
