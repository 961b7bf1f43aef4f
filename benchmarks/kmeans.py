"""k-means for weight sharing: penjing's sorted 1-D Lloyd vs scikit-learn's KMeans.

Both start from the same linear centroids and run Lloyd iterations to convergence (at most
100); the table gives wall time, the speed-up and the ratio of the final inertias (sum of
squared distances to the centroids; 1.000 = the same solution quality).

    python benchmarks/kmeans.py
"""

from __future__ import annotations

import time

import numpy as np
import torch
from sklearn.cluster import KMeans

from penjing.sharing import init_centroids, kmeans_1d


def inertia(x: np.ndarray, centroids: np.ndarray) -> float:
    c = np.sort(centroids)
    mids = (c[1:] + c[:-1]) / 2
    return float(((x - c[np.searchsorted(mids, x)]) ** 2).sum())


def weights(n: int, seed: int = 0) -> torch.Tensor:
    """Surviving weights of a pruned layer: a bimodal distribution with a gap around zero."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(int(n * 1.6), generator=g) * 0.05
    return w[w.abs() > 0.03][:n]


def main() -> None:
    print("| weights | k | sklearn KMeans (s) | penjing kmeans_1d (s) | speed-up | inertia penjing / sklearn |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in (100_000, 1_600_000):
        x = weights(n)
        xs = x.double().numpy()
        for k in (32, 256):
            start = init_centroids(x.sort().values, k, "linear").numpy().reshape(-1, 1)
            t0 = time.perf_counter()
            ref = KMeans(k, init=start, n_init=1, max_iter=100, algorithm="lloyd").fit(xs.reshape(-1, 1))
            t_ref = time.perf_counter() - t0
            t0 = time.perf_counter()
            centroids, _ = kmeans_1d(x, k, init="linear", max_iter=100)
            t_ours = time.perf_counter() - t0
            ratio = inertia(xs, centroids.double().numpy()) / inertia(xs, ref.cluster_centers_.ravel())
            print(f"| {n:,} | {k} | {t_ref:.3f} | {t_ours:.3f} | {t_ref / t_ours:.1f}x | {ratio:.4f} |", flush=True)


if __name__ == "__main__":
    main()
