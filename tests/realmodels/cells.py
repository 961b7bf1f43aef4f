"""One cell of the models x methods matrix: apply a method through the public API, assert a
real property, and return the figure the results table shows.

Each cell raises AssertionError when the property fails, and returns a short text figure.
"""

from __future__ import annotations

import copy
import math
import tempfile
from pathlib import Path

import torch
from torch import nn

import penjing as pj
from penjing.core.attention import split_attention
from penjing.core.batch import default_forward
from penjing.core.layers import weight_layout, weighted_layers
from penjing.runtime import RuntimeLayer

from .zoo import Spec, build_model


def _forward(spec: Spec):
    return spec.forward_fn or default_forward


def _out(spec: Spec, model: nn.Module, batch) -> torch.Tensor:
    with torch.no_grad():
        out = _forward(spec)(model, batch)
    return out if isinstance(out, torch.Tensor) else out.logits


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def _baked(model: nn.Module) -> nn.Module:
    return pj.bake(copy.deepcopy(model))


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every weight matrix/kernel of a baked copy, by layer name (q/k/v included after a split)."""
    baked = _baked(model)
    return {n: m.weight.detach() for n, m in weighted_layers(baked) if getattr(m, "weight", None) is not None}


def _coverage(model: nn.Module) -> tuple[int, int]:
    report = pj.last_report(model)
    return len(report.touched), len(report.skipped)


def prune_unstructured(spec: Spec) -> str:
    model = build_model(spec)
    modules = dict(model.named_modules())
    zeros_before = {n: int((m.weight == 0).sum()) for n, m in weighted_layers(model)
                    if getattr(m, "weight", None) is not None}
    pj.prune(model, pj.PruneConfig(sparsity=0.8), progress=False)
    touched = {c.name for c in pj.last_report(model).touched}
    weights = _weights(model)
    total = zeros = 0
    for name in touched:
        w = weights[name]
        pad = getattr(modules.get(name), "padding_idx", None)
        row = w.shape[1] if pad is not None else 0  # an embedding's padding row is never pruned
        expected = max(round(0.8 * (w.numel() - row)) + row, zeros_before.get(name, 0))
        got = int((w == 0).sum())
        assert abs(got - expected) <= 1, f"{name}: {got} zeros, expected {expected}"
        total, zeros = total + w.numel(), zeros + got
    linear = [n for n, m in weighted_layers(model) if isinstance(m, nn.Linear)]
    assert set(linear) <= touched, f"Linear layers left dense: {sorted(set(linear) - touched)}"
    return f"{100 * zeros / total:.2f}% zero over {len(touched)} layers"


def prune_2_4(spec: Spec) -> str:
    model = build_model(spec)
    pj.prune(model, pj.PruneConfig(granularity="2:4"), progress=False)
    baked = dict(weighted_layers(_baked(model)))
    checked = 0
    for change in pj.last_report(model).touched:
        module = baked[change.name]
        w = module.weight.detach().movedim(weight_layout(module).in_axis, -1)
        assert w.shape[-1] % 4 == 0, f"{change.name}: input dim {w.shape[-1]} was pruned 2:4"
        kept = (w.reshape(-1, 4) != 0).sum(-1)
        assert int(kept.max()) <= 2, f"{change.name}: a group of 4 keeps {int(kept.max())}"
        checked += 1
    _, skipped = _coverage(model)
    assert checked > 0
    return f"<=2 of 4 kept in {checked} layers ({skipped} skipped)"


def prune_structured(spec: Spec) -> str:
    model = build_model(spec)
    before = sum(p.numel() for p in model.parameters())
    example = spec.example()
    try:
        pj.prune(model, pj.PruneConfig(sparsity=0.3, granularity="channel"), example_inputs=example,
                 data=spec.batches(), progress=False)
    except ValueError as exc:  # refusing is allowed when it says why, layer by layer
        message = str(exc)
        assert message.startswith("prune: no layer to act on (") and ":" in message[26:], message
        return "refused, with the reason per layer: " + message[26:90] + "..."
    after = sum(p.numel() for p in model.parameters())
    assert after < before, "structured pruning removed no parameter"
    with torch.no_grad():
        model(example)
    model.load_state_dict(model.state_dict())
    return f"params {before:,} -> {after:,} ({after / before:.2f}x)"


def share_save_load(spec: Spec) -> str:
    model = build_model(spec)
    pj.share(model, pj.ShareConfig(bits=4), progress=False)
    batch = spec.batches()[0]
    expected = _out(spec, _baked(model), batch)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.pjz"
        pj.save(model, path)
        size = path.stat().st_size
        fresh = build_model(spec)
        split_attention(fresh)  # the verbs split nn.MultiheadAttention; the file holds q/k/v/out
        state = pj.load(path)
        missing, unexpected = fresh.load_state_dict(state, strict=False)
        assert not unexpected, f"file keys the fresh model lacks: {unexpected[:5]}"
        assert not [k for k in missing if not k.endswith("_buffer")], f"missing: {missing[:5]}"
    got = _out(spec, fresh, batch)
    assert torch.equal(got, expected), f"reloaded output differs by {_rel(got, expected):.2e}"
    dense = sum(p.numel() for p in fresh.parameters()) * 4
    return f"bit-identical reload; file {dense / size:.1f}x smaller than fp32"


def quantize_convert(spec: Spec) -> str:
    model = build_model(spec)
    batches = spec.batches()
    reference = _out(spec, model, batches[0])
    # every layer, HF ViT's patch conv included: int8 layers show a float ``weight`` (the
    # integers are in ``weight_int8``), so ViT's cast to ``projection.weight.dtype`` stays float
    config = pj.QuantConfig(activations="dynamic" if spec.family != "cnn" else "static")
    pj.quantize(model, config, data=batches, forward_fn=spec.forward_fn, progress=False)
    pj.convert(model)
    error = _rel(_out(spec, model, batches[0]), reference)
    assert error < 0.25, f"int8 output error {error:.3f}"
    return f"rel. error {error:.3f}"


def _kernel_layers(spec: Spec, model: nn.Module, fresh: nn.Module, path: Path) -> tuple[nn.Module, str]:
    """Load ``path`` into ``fresh`` on the kernels; assert that every weighted layer is reported
    (on a kernel, or dense with a reason), that those reported run a kernel, and that no
    Linear/Conv2d the file holds sparse was left dense. Returns the model and its coverage text."""
    loaded = pj.load(path, fresh, runtime="kernel")
    report = pj.last_report(loaded)
    on_kernels = {n for n, m in loaded.named_modules() if isinstance(m, RuntimeLayer)}
    assert on_kernels == {c.name for c in report.touched}, "reported kernel layers differ from the model's"
    reasons = {s.name: s.reason for s in report.skipped}
    left = [n for n, m in weighted_layers(loaded) if n not in on_kernels and n not in reasons]
    assert not left, f"weighted layers neither on a kernel nor reported: {left[:5]}"
    linear = [n for n in reasons if isinstance(dict(model.named_modules()).get(n), nn.Linear)
              and "nonzero" not in reasons[n]]
    assert not linear, f"pruned Linear layers left dense: {[(n, reasons[n]) for n in linear[:3]]}"
    why = sorted({r.split(" (")[0].split(":")[0] for r in reasons.values()})
    return loaded, f"{len(on_kernels)} layers on kernels, {len(reasons)} not ({'; '.join(why) or '-'})"


def _largest_difference(spec: Spec, reference: nn.Module, loaded: nn.Module, batch) -> float:
    """Largest relative difference over the model's output and every kernel layer's output
    (hooked on both models at the same names): several of these random-init models give
    near-constant logits once pruned 90% (mobilenet, efficientnet; torchvision ViT's head
    starts at zero), so the logits alone would prove little."""
    names = [n for n, m in loaded.named_modules() if isinstance(m, RuntimeLayer)]
    outputs: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    handles = [m.register_forward_hook(lambda _m, _i, out, n=n: outputs[n].append(out.detach()))
               for model in (reference, loaded) for n, m in model.named_modules() if n in outputs]
    try:
        expected, got = _out(spec, reference, batch), _out(spec, loaded, batch)
    finally:
        for h in handles:
            h.remove()
    assert all(len(v) == 2 for v in outputs.values()), "a kernel layer has no twin in the reference model"
    return max([_rel(got, expected)] + [_rel(b, a) for a, b in outputs.values()])


def runtime_from_file(spec: Spec) -> str:
    """Pruned 90%, saved, loaded with ``runtime="kernel"``: the output and every kernel layer's
    output equal the baked model's within 1e-5."""
    model = build_model(spec)
    pj.prune(model, pj.PruneConfig(sparsity=0.9), progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.pjz"
        pj.save(model, path)
        fresh = build_model(spec)
        split_attention(fresh)
        loaded, coverage = _kernel_layers(spec, model, fresh, path)
    error = _largest_difference(spec, _baked(model), loaded, spec.batches()[0])
    assert error <= 1e-5, f"kernel outputs differ from the baked model by {error:.2e}"
    return f"{coverage}; rel. diff <= {error:.0e}"


def int8_runtime_from_file(spec: Spec) -> str:
    """Pruned 90%, int8 layer by layer (pj.convert(graph=False)), saved, loaded into a fresh
    model with ``runtime="kernel"``: the int8 layers run the sparse int8 kernels, outputs within
    1e-2 of the in-memory int8 model, layer by layer (a deep net's 1-ulp epilogue differences flip a later
    rounding now and then; the layer-by-layer agreement is 1e-7, tests/test_runtime_int8.py)."""
    model = build_model(spec)
    batches = spec.batches()
    pj.prune(model, pj.PruneConfig(sparsity=0.9), progress=False)
    config = pj.QuantConfig(activations="dynamic" if spec.family != "cnn" else "static")
    pj.quantize(model, config, data=batches, forward_fn=spec.forward_fn, progress=False)
    pj.convert(model, graph=False)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.pjz"
        pj.save(model, path)
        loaded, coverage = _kernel_layers(spec, model, build_model(spec), path)
    int8 = sum(1 for m in loaded.modules() if isinstance(m, RuntimeLayer) and m.weights.kind == "int8")
    error = _largest_difference(spec, model, loaded, batches[0])
    assert error <= 1e-2, f"kernel outputs differ from the int8 model by {error:.2e}"
    return f"{coverage}, {int8} int8; rel. diff <= {error:.0e}"


def lowrank(spec: Spec) -> str:
    model = build_model(spec)
    before = sum(p.numel() for p in model.parameters())
    # Every layer, HF ViT's patch conv included: its forward reads
    # patch_embeddings.projection.weight.dtype, which a factorised conv answers (its read-only
    # weight is the dense product of the factors).
    pj.lowrank(model, pj.LowRankConfig(params=0.5), example_inputs=spec.example(),
               data=spec.batches(), progress=False)
    after = sum(p.numel() for p in model.parameters())
    assert after < before, "low-rank removed no parameter"
    if spec.name == "hf_vit":
        touched = {t.name for t in pj.last_report(model).touched}
        assert "embeddings.patch_embeddings.projection" in touched, sorted(touched)
    with torch.no_grad():
        model(spec.example())
    return f"params {after / before:.2f}x"


def ternarize(spec: Spec) -> str:
    model = build_model(spec)
    pj.ternarize(model, pj.TernaryConfig(algorithm="twn"), progress=False)
    weights = _weights(model)
    touched = pj.last_report(model).touched
    for change in touched:
        w = weights[change.name]
        for row in w.reshape(w.shape[0], -1):
            assert len(torch.unique(row)) <= 3, f"{change.name}: {len(torch.unique(row))} values in a row"
    return f"<=3 values per row in {len(touched)} layers"


def winograd(spec: Spec) -> str:
    import warnings

    model = build_model(spec)
    example = spec.example()
    reference = _out(spec, model, example)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pj.winograd(model, example_inputs=example, progress=False)
    touched, skipped = _coverage(model)
    error = _rel(_out(spec, model, example), reference)
    assert error < 1e-4, f"Winograd output error {error:.2e}"
    if touched == 0:
        assert skipped > 0 and any("no layer was changed" in str(w.message) for w in caught)
        return f"0 converted, {skipped} skipped with reasons (warned)"
    return f"{touched} convs, rel. error {error:.1e}"


def _flop_counter_macs(model: nn.Module, example) -> int:
    """torch's own count, as an independent reference. Attention is made to decompose first
    (grad enabled: nn.MultiheadAttention's fused fast path is off; the math SDPA backend:
    QK^T and AV as matmuls), because FlopCounterMode does not see inside the fused CPU kernels."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        model(example)
    return counter.get_total_flops() // 2


def simulate(spec: Spec) -> str:
    model = build_model(spec)
    example = spec.example()
    report = pj.simulate(model, example, hw="tpu-v1")
    reference = _flop_counter_macs(model, example)
    macs = report.macs
    assert report.cycles > 0
    assert abs(macs - reference) <= 0.01 * reference, f"MACs {macs:,} vs FlopCounterMode {reference:,}"
    return f"{macs / 1e6:.1f} M MACs (= torch's count), {report.cycles:,.0f} cycles"


def energy(spec: Spec) -> str:
    model = build_model(spec)
    result = pj.energy(model, spec.example())
    total = result.total_pj if hasattr(result, "total_pj") else float(result.total)
    assert math.isfinite(total) and total > 0
    return f"{total / 1e6:.2f} uJ"


def fit_custom_loss(spec: Spec) -> str:
    model = build_model(spec)
    before = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    forward = _forward(spec)
    losses = []

    def loss_fn(output, batch):
        out = output if isinstance(output, torch.Tensor) else output.logits
        loss = (out.float() - 1).pow(2).mean()  # a user loss on any output, no labels used
        losses.append(float(loss))
        return loss

    model.train()
    pj.fit(model, spec.batches(), steps=1, lr=1e-3, loss_fn=loss_fn, forward_fn=forward, progress=False)
    changed = sum(not torch.equal(before[k], v) for k, v in model.state_dict().items() if k in before)
    assert len(losses) == 1 and math.isfinite(losses[0])
    assert changed > 0
    return f"1 step, loss {losses[0]:.3g}, {changed} tensors updated"


def evaluate_metric(spec: Spec) -> str:
    model = build_model(spec)
    batches = spec.batches()
    forward = _forward(spec)

    def mean_abs(outputs, seen):
        return float(torch.cat([(o if isinstance(o, torch.Tensor) else o.logits).flatten()
                                for o in outputs]).abs().mean())

    value = pj.evaluate(model, batches, metric=mean_abs, forward_fn=forward)
    manual = float(torch.cat([_out(spec, model, b).flatten() for b in batches]).abs().mean())
    assert abs(value - manual) <= 1e-6 * max(1.0, abs(manual))
    return f"metric {value:.4f} (= by hand)"


CELLS = {
    "prune 80%": prune_unstructured,
    "prune 2:4": prune_2_4,
    "prune channels": prune_structured,
    "share+save+load": share_save_load,
    "quantize+convert": quantize_convert,
    "run from .pjz (prune 90%)": runtime_from_file,
    "int8 from .pjz (prune 90%)": int8_runtime_from_file,
    "lowrank 50%": lowrank,
    "ternarize": ternarize,
    "winograd": winograd,
    "simulate": simulate,
    "energy": energy,
    "fit (user loss)": fit_custom_loss,
    "evaluate (user metric)": evaluate_metric,
}
