r"""A computable upper bound on the distance between a ResNet and its Neural ODE.

For an Euler stack of :class:`~resode_tut.residual_functions.TanhLayer`
(``f(x, theta) = tanh(W x + b)``) the error ``e_n = ||x_n - x(t_n)||`` obeys the
discrete Gronwall recursion

.. math:: e_{n+1} \le (1 + h L_n)\, e_n + \frac{h^2}{2} \hat L_n \sqrt d
          + \frac{h}{2} \sqrt{R^2 + 1}\, \|\theta_{n+1} - \theta_n\|, \qquad e_0 = 0,

with ``L_n = ||W_n||`` (the Lipschitz constant of ``f(., theta_n)``),
``hat L_n = max(||W_n||, ||W_{n+1}||)`` (that of ``f(., theta(s))`` between the
knots), ``sqrt(d)`` a bound on ``|f|`` and ``sqrt(R^2 + 1)`` the Lipschitz
constant in ``theta`` at states of norm ``<= R`` over the step.  ``R`` must bound the
ODE's state over each step, not only at the grid times: since ``|dx/dt| = |f| <=
sqrt(d)``, the state moves at most ``h sqrt(d)`` within a step, so ``R`` is the largest
norm at the grid times plus ``h sqrt(d)``.  Bounding ``1 + h L_n <= e^{h L}`` and taking
maxima over layers gives the closed form
``(e^L / 2) [L M / N + L_theta sum_n ||theta_{n+1} - theta_n|| / N]``,
which is looser.  :func:`euler_distance_bound` returns either form.

Both are this package's derivation (a standard Gronwall argument), not formulas
quoted from Sander et al. (2022), who state that the distance is bounded, that
their bound is tight, and that it does not vanish with ``N`` unless the weights
are smooth.  These forms share the dichotomy (through the total-variation
term).  Each step takes a worst case (expansion by ``||W_n||`` in every direction,
``|f|`` at its saturation value, ``L_theta`` at the largest state): on chapter 1's
networks they are one to two orders of magnitude above the measured distance, and on
a network that meets the worst cases (chapter 1: state-independent layers whose bias
rises, ``W = 0``) the recursion is within 0.1% of it.
"""
from __future__ import annotations

import math

import torch
from torch.nn.utils import parameters_to_vector

from .residual_functions import TanhLayer
from .stack import ResidualStack

__all__ = ["euler_distance_bound", "euler_step_terms", "FORMS"]


FORMS = ("recursion", "closed")


def euler_distance_bound(stack: ResidualStack, radius: torch.Tensor,
                         form: str = "recursion") -> torch.Tensor:
    r"""Upper bound on ``max_n ||x_n - x(t_n)||`` for an Euler stack of tanh layers.

    Parameters
    ----------
    stack : ResidualStack
        ``scheme="euler"``, every function a :class:`TanhLayer`.
    radius : torch.Tensor, shape (B,)
        For each input, the largest norm of the ODE solution at the grid times,
        ``max_n ||x(t_n)||``; the bound adds ``h sqrt(d)`` to it, the most the state
        can move within a step.
    form : {"recursion", "closed"}
        ``"recursion"``: the discrete Gronwall recursion with per-layer
        constants; ``"closed"``: its closed form with ``L = max_n ||W_n||``,
        ``M = sqrt(d)``, ``L_theta = sqrt(R^2 + 1)``.  Both are upper bounds; the
        recursion is the tighter.

    Returns
    -------
    torch.Tensor, shape (B,)
        The bound, one per input.
    """
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}: choose one of {FORMS}")
    with torch.no_grad():
        growth, local, w, dtheta, lip_theta = _terms(stack, radius)
        if form == "closed":
            L, N, sqrt_d = w.max(), stack.num_steps, math.sqrt(stack.functions[0].dim)
            return torch.exp(L) / 2 * (L * sqrt_d / N + lip_theta * dtheta.sum() / N)
        e = torch.zeros_like(radius)
        for n in range(stack.num_steps):
            e = growth[n] * e + local[n]
        return e


def euler_step_terms(stack: ResidualStack, radius: torch.Tensor):
    r"""The two terms of :func:`euler_distance_bound`'s recursion, step by step: the
    growth factor ``1 + h L_n`` and the local error
    ``h^2/2 hat L_n sqrt(d) + h/2 sqrt(R^2 + 1) ||theta_{n+1} - theta_n||``.

    Parameters
    ----------
    stack : ResidualStack
        ``scheme="euler"``, every function a :class:`TanhLayer`.
    radius : torch.Tensor, shape (B,)
        As for :func:`euler_distance_bound`.

    Returns
    -------
    (growth, local)
        ``growth`` of shape (N,), ``local`` of shape (N, B).
    """
    with torch.no_grad():
        return _terms(stack, radius)[:2]


def _terms(stack, radius):
    if stack.scheme != "euler":
        raise ValueError(f"euler_distance_bound needs an Euler stack, got scheme {stack.scheme!r}")
    if not all(isinstance(f, TanhLayer) for f in stack.functions):
        raise ValueError("euler_distance_bound needs a stack of TanhLayer functions")
    fs = list(stack.functions)
    w = torch.stack([torch.linalg.matrix_norm(f.linear.weight, ord=2) for f in fs])
    theta = torch.stack([parameters_to_vector(f.parameters()) for f in fs])
    # theta(t) is constant after the last knot: no increment there.
    dtheta = torch.cat([(theta[1:] - theta[:-1]).norm(dim=1), theta.new_zeros(1)])
    w_hat = torch.maximum(w, torch.cat([w[1:], w[-1:]]))
    h, sqrt_d = stack.h, math.sqrt(fs[0].dim)
    lip_theta = torch.sqrt((radius + h * sqrt_d) ** 2 + 1)   # R over each whole step
    local = torch.stack([h * h / 2 * w_hat[n] * sqrt_d + h / 2 * lip_theta * dtheta[n]
                         for n in range(stack.num_steps)])
    return 1 + h * w, local, w, dtheta, lip_theta
