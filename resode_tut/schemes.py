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

import math
from collections.abc import Callable

import torch

from ._arith import add_scaled

__all__ = ["Scheme", "Euler", "Heun", "Momentum", "Coupling", "ReversibleHeun", "SCHEMES",
           "get_scheme"]

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
    #: The adjoint takes its vector-Jacobian product of the reverse step's own
    #: evaluation ``f_n(x~_{n+1})`` (one evaluation a step) instead of re-running the
    #: step from ``x~_n`` (:class:`Euler` with ``one_evaluation=True``).
    linearises_reverse_step = False
    #: The scheme's reverse step is the exact inverse of its step in exact arithmetic
    #: (the memory-free backward's gradients then differ from backprop's by rounding
    #: only); otherwise it is an approximation of order ``h^2`` or better a step.
    exact_reverse = False
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

    def functions_of_reverse_step(self, n: int) -> tuple[int, ...]:
        """The residual functions the reverse of step ``n`` evaluates (default: the
        step's own).
        """
        return self.functions_of_step(n)

    def function_features(self, features: int) -> int:
        """The features a residual function maps, for a state of ``features`` features
        (default: all of them).
        """
        return features

    def evaluation_index(self, n: int, k: int) -> int:
        """Which of the forward's evaluations (numbered from 0 in the order the steps make
        them) an evaluation of ``f_k`` for step ``n`` -- in the forward, the reverse step or
        the backward's re-run of the step -- stands for: the memory-free backward replays
        that evaluation's random state and buffers. Default: step ``n``'s own evaluation
        of ``f_k`` (the same number of evaluations every step).

        Parameters
        ----------
        n : int
            The step.
        k : int
            The residual function.
        """
        order = self.functions_of_step(n)
        return len(order) * n + order.index(k)

    def check_depth(self, M: int) -> None:
        """Raise a ``ValueError`` when ``M`` functions are too few for the scheme."""
        if M < self.min_functions:
            raise ValueError(f"scheme {self.name!r} needs at least {self.min_functions} "
                             f"residual function(s), got {M}")

    # -- the state -------------------------------------------------------------
    def initial_state(self, x: torch.Tensor) -> torch.Tensor:
        """The scheme's state at ``t = 0`` for the input ``x`` (here ``x`` itself).

        A scheme whose state has several parts (a momentum ResNet's ``(x, v)``) keeps
        them in one tensor, stacked along a new first dimension, so that everything
        that steps a state (backprop, the memory-free backward) steps one tensor.

        Parameters
        ----------
        x : torch.Tensor, shape (B, ...)
            The stack's input.
        """
        return x

    def output(self, state: torch.Tensor) -> torch.Tensor:
        """The stack's output from the state at ``t = 1`` (here the state itself).

        Parameters
        ----------
        state : torch.Tensor
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

    Parameters
    ----------
    one_evaluation : bool
        The memory-free backward's variant (the forward is the same): Sander et al.'s
        adjoint evaluates ``f_n`` twice a step, at ``x~_{n+1}`` to reconstruct
        ``x~_n`` and at ``x~_n`` for the vector-Jacobian product ``p_n = p_{n+1} + h
        (df_n/dx)(x~_n)^T p_{n+1}``; with ``one_evaluation`` the product is taken of
        the reconstruction's own evaluation, ``(df_n/dx)(x~_{n+1})`` -- the discrete
        analogue of the continuous adjoint, which linearises along the reversed
        trajectory. It differs from the exact discrete adjoint by ``h (J_n(x_{n+1}) -
        J_n(x_n))^T p = O(h^2)`` a step, ``O(h)`` over the stack: the order of the
        two-evaluation adjoint, with another constant (chapter 8 measures both).
    """

    name = "euler"
    min_functions = 1
    torchdiffeq_method = "euler"
    additive = True

    def __init__(self, one_evaluation: bool = False):
        if not isinstance(one_evaluation, bool):
            raise TypeError(f"one_evaluation must be True or False, got {one_evaluation!r}")
        self.one_evaluation = one_evaluation
        self.linearises_reverse_step = one_evaluation

    def __eq__(self, other) -> bool:
        if isinstance(other, Euler):
            return other.one_evaluation == self.one_evaluation
        return super().__eq__(other)

    def __hash__(self) -> int:
        return hash((self.name, self.one_evaluation))

    def __repr__(self) -> str:
        return "Euler(one_evaluation=True)" if self.one_evaluation else "Euler()"

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


def _parts(state: torch.Tensor, count: int, name: str) -> tuple[torch.Tensor, ...]:
    if state.dim() < 1 or state.shape[0] != count:
        raise ValueError(f"a {name} state stacks {count} tensors along its first dimension; "
                         f"got shape {tuple(state.shape)}")
    return state.unbind(0)


class Momentum(Scheme):
    r"""A momentum ResNet (Sander, Ablin, Blondel and Peyré, ICML 2021) with the step
    ``h`` of the other schemes: ``M`` steps of ``h = 1/M``,

    ``v_{n+1} = gamma v_n + (1 - gamma) f_n(x_n)``,  ``x_{n+1} = x_n + h v_{n+1}``,

    from ``v_0 = 0``; the output is ``x_N``. The official code (michaelsdr/momentumnet)
    iterates ``x + v`` with ``f`` at the scale of a ResNet block; here ``f`` is scaled
    by ``h`` as in every stack of this package. Reversed exactly in exact arithmetic,
    ``x_n = x_{n+1} - h v_{n+1}``, ``v_n = [v_{n+1} - (1 - gamma) f_n(x_n)] / gamma``;
    in floating point the division by ``gamma`` multiplies the rounding error of ``v``
    by ``1/gamma`` a step, ``gamma^{-N}`` over the stack.

    Parameters
    ----------
    gamma : float, optional
        The momentum, in (0, 1), the same at every depth (0.9 is the default of the
        official CIFAR-10 script). With ``gamma`` fixed, a deeper stack tends to the first-order ODE
        ``dx/dt = f``.
    epsilon : float, optional
        Instead of ``gamma``: ``gamma = 1 - h / epsilon`` at each depth, so that deeper
        stacks discretise the same second-order ODE ``epsilon x'' + x' = f(x, t)``,
        ``x'(0) = 0``, and ``gamma^{-N}`` stays below ``e^{1/epsilon}``; needs
        ``h < epsilon``.
    """

    name = "momentum"
    min_functions = 1
    exact_reverse = True

    def __init__(self, gamma: float | None = None, epsilon: float | None = None):
        if gamma is None and epsilon is None:
            gamma = 0.9
        if (gamma is None) == (epsilon is None):
            raise ValueError("give Momentum one of gamma (fixed momentum) or epsilon "
                             "(gamma = 1 - h / epsilon), not both")
        for label, value in (("gamma", gamma), ("epsilon", epsilon)):
            if value is not None and not (isinstance(value, (int, float))
                                          and math.isfinite(value)):
                raise ValueError(f"Momentum {label} must be a finite number, got {value!r}")
        if gamma is not None and not 0 < gamma < 1:
            raise ValueError(f"Momentum gamma must lie in (0, 1), got {gamma}: gamma = 0 is "
                             "a ResNet and cannot be reversed, gamma = 1 ignores f")
        if epsilon is not None and epsilon <= 0:
            raise ValueError(f"Momentum epsilon must be positive, got {epsilon}")
        self.gamma = None if gamma is None else float(gamma)
        self.epsilon = None if epsilon is None else float(epsilon)

    def momentum(self, h: float) -> float:
        """``gamma`` at step size ``h``."""
        return self.gamma if self.epsilon is None else 1.0 - h / self.epsilon

    def check_depth(self, M: int) -> None:
        """Raise a ``ValueError`` unless ``M >= 1`` and, with ``epsilon``, ``h = 1/M < epsilon``."""
        super().check_depth(M)
        if self.epsilon is not None and self.step_size(M) >= self.epsilon:
            raise ValueError(f"Momentum(epsilon={self.epsilon}) needs h = 1/M < epsilon "
                             f"(gamma = 1 - h/epsilon > 0): {M} functions are too few, use "
                             f"more than {math.floor(1 / self.epsilon)}")

    def num_steps(self, M: int) -> int:
        """``M``."""
        return M

    def functions_of_step(self, n: int) -> tuple[int, ...]:
        """``(n,)``."""
        return (n,)

    def initial_state(self, x):
        """``(x, 0)`` stacked: shape (2, B, ...)."""
        return torch.stack([x, torch.zeros_like(x)])

    def output(self, state):
        """``x_N``, the first part."""
        return _parts(state, 2, self.name)[0]

    def step(self, f, n, x, h):
        """``(x_n, v_n) -> (x_{n+1}, v_{n+1})``."""
        x, v = _parts(x, 2, self.name)
        gamma = self.momentum(h)
        v = torch.add(torch.mul(v, gamma), f(n, x), alpha=1 - gamma)
        return torch.stack([add_scaled(x, h, v), v])

    def reverse_step(self, f, n, x, h, first=None):
        """``x_n = x_{n+1} - h v_{n+1}``, ``v_n = [v_{n+1} - (1 - gamma) f_n(x_n)] / gamma``."""
        x, v = _parts(x, 2, self.name)
        gamma = self.momentum(h)
        x = add_scaled(x, -h, v)
        v = torch.sub(v, f(n, x), alpha=1 - gamma).div_(gamma)
        return torch.stack([x, v])

    def __eq__(self, other) -> bool:
        if isinstance(other, Momentum):
            return (self.gamma, self.epsilon) == (other.gamma, other.epsilon)
        return super().__eq__(other)

    def __hash__(self) -> int:
        return hash((self.name, self.gamma, self.epsilon))

    def __repr__(self) -> str:
        return (f"Momentum(gamma={self.gamma})" if self.epsilon is None
                else f"Momentum(epsilon={self.epsilon})")


class Coupling(Scheme):
    r"""Additive coupling (RevNet: Gomez, Ren, Urtasun and Grosse, 2017) with a step
    ``h``: the state's channels (dimension 1) split in halves ``(a, b)``, two residual
    functions a step, ``M / 2`` steps of ``h = 2/M``,

    ``a_{n+1} = a_n + h f_{2n}(b_n)``,  ``b_{n+1} = b_n + h f_{2n+1}(a_{n+1})``,

    each function mapping ``C/2`` channels to ``C/2``. Reversed exactly in exact
    arithmetic (``b_n = b_{n+1} - h f_{2n+1}(a_{n+1})``, then ``a_n``); in floating
    point ``(b + h g) - h g`` is ``b`` up to rounding. A different model from a plain
    ResNet: each half sees the other only. Both functions of step ``n`` sit at time
    ``t_n = n h`` (``f_{2n+1}`` at ``t_n + h/2``, where its update lands, for weights
    that vary in depth).
    """

    name = "coupling"
    min_functions = 2
    exact_reverse = True

    def num_steps(self, M: int) -> int:
        """``M / 2``."""
        return M // 2

    def check_depth(self, M: int) -> None:
        """Raise a ``ValueError`` unless ``M`` is even and at least two."""
        super().check_depth(M)
        if M % 2:
            raise ValueError(f"scheme 'coupling' takes two residual functions a step: give "
                             f"an even number, got {M}")

    def function_times(self, M: int) -> torch.Tensor:
        """Times of the ``M`` functions: ``f_{2n}`` at ``n h``, ``f_{2n+1}`` at ``(n + 1/2) h``."""
        return torch.arange(M, dtype=torch.float64) / 2 / self.num_steps(M)

    def function_features(self, features: int) -> int:
        """``features / 2`` (``features`` must be even)."""
        if features % 2:
            raise ValueError(f"scheme 'coupling' splits the state's channels in halves: "
                             f"give an even number, got {features}")
        return features // 2

    def functions_of_step(self, n: int) -> tuple[int, ...]:
        """``(2 * n, 2 * n + 1)``."""
        return (2 * n, 2 * n + 1)

    def functions_of_reverse_step(self, n: int) -> tuple[int, ...]:
        """``(2 * n + 1, 2 * n)``, in the order the reverse step evaluates them."""
        return (2 * n + 1, 2 * n)

    @staticmethod
    def _halves(x):
        if x.dim() < 2 or x.shape[1] % 2:
            raise ValueError(f"scheme 'coupling' splits dimension 1 of the state in halves: "
                             f"it needs an even size there, got shape {tuple(x.shape)}")
        return x.chunk(2, dim=1)

    def step(self, f, n, x, h):
        """``(a, b) -> (a + h f_{2n}(b), b + h f_{2n+1}(a + h f_{2n}(b)))``."""
        a, b = self._halves(x)
        a = add_scaled(a, h, f(2 * n, b))
        b = add_scaled(b, h, f(2 * n + 1, a))
        return torch.cat([a, b], dim=1)

    def reverse_step(self, f, n, x, h, first=None):
        """``b_n = b_{n+1} - h f_{2n+1}(a_{n+1})``, ``a_n = a_{n+1} - h f_{2n}(b_n)``."""
        a, b = self._halves(x)
        b = add_scaled(b, -h, f(2 * n + 1, a))
        a = add_scaled(a, -h, f(2 * n, b))
        return torch.cat([a, b], dim=1)


class ReversibleHeun(Scheme):
    r"""The reversible Heun method (Kidger, Foster, Li and Lyons, NeurIPS 2021) for the ODE:
    ``M - 1`` steps of ``h = 1/(M - 1)`` on a state ``(y, z, F)`` -- the solution, an
    auxiliary copy and ``F_n = f_n(z_n)`` -- from ``(x, x, 0)``:

    ``z_{n+1} = 2 y_n - z_n + h F_n``,  ``F_{n+1} = f_{n+1}(z_{n+1})``,
    ``y_{n+1} = y_n + h/2 (F_n + F_{n+1})``,

    step 0 evaluating ``F_0 = f_0(z_0)`` first; one evaluation a step after the first,
    ``M`` in all (Heun: ``2 (M - 1)``); the output is ``y_N``. Algebraically
    reversible: ``z_n = 2 y_{n+1} - z_{n+1} - h F_{n+1}``, ``F_n = f_n(z_n)``,
    ``y_n = y_{n+1} - h/2 (F_n + F_{n+1})``; of order 2 for ODEs. torchsde ships it for
    SDEs (``method="reversible_heun"``).
    """

    name = "reversible_heun"
    min_functions = 2
    exact_reverse = True
    samples_step_ends = True

    def num_steps(self, M: int) -> int:
        """``M - 1``."""
        return M - 1

    def functions_of_step(self, n: int) -> tuple[int, ...]:
        """``(0, 1)`` for step 0, then ``(n + 1,)``: ``f_n(z_n)`` is in the state."""
        return (0, 1) if n == 0 else (n + 1,)

    def functions_of_reverse_step(self, n: int) -> tuple[int, ...]:
        """``(n,)``."""
        return (n,)

    def evaluation_index(self, n: int, k: int) -> int:
        """``k``: the forward evaluates each function once, ``f_0`` and ``f_1`` in step 0,
        ``f_{n+1}`` in step ``n``; the reverse of step ``n`` evaluates ``f_n`` again.
        """
        return k

    def initial_state(self, x):
        """``(x, x, 0)`` stacked: shape (3, B, ...)."""
        return torch.stack([x, x, torch.zeros_like(x)])

    def output(self, state):
        """``y_N``."""
        return _parts(state, 3, self.name)[0]

    def step(self, f, n, x, h):
        """``(y_n, z_n, F_n) -> (y_{n+1}, z_{n+1}, F_{n+1})`` (step 0: ``F_0 = f_0(z_0)``)."""
        y, z, F = _parts(x, 3, self.name)
        if n == 0:
            F = f(0, z).to(y.dtype)
        z = add_scaled(torch.sub(torch.mul(y, 2), z), h, F)
        F_next = f(n + 1, z).to(y.dtype)   # as the state keeps it: the reverse reads it so
        return torch.stack([add_scaled(y, h / 2, torch.add(F, F_next)), z, F_next])

    def reverse_step(self, f, n, x, h, first=None):
        """``(y_{n+1}, z_{n+1}, F_{n+1}) -> (y_n, z_n, F_n)`` (step 0: ``F`` part 0)."""
        y, z, F_next = _parts(x, 3, self.name)
        z = add_scaled(torch.sub(torch.mul(y, 2), z), -h, F_next)
        F = f(n, z).to(y.dtype)
        y = add_scaled(y, -h / 2, torch.add(F, F_next))
        return torch.stack([y, z, torch.zeros_like(F) if n == 0 else F])


#: The schemes by name.
SCHEMES = ("euler", "heun", "momentum", "coupling", "reversible_heun")
_BY_NAME = {"euler": Euler, "heun": Heun, "momentum": Momentum, "coupling": Coupling,
            "reversible_heun": ReversibleHeun}


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
