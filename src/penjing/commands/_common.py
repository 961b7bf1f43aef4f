"""Arguments and helpers shared by the sub-commands (model source, data, output)."""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from penjing.core.config import MethodConfig, option
from penjing.core.report import DEFAULT_MAX_DROP, accuracy_drop_warning

MODEL_HELP = ("a reference model (lenet300, lenet5, resnet), or FILE.py:Class for your own "
              "class (built with no arguments; add --weights for its state_dict)")


#: --model of the commands that read a file's weights (no --weights flag of their own)
FILE_MODEL_HELP = ("the architecture the file's weights load into: a reference model (lenet300, "
                   "lenet5, resnet), or FILE.py:Class for your own class (built with no arguments)")


DATA_HELP = ("digits (bundled), mnist:PATH, cifar10:PATH, imagefolder:PATH (PATH/<class>/<image>, "
             "resized to --input-shape) or tensors:FILE (.safetensors/.pt with x and y, or "
             "train_x/train_y/test_x/test_y)")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "int64": torch.int64, "int32": torch.int32}


def input_shape(text: str) -> tuple[int, ...]:
    """``3,224,224`` -> ``(3, 224, 224)``: one sample's shape, without the batch dimension."""
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input-shape takes comma-separated sizes such as "
                                         f"3,224,224 (no batch dimension), got {text!r}") from None
    if not shape or any(v < 1 for v in shape):
        raise argparse.ArgumentTypeError(f"--input-shape sizes must be >= 1, got {text!r}")
    return shape


def add_model_args(parser: argparse.ArgumentParser, default: str | None = "lenet300") -> None:
    parser.add_argument("--model", default=default, help=MODEL_HELP + f" (default: {default})")
    parser.add_argument("--weights", help="a state_dict (.safetensors or .pt) for --model; reference "
                        "models without --weights are trained once on --data and cached")
    parser.add_argument("--data", default="digits", help=DATA_HELP + " (default: digits)")
    parser.add_argument("--input-shape", type=input_shape, default=None, metavar="C,H,W",
                        help="one input's shape without the batch dimension (e.g. 3,224,224, or "
                        "128 for token ids); default: the data's")
    parser.add_argument("--input-dtype", choices=sorted(DTYPES), default="float32",
                        help="dtype of the example input (int64 for token ids; default: float32)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def example_input(args: argparse.Namespace, train, batch: int = 1) -> torch.Tensor:
    """An example batch for tracing: random of ``--input-shape``, else the data's first inputs."""
    if getattr(args, "input_shape", None):
        dtype = DTYPES[args.input_dtype]
        g = torch.Generator().manual_seed(0)
        if dtype.is_floating_point:
            return torch.rand((batch, *args.input_shape), generator=g).to(dtype)
        return torch.randint(0, 2, (batch, *args.input_shape), generator=g, dtype=dtype)
    return train.tensors[0][:batch]


def check_input_fits(model: nn.Module, args: argparse.Namespace, train) -> None:
    """Run the model once on one data sample: a model/data mismatch is one clear error."""
    x = train.tensors[0][:1]
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            try:
                model(x)
            finally:
                model.train(was)
    except Exception as exc:  # any failure of the user's forward on this data
        raise ValueError(f"the model does not run on --data {args.data} (inputs of shape "
                         f"{tuple(x.shape[1:])}): {type(exc).__name__}: {' '.join(str(exc).split())}; "
                         "give matching --data (e.g. imagefolder:PATH or tensors:FILE)") from None


def load_model_and_data(args: argparse.Namespace) -> tuple[nn.Module, object, object]:
    """Build the model named by ``--model``/``--weights`` and load ``--data``."""
    from penjing.data import get_data
    from penjing.models import MODELS, get_model, pretrained
    from penjing.models.user import load_user_model

    shape = getattr(args, "input_shape", None)
    size = tuple(shape[-2:]) if shape and len(shape) >= 3 else (224, 224)
    train, test = get_data(args.data, image_size=size)
    if args.model in MODELS:
        if args.weights:
            model = load_user_model(None, args.weights, base=get_model(args.model, train.tensors[0][:1]))
        else:
            announce_baseline(args.model, train, getattr(args, "command", None) or "penjing")
            model = pretrained(args.model, train, progress=not args.no_progress)
    else:
        model = load_user_model(args.model, args.weights)
        if not args.weights:
            warnings.warn(f"--model {args.model} has no --weights: it runs with its random initial "
                          "weights, so accuracies are near chance", UserWarning, stacklevel=2)
        check_input_fits(model, args, train)
    return model, train, test


def training_seconds(model: nn.Module, train, epochs: int, batch_size: int = 64) -> float:
    """Seconds ``fit`` will take for ``epochs`` over ``train``, measured on this machine: a
    copy of ``model`` runs the real loop for 1 and for 4 steps; the difference is the cost of
    3 steps, the 1-step run the fixed cost."""
    import copy
    import math
    import time

    from penjing.train import fit

    def timed(steps: int) -> float:
        start = time.perf_counter()
        fit(copy.deepcopy(model), train, steps=steps, batch_size=batch_size, progress=False)
        return time.perf_counter() - start

    one = timed(1)
    per_step = max(timed(4) - one, 0.0) / 3
    return one + per_step * math.ceil(len(train) / batch_size) * epochs


def duration(seconds: float) -> str:
    """``"about 40 s"``, ``"about 8 min"``."""
    return f"about {seconds:.0f} s" if seconds < 90 else f"about {seconds / 60:.0f} min"


def announce_baseline(name: str, train, command: str) -> bool:
    """Say (on stderr, before it starts) that reference model ``name`` is about to be trained
    as the baseline, for how many epochs and how long; ``False`` when it is cached already."""
    from penjing.models import get_model
    from penjing.models.registry import BASELINE_EPOCHS, baseline_path

    path = baseline_path(name, train)
    if path.exists():
        return False
    from penjing.train.loop import max_epochs_override

    epochs = BASELINE_EPOCHS.get(name, 30)
    epochs = min(epochs, max_epochs_override(epochs))
    estimate = training_seconds(get_model(name, train.tensors[0][:1]), train, epochs)
    print(f"penjing {command}: no trained {name} baseline for this data yet: training it first "
          f"({epochs} epochs on {len(train):,} samples, {duration(estimate)} on this machine, "
          f"measured); cached in {path.parent} for later runs (give --weights to use your own)",
          file=sys.stderr, flush=True)
    return True


@dataclass
class AccuracyTolerance(MethodConfig):
    """How much accuracy a command's step may lose before it warns."""

    max_drop: float = option(DEFAULT_MAX_DROP, "warn loudly (table, report, closing line) when "
                             "a step loses more than this many accuracy points")

    def __post_init__(self) -> None:
        if isinstance(self.max_drop, bool) or not isinstance(self.max_drop, int | float) \
                or not 0 <= self.max_drop < float("inf"):
            raise ValueError(f"--max-drop (accuracy points) must be a number >= 0, got {self.max_drop!r}")


def add_tolerance_args(parser: argparse.ArgumentParser) -> None:
    """``--max-drop``, generated from :class:`AccuracyTolerance` like the method flags."""
    from penjing.core.cli_config import add_config_flags

    add_config_flags(parser, AccuracyTolerance, title="accuracy tolerance")


def max_drop(args: argparse.Namespace) -> float:
    """The validated ``--max-drop`` of the parsed flags."""
    from penjing.core.cli_config import config_from_args

    return config_from_args(AccuracyTolerance, args).max_drop


def check_accuracy(args: argparse.Namespace, step: str, before: float, after: float,
                   table=None) -> str | None:
    """The loud warning when ``step`` lost more than ``--max-drop`` points: printed to
    stderr and, when given, under ``table`` (a :class:`~penjing.report.summary.Summary`)."""
    warning = accuracy_drop_warning(step, before, after, max_drop(args))
    if warning:
        print(f"penjing {args.command}: {warning}", file=sys.stderr, flush=True)
        if table is not None:
            table.warnings.append(warning)
    return warning


def out_dir(path: str) -> Path:
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    return p
