"""A residual network read as a one-step ODE scheme on the time interval [0, 1].

The module holds :class:`ResidualStack`, the object every chapter builds on: a
sequence of residual functions ``f_0, ..., f_{M-1}`` applied with a one-step scheme
(:mod:`resode_tut.schemes`: Euler, Heun, a momentum ResNet, additive coupling,
reversible Heun).  Depth and step size are tied (``h = 1/M``, ``1/(M-1)``, ``2/M``) so
that a deeper stack is a finer discretisation of the same time interval, which is the
scaling of Sander et al. (2022).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ._arith import all_finite
from .adjoint import AdjointState, discrete_adjoint
from .schemes import SCHEMES, Scheme, get_scheme

__all__ = ["ResidualStack", "SCHEMES"]

# Whether a tensor is a functorch wrapper (vmap, grad): a private torch query, absent in
# some versions; without it the data-dependent input check is tried, and skipped where a
# transform refuses it (tests force this fallback).
_is_functorch_wrapped = getattr(getattr(torch._C, "_functorch", None),
                                "is_functorch_wrapped_tensor", None)


class ResidualStack(nn.Module):
    r"""Residual layers ``x_{n+1} = x_n + h F_n(x_n)`` that end at time ``t = 1``.

    The stack multiplies each function by the step ``h``: to wrap the blocks ``g`` of an
    existing ResNet (``x + g(x)``) without changing it, give ``M * g`` (or scale ``g``'s
    last layer by ``M``).

    Parameters
    ----------
    functions : sequence of torch.nn.Module
        The residual functions ``f_0, ..., f_{M-1}``, ``M = len(functions)``.
        Each maps a tensor to a tensor of the *same* shape.  One module may
        appear several times (tied weights); its parameters are then shared by
        those layers.  ``f_n`` is the residual function at time
        ``t_n = n h`` (see ``scheme``): it samples a weight path
        ``theta(t)`` at ``t_n``.
    scheme : str or Scheme
        A name in :data:`~resode_tut.schemes.SCHEMES` or a
        :class:`~resode_tut.schemes.Scheme`.
        ``"euler"``: ``M`` steps of size ``h = 1/M``,
        ``x_{n+1} = x_n + h f_n(x_n)``.
        ``"heun"``: ``M - 1`` steps of size ``h = 1/(M - 1)``; step ``n`` uses
        ``f_n`` at its start and ``f_{n+1}`` at its end,
        ``x_{n+1} = x_n + h/2 [f_n(x_n) + f_{n+1}(x_n + h f_n(x_n))]``.
        Both schemes end at ``t = 1``.  Heun needs at least two functions.
        ``"momentum"``, ``"coupling"``, ``"reversible_heun"``: schemes whose
        reverse step is exact (:class:`~resode_tut.schemes.Momentum`,
        :class:`~resode_tut.schemes.Coupling`,
        :class:`~resode_tut.schemes.ReversibleHeun`), so that ``adjoint=True``
        gives backprop's gradients up to rounding.
    adjoint : bool
        Compute gradients with the memory-free discrete adjoint
        (:mod:`resode_tut.adjoint`) instead of backpropagation: the forward
        values are identical, nothing but the output is kept for backward,
        and backward reconstructs the hidden states layer by layer.  The
        residual functions may be random (dropout: see ``preserve_rng_state``)
        but must not use tensors requiring grad other than their registered
        parameters, and the gradients are first-order only (both refused with
        a named error).  Both schemes: Heun's reconstruction runs the Heun
        step backwards in time.  :mod:`resode_tut.adjoint` lists what it
        supports.
    preserve_rng_state : bool
        With ``adjoint=True``: record the random state before every
        evaluation of a residual function and replay it in backward (as
        :func:`torch.utils.checkpoint.checkpoint` does), so dropout masks are
        the forward's.  Costs 5 KB (the CPU generator's state) per evaluation
        that draws random numbers, nothing for a deterministic stack but a
        comparison of the generators before and after the forward.
    reconstruction_tol : float
        With ``adjoint=True``: the largest self-check ``||x~_0 - x_0|| /
        ||x_N - x_0||`` (how far the reconstruction misses the input, relative to
        how far the stack moves it) that backward accepts silently; above it, a
        :class:`~resode_tut.adjoint.ReconstructionWarning` (once per stack) or,
        with ``strict``, an error.  ``math.inf`` turns the check off.  The check
        tracks the relative gradient error whatever the input's scale or offset
        (over 480 stacks the gradient error was 0.05-1.4 times the check for 90%
        of them), so the default, 0.1, flags gradients about 10% away from
        backprop's.  It detects reconstructions that fail, not a wrong backward
        pass.
    strict : bool
        Raise :class:`~resode_tut.adjoint.ReconstructionError` instead of
        warning when the reconstruction error exceeds ``reconstruction_tol``.

    Attributes
    ----------
    functions : torch.nn.ModuleList
        The residual functions, in order (repeated modules kept repeated).
    scheme : Scheme
        The scheme (it compares equal to its name: ``stack.scheme == "heun"``).
    h : float
        The step size.
    num_steps : int
        ``M`` for Euler, ``M - 1`` for Heun.
    times : torch.Tensor, shape (num_steps + 1,), float64
        The times ``t_n = n h`` of the hidden states ``x_0, ..., x_{num_steps}``.
    last_reconstruction_error : float or None
        After an adjoint backward: ``||x~_0 - x_0|| / ||x_N - x_0||``, how far
        the reconstruction ended from the input, relative to how far the stack
        moved it (None before the first one).
    adjoint_state : resode_tut.adjoint.AdjointState
        What the adjoint keeps between calls (caches, the random-state flag, the
        self-check's last result).

    Raises
    ------
    ValueError
        Unknown scheme, too few functions, an entry that is not a module, a
        negative or NaN ``reconstruction_tol``, or (at call time) a residual
        function whose output shape differs from its input's or that modifies
        its input in place, or an input with non-finite values.
    TypeError
        ``adjoint``, ``preserve_rng_state`` or ``strict`` is not a bool.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from resode_tut import ResidualStack
    >>> stack = ResidualStack([nn.Linear(3, 3) for _ in range(8)])
    >>> stack(torch.zeros(5, 3)).shape
    torch.Size([5, 3])
    >>> stack.h, stack.num_steps
    (0.125, 8)
    """

    def __init__(self, functions: Sequence[nn.Module], scheme: str | Scheme = "euler",
                 adjoint: bool = False, *, preserve_rng_state: bool = True,
                 reconstruction_tol: float = 0.1, strict: bool = False):
        super().__init__()
        scheme = get_scheme(scheme)
        if isinstance(functions, nn.Module) and not isinstance(functions, nn.ModuleList):
            raise ValueError(
                "functions must be a sequence of modules, got a single "
                f"{type(functions).__name__}: wrap it, e.g. [f] * depth for tied weights")
        try:
            functions = list(functions)
        except TypeError:
            raise ValueError(
                f"functions must be a sequence of torch.nn.Module, got {type(functions).__name__}"
            ) from None
        for n, f in enumerate(functions):
            if not isinstance(f, nn.Module):
                raise ValueError(
                    f"functions[{n}] is a {type(f).__name__}, not a torch.nn.Module: "
                    "wrap plain callables in a module")
        scheme.check_depth(len(functions))
        for name, value in (("preserve_rng_state", preserve_rng_state), ("strict", strict)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be True or False, got {value!r}")
        try:
            tol = float(reconstruction_tol)
        except (TypeError, ValueError):
            tol = math.nan
        if not tol >= 0:
            raise ValueError(f"reconstruction_tol must be a number >= 0 (math.inf turns the "
                             f"check off), got {reconstruction_tol!r}")
        self.functions = nn.ModuleList(functions)
        self.scheme = scheme
        self.adjoint = adjoint
        self.preserve_rng_state = preserve_rng_state
        self.reconstruction_tol = tol
        self.strict = strict
        self.adjoint_state = AdjointState()

    @property
    def last_reconstruction_error(self) -> float | None:
        """The adjoint's last self-check, ``||x~_0 - x_0|| / ||x_N - x_0||`` (None before)."""
        return self.adjoint_state.last_error

    @property
    def adjoint(self) -> bool:
        """Whether backward uses the memory-free discrete adjoint (a bool)."""
        return self._adjoint

    @adjoint.setter
    def adjoint(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"adjoint must be True or False, got {value!r}")
        self._adjoint = value

    # -- the time grid -----------------------------------------------------
    @property
    def depth(self) -> int:
        """``M``, the number of residual functions."""
        return len(self.functions)

    @property
    def num_steps(self) -> int:
        """Steps of the scheme: ``M`` for Euler, ``M - 1`` for Heun."""
        return self.scheme.num_steps(self.depth)

    @property
    def h(self) -> float:
        """The step size ``1 / num_steps``."""
        return self.scheme.step_size(self.depth)

    @property
    def times(self) -> torch.Tensor:
        """Times ``n h`` of the states ``x_0, ..., x_{num_steps}``, shape (num_steps + 1,)."""
        return self.scheme.times(self.depth)

    @property
    def function_times(self) -> torch.Tensor:
        """Times ``t_n = n h`` at which ``f_n`` samples ``theta(t)``, shape (M,)."""
        return self.scheme.function_times(self.depth)

    # -- the scheme ----------------------------------------------------------
    def evaluate(self, n: int, x: torch.Tensor) -> torch.Tensor:
        """``f_n(x)``, checked: same shape as ``x``, ``x`` not modified in place.

        Parameters
        ----------
        n : int
            The residual function, ``0 <= n < depth``.
        x : torch.Tensor, shape (B, ...)
        """
        version = None if x.is_inference() else getattr(x, "_version", None)
        out = self.functions[n](x)
        if version is not None and x._version != version:
            raise ValueError(
                f"residual function {n} ({type(self.functions[n]).__name__}) modified its "
                "input in place (e.g. nn.ReLU(inplace=True) as its first layer): that "
                "changes the skip connection x + h f(x) and the caller's tensor; use "
                "inplace=False for the first operation")
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"residual function {n} ({type(self.functions[n]).__name__}) maps an input of "
                f"shape {tuple(x.shape)} to {shape}: a residual function must keep the shape")
        return out

    def step(self, n: int, x: torch.Tensor) -> torch.Tensor:
        """One step of the scheme, ``x_n -> x_{n+1}``.

        Parameters
        ----------
        n : int
            The step, ``0 <= n < num_steps``.
        x : torch.Tensor, shape (B, ...)
            The state ``x_n``.

        Returns
        -------
        torch.Tensor, shape (B, ...)
            ``x_{n+1}``.
        """
        return self.scheme.step(self.evaluate, n, x, self.h)

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"input must be a torch.Tensor, got {type(x).__name__}")
        if (_is_functorch_wrapped(x) if _is_functorch_wrapped else False) or \
                torch.compiler.is_compiling():
            return  # under vmap/grad/compile a data-dependent check cannot run
        try:
            with torch.no_grad():  # a check, not part of the graph: nothing saved for backward
                finite = all_finite(x)
        except RuntimeError:
            if _is_functorch_wrapped:
                raise
            return  # no functorch query in this torch: a transform refused the check
        if not finite:
            raise ValueError("input contains NaN or infinite values: clean or rescale the data")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the stack.

        Parameters
        ----------
        x : torch.Tensor, shape (B, ...)
            The input ``x_0``; any shape the residual functions accept.

        Returns
        -------
        torch.Tensor, same shape as ``x``
            The output ``x_{num_steps}``, the state at ``t = 1``.
        """
        self._check_input(x)
        if self.adjoint and torch.is_grad_enabled():
            return discrete_adjoint(self, x)
        state = self.scheme.initial_state(x)
        for n in range(self.num_steps):
            state = self.step(n, state)
        return self.scheme.output(state)

    def trajectory(self, x: torch.Tensor) -> torch.Tensor:
        """All hidden states ``x_0, ..., x_{num_steps}`` (by backpropagation, whatever
        ``adjoint`` says: keeping every state is the point here).

        Parameters
        ----------
        x : torch.Tensor, shape (B, ...)

        Returns
        -------
        torch.Tensor, shape (num_steps + 1, B, ...)
            ``out[n]`` is ``x_n``, the state at time ``times[n]``.
        """
        self._check_input(x)
        states = [self.scheme.initial_state(x)]
        for n in range(self.num_steps):
            states.append(self.step(n, states[-1]))
        return torch.stack(states)

    def extra_repr(self) -> str:
        """Scheme, depth, step and adjoint flag, for ``print(stack)``."""
        return (f"scheme={self.scheme.name!r}, depth={self.depth}, h={self.h:.4g}, "
                f"adjoint={self.adjoint}")
