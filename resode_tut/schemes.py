r"""One-step schemes on [0, 1]: what a residual layer computes, and its reverse.

A residual stack of ``M`` functions ``f_0, ..., f_{M-1}`` is a one-step scheme for
the ODE ``dx/dt = f(x, theta(t))`` on ``[0, 1]`` (Sander et al., 2022).  A scheme
knows everything that depends on which one it is:

* its grid -- how many steps ``M`` functions make (:meth:`Scheme.num_steps`), the
  step ``h``, the times of the states and of the functions;
* its step ``x_n -> x_{n+1}`` and which functions a step uses;
* its reverse step ``x~_{n+1} -> x~_n``, the scheme run backwards in time, which the
  memory-free adjoint (:mod:`resode_tut.adjoint`) uses to rebuild the states;
* the same scheme's name in torchdiffeq (to compare with the continuous adjoint).

Every part of the package that needs one of these asks the stack's scheme.  A scheme
evaluates residual functions through a callable ``f(k, x) -> f_k(x)`` supplied by the
caller, so the caller decides what an evaluation does besides (check shapes, record or
replay random states).  A new scheme is one subclass; its state may be a tuple of
tensors (:meth:`Scheme.initial_state`, :meth:`Scheme.output`).

:class:`Euler` -- ``x_{n+1} = x_n + h f_n(x_n)``, ``M`` steps of ``h = 1/M``.
:class:`Heun` -- ``x_{n+1} = x_n + h/2 [f_n(x_n) + f_{n+1}(x_n + h f_n(x_n))]``,
``M - 1`` steps of ``h = 1/(M - 1)``.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from ._arith import add_scaled

__all__ = ["Scheme", "Euler", "Heun", "SCHEMES", "get_scheme"]

#: ``f(k, x) -> f_k(x)``: how a scheme evaluates residual function ``k``.
Evaluate = Callable[[int, torch.Tensor], torch.Tensor]


class Scheme:
    """A one-step scheme on [0, 1] driven by ``M`` residual functions.

    Subclasses set :attr:`name`, :attr:`min_functions`, :attr:`torchdiffeq_method`
    and implement :meth:`num_steps`, :meth:`functions_of_step`, :meth:`step` and
    :meth:`reverse_step`.

    Attributes
    ----------
    name : str
        The scheme's name (``ResidualStack(..., scheme=name)``).
    min_functions : int
        The fewest residual functions the scheme can step with.
    torchdiffeq_method : str
        The same scheme as a torchdiffeq fixed-grid method.
    """

    name = ""
    min_functions = 1
    torchdiffeq_method = ""
    #: The step is ``x + h f_n(x)`` with one evaluation (the adjoint then takes the
    #: vector-Jacobian product of ``f_n`` alone).
    additive = False
    #: The reverse step's first evaluation is ``f_{n+1}(x~_{n+1})``, the first
    #: evaluation of step ``n + 1`` at the same point, which the adjoint's
    #: re-evaluation of step ``n + 1`` has just computed (Heun): it is passed as
    #: ``first`` instead of being computed again.
    reverse_shares_first_evaluation = False
    #: The state is one tensor (the discrete adjoint steps one tensor).
    single_tensor = True
    #: A step evaluates the weights at both of its ends (``t_n`` and ``t_{n+1}``), not
    #: only at its start.
    samples_step_ends = False

    # -- the grid ------------------------------------------------------------
    def num_steps(self, M: int) -> int:
        """Steps made by ``M`` residual functions."""
        raise NotImplementedError

    def step_size(self, M: int) -> float:
        """``h = 1 / num_steps(M)``: the scheme ends at ``t = 1``."""
        return 1.0 / self.num_steps(M)

    def times(self, M: int) -> torch.Tensor:
        """Times ``n h`` of the states ``x_0, ..., x_N``, shape (N + 1,), float64."""
        N = self.num_steps(M)
        return torch.arange(N + 1, dtype=torch.float64) / N

    def function_times(self, M: int) -> torch.Tensor:
        """Times ``t_k = k h`` at which ``f_k`` samples ``theta(t)``, shape (M,), float64."""
        return torch.arange(M, dtype=torch.float64) / self.num_steps(M)

    def functions_of_step(self, n: int) -> tuple[int, ...]:
        """The residual functions step ``n`` evaluates, in the order it evaluates them."""
        raise NotImplementedError

    def check_depth(self, M: int) -> None:
        """Raise a ``ValueError`` when ``M`` functions are too few for the scheme."""
        if M < self.min_functions:
            raise ValueError(f"scheme {self.name!r} needs at least {self.min_functions} "
                             f"residual function(s), got {M}")

    # -- the state -------------------------------------------------------------
    def initial_state(self, x: torch.Tensor):
        """The scheme's state at ``t = 0`` for the input ``x`` (here ``x`` itself)."""
        return x

    def output(self, state) -> torch.Tensor:
        """The stack's output from the state at ``t = 1`` (here the state itself).

        Parameters
        ----------
        state : torch.Tensor or tuple of torch.Tensor
            The scheme's state after the last step.
        """
        return state

    # -- the step and its reverse ------------------------------------------------
    def step(self, f: Evaluate, n: int, x, h: float):
        """One step, ``x_n -> x_{n+1}``.

        Parameters
        ----------
        f : callable
            ``f(k, x) -> f_k(x)``.
        n : int
            The step, ``0 <= n < num_steps``.
        x : torch.Tensor, shape (B, ...)
            ``x_n``.
        h : float
            The step size.
        """
        raise NotImplementedError

    def step_with_evaluations(self, f: Evaluate, n: int, x, h: float):
        """Step ``n`` and the residual-function outputs it computed, in order:
        ``(x_{n+1}, (f_k(.), ...))``.

        Parameters
        ----------
        f : callable
            ``f(k, x) -> f_k(x)``.
        n : int
            The step.
        x : torch.Tensor, shape (B, ...)
            ``x_n``.
        h : float
            The step size.
        """
        outputs = []

        def recorded(k, x):
            outputs.append(f(k, x))
            return outputs[-1]
        return self.step(recorded, n, x, h), tuple(outputs)

    def reverse_step(self, f: Evaluate, n: int, x, h: float, first=None):
        """The scheme run backwards in time over step ``n``: ``x~_{n+1} -> x~_n``.

        Parameters
        ----------
        f : callable
            ``f(k, x) -> f_k(x)``.
        n : int
        x : torch.Tensor, shape (B, ...)
            ``x~_{n+1}``.
        h : float
        first : torch.Tensor, optional
            The reverse step's first evaluation, when the caller already has it at
            ``x`` (see :attr:`reverse_shares_first_evaluation`).
        """
        raise NotImplementedError

    def __eq__(self, other) -> bool:
        """Schemes compare equal to schemes of their class and to their name."""
        if isinstance(other, str):
            return other == self.name
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(self.name)

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Euler(Scheme):
    """``x_{n+1} = x_n + h f_n(x_n)``: ``M`` steps of ``h = 1/M``; reversed,
    ``x~_n = x~_{n+1} - h f_n(x~_{n+1})`` (off by ``O(h^2)`` a step).
    """

    name = "euler"
    min_functions = 1
    torchdiffeq_method = "euler"
    additive = True

    def num_steps(self, M: int) -> int:
        """``M``."""
        return M

    def functions_of_step(self, n: int) -> tuple[int, ...]:
        """``(n,)``."""
        return (n,)

    def step(self, f, n, x, h):
        """``x_{n+1} = x_n + h f_n(x_n)``."""
        return add_scaled(x, h, f(n, x))

    def reverse_step(self, f, n, x, h, first=None):
        """``x~_{n+1} - h f_n(x~_{n+1})``."""
        return add_scaled(x, -h, f(n, x))


class Heun(Scheme):
    """``x_{n+1} = x_n + h/2 [f_n(x_n) + f_{n+1}(x_n + h f_n(x_n))]``: ``M - 1`` steps of
    ``h = 1/(M - 1)``, step ``n`` using ``f_n`` at its start and ``f_{n+1}`` at its end;
    reversed, the Heun step from ``t_{n+1}`` to ``t_n`` (off by ``O(h^4)`` a step for
    weights smooth in depth, ``O(h^2)`` otherwise).
    """

    name = "heun"
    min_functions = 2
    torchdiffeq_method = "heun2"
    reverse_shares_first_evaluation = True
    samples_step_ends = True

    def num_steps(self, M: int) -> int:
        """``M - 1``."""
        return M - 1

    def functions_of_step(self, n: int) -> tuple[int, ...]:
        """``(n, n + 1)``."""
        return (n, n + 1)

    def step(self, f, n, x, h):
        """``x_{n+1} = x_n + h/2 [f_n(x_n) + f_{n+1}(x_n + h f_n(x_n))]``."""
        k1 = f(n, x)
        k2 = f(n + 1, add_scaled(x, h, k1))
        return add_scaled(x, h / 2, torch.add(k1, k2))

    def reverse_step(self, f, n, x, h, first=None):
        """``x~_{n+1} - h/2 [f_{n+1}(x~_{n+1}) + f_n(x~_{n+1} - h f_{n+1}(x~_{n+1}))]``;
        ``first``, when given, is ``f_{n+1}(x~_{n+1})``.
        """
        k1 = f(n + 1, x) if first is None else first
        k2 = f(n, add_scaled(x, -h, k1).to(x.dtype))   # f_n saw x_n's dtype
        return add_scaled(x, -h / 2, torch.add(k1, k2))


#: The schemes by name.
SCHEMES = ("euler", "heun")
_BY_NAME = {"euler": Euler, "heun": Heun}


def get_scheme(scheme: str | Scheme) -> Scheme:
    """The scheme named ``scheme`` (a :class:`Scheme` is returned as it is).

    Raises
    ------
    ValueError
        An unknown name, or neither a name nor a :class:`Scheme`.
    """
    if isinstance(scheme, Scheme):
        return scheme
    if isinstance(scheme, str) and scheme in _BY_NAME:
        return _BY_NAME[scheme]()
    raise ValueError(f"unknown scheme {scheme!r}: choose one of {SCHEMES} or pass a "
                     "resode_tut.schemes.Scheme")
