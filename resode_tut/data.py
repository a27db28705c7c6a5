"""Data sets that run offline.

``digits`` -- scikit-learn's 8x8 handwritten digits (1,797 images, shipped with
scikit-learn, no download), standardised and split with a fixed seed.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["digits"]


def digits(test_fraction: float = 0.25, seed: int = 0, dtype: torch.dtype = torch.float32):
    """The sklearn digits, flattened to 64 features, standardised on the training split.

    Parameters
    ----------
    test_fraction : float
        Share of the images held out for testing, in (0, 1).
    seed : int
        Seed of the train/test shuffle.
    dtype : torch.dtype

    Returns
    -------
    (x_train, y_train, x_test, y_test)
        ``x_*`` of shape (n, 64) in ``dtype``, ``y_*`` of shape (n,) int64 labels 0..9.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    from sklearn.datasets import load_digits

    data = load_digits()
    x, y = data.data.astype(np.float64), data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(test_fraction * len(x)))
    test, train = order[:n_test], order[n_test:]
    mean, std = x[train].mean(0), x[train].std(0) + 1e-6
    x = (x - mean) / std
    to = lambda a, t: torch.as_tensor(a, dtype=t)
    return to(x[train], dtype), to(y[train], torch.int64), to(x[test], dtype), to(y[test], torch.int64)
