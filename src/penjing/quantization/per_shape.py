"""int8 convs of the graph packed once per input shape they run at.

On a VNNI CPU the x86 quantized engine runs a conv with at most 100 groups on oneDNN
(``should_use_onednn_quant`` in PyTorch), and its packed weight caches *one* oneDNN primitive:
the one built for the first input it sees (shape, threads, scales are its key). Every call at
another batch size misses that cache and builds the primitive again, call after call. Measured
here (torch 2.14.1, 1 thread, resnet18 at 224x224): a model first called at batch 4, then timed
at batch 1, is 7-8% slower than one first called at batch 1; a single 64-channel 3x3 conv at
batch 32 is 4% slower (benchmarks/results/quantize.md). ``torch.ao`` modules keep that one
cache; these subclasses keep one packed weight per input shape (a few at most), so each shape
hits its own.
"""

from __future__ import annotations

import warnings

import torch
import torch.ao.nn.intrinsic.quantized as nniq
import torch.ao.nn.quantized as nnq

from penjing.quantization.cpu import has_vnni

#: the x86 engine's rule: convs with more groups run on fbgemm, which caches no primitive
ONEDNN_MAX_GROUPS = 100
#: input shapes a conv keeps a packed weight for (each holds a copy of the int8 weight)
MAX_SHAPES = 4


def onednn_runs(groups: int) -> bool:
    """Does the x86 engine run a conv with ``groups`` groups on oneDNN on this CPU?"""
    return has_vnni() and groups <= ONEDNN_MAX_GROUPS and torch.backends.quantized.engine == "x86"


class _PerShape:
    """The forward of a torch.ao quantized conv with one packed weight per input shape."""

    _op = torch.ops.quantized.conv2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packs = self.__dict__.setdefault("_pj_packs", {})  # not copied: a copy packs afresh
        key = (tuple(x.shape), torch.get_num_threads())
        packed = packs.get(key)
        if packed is None:
            packed = self._packed_params if not packs else self._repack()  # the first shape: its own
            if len(packs) >= MAX_SHAPES:
                packs.pop(next(iter(packs)))
            packs[key] = packed
        return self._op(x, packed, self.scale, self.zero_point)

    def _repack(self):
        old = torch.backends.quantized.engine
        torch.backends.quantized.engine = "x86"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                return torch.ops.quantized.conv2d_prepack(self.weight(), self.bias(), list(self.stride),
                                                          list(self.padding), list(self.dilation), self.groups)
        finally:
            torch.backends.quantized.engine = old


class PerShapeConv2d(_PerShape, nnq.Conv2d):
    """``torch.ao.nn.quantized.Conv2d`` packed once per input shape (see the module docstring)."""

    def _get_name(self) -> str:
        return "PerShapeConv2d"


class PerShapeConvReLU2d(_PerShape, nniq.ConvReLU2d):
    """``torch.ao.nn.intrinsic.quantized.ConvReLU2d`` packed once per input shape."""

    _op = torch.ops.quantized.conv2d_relu

    def _get_name(self) -> str:
        return "PerShapeConvReLU2d"
