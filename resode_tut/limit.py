r"""The Neural ODE that a :class:`~resode_tut.ResidualStack` discretises.

A stack whose layers share one architecture defines a weight path
``theta(t)``: the piecewise-linear interpolant through ``(t_n, theta_n)``,
where ``theta_n`` are the parameters of ``f_n`` and ``t_n`` the times of
:attr:`ResidualStack.function_times`.  Its limit ODE is

.. math:: \frac{dx}{dt} = f(x, \theta(t)), \qquad t \in [0, 1],

solved here with ``torchdiffeq.odeint``.  For the Euler grid the last knot is
``t_{M-1} = 1 - h`` and ``theta`` is held constant on ``[1 - h, 1]``.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, stack_module_state
from torchdiffeq import odeint

from .solvers import Solver
from .stack import ResidualStack

__all__ = ["InterpolatedField", "LIMIT_SOLVER", "WEIGHT_PATHS", "solve_limit_ode",
           "ode_distance", "knot_position", "max_state_distance"]

#: The default solver of the limit ODE: dopri5, forced to step on every knot.
LIMIT_SOLVER = Solver("dopri5", tol=1e-7, atol=1e-9)


def knot_position(t: float, h: float, M: int) -> tuple[int, float]:
    """Where ``t`` falls among ``M`` knots ``0, h, 2h, ...``.

    Returns ``(n, w)`` with ``theta(t) = (1 - w) theta_n + w theta_{n+1}``,
    ``0 <= w < 1``; ``w = 0`` on a knot (to 1e-9, so that a solver stepping on
    the knots sees each layer's own weights) and after the last knot, where
    ``theta`` is held constant.

    Parameters
    ----------
    t : float
        A time in [0, 1].
    h : float
        The spacing of the knots.
    M : int
        The number of knots.
    """
    s = max(t / h, 0.0)
    n = min(int(s + 1e-9), M - 1)
    w = 0.0 if n == M - 1 else s - n
    return n, (0.0 if w < 1e-9 else w)


def max_state_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``max_n ||a_n - b_n||`` per input for trajectories of shape (T, B, ...) -> (B,).

    Parameters
    ----------
    a : torch.Tensor, shape (T, B, ...)
    b : torch.Tensor, shape (T, B, ...)
    """
    return (a - b).flatten(2).norm(dim=2).amax(dim=0)


class InterpolatedField(nn.Module):
    r"""The vector field ``(t, x) -> f(x, theta(t))`` of a stack, for ``odeint``.

    Parameters
    ----------
    stack : ResidualStack
        Its residual functions must all have the same class and parameter
        shapes (they are samples of one parametrised function).  The
        parameters are copied (detached): later changes to the stack, and
        gradients, do not flow through this field.

    Attributes
    ----------
    knots : torch.Tensor, shape (M,)
        The times ``t_n`` of the layers' weights.
    theta : dict[str, torch.Tensor]
        Stacked parameters and floating buffers, each of shape (M, ...).
    """

    def __init__(self, stack: ResidualStack):
        super().__init__()
        functions = list(stack.functions)
        first = functions[0]
        for n, f in enumerate(functions):
            if type(f) is not type(first):
                raise ValueError(
                    f"functions[{n}] is a {type(f).__name__} but functions[0] a "
                    f"{type(first).__name__}: the limit ODE needs one parametrised function")
            shapes = {k: v.shape for k, v in f.state_dict().items()}
            if shapes != {k: v.shape for k, v in first.state_dict().items()}:
                raise ValueError(
                    f"functions[{n}] has other parameter shapes than functions[0]: "
                    "the limit ODE needs one parametrised function")
        params, buffers = stack_module_state(functions)
        self.theta = {k: v.detach() for k, v in {**params, **buffers}.items()}
        self.knots = stack.function_times.to(next(iter(self.theta.values())).device)
        self.h = stack.h
        self._base = copy.deepcopy(first)

    def theta_at(self, t: torch.Tensor | float) -> dict[str, torch.Tensor]:
        """``theta(t)``: linear between knots, constant after the last one."""
        n, w = knot_position(float(t), self.h, len(self.knots))
        if w == 0.0:
            return {k: v[n] for k, v in self.theta.items()}
        return {k: v[n] + w * (v[n + 1] - v[n]) if v.is_floating_point() else v[n]
                for k, v in self.theta.items()}

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The field at time ``t``.

        Parameters
        ----------
        t : torch.Tensor, shape ()
            Time in [0, 1].
        x : torch.Tensor, shape (B, ...)
            State.

        Returns
        -------
        torch.Tensor, shape (B, ...)
            ``f(x, theta(t))``.
        """
        return functional_call(self._base, self.theta_at(t), (x,))


WEIGHT_PATHS = ("linear", "piecewise")


def solve_limit_ode(stack: ResidualStack, x0: torch.Tensor, t: torch.Tensor | None = None,
                    solver: Solver = LIMIT_SOLVER, weights: str = "linear") -> torch.Tensor:
    """Solve the stack's limit ODE and return it at the stack's times.

    Parameters
    ----------
    stack : ResidualStack
        Its functions must share one class and parameter shapes.
    x0 : torch.Tensor, shape (B, ...)
        Initial value, the same input the stack takes.
    t : torch.Tensor, shape (T,), optional
        Increasing output times in [0, 1], starting at 0; default ``stack.times``.
    solver : Solver
        Default :data:`LIMIT_SOLVER` (dopri5, ``rtol = 1e-7``, ``atol = 1e-9``).  An
        adaptive solver is forced to step on every knot ``t_n``, where ``theta(t)`` has a
        kink; a fixed-step one takes its own ``step_size``.  Use float64 inputs for
        tolerances below about 1e-6.
    weights : {"linear", "piecewise"}
        The weight path ``theta(t)``: ``"linear"`` between the knots (the limit
        ODE of Sander et al., 2022), or ``"piecewise"`` constant, ``theta(t) =
        theta_n`` on ``[t_n, t_{n+1})``, solved one step interval at a time.  With
        piecewise-constant weights every Euler stack is exactly Euler's scheme for
        its own ODE, so its distance to it vanishes like ``h`` whatever the
        weights (chapter 1).  Needs the default ``t``.

    Returns
    -------
    torch.Tensor, shape (T, B, ...)
        ``out[k] = x(t[k])``; by default ``T = stack.num_steps + 1`` and
        ``out[n] = x(t_n)`` at the stack's times.
    """
    if weights not in WEIGHT_PATHS:
        raise ValueError(f"unknown weight path {weights!r}: choose one of {WEIGHT_PATHS}")
    if not isinstance(stack, ResidualStack):
        raise TypeError(f"stack must be a resode_tut.ResidualStack, got {type(stack).__name__}")
    if not isinstance(solver, Solver):
        raise TypeError(f"solver must be a resode_tut.Solver, e.g. Solver('dopri5', tol=1e-7), "
                        f"got {solver!r}")
    if next(stack.parameters(), None) is None:
        raise ValueError("the stack has no parameters: its limit ODE has no weight path")
    if not torch.isfinite(x0).all():
        raise ValueError("x0 contains NaN or infinite values")
    field = InterpolatedField(stack).to(x0.device)
    t = stack.times if t is None else torch.as_tensor(t)
    if (t.dim() != 1 or len(t) == 0 or not torch.isfinite(t).all() or t[0] != 0
            or (t.diff() <= 0).any() or t[-1] > 1):
        raise ValueError("t must be increasing, finite times in [0, 1] starting at 0")
    t = t.to(device=x0.device, dtype=x0.dtype)
    if weights == "piecewise":
        if len(t) != stack.num_steps + 1 or not torch.allclose(t, stack.times.to(t)):
            raise ValueError("weights='piecewise' solves step by step: leave t at its "
                             "default, the stack's times")
        return _solve_piecewise(field, x0, t, solver)
    options = {"step_t": field.knots.to(device=x0.device, dtype=x0.dtype)} \
        if solver.adaptive else {}
    with torch.no_grad():
        return odeint(field, x0, t, **solver.odeint_kwargs(**options))


def _solve_piecewise(field: InterpolatedField, x0, t, solver):
    """``dx/dt = f(x, theta_n)`` on each ``[t_n, t_{n+1}]`` in turn."""
    states = [x0]
    with torch.no_grad():
        for n in range(len(t) - 1):
            theta_n = {k: v[n] for k, v in field.theta.items()}
            f_n = lambda s, x, theta=theta_n: functional_call(field._base, theta, (x,))
            states.append(odeint(f_n, states[-1], t[n:n + 2], **solver.odeint_kwargs())[-1])
    return torch.stack(states)


def ode_distance(stack: ResidualStack, x0: torch.Tensor, **solver_kwargs) -> torch.Tensor:
    r"""``max_n ||x_n - x(t_n)||``: how far the stack is from its limit ODE.

    Parameters
    ----------
    stack : ResidualStack
    x0 : torch.Tensor, shape (B, ...)
    **solver_kwargs
        ``t``, ``solver`` or ``weights``, passed to :func:`solve_limit_ode`.

    Returns
    -------
    torch.Tensor, shape (B,)
        For each input, the largest Euclidean distance (over all non-batch
        dimensions) between the hidden state ``x_n`` and the ODE solution at
        the same time.
    """
    with torch.no_grad():
        resnet = stack.trajectory(x0)
    ode = solve_limit_ode(stack, x0, **solver_kwargs)
    return max_state_distance(resnet, ode)
