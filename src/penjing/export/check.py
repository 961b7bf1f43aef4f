"""Run an exported ONNX file with ONNX Runtime and compare it with PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def weights_only_dequantized(path: str | Path) -> bool:
    """Whether the graph dequantizes int8 weights but quantizes no activation (weight-only int8,
    the convs of a dynamic-int8 model): nothing for ONNX Runtime's QDQ fusion to fuse."""
    import onnx

    kinds = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
    return "DequantizeLinear" in kinds and "QuantizeLinear" not in kinds


def session(path: str | Path, threads: int = 1):
    """An ONNX Runtime CPU session with all graph optimizations (QDQ fusion included).

    A weight-only graph gets ``session.disable_quant_qdq=1``: ONNX Runtime otherwise keeps each
    ``DequantizeLinear`` of a weight (for a fusion that needs quantized activations) and runs the
    conv / matmul on a weight computed per call, which it cannot pre-pack (a SmallResNet with
    weight-only int8 convs: 14.2 ms instead of 0.46 ms); with the option the dequantized weights
    are folded into constants once, when the session is created."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if weights_only_dequantized(path):
        options.add_session_config_entry("session.disable_quant_qdq", "1")
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
