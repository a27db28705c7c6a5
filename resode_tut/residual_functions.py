r"""The one-layer residual function ``f(x, theta) = tanh(W x + b)`` and stacks of it.

This is the residual block of Haber & Ruthotto (2017): the simplest
parametrised map that makes a ResNet a nonlinear Neural ODE, small enough to
solve its limit ODE at tight tolerance, with Lipschitz constants in closed
form (:mod:`resode_tut.bounds`).
"""
from __future__ import annotations

import math
import numbers

import torch
from torch import nn
from torch.nn.utils import vector_to_parameters

from .schemes import get_scheme
from .stack import ResidualStack
from .weights import weight_path

__all__ = ["TanhLayer", "tanh_stack", "tanh_mean_weights"]


class TanhLayer(nn.Module):
    r"""``f(x) = tanh(W x + b)`` with ``theta = (W, b)``.

    Parameters
    ----------
    dim : int
        ``d``, the size of the state; ``W`` has shape (d, d), ``b`` shape (d,).

    Shapes: input (B, d) -> output (B, d).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.linear = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``tanh(W x + b)``, shape (B, dim) -> (B, dim)."""
        if x.shape[-1] != self.dim:
            raise ValueError(f"TanhLayer expects inputs of shape (B, {self.dim}), "
                             f"got {tuple(x.shape)}")
        return torch.tanh(self.linear(x))


def tanh_mean_weights(seed: int, dim: int = 2, rel_noise: float = 1.0):
    r"""The law of one layer of :func:`tanh_stack`: means and spreads of ``W`` and ``b``.

    The mean weights are drawn once per ``seed`` at the usual fan-in scale,
    ``bar W ~ N(0, 1/d)`` and ``bar b ~ N(0, 1)``; each weight's spread around
    its mean is ``rel_noise`` times that scale.

    Parameters
    ----------
    seed : int
        Draws the mean weights.
    dim : int
        ``d``, the state's features (a coupling stack's functions map ``d/2``).
    rel_noise : float
        The spread around the mean, in units of the scale.

    Returns
    -------
    W_bar : torch.Tensor, shape (d, d)
    b_bar : torch.Tensor, shape (d,)
    sigma_W : torch.Tensor, shape (d, d)
    sigma_b : torch.Tensor, shape (d,)
        All float64.
    """
    scale_W = torch.full((dim, dim), 1 / math.sqrt(dim), dtype=torch.float64)
    scale_b = torch.ones(dim, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    W_bar = scale_W * torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    b_bar = scale_b * torch.randn(dim, generator=gen, dtype=torch.float64)
    return W_bar, b_bar, rel_noise * scale_W, rel_noise * scale_b


def tanh_stack(depth: int, weights: str = "smooth", seed: int = 0, dim: int = 2,
               rel_noise: float = 1.0, num_modes: int = 3, scheme: str = "euler",
               dtype: torch.dtype = torch.float64) -> ResidualStack:
    r"""A stack of ``depth`` :class:`TanhLayer` whose weights follow a random path.

    The mean weights ``theta_bar`` are drawn once per ``seed`` at the usual
    fan-in scale (``W ~ N(0, 1/d)``, ``b ~ N(0, 1)``); every weight then
    deviates from its mean by ``rel_noise`` times that scale, along a smooth
    path ``theta(t)`` or i.i.d. across layers
    (:func:`resode_tut.weights.weight_path`).  Stacks of any depth built with
    one ``seed`` sample the *same* smooth path, so increasing ``depth`` refines
    one Neural ODE.

    Parameters
    ----------
    depth : int
        ``M``, the number of residual functions.
    weights : {"smooth", "iid"}
    seed : int
    dim : int
        ``d``, the state's features (a coupling stack's functions map ``d/2``).
    rel_noise : float
        Standard deviation of each weight around its mean, in units of its scale.
    num_modes : int
        Fourier modes of a smooth path.
    scheme : str or Scheme
        A name in :data:`resode_tut.schemes.SCHEMES` or a scheme.
    dtype : torch.dtype

    Returns
    -------
    ResidualStack
    """
    for name, value in (("depth", depth), ("dim", dim), ("num_modes", num_modes)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    scheme = get_scheme(scheme)
    scheme.check_depth(depth)
    width = scheme.function_features(dim)      # coupling: each function maps half
    W_bar, b_bar, sigma_W, sigma_b = tanh_mean_weights(seed, width, rel_noise)
    theta_bar = torch.cat([W_bar.flatten(), b_bar])  # parameter order of TanhLayer
    sigma = torch.cat([sigma_W.flatten(), sigma_b])
    times = scheme.function_times(depth)
    theta = weight_path(weights, times, theta_bar, sigma,
                        seed=seed + 1_000_003, num_modes=num_modes).to(dtype)
    functions = []
    for theta_n in theta:
        f = TanhLayer(width).to(dtype)
        vector_to_parameters(theta_n, f.parameters())
        functions.append(f)
    return ResidualStack(functions, scheme=scheme)
