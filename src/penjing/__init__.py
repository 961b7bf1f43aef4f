"""penjing: make deep learning models small, fast and cheap.

One verb and one config per method, model in, model out (changed in place)::

    import penjing as pj
    pj.prune(model, pj.PruneConfig(sparsity=0.9))
    pj.fit(model, train, epochs=3)
    print(pj.summary(model, test))

Method packages are nouns (``penjing.pruning``, ``penjing.sharing``, ``penjing.quantization``,
``penjing.low_rank``, ``penjing.lowbit``, ``penjing.winograd_conv``) and the verbs bound here
are functions (``pj.prune``, ``pj.share``...), so no verb shadows an importable package:
``import penjing.sharing.kmeans`` works next to ``pj.share(...)``.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

from penjing import data, export, models  # noqa: E402  (export: a callable module, pj.export(...))
from penjing.core.config import apply  # noqa: E402
from penjing.core.params import bake  # noqa: E402
from penjing.core.report import Report, last_report  # noqa: E402
from penjing.core.select import select, swap  # noqa: E402
from penjing.recipe import load_recipe, run_recipe  # noqa: E402
from penjing.report.summary import summary  # noqa: E402
from penjing.train import evaluate, fit  # noqa: E402

# method package -> the public names it provides
_METHODS = {
    "penjing.pruning": ["prune", "PruneConfig", "sensitivity_scan"],
    "penjing.sharing": ["share", "ShareConfig"],
    "penjing.codec": ["save", "load"],
    "penjing.quantization": ["quantize", "QuantConfig", "convert"],
    "penjing.low_rank": ["lowrank", "LowRankConfig"],
    "penjing.lowbit": ["binarize", "BinaryConfig", "ternarize", "TernaryConfig"],
    "penjing.winograd_conv": ["winograd", "WinogradConfig"],
    "penjing.hw": ["simulate", "energy"],
    "penjing.train": ["DistillConfig", "DSDConfig", "MixedPrecision", "distill", "dsd"],
}

for _module_name, _names in _METHODS.items():
    _module = importlib.import_module(_module_name)
    for _name in _names:
        globals()[_name] = getattr(_module, _name)

__all__ = ["Report", "apply", "bake", "data", "evaluate", "export", "fit", "last_report", "load_recipe",
           "models", "run_recipe", "select", "summary", "swap", *(n for names in _METHODS.values() for n in names)]
