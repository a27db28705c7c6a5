"""Shared test helpers."""
import pickle
from pathlib import Path

import numpy as np
from torch import nn


class Linear(nn.Module):
    """``f(x) = A x``: a residual function with closed-form ResNet and ODE solutions."""

    def __init__(self, A):
        super().__init__()
        self.A = nn.Parameter(A.clone())

    def forward(self, x):
        return x @ self.A.T


class LinearField(nn.Module):
    """dz/dt = A z: exact flow expm(A t)."""

    def __init__(self, A):
        super().__init__()
        self.A = nn.Parameter(A)
        self.nfe = 0

    def forward(self, t, z):
        self.nfe += 1
        return z @ self.A.T


def write_batches(root: Path, n_per_batch: int = 40, names: str = ".jpg", seed: int = 0):
    """A fake ``cifar-10-batches-py`` folder: class-coloured noise, learnable."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, n_per_batch)
        images = rng.integers(0, 256, (n_per_batch, 3, 32, 32)).astype(np.float64)
        images[:, 0] = 0.5 * images[:, 0] + 12 * labels[:, None, None]  # the class is visible
        batch = {b"data": images.clip(0, 255).astype(np.uint8).reshape(n_per_batch, -1),
                 b"labels": labels.tolist(),
                 b"filenames": [f"img_{i}{names}".encode() for i in range(n_per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    return folder
