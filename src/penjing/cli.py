"""The ``penjing`` command. Thin: parse, call the public API, print.

Each sub-command lives in ``penjing/commands/<name>.py`` and defines ``register(subparsers)``;
they are found automatically.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import penjing.commands as commands_pkg

DESCRIPTION = """\
penjing makes deep learning models small, fast and cheap.

Start with the main job on the bundled default (LeNet-300-100 on scikit-learn's digits):
  penjing compress
Then try a method on its own, e.g.
  penjing compress --model lenet5 --recipe iterative_pruning
Every sub-command has its own --help with examples.
"""


#: what a user's input can cause (bad flag values, missing or corrupt files, a model that does
#: not fit its weights, a lookup that finds nothing); anything else is a bug and keeps its traceback
USER_ERRORS = (ValueError, FileNotFoundError, IsADirectoryError, PermissionError, TypeError,
               NotImplementedError, LookupError, FloatingPointError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="penjing", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands_pkg.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"penjing.commands.{info.name}").register(sub)
    for command in sub.choices.values():
        show_defaults(command)
    return parser


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """End every option's help with its default where the command did not say it itself, so
    ``penjing COMMAND --help`` shows every default (switches: ``off``; no value: ``none``)."""
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS \
                or isinstance(action, argparse._HelpAction | argparse._VersionAction):
            continue
        if "default" in (action.help or "").lower():
            continue
        if isinstance(action, argparse._StoreTrueAction | argparse._StoreConstAction) \
                and not isinstance(action, argparse._StoreFalseAction):
            shown = "off"
        elif action.default is None or action.default == []:
            shown = "none"
        else:
            shown = "%(default)s"
        action.help = f"{action.help} (default: {shown})" if action.help else f"(default: {shown})"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        # Errors a user can act on: one line with the message, no traceback, exit code 2
        # (argparse's code for a usage error).
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"penjing {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
