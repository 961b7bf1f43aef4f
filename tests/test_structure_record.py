"""Every compressed model goes out and comes back (issue 22): each structural rewrite, alone and
chained, on LeNet-300-100, SmallResNet and a user model with attention, saved with ``pj.save``
and loaded by ``pj.load(path, FreshModel())`` in a *new process*, computes what the compressed
model computed in memory.

One child process loads every file (a process per cell would cost seconds each); the parent
compresses, saves the reference outputs and compares. Cells where a rewrite does not apply
(Winograd on a model without a 2-D conv, attention split on a model without attention) assert
that the verb changed nothing and the file carries no record of it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

import penjing as pj
from penjing.codec import inspect
from penjing.core.attention import split_attention

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
from attention_net import AttentionNet  # noqa: E402

MODELS = {"lenet300": lambda: pj.models.LeNet300(), "resnet": lambda: pj.models.SmallResNet(),
          "attention": lambda: AttentionNet()}


def build(model_name: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return MODELS[model_name]().eval()


def _inputs(n: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------- the rewrites

def channel(m, x):
    pj.prune(m, sparsity=0.5, granularity="channel", example_inputs=x, progress=False)


def lowrank(m, x):
    pj.lowrank(m, rank=4, example_inputs=x, progress=False)


def mha_split(m, x):
    return None if split_attention(m) else "no nn.MultiheadAttention: split_attention replaced nothing"


def winograd(m, x):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pj.winograd(m, measure=False, example_inputs=x, progress=False)
    if not any(isinstance(mod, pj.winograd_conv.WinogradConv2d) for mod in m.modules()):
        assert pj.last_report(m).touched == [], "winograd changed a layer but made no WinogradConv2d"
        assert any("no layer was changed" in str(w.message) for w in caught), \
            [str(w.message) for w in caught]
        return "no eligible nn.Conv2d: the verb warned it changed no layer"
    return None


def int8(m, x):
    pj.quantize(m, bits=8, data=[x], progress=False)
    pj.convert(m, graph=False)  # layer by layer: the int8 graph has its own record (graph_saving)


def ternary(m, x):
    pj.ternarize(m, progress=False)


def prune_share(m, x):
    pj.prune(m, sparsity=0.8, progress=False)
    pj.share(m, bits=4, progress=False)


def chain_prune_lowrank_share(m, x):
    """channel prune -> low-rank -> unstructured prune + share, encoded"""
    channel(m, x)
    lowrank(m, x)
    prune_share(m, x)


def chain_lowrank_int8(m, x):
    """(attention split ->) low-rank -> int8"""
    lowrank(m, x)
    int8(m, x)


REWRITES = {"channel": channel, "lowrank": lowrank, "mha_split": mha_split, "winograd": winograd,
            "int8": int8, "ternary": ternary, "prune_share": prune_share,
            "chain_prune_lowrank_share": chain_prune_lowrank_share, "chain_lowrank_int8": chain_lowrank_int8}

#: the kinds each cell's file must record (attention: every weight verb splits attention first)
EXPECTED = {
    "channel": {"prune_channels"}, "lowrank": {"lowrank"}, "mha_split": set(), "winograd": {"winograd"},
    "int8": {"int8", "fold_bn"}, "ternary": set(), "prune_share": set(),
    "chain_prune_lowrank_share": {"prune_channels", "lowrank"}, "chain_lowrank_int8": {"lowrank", "int8", "fold_bn"},
}


def expected_kinds(rewrite: str, model: str) -> set[str]:
    kinds = set(EXPECTED[rewrite])
    if model != "resnet":
        kinds.discard("fold_bn")  # no BatchNorm
    if model == "attention" and rewrite != "winograd":  # Winograd acts on no Linear: MHA stays packed
        kinds.add("split_attention")
        if "int8" in kinds:
            kinds.add("act_quant")  # its depthwise Conv1d stays float, fake-quantized
    if rewrite == "winograd" and model != "resnet":
        kinds.discard("winograd")  # no nn.Conv2d
    return kinds


CHILD = """
import gc, json, sys, torch
from safetensors.torch import save_file
sys.path.insert(0, {tests!r})
import test_structure_record as cells
import penjing as pj
gc.freeze()  # load_into collects garbage to measure memory: the imports need not be walked again
x = cells._inputs()
out = {{}}
for cell in json.loads(sys.argv[1]):
    fresh = cells.build(cell["model"], seed=1234)   # other random weights: all must come from the file
    loaded = pj.load(cell["path"], fresh, runtime=cell["runtime"]).eval()
    with torch.no_grad():
        out[cell["key"]] = loaded(x).contiguous()
save_file(out, sys.argv[2])
"""


def _run_child(cells: list[dict], out: Path) -> dict[str, torch.Tensor]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    code = CHILD.format(tests=str(Path(__file__).parent))
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(cells), str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return load_file(out)


def test_every_rewrite_round_trips_into_a_fresh_model_in_a_new_process(tmp_path):
    x = _inputs()
    expected, cells, skipped = {}, [], {}
    for model_name in MODELS:
        for rewrite, apply in REWRITES.items():
            key = f"{model_name}-{rewrite}"
            model = build(model_name, seed=0)
            why = apply(model, x)
            model.eval()
            path = tmp_path / f"{key}.pjz"
            pj.save(model, path)
            steps = inspect(path).structure or []
            assert {s["kind"] for s in steps} == expected_kinds(rewrite, model_name), (key, steps)
            if why is not None:
                skipped[key] = why
                assert not any(s["kind"] == rewrite for s in steps), (key, steps)
            with torch.no_grad():
                expected[key] = model(x)
            cells.append({"key": key, "model": model_name, "path": str(path), "runtime": "dense"})
            cells.append({"key": key + "-kernel", "model": model_name, "path": str(path), "runtime": "kernel"})
    got = _run_child(cells, tmp_path / "outputs.safetensors")
    for key, want in expected.items():
        if "winograd" in key:  # F(m) re-associates the sums: docs/winograd.md's error bound per tile
            torch.testing.assert_close(got[key], want, rtol=1e-5, atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")
        else:
            assert torch.equal(got[key], want), f"{key}: max |diff| {(got[key] - want).abs().max():.3g}"
        # the C kernels sum in another order: docs/runtime.md bounds them at 1e-5 relative
        torch.testing.assert_close(got[key + "-kernel"], want, rtol=1e-5, atol=1e-5 * want.abs().max().item(),
                                   msg=lambda m, key=key: f"{key} (runtime=kernel): {m}")
    assert set(skipped) == {"lenet300-mha_split", "resnet-mha_split", "lenet300-winograd", "attention-winograd"}
