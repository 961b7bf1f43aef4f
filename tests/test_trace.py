"""The one tracer (penjing.core.trace): functional compute, attention, embeddings and integer
inputs are counted exactly, and every record is attributed to the module that ran it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import penjing as pj
from penjing.core.params import attach
from penjing.core.trace import layer_macs, trace
from penjing.hw import trace as hw_trace

B, T, D, HEADS = 2, 5, 16, 4


def gemm_macs(layers) -> int:
    return sum(layer.macs for layer in layers if layer.kind == "gemm")


class Hand(nn.Module):
    """Attention written every way: fused sdpa, einsum, bmm, nn.MultiheadAttention (packed
    self-attention with weights returned; cross-attention with kdim/vdim), x @ Parameter."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(D, 3 * D)
        self.mha = nn.MultiheadAttention(D, HEADS, batch_first=True)
        self.cross = nn.MultiheadAttention(D, 2, kdim=8, vdim=12)
        self.mix = nn.Parameter(torch.randn(D, D))
        self.out = nn.Linear(D, 10)

    def forward(self, x, memory):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, HEADS, d // HEADS).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)
        s = torch.einsum("btd,bsd->bts", a, x)
        y = torch.bmm(s.softmax(-1), x)
        z, _ = self.mha(y, y, y)  # need_weights=True: the explicit bmm path
        z, _ = self.cross(z.transpose(0, 1), memory[..., :8], memory, need_weights=False)
        z = z.transpose(0, 1) @ self.mix
        return self.out(z.mean(1))


S = 7  # memory length of the cross-attention
#: (name, M, K, N, count, has_weight) by hand: GEMM view out[M x N] = A[M x K] @ B[K x N]
HAND = [
    ("qkv", B * T, D, 3 * D, 1, True),
    ("(root) (sdpa)", T, D // HEADS, T, B * HEADS, False),  # Q K^T per (batch, head)
    ("(root) (sdpa)", T, T, D // HEADS, B * HEADS, False),  # P V
    ("(root) (einsum)", T, D, T, B, False),
    ("(root) (bmm)", T, T, D, B, False),
    ("mha.in_proj_weight", B * T, D, 3 * D, 1, True),
    ("mha (attention)", T, D // HEADS, T, B * HEADS, False),
    ("mha (attention 2)", T, T, D // HEADS, B * HEADS, False),
    ("mha.out_proj", B * T, D, D, 1, True),
    ("cross.q_proj_weight", T * B, D, D, 1, True),
    ("cross.k_proj_weight", S * B, 8, D, 1, True),
    ("cross.v_proj_weight", S * B, 12, D, 1, True),
    ("cross (sdpa)", T, D // 2, S, B * 2, False),
    ("cross (sdpa)", T, S, D // 2, B * 2, False),
    ("cross.out_proj", T * B, D, D, 1, True),
    ("mix", B * T, D, D, 1, True),
    ("out", B, D, 10, 1, True),
]


def hand_inputs():
    torch.manual_seed(0)
    return torch.randn(B, T, D), torch.randn(S, B, 12)


def test_functional_attention_einsum_bmm_and_mha_are_counted_exactly():
    model = Hand()
    layers = trace(model, hand_inputs())
    gemms = [(lay.name, lay.M, lay.K, lay.N, lay.count, lay.has_weight) for lay in layers if lay.kind == "gemm"]
    assert gemms == HAND
    assert gemm_macs(layers) == sum(m * k * n * c for _, m, k, n, c, _ in HAND)
    ops = {lay.name: lay.op for lay in layers if lay.kind == "gemm"}
    assert (ops["(root) (einsum)"], ops["(root) (bmm)"], ops["mix"], ops["qkv"]) == ("einsum", "bmm", "matmul", "linear")
    # the weights of MultiheadAttention belong to it; functional records to the running module
    by_module = {lay.name: lay.module for lay in layers if lay.kind == "gemm"}
    assert by_module["mha.in_proj_weight"] == "mha" and by_module["mha.out_proj"] == "mha.out_proj"
    assert by_module["cross (sdpa)"] == "cross" and by_module["(root) (bmm)"] == "" and by_module["mix"] == ""
    # the hardware models' import is the same tracer
    assert [lay.name for lay in hw_trace(model, hand_inputs())] == [lay.name for lay in layers]


def test_need_weights_and_fused_attention_paths_count_the_same():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(D, HEADS, batch_first=True)

    class Call(nn.Module):
        def __init__(self, need_weights):
            super().__init__()
            self.mha, self.need = mha, need_weights

        def forward(self, x):
            return self.mha(x, x, x, need_weights=self.need)[0]

    x = torch.randn(B, T, D)
    fused, explicit = trace(Call(False), x), trace(Call(True), x)
    expected = 4 * B * T * D * D + 2 * B * T * T * D
    assert gemm_macs(fused) == gemm_macs(explicit) == expected
    assert [lay.op for lay in fused if lay.kind == "gemm"] == ["linear", "sdpa_qk", "sdpa_av", "linear"]


def test_transformer_layer_fast_path_is_opened_up():
    """nn.TransformerEncoderLayer in eval + no_grad would run one fused kernel
    (_transformer_encoder_layer_fwd): the tracer takes the composite path, same output."""
    torch.manual_seed(0)
    ff = 32
    layer = nn.TransformerEncoderLayer(D, HEADS, ff, dropout=0.0, batch_first=True).eval()
    x = torch.randn(B, T, D)
    layers = trace(layer, x)
    assert gemm_macs(layers) == 4 * B * T * D * D + 2 * B * T * T * D + 2 * B * T * D * ff
    assert {lay.name for lay in layers if lay.kind == "gemm"} == {
        "self_attn.in_proj_weight", "self_attn (sdpa)", "self_attn.out_proj", "linear1", "linear2"}


def test_cnn_counts_equal_torch_flop_counter():
    """Convolutions (grouped, dilated, strided, transposed, 1-d) and linears: MACs are half of
    torch.utils.flop_counter's FLOPs, layer for layer in total."""
    torch.manual_seed(0)
    models = [
        (pj.models.SmallResNet(), torch.randn(2, 1, 8, 8)),
        (nn.Sequential(nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2), nn.Conv2d(6, 6, 3, groups=3, dilation=2),
                       nn.ReLU(), nn.Flatten(), nn.LazyLinear(5)), torch.randn(2, 4, 5, 5)),
        (nn.Sequential(nn.Conv1d(3, 8, 5, stride=2, padding=2), nn.Conv1d(8, 8, 3, groups=8)), torch.randn(3, 3, 20)),
    ]
    for model, x in models:
        model.eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
        assert 2 * gemm_macs(trace(model, x)) == counter.get_total_flops()
    convt = trace(models[1][0], models[1][1])[0]
    # a transposed conv scatters each input pixel through the kernel: M = batch * input pixels
    assert (convt.op, convt.M, convt.K, convt.N, convt.count) == ("conv_transpose2d", 2 * 25, 2, 3 * 9, 2)
    assert convt.macs == 2 * 25 * 4 * 3 * 9  # batch * input pixels * weight size


def test_weights_found_through_views_casts_parametrizations_and_left_operands():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("w16", torch.randn(6, 4).half())  # stored at 16 bits, cast to run
            self.left = nn.Parameter(torch.randn(5, 6))

        def forward(self, x):
            h = F.linear(x, self.w16.float())  # (3, 6)
            return (self.left @ h.t()).t()      # W @ x: the weight is the left operand

    torch.manual_seed(0)
    layers = [lay for lay in trace(Odd(), torch.randn(3, 4)) if lay.kind == "gemm"]
    assert [(lay.name, lay.M, lay.K, lay.N, lay.has_weight, lay.weight_bits) for lay in layers] == [
        ("w16", 3, 4, 6, True, 16.0), ("left", 3, 6, 5, True, 32.0)]

    class Mask(nn.Module):
        def __init__(self, mask):
            super().__init__()
            self.register_buffer("mask", mask)

        def forward(self, w):
            return w * self.mask

    class FourBits(nn.Module):
        bits = 4

        def forward(self, w):
            return w

    mha = nn.MultiheadAttention(D, HEADS, batch_first=True)
    mask = (torch.rand(3 * D, D) > 0.7).float()
    attach(mha, Mask(mask), "in_proj_weight")
    attach(mha, FourBits(), "in_proj_weight")
    x = torch.randn(B, T, D)
    layers = trace(mha, (x, x, x))
    inproj = next(lay for lay in layers if lay.name == "in_proj_weight")
    assert (inproj.w_nonzeros, inproj.w_elems, inproj.weight_bits) == (int(mask.sum()), 3 * D * D, 4.0)
    assert not any(lay.op == "mul" and lay.in_elems == 2 * 3 * D * D for lay in layers)  # W * mask is hidden


def test_a_module_run_twice_and_names_of_memory_ops():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.act = nn.ReLU()

        def forward(self, x):
            return self.act(self.fc(self.fc(x))) + x

    layers = trace(Twice(), torch.randn(2, 4))
    assert [(lay.name, lay.op) for lay in layers] == [
        ("fc", "linear"), ("fc:linear1", "linear"), ("act", "relu"), ("(root):add", "add")]
    assert layer_macs(layers) == {"fc": 2 * 2 * 4 * 4}


def test_a_tied_weight_belongs_to_the_module_that_runs_it():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(20, D)
            self.head = nn.Linear(D, 20, bias=False)
            self.head.weight = self.emb.weight  # an LM head reusing the table

        def forward(self, ids):
            return self.head(self.emb(ids))

    layers = trace(Tied(), torch.randint(0, 20, (B, T)))
    assert [(lay.name, lay.op, lay.module) for lay in layers] == [
        ("emb", "embedding", "emb"), ("head", "linear", "head")]


class TinyLM(nn.Module):
    """Token ids in, through an embedding table, a bag of n-grams, attention and a head."""

    def __init__(self, vocab=50, d=D):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(T + 1, d)
        self.bag = nn.EmbeddingBag(30, d, mode="sum")
        self.block = nn.TransformerEncoderLayer(d, HEADS, 2 * d, dropout=0.0, batch_first=True)
        self.head = nn.Linear(d, vocab)

    def forward(self, ids, grams):
        positions = (ids != 0).long().cumsum(1)  # RoBERTa-style: int64 arithmetic on the ids
        h = self.tok(ids) + self.pos(positions) + self.bag(grams).unsqueeze(1)
        return self.head(self.block(h))


def test_integer_token_ids_trace_and_price():
    torch.manual_seed(0)
    model = TinyLM()
    ids, grams = torch.randint(0, 50, (B, T)), torch.randint(0, 30, (B, 3))
    layers = trace(model, (ids, grams))
    tok = next(lay for lay in layers if lay.name == "tok")
    bag = next(lay for lay in layers if lay.name == "bag")
    # a lookup reads the gathered rows (weight bytes), ids in 32-bit words, and does no arithmetic
    assert (tok.op, tok.kind, tok.w_elems, tok.out_elems, tok.in_elems, tok.ops) == (
        "embedding", "memory", B * T * D, B * T * D, 2 * B * T, 0)
    assert (bag.op, bag.w_elems, bag.out_elems, bag.ops) == ("embedding_bag", B * 3 * D, B * D, B * 3 * D)
    assert tok.has_weight and tok.weight_bits == 32
    d, ff, vocab = D, 2 * D, 50
    assert gemm_macs(layers) == 4 * B * T * d * d + 2 * B * T * T * d + 2 * B * T * d * ff + B * T * d * vocab
    report = pj.energy(model, (ids, grams))
    rows = {r.name: r for r in report.rows}
    assert rows["tok"].weight_bytes == pytest.approx(T * D * 4)  # per example of the batch
    assert rows["tok"].compute_pj == 0 and report.total_pj > 0
    cumsum = next(lay for lay in layers if lay.op == "cumsum")
    assert (cumsum.integer, cumsum.act_bits) == (True, 64)
    # a 64-bit integer add is priced as two carry-chained 32-bit adds of the 45 nm table
    assert rows[cumsum.name].compute_pj == pytest.approx(B * T * 2 * 0.1 / B)
    assert pj.hw.load_table().op("int_add", 64) == pytest.approx(0.2)


def test_bad_examples_and_hooks_removed():
    model = Hand()
    with pytest.raises(ValueError, match="the example input must be a tensor, a tuple of tensors or a dict of tensors"):
        trace(model, [torch.randn(1)])
    with pytest.raises(ValueError, match=r"cannot trace Hand: its forward failed on the example input of shape "
                                         r"\(2, 5, 16\): TypeError"):
        trace(model, torch.randn(B, T, D))  # memory missing
    trace(model, {"x": hand_inputs()[0], "memory": hand_inputs()[1]})
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


# --- real models (torchvision / transformers venv) -------------------------------------------

def vit_macs(image: int, patch: int, layers: int, heads: int, dim: int, mlp: int, classes: int) -> int:
    """Analytic MACs of torchvision's VisionTransformer for one image: the patch-embedding conv;
    per block the qkv and output projections, Q K^T and P V, the MLP; the class-token head."""
    patches = (image // patch) ** 2
    n = patches + 1  # + class token
    embed = patches * dim * 3 * patch * patch
    block = n * dim * 3 * dim + n * n * dim + n * n * dim + n * dim * dim + 2 * n * dim * mlp
    return embed + layers * block + dim * classes


def test_small_vit_equals_the_analytic_count():
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = tv.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4,
                                        hidden_dim=64, mlp_dim=128, num_classes=10)
    layers = trace(model, torch.randn(2, 3, 32, 32))
    assert gemm_macs(layers) == 2 * vit_macs(32, 8, 2, 4, 64, 128, 10)
    names = [lay.name for lay in layers if lay.kind == "gemm"]
    assert names[:5] == ["conv_proj", "encoder.layers.encoder_layer_0.self_attention.in_proj_weight",
                         "encoder.layers.encoder_layer_0.self_attention (sdpa)",
                         "encoder.layers.encoder_layer_0.self_attention (sdpa)",
                         "encoder.layers.encoder_layer_0.self_attention.out_proj"]


@pytest.mark.slow
def test_vit_b_16_at_224_equals_the_analytic_count():
    tv = pytest.importorskip("torchvision")
    model = tv.models.vit_b_16()
    macs = gemm_macs(trace(model, torch.randn(1, 3, 224, 224)))
    expected = vit_macs(224, 16, 12, 12, 768, 3072, 1000)
    assert expected == 17_563_828_224
    assert abs(macs - expected) <= 0.01 * expected
    assert macs == expected


def test_hf_bert_with_int64_ids_through_energy():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hidden, inter, layers_n, vocab = 32, 64, 2, 100
    config = transformers.BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers_n,
                                     num_attention_heads=4, intermediate_size=inter,
                                     max_position_embeddings=64)
    model = transformers.BertModel(config).eval()
    ids = torch.randint(0, vocab, (B, 10), dtype=torch.int64)
    mask = torch.ones(B, 10, dtype=torch.int64)
    mask[1, 7:] = 0  # padding: the mask reaches the attention kernel
    bt = B * 10
    per_layer = 4 * bt * hidden * hidden + 2 * bt * hidden * inter + 2 * B * 10 * 10 * hidden
    expected = layers_n * per_layer + B * hidden * hidden  # + pooler on the first token
    for example in (ids, (ids, mask)):
        layers = trace(model, example)
        assert gemm_macs(layers) == expected
        lookups = {lay.name for lay in layers if lay.op == "embedding"}
        assert lookups == {"embeddings.word_embeddings", "embeddings.position_embeddings",
                           "embeddings.token_type_embeddings"}
        sdpa = [lay for lay in layers if lay.name == "encoder.layer.0.attention.self (sdpa)"]
        assert [lay.op for lay in sdpa] == ["sdpa_qk", "sdpa_av"]
        report = pj.energy(model, example)
        assert report.total_pj > 0
        rows = {r.name: r for r in report.rows}
        assert rows["embeddings.word_embeddings"].weight_bytes == pytest.approx(10 * hidden * 4)


def test_hf_gpt2_conv1d_and_tied_head_and_timm_vit():
    transformers = pytest.importorskip("transformers")
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    d, vocab, n = 32, 100, 10
    config = transformers.GPT2Config(vocab_size=vocab, n_positions=32, n_embd=d, n_layer=2, n_head=4,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    layers = trace(model, torch.randint(0, vocab, (B, n)))
    bt = B * n  # per block: c_attn 3 d^2, c_proj d^2, MLP 8 d^2 per token, attention 2 T^2 d
    assert gemm_macs(layers) == 2 * (12 * bt * d * d + 2 * B * n * n * d) + bt * d * vocab
    assert [lay.name for lay in layers if lay.kind == "gemm"][-1] == "lm_head"  # tied to wte
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32).eval()
    assert gemm_macs(trace(vit, torch.randn(1, 3, 32, 32))) == vit_macs(32, 16, 12, 3, 192, 768, 1000)


def _depthwise_net():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                         nn.ReLU(), nn.Conv2d(8, 4, 1), nn.Flatten(), nn.Linear(4 * 16 * 16, 3))


@pytest.mark.parametrize("build", ["resnet", "depthwise"])
def test_an_int8_graph_traces_as_the_float_models_gemms_in_8_bit_integers(build):
    """pj.convert's int8 graph (torch.ao packed convs and Linear, oneDNN convs with a fused
    residual sum on a VNNI CPU; uint8 / quint8 tensors between them) is costed layer by layer:
    the same GEMMs as the float model (BN folded away, a depthwise conv's groups read from its
    channels), each an 8-bit integer one."""
    from penjing.models import SmallResNet

    torch.manual_seed(0)
    model = (SmallResNet(widths=(8, 16, 32)) if build == "resnet" else _depthwise_net()).eval()
    x = torch.rand(1, 1, 16, 16)
    float_gemms = [(lay.M, lay.K, lay.N, lay.count) for lay in trace(model, x) if lay.kind == "gemm"]
    pj.quantize(model, pj.QuantConfig(), data=torch.rand(32, 1, 16, 16), progress=False)
    pj.convert(model, graph=True)
    assert not any(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())  # all in the graph
    layers = [lay for lay in trace(model, x) if lay.kind == "gemm"]
    assert [(lay.M, lay.K, lay.N, lay.count) for lay in layers] == float_gemms
    assert all(lay.op == "int_gemm" and lay.integer and lay.weight_bits == 8 for lay in layers)
    report = pj.simulate(model, x)  # and the hardware model prices it
    assert report.macs == sum(m * k * n * c for m, k, n, c in float_gemms) and report.cycles > 0
