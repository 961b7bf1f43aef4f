"""The Winograd convolution F(m x m, r x r) as a handful of large tensor operations.

Layout is what makes it fast on a CPU. The input goes channels-last (``N, H, W, C``) so every
stage streams over contiguous channel vectors:

1. pad once into an ``N, Hp, Wp, C`` buffer sized to a whole number of tiles;
2. input transform ``V = B^T d B`` as two small-by-huge matrix products: the row pass
   contracts the ``alpha`` rows of every tile row (``unfold`` over H, no Python loop over
   tiles), the column pass the ``alpha`` columns (``unfold`` over W). The result is
   ``V[xi*nu, P, C]`` with ``P = N * tiles``;
3. the elementwise stage: ``alpha^2`` independent GEMMs ``M[k] = V[k] @ U[k]`` over channels
   (one ``bmm``), where the multiplications are saved and where the time goes;
4. output transform ``Y = A^T M A`` as two more matrix products, then one permute into the
   memory format of the input, as ``nn.Conv2d`` does: contiguous NCHW for NCHW input,
   channels-last for channels-last input (which a following ``WinogradConv2d`` reads
   without a transposing copy).

Every step is a differentiable PyTorch op, so autograd gives the gradient of the input and
of the weight (through the filter transform).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from penjing.winograd_conv.transforms import transform_tensors

Padding4 = tuple[int, int, int, int]  # top, bottom, left, right


def filter_transform(weight: torch.Tensor, m: int) -> torch.Tensor:
    """``U = G g G^T`` for every (out, in) filter pair, laid out as ``(alpha^2, C, K)``."""
    k, c, r, r2 = weight.shape
    if r != r2:
        raise ValueError(f"Winograd needs a square kernel, got {r}x{r2}")
    a = m + r - 1
    _, g, _ = transform_tensors(m, r, weight.dtype, weight.device)
    u = torch.matmul(torch.matmul(g, weight), g.T)  # (K, C, a, a)
    # contiguous: the reshape alone would be a strided view that bmm cannot hand to BLAS
    # (it then falls back to a loop ~10-100x slower).
    return u.permute(2, 3, 1, 0).reshape(a * a, c, k).contiguous()


def output_size(h: int, w: int, r: int, padding: Padding4) -> tuple[int, int]:
    top, bottom, left, right = padding
    return h + top + bottom - r + 1, w + left + right - r + 1


def winograd_conv2d(x: torch.Tensor, u: torch.Tensor, r: int, m: int, padding: Padding4,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """Stride-1, dilation-1 convolution of ``x`` (N, C, H, W) with the transformed filter ``u``
    (from :func:`filter_transform`, kernel size ``r``) using F(m x m, r x r).

    ``padding`` is zero padding (top, bottom, left, right). Equal to
    ``F.conv2d(F.pad(x, (left, right, top, bottom)), weight, bias)`` up to rounding.
    """
    n, c, h, w = x.shape
    a = m + r - 1
    if u.shape[0] != a * a or u.shape[1] != c:
        raise ValueError(f"transformed filter of shape {tuple(u.shape)} does not fit F({m}, {r}) "
                         f"on {c} input channels")
    k = u.shape[2]
    top, bottom, left, right = padding
    ho, wo = output_size(h, w, r, padding)
    if ho < 1 or wo < 1:
        raise ValueError(f"input {h}x{w} (padded {h + top + bottom}x{w + left + right}) is smaller "
                         f"than the {r}x{r} kernel")
    at, _, bt = transform_tensors(m, r, x.dtype, x.device)
    th, tw = -(-ho // m), -(-wo // m)  # tiles: ceil, the last one padded with zeros and cropped
    hp, wp = th * m + r - 1, tw * m + r - 1

    # 1. One copy does both the zero padding (to whole tiles) and the move to channels-last.
    xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, left, wp - w - left, top, hp - h - top))

    # 2. Input transform. Row pass: windows of alpha rows every m rows -> (i, N, tH, Wp, C),
    #    one (alpha x alpha) @ (alpha x everything) product.
    rows = xp.unfold(1, a, m).permute(4, 0, 1, 2, 3).reshape(a, -1)
    t1 = torch.mm(bt, rows).view(a, n, th, wp, c)
    #    Column pass: windows of alpha columns every m columns -> (xi, j, N, tH, tW, C).
    cols = t1.unfold(3, a, m).permute(0, 5, 1, 2, 3, 4).reshape(a, a, -1)
    v = torch.matmul(bt, cols).view(a * a, n * th * tw, c)  # (xi*nu, P, C)

    # 3. alpha^2 GEMMs over channels.
    mt = torch.bmm(v, u)  # (xi*nu, P, K)

    # 4. Output transform: contract xi, then nu; then tiles back into the image.
    o1 = torch.mm(at, mt.view(a, -1)).view(m, a, -1)
    o2 = torch.matmul(at, o1)  # (i, j, P*K)
    y = o2.view(m, m, n, th, tw, k)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        # channels-last in, channels-last out (as nn.Conv2d does): tiles -> (N, H, W, K).
        y = y.permute(2, 3, 0, 4, 1, 5).reshape(n, th * m, tw * m, k)[:, :ho, :wo].permute(0, 3, 1, 2)
        y = y.contiguous(memory_format=torch.channels_last)
    else:
        # NCHW in, contiguous NCHW out, so that user code calling .view() on it keeps working.
        y = y.permute(2, 5, 3, 0, 4, 1).reshape(n, k, th * m, tw * m)[:, :, :ho, :wo].contiguous()
    if bias is not None:
        y = y + bias.view(1, k, 1, 1)
    return y
