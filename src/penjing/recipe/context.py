"""What a recipe step gets besides the model: data, output folder, fine-tuning, reporting."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import TensorDataset

from penjing.core.report import DEFAULT_MAX_DROP, accuracy_drop_warning
from penjing.report.summary import Summary, summary


@dataclass
class RecipeContext:
    """``train`` fine-tunes; ``val`` (carved from the training data when not given) is what
    every choice a step makes is measured on (sensitivity scans, tolerances); ``test`` is only
    for the figures the report shows."""

    train: TensorDataset
    test: TensorDataset
    out_dir: Path
    progress: bool = True
    seed: int = 0
    summaries: list[Summary] = field(default_factory=list)
    #: Free-form results steps leave for the report (e.g. sensitivity curves, file paths).
    artifacts: dict[str, Any] = field(default_factory=dict)
    #: Set by an encoding step: bytes of the written compressed file.
    file_bytes: int | None = None
    echo: bool = True
    val: TensorDataset | None = None
    #: fraction of the training data held out as ``val`` when none is given
    val_fraction: float = 0.1
    #: accuracy points a step may lose before its table and the report warn (None: no check)
    max_drop: float | None = DEFAULT_MAX_DROP
    #: the warnings so far (also under their step's table), for the report's head
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.val is None:
            from penjing.data import validation_split

            self.train, self.val = validation_split(self.train, self.val_fraction, self.seed)

    def finetune(self, model: nn.Module, epochs: int, lr: float = 1e-3, desc: str = "fine-tune") -> None:
        """Fine-tune with the one training loop (parametrizations stay in force)."""
        if epochs <= 0:
            return
        from penjing.train import fit

        fit(model, self.train, epochs=epochs, lr=lr, seed=self.seed, progress=self.progress, desc=desc)

    def record(self, model: nn.Module, title: str) -> Summary:
        """Measure ``model`` after a step, keep the table and print it."""
        result = summary(model, self.test, title=title, file_bytes=self.file_bytes,
                         original=self.artifacts.get("dense_model"))
        if self.summaries:  # a step: did it lose more than the tolerance?
            warning = accuracy_drop_warning(title, self.summaries[-1].accuracy, result.accuracy,
                                            self.max_drop)
            if warning:
                result.warnings.append(warning)
                self.warnings.append(warning)
        from penjing.hw.energy import energy_column  # energy per inference, 45 nm model

        column = energy_column(model, self.test, [r.name for r in result.rows])
        if column is not None:  # None: the model could not be traced; the table stays as it was
            result.extra_columns["energy"] = column
        self.summaries.append(result)
        if self.echo:
            from rich.console import Console

            console = Console()
            console.print(result.rich_table())  # table and totals, fitted to the terminal
        return result
