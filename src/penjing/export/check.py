"""Run an exported ONNX file with ONNX Runtime and compare it with PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def session(path: str | Path, threads: int = 1):
    """An ONNX Runtime CPU session with all graph optimizations (QDQ fusion included)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def feeds(sess, args: tuple) -> dict[str, np.ndarray]:
    names = [i.name for i in sess.get_inputs()]
    if len(names) != len(args):
        raise ValueError(f"the ONNX graph takes {len(names)} inputs, got {len(args)}")
    return {n: a.detach().cpu().numpy() for n, a in zip(names, args, strict=True)}


def ort_outputs(path: str | Path, args: tuple, sess=None) -> list[np.ndarray]:
    sess = sess or session(path)
    return sess.run(None, feeds(sess, args))


def _flatten(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict) or hasattr(out, "values") and not isinstance(out, (list, tuple)):
        return [t for v in out.values() for t in _flatten(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _flatten(v)]
    return []


def max_rel_error(expected, got: list[np.ndarray]) -> float:
    """``max |got - expected| / max |expected|`` over all outputs (in order)."""
    ref = _flatten(expected)
    if len(ref) != len(got):
        raise ValueError(f"PyTorch gave {len(ref)} outputs, ONNX Runtime {len(got)}")
    worst = 0.0
    for r, g in zip(ref, got, strict=True):
        r = r.detach().double().cpu().numpy()
        if r.shape != g.shape:
            raise ValueError(f"output shapes differ: PyTorch {r.shape}, ONNX Runtime {g.shape}")
        denom = max(float(np.abs(r).max()), 1e-30)
        worst = max(worst, float(np.abs(g.astype(np.float64) - r).max()) / denom)
    return worst
