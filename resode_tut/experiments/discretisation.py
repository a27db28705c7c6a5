r"""Chapters 1 and 4: how far is a ResNet from its Neural ODE, as depth grows?

:func:`distance_sweep` builds stacks of :class:`~resode_tut.TanhLayer` of
several depths with smooth or i.i.d. weights, and measures for each the
distance ``max_n ||x_n - x(t_n)||`` to the limit ODE (solved with torchdiffeq)
next to the Gronwall bound of :mod:`resode_tut.bounds`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..bounds import euler_distance_bound
from ..limit import max_state_distance, solve_limit_ode
from ..progress import progress as progress_bar
from ..rates import loglog_slope
from ..residual_functions import tanh_stack
from ..solvers import Solver
from ..weights import WEIGHT_KINDS

__all__ = ["DistanceSweep", "distance_sweep"]

#: The schemes whose stacks :func:`distance_sweep` compares with their ODE.
DISTANCE_SCHEMES = ("euler", "heun")


@dataclass
class DistanceSweep:
    """Distances between ResNets and their ODEs over depths, kinds and seeds.

    Attributes
    ----------
    depths : numpy.ndarray, shape (K,)
    seeds : list of int, length S
    inputs : torch.Tensor, shape (B, d)
        The inputs ``x_0`` shared by all networks.
    distance : dict[str, numpy.ndarray of shape (K, S)]
        Per weight kind: ``max_n ||x_n - x(t_n)||`` averaged over the inputs.
    bound : dict[str, numpy.ndarray of shape (K, S)]
        The Gronwall bound (per-layer recursion) averaged over the inputs.
    closed_bound : dict[str, numpy.ndarray of shape (K, S)]
        The paper's closed-form bound averaged over the inputs.
    bound_violations : int
        Number of (input, depth, seed, kind) with distance above its bound;
        0 when the theory holds (checked against both forms of the bound).
    """

    depths: np.ndarray
    seeds: list
    inputs: torch.Tensor
    distance: dict = field(default_factory=dict)
    bound: dict = field(default_factory=dict)
    closed_bound: dict = field(default_factory=dict)
    bound_violations: int = 0

    def mean(self, kind: str, what: str = "distance") -> np.ndarray:
        """Average over seeds, shape (K,).

        Parameters
        ----------
        kind : {"smooth", "iid"}
        what : {"distance", "bound", "closed_bound"}
        """
        return getattr(self, what)[kind].mean(axis=1)

    def slope(self, kind: str, what: str = "distance") -> float:
        """Fitted log-log slope against depth of :meth:`mean`.

        Parameters
        ----------
        kind : {"smooth", "iid"}
        what : {"distance", "bound", "closed_bound"}
        """
        return loglog_slope(self.depths, self.mean(kind, what))


def distance_sweep(depths: Sequence[int], kinds: Sequence[str] = WEIGHT_KINDS,
                   seeds: Sequence[int] = (0, 1, 2, 3), num_inputs: int = 64,
                   dim: int = 2, rel_noise: float = 1.0, num_modes: int = 3,
                   input_seed: int = 12345, rtol: float = 1e-6, atol: float = 1e-8,
                   scheme: str = "euler", progress: bool = True) -> DistanceSweep:
    """Measure the ResNet-ODE distance for every depth, weight kind and seed.

    Parameters
    ----------
    depths : sequence of int
        Depths ``M``: stacks of ``M`` tanh layers (step ``h = 1/M`` for
        Euler, ``1/(M - 1)`` for Heun).
    kinds : sequence of {"smooth", "iid"}
        Weight kinds.
    seeds : sequence of int
        One network (mean weights and path) per seed; the same seed gives the
        same smooth path at every depth.
    num_inputs : int
        Inputs ``x_0 ~ N(0, I_d)``, shared by all networks.
    dim : int
        State size (passed to :func:`resode_tut.tanh_stack`).
    rel_noise : float
        Spread of the weights around their mean (passed to :func:`resode_tut.tanh_stack`).
    num_modes : int
        Fourier modes of the smooth path (passed to :func:`resode_tut.tanh_stack`).
    input_seed : int
        Seeds the inputs.
    rtol : float
        Relative tolerance of the ``dopri5`` solve of the limit ODE (float64).
    atol : float
        Absolute tolerance of that solve.
    scheme : {"euler", "heun"}
        The Gronwall bounds hold for Euler only: for Heun, ``bound`` and
        ``closed_bound`` are NaN and no violation is counted.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    DistanceSweep
    """
    depths = np.asarray(depths)
    if scheme not in DISTANCE_SCHEMES:
        raise ValueError(f"distance_sweep compares a stack of one of {DISTANCE_SCHEMES} with its "
                         f"ODE, got scheme {scheme!r} (chapter 8 checks the other schemes' orders)")
    for kind in kinds:
        if kind not in WEIGHT_KINDS:
            raise ValueError(f"unknown weight kind {kind!r}: choose from {WEIGHT_KINDS}")
    gen = torch.Generator().manual_seed(input_seed)
    x0 = torch.randn(num_inputs, dim, generator=gen, dtype=torch.float64)
    out = DistanceSweep(depths=depths, seeds=list(seeds), inputs=x0)
    jobs = [(k, i, j) for k in kinds for i in range(len(depths)) for j in range(len(seeds))]
    for kind in kinds:
        out.distance[kind] = np.zeros((len(depths), len(seeds)))
        out.bound[kind] = np.zeros((len(depths), len(seeds)))
        out.closed_bound[kind] = np.zeros((len(depths), len(seeds)))
    for kind, i, j in progress_bar(jobs, "ResNet vs ODE", enabled=progress):
        stack = tanh_stack(int(depths[i]), kind, seed=seeds[j], dim=dim,
                           rel_noise=rel_noise, num_modes=num_modes, scheme=scheme)
        with torch.no_grad():
            resnet = stack.trajectory(x0)
        ode = solve_limit_ode(stack, x0, solver=Solver("dopri5", tol=rtol, atol=atol))
        dist = max_state_distance(resnet, ode)
        out.distance[kind][i, j] = dist.mean().item()
        if scheme != "euler":
            out.bound[kind][i, j] = out.closed_bound[kind][i, j] = float("nan")
            continue
        radius = max_state_distance(ode, torch.zeros_like(ode))
        bound = euler_distance_bound(stack, radius)
        closed = euler_distance_bound(stack, radius, form="closed")
        out.bound_violations += int((dist > bound).sum() + (dist > closed).sum())
        out.bound[kind][i, j] = bound.mean().item()
        out.closed_bound[kind][i, j] = closed.mean().item()
    return out
