"""Small data sets that live in memory and need no download.

``digits`` -- scikit-learn's 8x8 handwritten digits (1,797 images, shipped with
scikit-learn, no download), standardised and split with a fixed seed.
``concentric_spheres`` -- Ott et al. (2021)'s three shells, two classes, seeded.
``xor`` -- the four XOR points.
"""
from __future__ import annotations

import numbers

import numpy as np
import torch

__all__ = ["digits", "concentric_spheres", "xor", "SHELLS"]


def _float_dtype(dtype, why: str) -> None:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype} ({why})")


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
    _float_dtype(dtype, "the standardised features would be truncated to a few integers")
    from sklearn.datasets import load_digits

    data = load_digits()
    x, y = data.data.astype(np.float64), data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(test_fraction * len(x)))
    test, train = order[:n_test], order[n_test:]
    mean, std = x[train].mean(0), x[train].std(0) + 1e-6
    x = (x - mean) / std
    to = lambda a, t: torch.as_tensor(a, dtype=t)
    return (to(x[train], dtype), to(y[train], torch.int64), to(x[test], dtype),
            to(y[test], torch.int64))


#: The three shells of :func:`concentric_spheres`: ``(r_min, r_max, label)``.
SHELLS = ((0.10, 0.15, 0), (0.25, 0.30, 1), (0.40, 0.45, 0))


def concentric_spheres(n: int, dim: int = 2, seed: int = 0, dtype: torch.dtype = torch.float32):
    """Ott et al. (2021)'s three concentric shells in ``R^dim``, two classes.

    Radii in [0.10, 0.15] (label 0, a quarter of the points), [0.25, 0.30]
    (label 1, half) and [0.40, 0.45] (label 0, a quarter); radius
    ``r = (r_max - r_min) u^(1/dim) + r_min`` with ``u ~ U(0, 1)``, direction a
    normalised Gaussian.  Unlike the official generator, it is seeded.

    Parameters
    ----------
    n : int
        Number of points (>= 4).
    dim : int
        ``d`` (the paper uses 2, 3, 10, 900).
    seed : int
    dtype : torch.dtype

    Returns
    -------
    (x, y)
        ``x`` of shape (n, dim), ``y`` of shape (n,) int64, shuffled.
    """
    for name, value, least in (("n", n, 4), ("dim", dim, 1)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    _float_dtype(dtype, "points lie within radius 0.45: an integer dtype would round them "
                 "all to 0")
    gen = torch.Generator().manual_seed(seed)
    counts = [n // 4, n - 2 * (n // 4), n // 4]
    xs, ys = [], []
    for (r_min, r_max, label), m in zip(SHELLS, counts):
        direction = torch.randn(m, dim, generator=gen, dtype=torch.float64)
        direction = direction / direction.norm(dim=1, keepdim=True)
        u = torch.rand(m, 1, generator=gen, dtype=torch.float64)
        xs.append(direction * ((r_max - r_min) * u ** (1 / dim) + r_min))
        ys.append(torch.full((m,), label, dtype=torch.int64))
    order = torch.randperm(n, generator=gen)
    return torch.cat(xs)[order].to(dtype), torch.cat(ys)[order]


def xor(dtype: torch.dtype = torch.float32):
    """The four XOR points ``(+-1, +-1)``, label 1 where the signs differ.

    Returns
    -------
    (x, y)
        ``x`` of shape (4, 2), ``y`` of shape (4,) int64.
    """
    _float_dtype(dtype, "the inputs of a network")
    x = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]], dtype=dtype)
    return x, torch.tensor([0, 1, 1, 0])
