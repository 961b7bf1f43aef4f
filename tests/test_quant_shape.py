"""pj.quantize in the one verb shape: config, override rule, data protocol, modes, report,
transactional failure; and the BatchNorm-folding bugs of issue 16."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import penjing as pj
from penjing.core.report import last_report
from penjing.quantization import Int8Linear, QuantConfig, convert, fold_batchnorm, quantize
from penjing.quantization.fake_quant import WeightFakeQuant


def _bits(model: nn.Module) -> dict[str, int]:
    return {n: p.spec.bits for n, m in model.named_modules()
            for p in getattr(getattr(m, "parametrizations", None), "weight", []) if isinstance(p, WeightFakeQuant)}


class Three(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def test_layer_bits_first_matching_key_wins():
    model = quantize(Three(), QuantConfig(bits=8, layer_bits={"fc*": 4, "fc1": 6}, activations="none"))
    assert _bits(model) == {"fc1": 4, "fc2": 4, "head": 8}
    model = quantize(Three(), QuantConfig(bits=8, layer_bits={"fc1": 6, "fc*": 4}, activations="none"))
    assert _bits(model) == {"fc1": 6, "fc2": 4, "head": 8}
    model = quantize(Three(), QuantConfig(bits=8, layer_bits={"last": 4}, activations="none"))
    assert _bits(model) == {"fc1": 8, "fc2": 8, "head": 4}


def test_layer_bits_key_matching_nothing_is_an_error():
    with pytest.raises(ValueError, match=r"QuantConfig.layer_bits: key 'fc9' matches no layer; the layers "
                                         r"are fc1, fc2, head"):
        quantize(Three(), QuantConfig(layer_bits={"fc9": 4}, activations="none"))


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"QuantConfig.bits must be one of \[2, 3, 4, 5, 6, 7, 8, 16\]"):
        QuantConfig(bits=9)
    with pytest.raises(ValueError, match=r"QuantConfig.activations must be one of \['static', 'dynamic', "
                                         r"'none'\], got 'off'"):
        QuantConfig(activations="off")
    with pytest.raises(ValueError, match="QuantConfig.act_bits: dynamic activations are 8-bit"):
        QuantConfig(activations="dynamic", act_bits=16)
    with pytest.raises(ValueError, match=r"QuantConfig.smooth_alpha must be in \[0, 1\]"):
        QuantConfig(smooth_alpha=1.5)
    with pytest.raises(ValueError, match="unknown field"):
        QuantConfig.from_dict({"act_bitz": 8})


def test_pj_apply_and_keyword_fields_dispatch_to_quantize():
    from penjing.core.config import apply

    model = apply(Three(), QuantConfig(activations="none"))
    assert set(_bits(model)) == {"fc1", "fc2", "head"}
    model = quantize(Three(), bits=4, activations="none")
    assert set(_bits(model).values()) == {4}


class Mixed(nn.Module):
    """Embedding + attention + conv + linear: attention is skipped with its reason."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 4)

    def forward(self, ids, mask=None):
        h = self.emb(ids)
        h, _ = self.attn(h, h, h, key_padding_mask=mask)
        return self.fc(h.mean(1))


def test_unsupported_layers_are_reported_or_refused_when_selected():
    model = Mixed().eval()
    quantize(model, QuantConfig(activations="none"))
    report = last_report(model)
    # the attention is split into q/k/v/out Linear first (exactly equivalent), so they quantize too
    assert [t.name for t in report.touched] == ["emb", "attn.q_proj", "attn.k_proj", "attn.v_proj",
                                                "attn.out_proj", "fc"]
    assert "split 1 MultiheadAttention into q/k/v/out Linear" in report.notes
    assert report.skipped == []
    with pytest.raises(ValueError, match=r"quantize: layers entry 'fc9' matches no layer with weights"):
        quantize(Mixed(), QuantConfig(layers=["fc9"], activations="none"))


def test_dict_batches_with_forward_fn_and_mapping_batches_calibrate():
    torch.manual_seed(0)
    ids = torch.randint(0, 20, (16, 5))
    mask = torch.zeros(16, 5, dtype=torch.bool)
    mask[:, -1] = True
    seen_masks = []

    def forward_fn(model, batch):
        seen_masks.append(batch["attention_mask"])
        return model(batch["input_ids"], mask=batch["attention_mask"])

    model = Mixed().eval()
    batches = [{"input_ids": ids[:8], "attention_mask": mask[:8]}, {"input_ids": ids[8:], "attention_mask": mask[8:]}]
    quantize(model, QuantConfig(), data=batches, forward_fn=forward_fn, progress=False)
    assert len(seen_masks) == 2 and all(m[:, -1].all() for m in seen_masks)  # the mask reached the model
    assert model.fc.input_quant.enabled

    class Encoding(dict):  # an HF BatchEncoding is a Mapping fed as keyword arguments
        pass

    other = Mixed().eval()
    quantize(other, QuantConfig(calib_samples=6), data=[Encoding(ids=ids[:8], mask=mask[:8])], progress=False)
    assert other.fc.input_quant.observer.has_data


class Probe(nn.Module):
    """Records the train flag of its dropout at every forward."""

    def __init__(self):
        super().__init__()
        self.fc1, self.drop, self.fc2 = nn.Linear(8, 8), nn.Dropout(0.5), nn.Linear(8, 2)
        self.flags: list[bool] = []

    def forward(self, x):
        self.flags.append(self.drop.training)
        return self.fc2(self.drop(self.fc1(x)))


def test_calibration_never_switches_a_model_to_train_mode_and_restores_mixed_modes():
    model = Probe().eval()
    quantize(model, QuantConfig(), data=torch.rand(32, 8), progress=False)
    assert model.flags and not any(model.flags) and not model.training
    mixed = Probe().train()
    mixed.fc2.eval()  # a user's mixed modes survive
    quantize(mixed, QuantConfig(), data=torch.rand(32, 8), progress=False)
    assert not any(mixed.flags)  # calibrated in eval mode (dropout off)
    assert mixed.training and mixed.drop.training and not mixed.fc2.training


class Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)
        self.spare = nn.Linear(4, 2)  # never called

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


def test_layer_that_never_ran_is_named_and_the_model_is_rolled_back_so_a_retry_works():
    torch.manual_seed(0)
    model = Unused().eval()
    model.bn.running_var.uniform_(0.5, 2)
    x = torch.rand(8, 3, 6, 6)
    before = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"quantize: layer\(s\) spare never ran during calibration"):
        quantize(model, QuantConfig(), data=x, progress=False)
    assert isinstance(model.bn, nn.BatchNorm2d)  # the fold was undone
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model(x), before)
    quantize(model, QuantConfig(exclude=["spare"]), data=x, progress=False)  # the retry works
    assert isinstance(model.bn, nn.Identity) and model.fc.input_quant.enabled


def test_convert_reports_every_layer_that_stays_float():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Conv1d(1, 1, 1), nn.Flatten(), nn.Linear(4, 2))

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = model

        def forward(self, x):
            return self.body[4](self.body[2](self.body[1](self.body[0](x)).unsqueeze(1)).flatten(1))

    wrapped = Wrap().eval()
    quantize(wrapped, QuantConfig(), data=torch.rand(16, 4), progress=False)
    convert(wrapped)
    report = last_report(wrapped)
    assert [t.name for t in report.touched] == ["body.0", "body.4"]
    assert [(s.name, s.reason) for s in report.skipped] == [
        ("body.2", "Conv1d has no int8 kernel; it stays fake-quantized (float compute)")]


def test_int8_true_converts_in_the_same_call():
    model = quantize(Three().eval(), QuantConfig(int8=True), data=torch.rand(16, 8), progress=False)
    assert isinstance(model.fc1, Int8Linear)
    assert any("int8" in t.after for t in last_report(model).touched)


# ---------------------------------------------------------------- BatchNorm folding bugs (#16)


def test_fold_keeps_eps_so_a_dead_channel_stays_finite():
    """A channel with zero weights and zero running variance (dead) folds to 0 / sqrt(eps):
    without eps the fold divides 0 by 0 and the output is NaN."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    with torch.no_grad():
        model[0].weight[1].zero_()
        model[0].bias[1] = 0.0
        model[1].running_var[1] = 0.0
        model[1].running_mean[1] = 0.0
    x = torch.randn(2, 3, 5, 5)
    before = model(x)
    fold_batchnorm(model)
    after = model(x)
    assert torch.isfinite(after).all()
    assert torch.allclose(after, before, atol=1e-5)


class SecondUser(nn.Module):
    """The conv's output feeds the BN and a skip: folding would rewrite the skip too."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x):
        h = self.conv(x)
        return self.bn(h) + h


class CalledTwice(nn.Module):
    """One conv used at two places, only one of them followed by the BN."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(self.conv(x)) + self.conv(x * 2)


@pytest.mark.parametrize("cls", [SecondUser, CalledTwice])
def test_fold_refuses_a_conv_whose_output_or_call_is_shared(cls):
    torch.manual_seed(0)
    model = cls().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.2, 3)
        model.bn.weight.uniform_(0.3, 2)
    x = torch.randn(2, 3, 6, 6)
    before = model(x)
    assert fold_batchnorm(model) == []
    assert torch.equal(model(x), before)
    quantize(model, QuantConfig(activations="none"), progress=False)  # quantize's fold too
    assert isinstance(model.bn, nn.BatchNorm2d)


def test_quantize_on_real_pruned_and_shared_layers_keeps_their_structure():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    pj.prune(model, pj.PruneConfig(sparsity=0.75), progress=False)
    pj.share(model, pj.ShareConfig(bits=4))
    zeros = model[0].weight == 0

    quantize(model, QuantConfig(bits=8, symmetric=True), data=torch.randn(64, 16), progress=False)
    assert bool((model[0].weight[zeros] == 0).all())  # pruned weights stay exactly zero
    # per-channel scales keep each row on at most the 16 shared values (and the pruned zeros)
    assert max(row.unique().numel() for row in model[2].weight.detach()) <= 17
    x = torch.randn(8, 16)
    int8 = convert(copy.deepcopy(model))
    assert int8[0].weight_int8.dtype == torch.int8 and bool((int8[0].weight_int8[zeros] == 0).all())
    assert torch.allclose(int8(x), model(x), atol=1e-5)
