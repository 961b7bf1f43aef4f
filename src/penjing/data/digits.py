"""The handwritten-digits set that ships inside scikit-learn (8x8, 1,797 images)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset

#: The fixed split: 25% test, stratified, seeded, so every run compares like with like.
TEST_FRACTION = 0.25
SPLIT_SEED = 0


def digits(test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED) -> tuple[TensorDataset, TensorDataset]:
    """Return ``(train, test)``: images as float32 ``(N, 1, 8, 8)`` in [0, 1], labels int64."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    return (
        TensorDataset(torch.from_numpy(x_tr), torch.from_numpy(y_tr)),
        TensorDataset(torch.from_numpy(x_te), torch.from_numpy(y_te)),
    )
