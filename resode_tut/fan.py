r"""Lady Windermere's fan: how the local errors of a fixed-step solver travel.

Hairer, Norsett and Wanner (1993, Fig. II.3.2): from every point ``z_n`` of a
numerical trajectory, follow the *exact* flow to the final time.  The spread of
these curves at ``t = 1`` is the global error, built from the local error of
each step carried along by the flow.
"""
from __future__ import annotations

import torch
from torchdiffeq import odeint

from .node import NeuralODE, Solver

__all__ = ["windermere_fan"]


def windermere_fan(model: NeuralODE, x: torch.Tensor, step_size: float,
                   num_times: int = 16, tol: float = 1e-8):
    """Euler steps of ``model``'s field and the exact flows that start from them.

    Parameters
    ----------
    model : NeuralODE
    x : torch.Tensor, shape (B, d)
    step_size : float
        ``h``, with ``1/h`` an integer ``N``.
    num_times : int
        Samples of each exact curve.
    tol : float
        dopri5 tolerance of the "exact" flows.

    Returns
    -------
    euler : torch.Tensor, shape (N + 1, B, d)
        ``z_0, ..., z_N``.
    exact : list of torch.Tensor
        ``exact[n]``, shape (num_times, B, d): the exact flow from ``z_n`` at
        ``t_n = n h`` to ``t = 1`` (``exact[0]`` is the true trajectory).
    """
    N = round(1 / step_size)
    if abs(N * step_size - 1) > 1e-9:
        raise ValueError(f"1/step_size must be an integer, got step_size={step_size}")
    times = torch.linspace(0, 1, N + 1, dtype=x.dtype)
    with torch.no_grad():
        euler = model.flow(x, Solver("euler", step_size), times)
        exact = [odeint(model.field, euler[n], torch.linspace(float(times[n]), 1, num_times,
                                                              dtype=x.dtype),
                        method="dopri5", rtol=tol, atol=tol) for n in range(N)]
    return euler, exact
