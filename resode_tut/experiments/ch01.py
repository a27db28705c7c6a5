r"""Chapter 1 (ResNets are Euler steps): its experiments.

:func:`distance_sweep` (shared with chapter 4, from
:mod:`resode_tut.experiments.discretisation`) measures the distance between stacks
and their ODE against depth; :func:`iid_plateau` predicts where that distance goes
for i.i.d. weights.  The rest of this docstring derives the prediction.

Where deep ResNets with i.i.d. weights go, and where their ODE goes instead.

For layers ``theta_n = theta_bar + sigma * xi_n`` with i.i.d. Gaussian ``xi_n``,
the law of large numbers sends the Euler recursion to the *averaged* ODE

.. math:: \dot x = F(x) = \mathbb E_\xi f(x, \bar\theta + \sigma\xi),

while the ODE whose weights interpolate the layers linearly,
``(1 - s) theta_n + s theta_{n+1}``, sees weights of spread
``sigma sqrt((1 - s)^2 + s^2)`` and tends to

.. math:: \dot x = \tilde F(x) = \int_0^1 \mathbb E_\xi
          f\big(x, \bar\theta + \sigma\sqrt{(1-s)^2 + s^2}\,\xi\big)\, ds .

For ``f = tanh(W x + b)`` each pre-activation is Gaussian,
``u_i ~ N(bar W_i x + bar b_i, v_i(x))`` with
``v_i(x) = sum_j sigma_{W,ij}^2 x_j^2 + sigma_{b,i}^2``, so both fields are
one-dimensional Gaussian integrals, computed here by Gauss-Hermite (and
Gauss-Legendre in ``s``) quadrature.  The distance between the two solutions is
the plateau that the ResNet-ODE distance of i.i.d. networks tends to.
"""
from __future__ import annotations

import numpy as np
import torch
from torchdiffeq import odeint

from ..bounds import euler_distance_bound, euler_step_terms
from ..limit import max_state_distance, ode_distance, solve_limit_ode
from ..residual_functions import TanhLayer, tanh_mean_weights
from ..solvers import Solver
from ..stack import ResidualStack
from .discretisation import DistanceSweep, distance_sweep
from .plots import depth_axis, use_style

__all__ = ["use_style",
           "tanh_mean_fields", "iid_plateau", "DistanceSweep", "distance_sweep", "depth_axis",
           "scalar_stack", "TIGHT_CASES", "tightness", "bound_without_growth"]


def scalar_stack(W, b) -> ResidualStack:
    """An Euler stack of one-dimensional :class:`TanhLayer` with the given weights.

    Parameters
    ----------
    W : sequence of float
        ``W_n``, one per layer.
    b : sequence of float
        ``b_n``, one per layer.
    """
    functions = []
    for w, c in zip(W, b):
        f = TanhLayer(1).double()
        with torch.no_grad():
            f.linear.weight.fill_(w)
            f.linear.bias.fill_(c)
        functions.append(f)
    return ResidualStack(functions)


def _ramp(N):
    """``f_n = tanh(b_n)`` with ``W = 0`` and ``b_n = 0.05 t_n``: layers that do not
    depend on the state, whose bias rises; from ``x_0 = 0``.
    """
    t = np.arange(N) / N
    return scalar_stack([0.0] * N, 0.05 * t), torch.zeros(1, 1, dtype=torch.float64)


def _drop_then_expand(N):
    """``W = 3`` throughout; ``b`` falls from 0.15 to -0.15 over ``t`` in [0, 1/128]
    and stays there; from ``x_0 = 0.05``, the ODE's equilibrium once ``b`` settles, so
    the error made while ``b`` falls grows like ``e^{3t}`` afterwards.
    """
    t = np.arange(N) / N
    return (scalar_stack([3.0] * N, 0.15 - 0.3 * np.minimum(t * 128, 1.0)),
            torch.full((1, 1), 0.05, dtype=torch.float64))


#: Two one-dimensional networks on which the bound's worst cases are (nearly) met:
#: ``"ramp"`` makes the bound nearly tight; ``"drop then expand"`` needs its growth factor.
TIGHT_CASES = {"ramp": _ramp, "drop then expand": _drop_then_expand}


def bound_without_growth(stack: ResidualStack, radius: torch.Tensor) -> torch.Tensor:
    """A *wrong* derivation, for checking the chapter's asserts: the recursion of
    :func:`resode_tut.euler_distance_bound` with the growth factor ``1 + h L_n``
    dropped, i.e. the local errors summed as if they never grew.

    Parameters
    ----------
    stack : ResidualStack
        Euler, :class:`TanhLayer` functions.
    radius : torch.Tensor, shape (B,)
        As for :func:`resode_tut.euler_distance_bound`.
    """
    return euler_step_terms(stack, radius)[1].sum(0)


def tightness(depths=(16, 64, 256, 1024)) -> dict:
    """Measured distance, the bound and the growth-free sum on :data:`TIGHT_CASES`.

    Parameters
    ----------
    depths : sequence of int
        Layers ``N`` (the second case needs ``N >= 256`` for several steps while
        ``b`` falls).

    Returns
    -------
    dict
        ``{case: {"distance", "bound", "without_growth": numpy.ndarray (len(depths),)}}``.
    """
    out = {}
    for case, make in TIGHT_CASES.items():
        rows = {"distance": [], "bound": [], "without_growth": []}
        for N in depths:
            stack, x0 = make(N)
            ode = solve_limit_ode(stack, x0)
            radius = ode.flatten(2).norm(dim=2).amax(dim=0)
            rows["distance"].append(ode_distance(stack, x0).item())
            rows["bound"].append(euler_distance_bound(stack, radius).item())
            rows["without_growth"].append(bound_without_growth(stack, radius).item())
        out[case] = {k: np.array(v) for k, v in rows.items()}
    return out


def _gauss_tanh(mean: torch.Tensor, var: torch.Tensor, nodes: int) -> torch.Tensor:
    """``E tanh(mean + sqrt(var) z)``, ``z ~ N(0, 1)``, elementwise."""
    z, w = np.polynomial.hermite_e.hermegauss(nodes)  # weight exp(-z^2/2)
    z = torch.as_tensor(z, dtype=mean.dtype)
    w = torch.as_tensor(w / np.sqrt(2 * np.pi), dtype=mean.dtype)
    return (torch.tanh(mean[..., None] + var.sqrt()[..., None] * z) * w).sum(-1)


def tanh_mean_fields(W_bar: torch.Tensor, b_bar: torch.Tensor, sigma_W: torch.Tensor,
                     sigma_b: torch.Tensor, nodes: int = 48, s_nodes: int = 24):
    """The averaged fields ``F`` (ResNet) and ``F~`` (interpolated ODE) of tanh layers.

    Parameters
    ----------
    W_bar : torch.Tensor, shape (d, d)
    b_bar : torch.Tensor, shape (d,)
        Mean weights.
    sigma_W : torch.Tensor, shape (d, d)
    sigma_b : torch.Tensor, shape (d,)
        Standard deviations of the i.i.d. layer weights around their means.
    nodes : int
        Gauss-Hermite nodes in the Gaussian variable.
    s_nodes : int
        Gauss-Legendre nodes in ``s``.

    Returns
    -------
    (F, F_tilde) : two callables ``(t, x) -> tensor``, x of shape (B, d)
    """
    s, ws = np.polynomial.legendre.leggauss(s_nodes)
    s, ws = (s + 1) / 2, ws / 2                       # Gauss-Legendre on [0, 1]
    shrink = torch.as_tensor((1 - s) ** 2 + s ** 2, dtype=W_bar.dtype)
    ws = torch.as_tensor(ws, dtype=W_bar.dtype)

    def moments(x):
        return x @ W_bar.T + b_bar, (x ** 2) @ (sigma_W ** 2).T + sigma_b ** 2

    def F(t, x):
        mean, var = moments(x)
        return _gauss_tanh(mean, var, nodes)

    def F_tilde(t, x):
        mean, var = moments(x)
        per_s = _gauss_tanh(mean[..., None], var[..., None] * shrink, nodes)  # (B, d, S)
        return (per_s * ws).sum(-1)

    return F, F_tilde


def iid_plateau(seed: int, x0: torch.Tensor, dim: int = 2, rel_noise: float = 1.0,
                num_times: int = 257) -> torch.Tensor:
    """Predicted large-depth distance between an i.i.d. tanh stack and its ODE.

    Uses the mean weights and spreads of :func:`resode_tut.tanh_stack` with the
    same ``seed``, ``dim`` and ``rel_noise``.

    Parameters
    ----------
    seed : int
    x0 : torch.Tensor, shape (B, dim), float64
    dim : int
    rel_noise : float
    num_times : int
        Times in [0, 1] at which the two mean-field solutions are compared.

    Returns
    -------
    torch.Tensor, shape (B,)
        ``max_t ||x_F(t) - x_F~(t)||`` for each input.
    """
    W_bar, b_bar, sigma_W, sigma_b = tanh_mean_weights(seed, dim, rel_noise)
    F, F_tilde = tanh_mean_fields(W_bar, b_bar, sigma_W, sigma_b)
    t = torch.linspace(0, 1, num_times, dtype=x0.dtype)
    opts = Solver("dopri5", tol=1e-9, atol=1e-11).odeint_kwargs()
    with torch.no_grad():
        resnet_limit = odeint(F, x0, t, **opts)
        ode_limit = odeint(F_tilde, x0, t, **opts)
    return max_state_distance(resnet_limit, ode_limit)
