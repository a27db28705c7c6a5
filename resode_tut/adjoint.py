r"""The memory-free discrete adjoint of a residual stack (Euler or Heun).

Forward: the stack's steps ``x_{n+1} = Phi_n(x_n)`` under ``torch.no_grad()``;
only the output ``x_N`` is kept.  Backward, for ``n = N-1, ..., 0``
(Sander et al., 2022):

* reconstruct ``x~_n`` from ``x~_{n+1}`` by running the scheme backwards in
  time (:func:`reverse_step`), an approximate inverse of ``Phi_n``:

  - Euler: ``x~_n = x~_{n+1} - h f_n(x~_{n+1})``, off by ``O(h^2)`` per step, so
    ``O(h)`` over the ``N`` steps;
  - Heun: ``x~_n = x~_{n+1} - h/2 [f_{n+1}(x~_{n+1})
    + f_n(x~_{n+1} - h f_{n+1}(x~_{n+1}))]``, off by ``O(h^4)`` per step when the
    weights are smooth in depth (``O(h^3)`` over the ``N`` steps; chapter 4 derives
    it), and by ``O(h^2)`` per step when they are not;

* ``p_n = (d Phi_n / d x)(x~_n)^T p_{n+1}`` and
  ``grad theta += (d Phi_n / d theta)(x~_n)^T p_{n+1}``, both from one
  vector-Jacobian product of the step at ``x~_n``.

Memory for the residual part is O(1) in depth; the price is evaluating every
step twice more (reconstruction and re-evaluation), i.e. about 5/3 of
backprop's work.

Every re-evaluation during backward runs in the module's current mode (a
BatchNorm in train mode keeps using batch statistics), and all buffers
(running statistics, counters) are restored afterwards, so they end exactly as
after a plain forward.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

__all__ = ["discrete_adjoint", "reverse_step", "reconstruct",
           "ReconstructionError"]


class ReconstructionError(FloatingPointError):
    """The backward reconstruction of the hidden states became non-finite."""


_CHECK_EVERY = 32  # layers between finiteness checks of the reconstruction


@contextmanager
def _buffers_frozen(buffers):
    """Restore ``buffers`` (a module's running statistics, counters) on exit."""
    saved = [b.detach().clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in zip(buffers, saved):
                b.copy_(value)


def _unique(tensors):
    seen, out = set(), []
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def _unique_params(functions):
    return _unique(p for f in functions for p in f.parameters() if p.requires_grad)


def _step_functions(stack, n):
    """The residual functions that step ``n`` evaluates."""
    if stack.scheme == "euler":
        return [stack.functions[n]]
    return [stack.functions[n], stack.functions[n + 1]]


def _check_finite(x, n):
    if not torch.isfinite(x).all():
        raise ReconstructionError(
            f"the reconstruction of the hidden states is not finite (found at layer {n}): "
            "the residual functions are too far from invertible steps at this depth; "
            "use more layers (smaller h) or adjoint=False")


def reverse_step(stack, n: int, x: torch.Tensor) -> torch.Tensor:
    r"""The scheme run backwards in time over step ``n``: ``x~_{n+1} -> x~_n``.

    Parameters
    ----------
    stack : ResidualStack
    n : int
        ``0 <= n < stack.num_steps``.
    x : torch.Tensor, shape (B, ...)
        ``x~_{n+1}``.

    Returns
    -------
    torch.Tensor, same shape as ``x``
        Euler: ``x - h f_n(x)``.  Heun: ``x - h/2 [f_{n+1}(x) + f_n(x - h f_{n+1}(x))]``
        (the Heun step from ``t_{n+1}`` to ``t_n``).  Buffers are left untouched.
    """
    h = stack.h
    buffers = _unique(b for f in _step_functions(stack, n) for b in f.buffers())
    with _buffers_frozen(buffers):
        if stack.scheme == "euler":
            return x - h * stack._f(n, x)
        k1 = stack._f(n + 1, x)
        k2 = stack._f(n, x - h * k1)
        return x - (h / 2) * (k1 + k2)


class _DiscreteAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, stack, params_count, *params):
        ctx.stack = stack
        ctx.params = params
        with torch.no_grad():
            for n in range(stack.num_steps):
                x = stack.step(n, x)
        ctx.save_for_backward(x)
        return x

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        stack, params = ctx.stack, ctx.params
        index = {id(p): i for i, p in enumerate(params)}
        grads = [None] * len(params)
        p_adj = grad_out
        x = x.detach()
        for n in reversed(range(stack.num_steps)):
            functions = _step_functions(stack, n)
            own = _unique(p for f in functions for p in f.parameters() if id(p) in index)
            buffers = _unique(b for f in functions for b in f.buffers())
            with torch.no_grad():
                x = reverse_step(stack, n, x)
            if n % _CHECK_EVERY == 0:
                _check_finite(x, n)
            with torch.enable_grad(), _buffers_frozen(buffers):
                # buffers are restored only after the VJP: BatchNorm's backward
                # checks that they were not modified in between
                x_req = x.detach().requires_grad_(True)
                vjp = torch.autograd.grad(stack.step(n, x_req), [x_req, *own],
                                          grad_outputs=p_adj, allow_unused=True)
            p_adj = vjp[0]
            for p, g in zip(own, vjp[1:]):
                if g is not None:
                    i = index[id(p)]
                    grads[i] = g if grads[i] is None else grads[i] + g
        return (p_adj, None, None, *grads)


def discrete_adjoint(stack, x: torch.Tensor) -> torch.Tensor:
    """Apply a :class:`~resode_tut.ResidualStack` with memory-free gradients.

    Parameters
    ----------
    stack : ResidualStack
        Euler or Heun.  Its residual functions must be deterministic
        (no dropout): backward evaluates them again.
    x : torch.Tensor, shape (B, ...)

    Returns
    -------
    torch.Tensor, same shape as ``x``
        ``x_N``, identical to the plain forward; its backward uses the
        discrete adjoint and stores nothing but ``x_N``.
    """
    params = _unique_params(stack.functions)
    return _DiscreteAdjoint.apply(x, stack, len(params), *params)


def reconstruct(stack, x_N: torch.Tensor) -> torch.Tensor:
    """The hidden states the adjoint rebuilds backwards from the output alone.

    Parameters
    ----------
    stack : ResidualStack
        Euler or Heun.
    x_N : torch.Tensor, shape (B, ...)
        The stack's output.

    Returns
    -------
    torch.Tensor, shape (num_steps + 1, B, ...)
        ``out[n] = x~_n`` with ``x~_N = x_N`` and ``x~_n`` from
        :func:`reverse_step`; compare with :meth:`ResidualStack.trajectory`
        for the reconstruction error.
    """
    states = [x_N.detach()]
    with torch.no_grad():
        for n in reversed(range(stack.num_steps)):
            states.append(reverse_step(stack, n, states[-1]))
    return torch.stack(states[::-1])
