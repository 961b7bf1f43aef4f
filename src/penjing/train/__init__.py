"""The one training loop; every method's fine-tuning goes through :func:`fit`."""

from penjing.train.loop import Callback, evaluate, fit

__all__ = ["Callback", "evaluate", "fit"]
