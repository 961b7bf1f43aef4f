"""Arguments and helpers shared by the sub-commands (model source, data, output)."""

from __future__ import annotations

import argparse
from pathlib import Path

from torch import nn

MODEL_HELP = ("a reference model (lenet300, lenet5, resnet), or FILE.py:Class for your own "
              "class (built with no arguments; add --weights for its state_dict)")


def add_model_args(parser: argparse.ArgumentParser, default: str | None = "lenet300") -> None:
    parser.add_argument("--model", default=default, help=MODEL_HELP + f" (default: {default})")
    parser.add_argument("--weights", help="a state_dict (.safetensors, or .pt read with weights_only) for --model; reference models "
                        "without --weights are trained once on --data and cached")
    parser.add_argument("--data", default="digits",
                        help="digits (bundled), mnist:PATH or cifar10:PATH (default: digits)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def load_model_and_data(args: argparse.Namespace) -> tuple[nn.Module, object, object]:
    """Build the model named by ``--model``/``--weights`` and load ``--data``."""
    from penjing.data import get_data
    from penjing.models import MODELS, get_model, pretrained
    from penjing.models.user import load_user_model

    train, test = get_data(args.data)
    if args.model in MODELS:
        if args.weights:
            model = load_user_model(None, args.weights, base=get_model(args.model, train.tensors[0][:1]))
        else:
            model = pretrained(args.model, train, progress=not args.no_progress)
    else:
        model = load_user_model(args.model, args.weights)
    return model, train, test


def out_dir(path: str) -> Path:
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    return p
