"""ResNet-18's convolutions at 224x224 as SCALE-Sim topology rows (padding folded into the ifmap).

Built from He et al. 2016 (Table 1) without torchvision: ``conv1`` 7x7/2, four stages of two
basic blocks (3x3 convs), a 1x1/2 projection shortcut at the start of stages 2-4, and the
final fully connected layer as a GEMM. SCALE-Sim has no padding, so each ifmap is given at
its padded size; its ``ceil((H - R + s) / s)`` output size is then one larger than torch's for
the stride-2 layers (the extra row and column read past the ifmap and issue no request).
"""

from __future__ import annotations

from penjing.hw.scalesim_io import ConvShape


def resnet18_convs() -> list[ConvShape]:
    """The 20 convolutions of ResNet-18 (224x224 input), in forward order."""
    layers = [ConvShape("conv1", 230, 230, 7, 7, 3, 64, 2, 2)]
    size, cin = 56, 64
    for stage, cout in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            stride = 2 if stage > 1 and block == 0 else 1
            prefix = f"layer{stage}.{block}"
            layers.append(ConvShape(f"{prefix}.conv1", size + 2, size + 2, 3, 3, cin, cout, stride, stride))
            out = size // stride
            layers.append(ConvShape(f"{prefix}.conv2", out + 2, out + 2, 3, 3, cout, cout, 1, 1))
            if stride == 2:
                layers.append(ConvShape(f"{prefix}.downsample", size, size, 1, 1, cin, cout, 2, 2))
            size, cin = out, cout
    return layers


def resnet18_fc() -> ConvShape:
    """The classifier, a 1 x 512 by 512 x 1000 GEMM."""
    return ConvShape.gemm("fc", 1, 1000, 512)


#: GEMM shapes (name, M, N, K) for the parity sweep: the classifier, transformer projections
#: and attention products, an LSTM gate block, and a tall-skinny product.
GEMMS = [("fc", 1, 1000, 512), ("attn_qkv", 128, 768, 256), ("attn_scores", 128, 128, 64),
         ("mlp_up", 64, 1024, 256), ("lstm_gates", 16, 1024, 512), ("tall", 1000, 64, 256)]


def gemm_shapes() -> list[ConvShape]:
    return [ConvShape.gemm(name, M, N, K) for name, M, N, K in GEMMS]
