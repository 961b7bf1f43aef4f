"""Binary and ternary weights: gradients, values, policy, bad input, and real training."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import penjing as pj
from penjing.core.params import original
from penjing.core.report import last_report
from penjing.core.stats import layer_stats
from penjing.lowbit import (
    BinaryConfig,
    BinaryWeight,
    TernaryConfig,
    TTQWeight,
    TWNWeight,
    binarize,
    ternarize,
    ternary_sparsity,
)
from penjing.lowbit.ste import sign_ste, stochastic_sign_ste, ttq_ternarize


def _wp_wn(layer: nn.Module) -> tuple[nn.Parameter, nn.Parameter]:
    p = layer.parametrizations.weight[0]
    return p.wp, p.wn


# --- gradients ---------------------------------------------------------------------------

def test_ttq_scale_gradients_are_the_sums_over_the_index_sets():
    v = torch.tensor([[0.9, -0.02, 0.3], [-0.6, 0.01, -1.0]], requires_grad=True)
    wp = torch.tensor(0.7, requires_grad=True)
    wn = torch.tensor(0.4, requires_grad=True)
    delta = torch.tensor(0.05)  # t = 0.05 of max|v| = 1.0
    g = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])  # dL/dw_t
    w = ttq_ternarize(v, wp, wn, delta)
    assert torch.equal(w, torch.tensor([[0.7, 0.0, 0.7], [-0.4, 0.0, -0.4]]))
    (w * g).sum().backward()
    # I_p = {(0,0), (0,2)}, I_n = {(1,0), (1,2)}, I_z = {(0,1), (1,1)}
    assert wp.grad.item() == pytest.approx(1.0 + 3.0)
    assert wn.grad.item() == pytest.approx(-(4.0 + 6.0))  # w = -Wn on I_n: chain rule sign
    # latent gradients scaled by Wp on I_p, 1 on I_z, Wn on I_n (TTQ eq. 8)
    assert torch.allclose(v.grad, torch.tensor([[0.7 * 1, 2.0, 0.7 * 3], [0.4 * 4, 5.0, 0.4 * 6]]))


def test_ttq_gradients_reach_the_layer_parameters_through_the_parametrization():
    torch.manual_seed(0)
    layer = nn.Linear(6, 4, bias=False)
    ternarize(layer, TernaryConfig("ttq", threshold=0.3, keep_first_last=False))
    wp, wn = _wp_wn(layer)
    v = original(layer).detach().clone()
    x = torch.randn(5, 6)
    layer(x).pow(2).sum().backward()
    g = 2 * (x @ layer.weight.detach().T)  # dL/dy
    dw = g.T @ x  # dL/dW (4x6)
    delta = 0.3 * v.abs().max()
    pos, neg = v > delta, v < -delta
    assert wp.grad.item() == pytest.approx(dw[pos].sum().item(), rel=1e-5)
    assert wn.grad.item() == pytest.approx(-dw[neg].sum().item(), rel=1e-5)
    scale = torch.where(pos, wp.detach(), torch.where(neg, wn.detach(), torch.tensor(1.0)))
    assert torch.allclose(original(layer).grad, dw * scale, rtol=1e-5, atol=1e-6)


def test_sign_ste_passes_gradient_inside_the_clip_and_blocks_outside():
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5], requires_grad=True)
    y = sign_ste(x)
    assert y.tolist() == [-1, -1, -1, 1, 1, 1, 1]
    y.backward(torch.full_like(x, 3.0))
    assert x.grad.tolist() == [0, 3, 3, 3, 3, 3, 0]


def test_binaryconnect_clips_latent_weights_to_unit_interval_and_sees_no_dead_weights():
    layer = nn.Linear(4, 3)
    binarize(layer, BinaryConfig("binaryconnect", keep_first_last=False))
    with torch.no_grad():
        original(layer).copy_(torch.tensor([[1.5, -3.0, 0.2, 0.0]] * 3))
    w = layer.weight  # the next forward clips, as an optimizer-step hook would
    assert torch.equal(original(layer), torch.tensor([[1.0, -1.0, 0.2, 0.0]] * 3))
    assert torch.equal(w, torch.tensor([[1.0, -1.0, 1.0, 1.0]] * 3))  # sign(0) = +1
    w.sum().backward()
    assert torch.equal(original(layer).grad, torch.ones(3, 4))  # |w| <= 1 everywhere: all pass


def test_binaryconnect_normalizes_latent_weights_without_changing_the_forward():
    torch.manual_seed(0)
    layer = nn.Linear(20, 10)
    before = torch.where(layer.weight >= 0, 1.0, -1.0)
    binarize(layer, BinaryConfig("binaryconnect", stochastic=True, keep_first_last=False))
    assert original(layer).abs().max().item() == pytest.approx(1.0)
    layer.eval()
    assert torch.equal(layer.weight, before)
    with pytest.raises(ValueError, match="normalize=True changes alpha = mean|V|; use it only with scaling='none'"):
        BinaryConfig("xnor", normalize=True)


def test_xnor_scale_is_mean_abs_per_output_channel_and_differentiated():
    v = torch.tensor([[0.5, -0.3, 0.1], [-0.2, -0.4, 0.0]], requires_grad=True)
    w = BinaryWeight("channel", clip=False)(v)
    alpha = torch.tensor([[0.3], [0.2]])
    assert torch.allclose(w, alpha * torch.tensor([[1.0, -1, 1], [-1, -1, 1]]))
    w.sum().backward()
    # d/dv of alpha_c * sign(v): (sum_j sign(v_j)) * sign(v_i) / n (through alpha) + alpha_c (STE)
    s = torch.tensor([[1.0, -1, 1], [-1, -1, 1]])
    expected = s.sum(1, keepdim=True) * torch.sign(v.detach()) / 3 + alpha
    assert torch.allclose(v.grad, expected)


def test_stochastic_sign_is_unbiased_in_training_and_deterministic_in_eval():
    gen = torch.Generator().manual_seed(0)
    v = torch.tensor([-0.8, -0.2, 0.0, 0.4, 0.9]).repeat(20000, 1)
    mean = stochastic_sign_ste(v, gen).mean(0)
    assert torch.allclose(mean, torch.tensor([-0.8, -0.2, 0.0, 0.4, 0.9]), atol=0.02)  # E = 2p-1 = v
    layer = nn.Linear(5, 2)
    binarize(layer, BinaryConfig("binaryconnect", stochastic=True, keep_first_last=False))
    layer.eval()
    assert torch.equal(layer.weight, torch.where(original(layer) >= 0, 1.0, -1.0))


def test_binary_activations_feed_sign_of_the_input_to_selected_layers():
    model = pj.models.LeNet300()
    binarize(model, BinaryConfig("xnor", activations="fc2"))
    x = torch.rand(3, 64)
    h = model.act(model.fc1(x))
    expected = nn.functional.linear(torch.where(h > 0, 1.0, -1.0), model.fc2.weight, model.fc2.bias)
    out = {}
    model.fc2.register_forward_hook(lambda m, i, o: out.setdefault("y", o))
    model(x)
    assert torch.allclose(out["y"], expected)


def test_twn_threshold_and_scale_by_hand():
    v = torch.tensor([0.9, -0.6, 0.1, -0.05, 0.3, -0.35])
    delta = 0.7 * v.abs().mean()  # 0.7 * 0.3833 = 0.2683
    w = TWNWeight()(v)
    alpha = (0.9 + 0.6 + 0.3 + 0.35) / 4
    assert float(delta) == pytest.approx(0.26833, abs=1e-4)
    assert torch.allclose(w, torch.tensor([alpha, -alpha, 0, 0, alpha, -alpha]))


# --- policy and accounting ----------------------------------------------------------------

def test_first_and_last_layers_stay_full_precision_by_default():
    model = pj.models.LeNet5()
    ternarize(model, TernaryConfig("ttq"))
    bits = {r.name: r.bits for r in layer_stats(model)}
    assert bits == {"conv1": 32, "conv2": 2, "fc1": 2, "fc2": 32}
    model = pj.models.LeNet5()
    binarize(model, BinaryConfig(keep_first_last=False, exclude="conv2"))
    assert {r.name: r.bits for r in layer_stats(model)} == {"conv1": 1, "conv2": 32, "fc1": 1, "fc2": 1}


def test_selectors_pick_layers_and_glob_skips_weightless_modules():
    model = pj.models.SmallResNet()
    ternarize(model, TernaryConfig("twn", layers="layers.1.*"))
    names = sorted(ternary_sparsity(model))
    assert names == ["layers.1.conv1", "layers.1.conv2", "layers.1.shortcut.0"]


def test_ttq_scales_train_with_fit_and_model_keeps_three_values(digits_data):
    train, _ = digits_data
    model = pj.models.LeNet300()
    ternarize(model, TernaryConfig("ttq", keep_first_last=False))
    wp0 = model.fc2.parametrizations.weight[0].wp.item()
    pj.fit(model, torch.utils.data.Subset(train, range(256)), epochs=1, progress=False)
    wp, wn = _wp_wn(model.fc2)
    assert wp.item() != wp0
    values = set(model.fc2.weight.detach().unique().tolist())
    assert values <= {wp.item(), 0.0, -wn.item()}


def test_ternary_training_keeps_accuracy_on_digits(digits_data):
    """A real, fast behaviour check: LeNet-300-100 trained briefly, ternarized (TWN) on its
    middle layer and fine-tuned, stays close to its full-precision accuracy."""
    train, test = digits_data
    torch.manual_seed(0)
    model = pj.models.LeNet300()
    pj.fit(model, train, epochs=8, lr=3e-3, progress=False)
    dense = pj.evaluate(model, test)
    ternarize(model, TernaryConfig("twn"))
    pj.fit(model, train, epochs=3, lr=1e-3, progress=False)
    assert dense > 0.93
    assert pj.evaluate(model, test) > dense - 0.03


# --- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("t", [0.0, 1.0, -0.1, 1.5, math.nan])
def test_ttq_threshold_outside_open_unit_interval_is_refused(t):
    with pytest.raises(ValueError, match=r"TTQ threshold t must be in \(0, 1\), got "):
        TernaryConfig("ttq", threshold=t)
    with pytest.raises(ValueError, match=r"TTQ threshold t must be in \(0, 1\)"):
        TTQWeight(torch.ones(2, 2), t)


def test_twn_threshold_factor_must_be_positive():
    with pytest.raises(ValueError, match="TWN threshold factor must be a positive number, got -1"):
        TernaryConfig("twn", threshold=-1)


@pytest.mark.parametrize("config", [TernaryConfig("ttq"), TernaryConfig("twn"),
                                    BinaryConfig("xnor"), BinaryConfig("xnor", scaling="tensor")],
                         ids=["ttq", "twn", "xnor", "xnor-tensor"])
def test_all_zero_layer_gives_zero_scales_not_nan(config):
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    nn.init.zeros_(model[0].weight)
    verb = ternarize if isinstance(config, TernaryConfig) else binarize
    config.keep_first_last = False
    verb(model, config)
    w = model[0].weight
    assert torch.isfinite(w).all() and torch.equal(w, torch.zeros(4, 4))
    model[0].weight.sum().backward() if w.requires_grad else None
    for p in model[0].parametrizations.weight[0].parameters():
        assert torch.isfinite(p).all() and (p.grad is None or torch.isfinite(p.grad).all())
    assert torch.isfinite(model(torch.randn(2, 4))).all()


def test_binarizing_a_layer_without_weights_is_a_clear_error():
    model = pj.models.LeNet5()
    with pytest.raises(ValueError, match=r"^binarize: layers entry 'pool' matches no layer with weights; "
                                         r"the weighted layers are conv1, conv2, fc1, fc2$"):
        binarize(model, BinaryConfig(layers="pool"))
    with pytest.raises(ValueError, match=r"^ternarize: layers entry 'fc9' matches no layer with weights"):
        ternarize(model, TernaryConfig(layers=["fc1", "fc9"]))
    with pytest.raises(ValueError, match="^binarize: exclude entry 'fc7' matches no layer"):
        binarize(model, BinaryConfig(exclude="fc7"))


def test_two_layer_model_with_default_policy_explains_why_nothing_is_left():
    with pytest.raises(ValueError, match="^ternarize: no layer to act on: the first and last weighted "
                                         "layers stay full precision; pass keep_first_last=False"):
        ternarize(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3)), TernaryConfig())


def test_first_and_last_layers_are_recorded_skips():
    model = pj.models.LeNet5()
    ternarize(model, TernaryConfig())
    report = last_report(model)
    assert [c.name for c in report.touched] == ["conv2", "fc1"]
    assert {s.name: s.reason for s in report.skipped} == {
        "conv1": "first weighted layer kept full precision (keep_first_last=True)",
        "fc2": "last weighted layer kept full precision (keep_first_last=True)"}
    assert report.extra["zeros"] == ternary_sparsity(model)


def test_converting_twice_skips_by_default_and_refuses_an_explicit_layer():
    model = pj.models.LeNet5()
    ternarize(model, TernaryConfig())
    binarize(model, BinaryConfig(keep_first_last=False))  # only conv1 and fc2 were left
    assert [c.name for c in last_report(model).touched] == ["conv1", "fc2"]
    assert {s.name: s.reason for s in last_report(model).skipped} == {
        "conv2": "already binary/ternary (convert a layer once)",
        "fc1": "already binary/ternary (convert a layer once)"}
    with pytest.raises(ValueError, match=r"^binarize: no layer to act on \(conv1: already binary"):
        binarize(model, BinaryConfig())
    with pytest.raises(ValueError, match=r"^binarize: layer conv2 \(Conv2d\) was selected but already "
                                         r"binary/ternary \(convert a layer once\)"):
        binarize(model, BinaryConfig(layers="conv2"))


def test_unknown_algorithm_and_scaling_are_refused():
    with pytest.raises(ValueError, match=r"^TernaryConfig.algorithm must be one of \('ttq', 'twn'\), "
                                         r"got 'ternaryconnect'$"):
        TernaryConfig("ternaryconnect")
    with pytest.raises(ValueError, match=r"^BinaryConfig.scaling must be one of"):
        BinaryConfig(scaling="row")


def test_per_layer_threshold_first_match_wins_and_a_stray_key_is_an_error():
    model = pj.models.LeNet5()
    ternarize(model, TernaryConfig(threshold={"fc*": 0.3, "fc1": 0.01, "*": 0.05}, keep_first_last=False))
    ts = {n: m.parametrizations.weight[0].t for n, m in model.named_modules() if hasattr(m, "parametrizations")}
    assert ts == {"conv1": 0.05, "conv2": 0.05, "fc1": 0.3, "fc2": 0.3}
    with pytest.raises(ValueError, match=r"^TernaryConfig.threshold: key 'conv9' matches no layer"):
        ternarize(pj.models.LeNet5(), TernaryConfig(threshold={"conv9": 0.1, "*": 0.05}))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lenet5", "resnet"])
def test_ttq_within_one_point_of_full_precision_on_digits(name, digits_data):
    """The issue's target (the TTQ paper's parity result, on digits): TTQ with t = 0.05,
    first/last layers full precision, 20 epochs of fine-tuning."""
    train, test = digits_data
    model = pj.models.pretrained(name, train, progress=False)
    dense = pj.evaluate(model, test)
    ternarize(model, TernaryConfig("ttq"))
    pj.fit(model, train, epochs=20, lr=1e-3, seed=0, progress=False)
    assert pj.evaluate(model, test) >= dense - 0.01


def test_batchnorm_recalibration_uses_the_deterministic_sign():
    from torch.utils.data import TensorDataset

    from penjing.lowbit import recalibrate_batchnorm

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5))
    binarize(model, BinaryConfig("binaryconnect", stochastic=True, keep_first_last=False, layers="0"))
    model.train()
    x = torch.randn(300, 6)
    with torch.enable_grad():
        model(x)  # running stats now describe a random sign draw
    recalibrate_batchnorm(model, TensorDataset(x, torch.zeros(300)), batch_size=300)
    assert not model.training
    with torch.no_grad():
        h = model[0](x)  # eval mode: deterministic sign
    assert torch.equal(model[0].weight, torch.where(original(model[0]) >= 0, 1.0, -1.0))
    assert torch.allclose(model[1].running_mean, h.mean(0), atol=1e-6)
    assert torch.allclose(model[1].running_var, h.var(0), atol=1e-5)


def test_hardware_cost_model_sees_ternary_sparsity_and_two_bits():
    from penjing.hw import trace

    model = pj.models.LeNet5()
    ternarize(model, TernaryConfig("twn"))
    zeros = ternary_sparsity(model)
    layers = {layer.name: layer for layer in trace(model, torch.rand(1, 1, 8, 8))}
    for name in ("conv2", "fc1"):
        assert layers[name].weight_bits == 2
        assert layers[name].w_nonzeros == round((1 - zeros[name]) * layers[name].w_elems)
    assert layers["fc2"].weight_bits == 32
