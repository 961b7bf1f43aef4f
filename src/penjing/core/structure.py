"""The structure record: penjing's structural rewrites of a model, as data, replayed on load.

Splitting attention, channel pruning, low-rank factorisation, Winograd, int8 conversion...
change a model's modules, so its state_dict no longer loads into a freshly built instance of
the user's class. Each such rewrite is a *step*: a JSON-able dict ``{"kind": ..., "modules":
[{"name": ..., <the facts needed to redo it>}, ...]}``. ``pj.save`` stores the model's steps
in the ``.pjz`` (:mod:`penjing.codec.file`, as data: no code, no pickle) and
``pj.load(path, FreshModel())`` replays them, in the order they were applied, on the fresh
model before filling its weights strictly.

Two ways a kind produces its steps (methods register them here; core imports no method):

* *noted*: the method calls :func:`note` right after it rewrote the model (the facts of that
  moment: a pruned layer's shapes before and after, a factorisation's rank). The steps are
  kept on the model (and on any ``deepcopy`` of it) in order, so chains replay correctly
  (prune then factorise, factorise then prune).
* *derived*: ``record(model)`` reads them off the finished model at save time (int8
  conversion, whose modules describe themselves); derived steps come after the noted ones.

``replay(model, step, state)`` redoes one step on ``model`` in place; ``state`` maps the
file's tensor names to tensors (read, never consumed: the whole state is loaded strictly
afterwards). A step that does not fit the model raises :class:`StructureMismatch` naming the
module.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import nn

#: version of the record's JSON layout
FORMAT = 1
#: fields of a module entry that hold module names (prefixed when a step was noted on a
#: submodule and the whole model is saved)
NAME_FIELDS = ("name", "bn")
_LOG = "_penjing_rewrites"
_SEQ = itertools.count()

Replay = Callable[[nn.Module, dict, Mapping], None]
Record = Callable[[nn.Module], list[dict]]


class StructureMismatch(ValueError):
    """A step of the file's structure record does not fit the given model (``module``: the
    name of the module that differs)."""

    def __init__(self, message: str, module: str):
        super().__init__(message)
        self.module = module


@dataclass(frozen=True)
class Rewrite:
    """A registered kind: how to redo a step, and (derived kinds) how to read steps off a model."""

    kind: str
    replay: Replay
    record: Record | None = None


_REGISTRY: dict[str, Rewrite] = {}


def register_rewrite(kind: str, replay: Replay, record: Record | None = None) -> None:
    """Register a structural rewrite ``kind`` (a method does this when it is imported).

    ``replay(model, step, state)`` redoes ``step`` on ``model``; ``record(model)``, for a
    derived kind, returns its steps for the model as it is now (``[]`` when there are none).
    """
    if not kind or not isinstance(kind, str):
        raise ValueError(f"a rewrite kind is a non-empty string, got {kind!r}")
    _REGISTRY[kind] = Rewrite(kind, replay, record)


def kinds() -> tuple[str, ...]:
    """The registered kinds."""
    return tuple(_REGISTRY)


def note(model: nn.Module, kind: str, modules: list[dict], **facts) -> None:
    """Record that ``kind`` just rewrote ``modules`` of ``model`` (names relative to ``model``);
    the facts must be JSON-able. Nothing is noted for an empty ``modules``."""
    if kind not in _REGISTRY:
        raise ValueError(f"unknown rewrite kind {kind!r}; registered: {', '.join(_REGISTRY)}")
    if not modules:
        return
    step = {"kind": kind, "modules": [dict(m) for m in modules], **facts}
    json.dumps(step)  # fails here, where the rewrite is, rather than at save time
    model.__dict__.setdefault(_LOG, []).append((next(_SEQ), step))


def forget(model: nn.Module, kind: str, names: set[str]) -> None:
    """Drop the module entries of ``kind`` naming ``names`` (a rewrite that was undone)."""
    kept = []
    for seq, step in model.__dict__.get(_LOG, []):
        if step["kind"] == kind:
            step = {**step, "modules": [m for m in step["modules"] if m["name"] not in names]}
            if not step["modules"]:
                continue
        kept.append((seq, step))
    model.__dict__[_LOG] = kept


def _prefixed(step: dict, prefix: str) -> dict:
    if not prefix:
        return step
    modules = [{k: (prefix + v if k in NAME_FIELDS and isinstance(v, str) else v) for k, v in m.items()}
               for m in step["modules"]]
    return {**step, "modules": modules}


def record(model: nn.Module) -> list[dict]:
    """Every step of ``model``, in the order it was applied: the noted steps of the model and
    of its submodules (names made relative to ``model``), then each derived kind's."""
    noted = []
    for name, module in model.named_modules():
        for seq, step in module.__dict__.get(_LOG, []):
            noted.append((seq, _prefixed(step, f"{name}." if name else "")))
    steps = [step for _, step in sorted(noted, key=lambda pair: pair[0])]
    for rewrite in _REGISTRY.values():
        if rewrite.record is not None:
            steps += rewrite.record(model)
    return steps


def check_steps(steps: object) -> str | None:
    """Why ``steps`` (read from a file) is not a well-formed record, or ``None``."""
    if not isinstance(steps, list):
        return "the steps are not a list"
    for i, step in enumerate(steps):
        if not isinstance(step, dict) or not isinstance(step.get("kind"), str):
            return f"step {i} has no kind"
        if step["kind"] not in _REGISTRY:
            return (f"step {i} is of kind {step['kind']!r}, which this penjing does not know "
                    f"(it knows {', '.join(_REGISTRY)})")
        modules = step.get("modules")
        if not isinstance(modules, list) or not all(isinstance(m, dict) and isinstance(m.get("name"), str)
                                                    for m in modules):
            return f"step {i} ({step['kind']}) does not list its modules by name"
    return None


def module_at(model: nn.Module, name: str, kind: str, where: str = "the file") -> nn.Module:
    """``model.get_submodule(name)``, or a :class:`StructureMismatch` naming the module."""
    try:
        return model.get_submodule(name) if name else model
    except AttributeError:
        raise StructureMismatch(f"{where}'s structure record ({kind} step) names module {name!r}, which "
                                f"{type(model).__name__} does not have: is it the same architecture?",
                                name) from None


def mismatch(name: str, kind: str, what: str, where: str = "the file") -> StructureMismatch:
    """The error for a module that exists but differs from what a step expects."""
    return StructureMismatch(f"{where} does not fit the model: module {name!r} {what} ({kind} step "
                             "of the structure record)", name)


def replay(model: nn.Module, steps: list[dict], state: Mapping, where: str = "the file") -> None:
    """Redo ``steps`` on ``model``, in order, in place; noted kinds are noted on ``model``
    again, so that saving it after more compression keeps the whole history."""
    problem = check_steps(steps)
    if problem is not None:
        raise ValueError(f"{where}: bad structure record: {problem}")
    for step in steps:
        rewrite = _REGISTRY[step["kind"]]
        try:
            rewrite.replay(model, step, state)
        except StructureMismatch as exc:
            if where != "the file":
                exc.args = (str(exc).replace("the file", where, 1),)
            raise
        except ValueError as exc:
            if str(exc).startswith("bad structure record"):  # a replay's check of a field's value
                raise ValueError(f"{where}: {exc}") from None
            raise
        except (KeyError, TypeError, IndexError, RuntimeError) as exc:  # a field missing or of the wrong type
            raise ValueError(f"{where}: bad structure record: a {step['kind']} step is malformed "
                             f"({type(exc).__name__}: {exc})") from None
        if rewrite.record is None:
            model.__dict__.setdefault(_LOG, []).append((next(_SEQ), step))


# ---------------------------------------------------------------------------- whole-model formats

@dataclass(frozen=True)
class WholeFormat:
    """A model whose state_dict cannot be stored as is (the int8 graph: packed ``torch.ao``
    weights and an fx graph) is written whole by its method: ``state_of(model)`` gives every
    tensor the file holds, with its own record under ``key`` (``None``: not this format), and
    ``load(state, model, path)`` rebuilds it on a fresh model from that state."""

    key: str
    state_of: Callable[[nn.Module], dict | None]
    load: Callable[[dict, nn.Module, str], nn.Module]


_FORMATS: dict[str, WholeFormat] = {}


def register_format(key: str, state_of: Callable[[nn.Module], dict | None],
                    load: Callable[[dict, nn.Module, str], nn.Module]) -> None:
    """Register a whole-model format (see :class:`WholeFormat`)."""
    _FORMATS[key] = WholeFormat(key, state_of, load)


def whole_state(model: nn.Module) -> dict | None:
    """The tensors of ``model`` in the whole-model format that claims it, or ``None``."""
    for fmt in _FORMATS.values():
        state = fmt.state_of(model)
        if state is not None:
            return state
    return None


def whole_format(state: Mapping) -> WholeFormat | None:
    """The whole-model format of a loaded file's ``state`` (by its record key), or ``None``."""
    return next((fmt for key, fmt in _FORMATS.items() if key in state), None)
