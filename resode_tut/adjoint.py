r"""The memory-free discrete adjoint of an Euler residual stack.

Forward: ``x_{n+1} = x_n + h f_n(x_n)`` under ``torch.no_grad()``; only the
output ``x_N`` is kept.  Backward, for ``n = N-1, ..., 0`` (Sander et al., 2022):

* reconstruct ``x~_n = x~_{n+1} - h f_n(x~_{n+1})`` (an approximate inverse of
  the Euler step, exact up to ``O(h^2)`` per step for Lipschitz ``f_n``),
* ``p_n = p_{n+1} + h (d f_n / d x)(x~_n)^T p_{n+1}`` and
  ``grad theta_n += h (d f_n / d theta)(x~_n)^T p_{n+1}``,

both from one vector-Jacobian product of ``f_n`` at ``x~_n``.  Memory for the
residual part is O(1) in depth; the price is two extra evaluations of each
``f_n`` (reconstruction and re-evaluation), i.e. about 5/3 of backprop's work.

Every re-evaluation during backward runs in the module's current mode (a
BatchNorm in train mode keeps using batch statistics), and all buffers
(running statistics, counters) are restored afterwards, so they end exactly as
after a plain forward.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["euler_adjoint", "reconstruct", "ReconstructionError"]


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


def _unique_params(functions):
    seen, params = set(), []
    for f in functions:
        for p in f.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return params


def _check_finite(x, n):
    if not torch.isfinite(x).all():
        raise ReconstructionError(
            f"the reconstruction of the hidden states is not finite (found at layer {n}): "
            "the residual functions are too far from invertible steps at this depth; "
            "use more layers (smaller h) or adjoint=False")


class _EulerAdjoint(torch.autograd.Function):
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
        h = stack.h
        index = {id(p): i for i, p in enumerate(params)}
        grads = [None] * len(params)
        p_adj = grad_out
        x = x.detach()
        for n in reversed(range(stack.num_steps)):
            f = stack.functions[n]
            own = [p for p in f.parameters() if id(p) in index]
            buffers = list(f.buffers())
            with torch.no_grad():
                if buffers:
                    with _buffers_frozen(buffers):
                        x = x - h * f(x)
                else:
                    x = x - h * f(x)
            if n % _CHECK_EVERY == 0:
                _check_finite(x, n)
            with torch.enable_grad(), _buffers_frozen(buffers):
                # buffers are restored only after the VJP: BatchNorm's backward
                # checks that they were not modified in between
                x_req = x.detach().requires_grad_(True)
                vjp = torch.autograd.grad(f(x_req), [x_req, *own], grad_outputs=h * p_adj,
                                          allow_unused=True)
            p_adj = p_adj + vjp[0]
            for p, g in zip(own, vjp[1:]):
                if g is not None:
                    i = index[id(p)]
                    grads[i] = g if grads[i] is None else grads[i] + g
        return (p_adj, None, None, *grads)


def euler_adjoint(stack, x: torch.Tensor) -> torch.Tensor:
    """Apply an Euler :class:`~resode_tut.ResidualStack` with memory-free gradients.

    Parameters
    ----------
    stack : ResidualStack
        ``scheme="euler"``.  Its residual functions must be deterministic
        (no dropout): backward evaluates them again.
    x : torch.Tensor, shape (B, ...)

    Returns
    -------
    torch.Tensor, same shape as ``x``
        ``x_N``, identical to the plain forward; its backward uses the
        discrete adjoint and stores nothing but ``x_N``.
    """
    params = _unique_params(stack.functions)
    return _EulerAdjoint.apply(x, stack, len(params), *params)


def reconstruct(stack, x_N: torch.Tensor) -> torch.Tensor:
    """The hidden states the adjoint rebuilds backwards from the output alone.

    Parameters
    ----------
    stack : ResidualStack
        Euler.
    x_N : torch.Tensor, shape (B, ...)
        The stack's output.

    Returns
    -------
    torch.Tensor, shape (num_steps + 1, B, ...)
        ``out[n] = x~_n`` with ``x~_N = x_N`` and
        ``x~_n = x~_{n+1} - h f_n(x~_{n+1})``; compare with
        :meth:`ResidualStack.trajectory` for the reconstruction error.
    """
    if stack.scheme != "euler":
        raise ValueError(f"reconstruct needs an Euler stack, got scheme {stack.scheme!r}")
    states = [x_N.detach()]
    with torch.no_grad():
        for n in reversed(range(stack.num_steps)):
            f = stack.functions[n]
            with _buffers_frozen(list(f.buffers())):
                states.append(states[-1] - stack.h * f(states[-1]))
    return torch.stack(states[::-1])
