r"""Weights across depth: smooth paths ``theta(t)`` versus i.i.d. draws.

Both families share the law of a single layer's weights,
``theta_n ~ N(theta_bar, sigma^2 I)``; they differ only in how layers are
correlated.  A *smooth* path is a random trigonometric polynomial

.. math:: \theta(t) = \bar\theta + \frac{\sigma}{\sqrt K} \sum_{k=1}^{K}
          \big(a_k \cos 2\pi k t + b_k \sin 2\pi k t\big),\quad a_k, b_k \sim N(0, I),

sampled at ``t_n`` (so ``||theta_{n+1} - theta_n|| = O(1/N)``); *i.i.d.* weights
draw every layer independently (increments stay ``O(1)`` whatever the depth).
"""
from __future__ import annotations

import math

import torch

__all__ = ["WEIGHT_KINDS", "weight_path", "total_variation"]

WEIGHT_KINDS = ("smooth", "iid")


def weight_path(kind: str, times: torch.Tensor, theta_bar: torch.Tensor,
                sigma: float | torch.Tensor, seed: int, num_modes: int = 3) -> torch.Tensor:
    """Draw the weights ``theta_n`` of all layers.

    Parameters
    ----------
    kind : {"smooth", "iid"}
    times : torch.Tensor, shape (M,)
        The times ``t_n`` in [0, 1] of the layers.
    theta_bar : torch.Tensor, shape (P,)
        The mean weights (flattened).
    sigma : float or torch.Tensor of shape (P,)
        Standard deviation of each weight around ``theta_bar``; the same for
        both kinds.
    seed : int
        Seed of the draw.  The smooth path does not depend on ``times``:
        stacks of any depth made with the same seed sample the same
        ``theta(t)``.
    num_modes : int
        ``K``, the number of Fourier modes of a smooth path.

    Returns
    -------
    torch.Tensor, shape (M, P), dtype of ``theta_bar``
    """
    if kind not in WEIGHT_KINDS:
        raise ValueError(f"unknown weight kind {kind!r}: choose one of {WEIGHT_KINDS}")
    if theta_bar.dim() != 1:
        raise ValueError(f"theta_bar must be flat, shape (P,), got {tuple(theta_bar.shape)}")
    gen = torch.Generator().manual_seed(seed)
    P, dtype = theta_bar.numel(), theta_bar.dtype
    t = times.to(torch.float64)[:, None]
    if kind == "iid":
        noise = torch.randn(len(times), P, generator=gen, dtype=torch.float64)
    else:
        coef = torch.randn(2, num_modes, P, generator=gen, dtype=torch.float64)
        k = torch.arange(1, num_modes + 1, dtype=torch.float64)
        cos, sin = torch.cos(2 * math.pi * k * t), torch.sin(2 * math.pi * k * t)  # (M, K)
        noise = (cos @ coef[0] + sin @ coef[1]) / math.sqrt(num_modes)
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    return (theta_bar.to(torch.float64) + sigma * noise).to(dtype)


def total_variation(theta: torch.Tensor) -> torch.Tensor:
    r"""``sum_n ||theta_{n+1} - theta_n||`` of stacked weights ``theta``, shape (M, P)."""
    return (theta[1:] - theta[:-1]).norm(dim=1).sum()
