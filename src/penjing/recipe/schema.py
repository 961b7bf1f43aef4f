"""The recipe format, validated on load with errors that name the step and the field.

```yaml
model: lenet300          # a reference model, or set by the caller
data: digits             # 'digits', 'mnist:PATH', 'cifar10:PATH'
steps:
  - prune: {sparsity: 0.92, schedule: iterative, rounds: 4, finetune_epochs: 3}
  - share: {bits: {Linear: 5, Conv2d: 8}, finetune_epochs: 3}
  - encode: {huffman: true}
```

Each step method ``X`` is the module ``penjing.recipe.steps.X``. A method step defines
``CONFIG`` (the method's config class, e.g. ``ShareConfig``) and ``run(model, config, step,
ctx)``: the step's fields are ``CONFIG``'s recipe fields plus the common fine-tune options of
:class:`StepOptions` (``finetune_epochs``, ``lr``) unless ``CONFIG`` declares them itself, so
a recipe step, the Python config and the CLI flags cannot drift. A step with no config class
of its own defines ``Params`` (a pydantic model, unknown fields refused) and ``run(model,
params, ctx)``.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

import penjing.recipe.steps as steps_pkg


class RecipeError(ValueError):
    """A recipe that cannot run; the message names the step and the field."""


def step_names() -> list[str]:
    """Every step method a recipe may use."""
    return sorted(m.name for m in pkgutil.iter_modules(steps_pkg.__path__) if not m.name.startswith("_"))


def step_module(method: str):
    if method not in step_names():
        raise RecipeError(f"unknown method {method!r}; available: {', '.join(step_names())}")
    return importlib.import_module(f"penjing.recipe.steps.{method}")


class Step(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    method: str
    params: Any
    #: the common options (fine-tuning) of a CONFIG step; None for Params steps
    options: Any = None


@dataclass(frozen=True)
class StepOptions:
    """What every method step may add to its config's fields: fine-tuning after the method."""

    finetune_epochs: int = 0
    lr: float = 1e-3

    def __post_init__(self) -> None:
        if isinstance(self.finetune_epochs, bool) or not isinstance(self.finetune_epochs, int) \
                or self.finetune_epochs < 0:
            raise ValueError(f"finetune_epochs must be an integer >= 0, got {self.finetune_epochs!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, int | float) or not self.lr > 0:
            raise ValueError(f"lr must be a number > 0, got {self.lr!r}")


def step_options(module) -> type[StepOptions]:
    """The step's options class: ``module.OPTIONS`` (a :class:`StepOptions` subclass with its
    own defaults or extra step fields, e.g. Winograd's example ``batch``) or the common one."""
    return getattr(module, "OPTIONS", StepOptions)


def step_fields(module) -> list[str]:
    """Every field a recipe step of ``module`` accepts."""
    if hasattr(module, "CONFIG"):
        own = [f.name for f in module.CONFIG.options() if f.metadata.get("recipe", True)]
        return own + [f.name for f in dataclasses.fields(step_options(module)) if f.name not in own]
    return list(module.Params.model_fields)


def _parse_config_step(module, fields: dict) -> tuple[Any, StepOptions]:
    own = {f.name for f in module.CONFIG.options()}
    common = {f.name for f in dataclasses.fields(step_options(module))} - own
    options = step_options(module)(**{k: fields[k] for k in common if k in fields})
    config = module.CONFIG.from_dict({k: v for k, v in fields.items() if k not in common})
    return config, options


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    model: str | None = None
    data: str = "digits"
    steps: list[Step]

    @classmethod
    def from_dict(cls, raw: Any, source: str = "recipe") -> Recipe:
        if not isinstance(raw, dict):
            raise RecipeError(f"{source}: a recipe is a mapping with 'steps' (and optional 'model', 'data')")
        unknown = set(raw) - {"model", "data", "steps"}
        if unknown:
            raise RecipeError(f"{source}: unknown top-level field(s) {sorted(unknown)}; allowed: model, data, steps")
        raw_steps = raw.get("steps")
        if not isinstance(raw_steps, list) or not raw_steps:
            raise RecipeError(f"{source}: 'steps' must be a non-empty list")
        steps = []
        for i, item in enumerate(raw_steps, 1):
            if not isinstance(item, dict) or len(item) != 1:
                raise RecipeError(f"{source}: step {i} must be one 'method: {{fields}}' mapping, got {item!r}")
            (method, fields), = item.items()
            module = step_module(method) if method in step_names() else None
            if module is None:
                raise RecipeError(
                    f"{source}: step {i}: unknown method {method!r}; available: {', '.join(step_names())}"
                )
            if not isinstance(fields or {}, dict):
                raise RecipeError(f"{source}: step {i} ({method}): fields must be a mapping, got {fields!r}")
            if hasattr(module, "CONFIG"):
                try:
                    config, options = _parse_config_step(module, dict(fields or {}))
                except (ValueError, TypeError) as exc:
                    raise RecipeError(f"{source}: step {i} ({method}): {exc}") from None
                steps.append(Step(method=method, params=config, options=options))
                continue
            try:
                params = module.Params.model_validate(fields or {})
            except ValidationError as exc:
                problems = "; ".join(
                    f"field '{'.'.join(map(str, e['loc'])) or '(step)'}': {e['msg']}" for e in exc.errors()
                )
                raise RecipeError(f"{source}: step {i} ({method}): {problems}") from None
            steps.append(Step(method=method, params=params))
        return cls(model=raw.get("model"), data=raw.get("data", "digits"), steps=steps)


class StepParams(BaseModel):
    """Base of every step's ``Params``: unknown fields are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a YAML recipe file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"recipe {path} not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML ({exc})") from None
    return Recipe.from_dict(raw, source=str(path))


def builtin_recipe(name: str) -> Path:
    """Path of a recipe shipped with penjing (``deep_compression``, ``iterative_pruning``...)."""
    path = Path(__file__).resolve().parent.parent / "recipes" / f"{name}.yaml"
    if not path.exists():
        shipped = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise FileNotFoundError(f"no built-in recipe {name!r}; shipped: {shipped}")
    return path
