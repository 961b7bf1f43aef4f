"""The one training loop; every method's fine-tuning goes through :func:`fit`.

Mixed precision, knowledge distillation and Dense-Sparse-Dense are options of that loop
(``precision=``, ``teacher=``/``distill=``, ``dsd=``), not loops of their own.
"""

from penjing.train.callbacks import Callback
from penjing.train.checkpoint import load_checkpoint
from penjing.train.distillation import DistillConfig, distill_loss
from penjing.train.dsd_schedule import DSDConfig
from penjing.train.loop import evaluate, fit, make_scheduler
from penjing.train.precision import PRECISIONS, MixedPrecision
from penjing.train.runs import distill, dsd

__all__ = ["PRECISIONS", "Callback", "DSDConfig", "DistillConfig", "MixedPrecision", "distill",
           "distill_loss", "dsd", "evaluate", "fit", "load_checkpoint", "make_scheduler"]
