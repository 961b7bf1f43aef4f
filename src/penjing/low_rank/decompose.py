"""The factorisations themselves: plain tensor maths, no modules.

Every function takes a weight tensor and returns the factor tensors, already shaped as the
weights of the layers that replace it (see :mod:`penjing.low_rank.modules`). All work in
float64 internally: a float32 SVD of a 4096x4096 matrix loses digits the exactness tests
can see, and the cost is paid once per layer.

Notation: a Conv2d weight is ``W[n, c, i, j]`` (``N`` outputs, ``C`` inputs, ``Kh x Kw``).
"""

from __future__ import annotations

import torch

Factors = tuple[torch.Tensor, ...]


def _svd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.linalg.svd(matrix.detach().double(), full_matrices=False)


def _split(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``matrix ~ left @ right`` with ``left: (m, rank)``, ``right: (rank, n)``.

    The singular values are split as ``sqrt(S)`` on each side, so both factors have the same
    scale: that keeps the two new layers' gradients balanced when they are fine-tuned.
    """
    u, s, vh = _svd(matrix)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


# --- spectra: the singular values each factorisation truncates -----------------------------

def linear_matrix(weight: torch.Tensor) -> torch.Tensor:
    """Linear ``(out, in)``: the weight itself."""
    return weight


def channel_matrix(weight: torch.Tensor) -> torch.Tensor:
    """Channel split (Zhang et al. 2015): ``N x (C*Kh*Kw)``, one row per output filter."""
    return weight.reshape(weight.shape[0], -1)


def spatial_matrix(weight: torch.Tensor) -> torch.Tensor:
    """Spatial split (Jaderberg et al. 2014): ``(C*Kh) x (N*Kw)``, ``M[(c,i),(n,j)] = W[n,c,i,j]``.

    A rank-r factorisation of this matrix is exactly a sum of r (vertical x horizontal)
    separable filters, which is what a Kh x 1 conv followed by a 1 x Kw conv computes.
    """
    n, c, kh, kw = weight.shape
    return weight.permute(1, 2, 0, 3).reshape(c * kh, n * kw)


def singular_values(matrix: torch.Tensor) -> torch.Tensor:
    """Singular values (descending, float64) of ``matrix``."""
    return torch.linalg.svdvals(matrix.detach().double())


def tucker_spectra(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values of the output-mode (``N x C*K*K``) and input-mode (``C x N*K*K``)
    unfoldings: what Tucker-2's two ranks truncate (HOSVD)."""
    n, c = weight.shape[:2]
    return (singular_values(weight.reshape(n, -1)),
            singular_values(weight.transpose(0, 1).reshape(c, -1)))


# --- factorisations ------------------------------------------------------------------------

def linear_factors(weight: torch.Tensor, rank: int) -> Factors:
    """``W (out x in) ~ B @ A``: ``A (rank x in)`` is the first Linear, ``B (out x rank)`` the second."""
    left, right = _split(weight, rank)
    return right, left


def embedding_factors(weight: torch.Tensor, rank: int) -> Factors:
    """Embedding table ``E (entries x dim) ~ A @ B``: ``A (entries x rank)`` is the narrower
    table, ``B`` the following Linear, whose weight is ``B^T (dim x rank)``."""
    left, right = _split(weight, rank)
    return left, right.t()


def channel_factors(weight: torch.Tensor, rank: int) -> Factors:
    """KxK conv ``C -> rank`` then 1x1 conv ``rank -> N``."""
    n, c, kh, kw = weight.shape
    left, right = _split(channel_matrix(weight), rank)
    return right.reshape(rank, c, kh, kw), left.reshape(n, rank, 1, 1)


def spatial_factors(weight: torch.Tensor, rank: int) -> Factors:
    """Kh x 1 conv ``C -> rank`` then 1 x Kw conv ``rank -> N``.

    With ``M = A @ B`` (``A: (C*Kh, r)``, ``B: (r, N*Kw)``):
    ``vertical[r, c, i, 0] = A[(c, i), r]`` and ``horizontal[n, r, 0, j] = B[r, (n, j)]``.
    """
    n, c, kh, kw = weight.shape
    a, b = _split(spatial_matrix(weight), rank)
    vertical = a.t().reshape(rank, c, kh, 1)
    horizontal = b.reshape(rank, n, kw).permute(1, 0, 2).reshape(n, rank, 1, kw)
    return vertical, horizontal


def tucker2_factors(weight: torch.Tensor, rank_in: int, rank_out: int, *, refine: bool = False,
                    iterations: int = 50) -> Factors:
    """Tucker-2 over the channel modes (Kim et al. 2016): ``W ~ G x_0 U_out x_1 U_in``.

    Returns ``(first, core, last)``: 1x1 conv ``C -> rank_in`` (``U_in^T``), KxK conv
    ``rank_in -> rank_out`` (the core ``G``), 1x1 conv ``rank_out -> N`` (``U_out``).
    HOSVD (leading singular vectors of each unfolding) by default; ``refine=True`` runs
    tensorly's HOOI (``partial_tucker``) from that start, which can only lower the error.
    """
    n, c = weight.shape[:2]
    w = weight.detach().double()
    if refine:
        tl, partial_tucker = _tensorly("refine=True (HOOI refinement of Tucker-2)")
        (core, (u_out, u_in)), _ = partial_tucker(w.numpy(), rank=[rank_out, rank_in], modes=[0, 1],
                                                  n_iter_max=iterations, init="svd")
        core, u_out, u_in = (torch.from_numpy(tl.to_numpy(t)).double() for t in (core, u_out, u_in))
    else:
        u_out = _svd(w.reshape(n, -1))[0][:, :rank_out]
        u_in = _svd(w.transpose(0, 1).reshape(c, -1))[0][:, :rank_in]
        core = torch.einsum("nchw,no,ci->oihw", w, u_out, u_in)
    return u_in.t().reshape(rank_in, c, 1, 1), core, u_out.reshape(n, rank_out, 1, 1)


def cp_factors(weight: torch.Tensor, rank: int, *, iterations: int = 200, seed: int = 0) -> Factors:
    """CP decomposition (Lebedev et al. 2015) by tensorly's ALS ``parafac``.

    ``W[n,c,i,j] ~ sum_r F_n[n,r] F_c[c,r] F_h[i,r] F_w[j,r]`` becomes 1x1 ``C -> R``,
    depthwise ``Kh x 1``, depthwise ``1 x Kw``, 1x1 ``R -> N``. Returned in that order.
    """
    n, c, kh, kw = weight.shape
    tl, _ = _tensorly("method='cp'")
    from tensorly.decomposition import parafac

    cp = parafac(weight.detach().double().numpy(), rank, n_iter_max=iterations, init="random",
                 random_state=seed, tol=1e-10)
    f_n, f_c, f_h, f_w = (torch.from_numpy(tl.to_numpy(f)).double() for f in cp.factors)
    f_n = f_n * torch.from_numpy(tl.to_numpy(cp.weights)).double()
    return (f_c.t().reshape(rank, c, 1, 1), f_h.t().reshape(rank, 1, kh, 1),
            f_w.t().reshape(rank, 1, 1, kw), f_n.reshape(n, rank, 1, 1))


def _tensorly(feature: str):
    """tensorly is optional: import it only where it is needed, with an actionable error."""
    try:
        import tensorly as tl
        from tensorly.decomposition import partial_tucker
    except ImportError:
        raise ImportError(f"{feature} needs tensorly: pip install tensorly") from None
    tl.set_backend("numpy")
    return tl, partial_tucker
