r"""Four ways to differentiate a residual stack (Euler or Heun), side by side
(chapters 3, 4 and 6).

* ``"backprop"`` -- plain autograd: every layer keeps its activations.
* ``"checkpoint"`` -- ``torch.utils.checkpoint`` per block: keeps each block's
  input, recomputes the block in backward.
* ``"odeint_adjoint"`` -- torchdiffeq's continuous adjoint on the equivalent
  ODE ``dx/dt = f(x, theta(t))``, set up as a careful user would, so that its
  forward values are the stack's and every backward step samples the weights of
  its own layer.  Euler: ``theta`` constant on each step and torchdiffeq's ``euler`` with the
  stack's step (a step is sampled at its start going forward and at its end
  going backward: the field gives both ``theta_n``; with linearly interpolated
  weights the backward step would sample ``theta_{n+1}``, leaving layer 0
  without a gradient and doubling the last's).
  Heun: weights linear between the layers and ``heun2``, whose two samples per
  step fall on the layer times in both directions.
* ``"adjoint"`` -- the memory-free discrete adjoint of :mod:`resode_tut.adjoint`.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint
from torchdiffeq import odeint_adjoint

from ..adjoint import discrete_adjoint, reconstruct
from ..limit import knot_position, max_state_distance
from ..memory import CudaPeak, SavedTensorsCounter
from ..residual_functions import tanh_stack
from ..stack import ResidualStack

__all__ = ["METHODS", "forward_with", "gradients", "layer_errors", "saved_bytes", "floor_step",
           "backward_step",
           "interleaved_times", "paired_ratio", "cuda_peak_mib", "relative_error",
           "adjoint_error_sweep"]

METHODS = ("backprop", "checkpoint", "odeint_adjoint", "adjoint")


class _StackField(nn.Module):
    """``(t, x) -> f(x, theta(t))`` built from the stack's own parameters, so that
    gradients reach them; ``theta`` is linear between the layer times.
    """

    def __init__(self, stack: ResidualStack):
        super().__init__()
        self.stack = stack
        self.names = [dict(f.named_parameters()) for f in stack.functions]

    def forward(self, t, x):
        n, w = knot_position(float(t.detach()), self.stack.h, self.stack.depth)
        f = self.stack.functions[n]
        if w == 0.0:
            return f(x)
        nxt = self.names[n + 1]
        theta = {k: (1 - w) * p + w * nxt[k] for k, p in self.names[n].items()}
        return functional_call(f, theta, (x,))


class _PiecewiseField(nn.Module):
    """``(t, x) -> f_n(x)``, the weights constant on each step ``[t_n, t_{n+1}]``.

    torchdiffeq's Euler samples a step at its start going forward and, in the
    adjoint's backward solve, at its end; so at a layer time the field returns
    layer ``n`` in the forward solve (run without grad) and layer ``n - 1`` in
    the backward solve (run with grad): every step sees its own layer's weights.
    """

    def __init__(self, stack: ResidualStack):
        super().__init__()
        self.stack = stack

    def forward(self, t, x):
        s = float(t.detach()) / self.stack.h
        n = round(s)
        if abs(s - n) > 1e-6:          # not on a layer time (not used by Euler)
            n = int(s)
        elif torch.is_grad_enabled():  # the backward step ending at t_n: layer n - 1
            n -= 1
        return self.stack.functions[min(max(n, 0), self.stack.depth - 1)](x)


def forward_with(stack: ResidualStack, x: torch.Tensor, method: str) -> torch.Tensor:
    """The stack's output ``x_N``, computed so that backward uses ``method``.

    Parameters
    ----------
    stack : ResidualStack
        Any scheme (its own ``adjoint`` flag is ignored); ``"odeint_adjoint"``
        needs one with a torchdiffeq counterpart (Euler, Heun).
    x : torch.Tensor, shape (B, ...)
    method : {"backprop", "checkpoint", "odeint_adjoint", "adjoint"}

    Returns
    -------
    torch.Tensor, same shape as ``x``
    """
    if method not in METHODS:
        raise ValueError(f"unknown gradient method {method!r}: choose one of {METHODS}")
    scheme = stack.scheme
    if method == "backprop":
        state = scheme.initial_state(x)
        for n in range(stack.num_steps):
            state = stack.step(n, state)
        return scheme.output(state)
    if method == "checkpoint":
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)  # reentrant checkpoint needs it
        state = scheme.initial_state(x)
        for n in range(stack.num_steps):
            state = checkpoint(stack.step, n, state, use_reentrant=True)
        return scheme.output(state)
    if method == "odeint_adjoint":
        if not scheme.torchdiffeq_method:
            raise ValueError(f"scheme {scheme.name!r} has no torchdiffeq counterpart: "
                             "odeint_adjoint compares with Euler and Heun stacks")
        params = tuple(p for p in stack.parameters() if p.requires_grad)
        t = torch.tensor([0.0, 1.0], dtype=x.dtype, device=x.device)
        # the same scheme in torchdiffeq; a scheme that samples the weights at both ends
        # of a step (Heun) needs theta(t) between the layer times, Euler its layer's own
        field = (_StackField(stack) if stack.scheme.samples_step_ends
                 else _PiecewiseField(stack))
        return odeint_adjoint(field, x, t, method=stack.scheme.torchdiffeq_method,
                              options={"step_size": stack.h}, adjoint_params=params)[-1]
    return discrete_adjoint(stack, x)


def _loss(out: torch.Tensor) -> torch.Tensor:
    # a fixed, non-symmetric linear functional of the output
    w = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device)
    return (out.flatten() * w).sum() / out.shape[0]


def gradients(stack: ResidualStack, x: torch.Tensor, method: str) -> list[torch.Tensor]:
    """Gradients of a fixed linear loss of ``x_N`` with respect to every parameter.

    Parameters
    ----------
    stack : ResidualStack
    x : torch.Tensor, shape (B, ...)
        Input of the stack.
    method : str
        One of :data:`METHODS`.

    Returns
    -------
    list of torch.Tensor
        One per parameter of the stack, in ``stack.parameters()`` order.
    """
    params = [p for p in stack.parameters() if p.requires_grad]
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    # .backward() rather than autograd.grad: reentrant checkpointing needs it
    _loss(forward_with(stack, x, method)).backward()
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    for p, g in zip(params, saved):
        p.grad = g
    return grads


def layer_errors(stack: ResidualStack, x: torch.Tensor, methods) -> dict:
    """Relative error of each residual function's gradient against backprop's.

    Parameters
    ----------
    stack : ResidualStack
    x : torch.Tensor, shape (B, ...)
        Input of the stack.
    methods : sequence of str
        Names from :data:`METHODS`.

    Returns
    -------
    dict
        ``{method: numpy.ndarray (M,)}``: for function ``n``,
        ``||g_n - g_n^bp|| / ||g_n^bp||`` over all of its parameters.

    Raises
    ------
    ValueError
        The functions share parameters (tied weights): there is no per-layer gradient.
    """
    if sum(len(list(f.parameters())) for f in stack.functions) != len(list(stack.parameters())):
        raise ValueError("layer_errors needs one set of parameters per residual function; "
                         "this stack's functions share parameters (tied weights)")

    def per_function(grads):
        it = iter(grads)
        return [torch.cat([next(it).flatten() for _ in f.parameters()]) for f in stack.functions]

    ref = per_function(gradients(stack, x, "backprop"))
    out = {}
    for m in methods:
        got = per_function(gradients(stack, x, m))
        out[m] = np.array([((a - b).norm() / b.norm()).item() for a, b in zip(got, ref)])
    return out


def relative_error(reference: list[torch.Tensor], approx: list[torch.Tensor]) -> float:
    """``||g - g_ref|| / ||g_ref||`` over all parameters together.

    Parameters
    ----------
    reference : list of torch.Tensor
        ``g_ref``, one tensor per parameter.
    approx : list of torch.Tensor
        ``g``, the same shapes.
    """
    num = sum((a - r).double().square().sum() for r, a in zip(reference, approx))
    den = sum(r.double().square().sum() for r in reference)
    return float((num / den).sqrt())


def saved_bytes(stack: ResidualStack, x: torch.Tensor, method: str) -> int:
    """Bytes kept for backward by one forward pass with ``method`` (parameters excluded).

    Parameters
    ----------
    stack : ResidualStack
    x : torch.Tensor, shape (B, ...)
        Input of the stack.
    method : str
        One of :data:`METHODS`.
    """
    with SavedTensorsCounter(stack) as counter:
        out = forward_with(stack, x, method)
    del out
    return counter.bytes


def cuda_peak_mib(stack: ResidualStack, x: torch.Tensor, method: str) -> float:
    """Peak CUDA memory (MiB) above the baseline during one forward + backward step.

    Parameters
    ----------
    stack : ResidualStack
        On a CUDA device.
    x : torch.Tensor, shape (B, ...)
        Input, on the same device.
    method : str
        One of :data:`METHODS`.
    """
    with CudaPeak(x.device) as peak:
        _loss(forward_with(stack, x.detach().requires_grad_(True), method)).backward()
    stack.zero_grad(set_to_none=True)
    return peak.mib


def floor_step(stack: ResidualStack, x: torch.Tensor, forwards: int = 2) -> None:
    """What the discrete adjoint must at least do: two forward passes without a graph
    (the forward, and the reconstruction's evaluations) and one backprop step (the
    re-evaluations with their vector-Jacobian products).  Its time is the adjoint's
    floor on these layers.

    Parameters
    ----------
    stack : ResidualStack
    x : torch.Tensor, shape (B, ...)
    forwards : int
        Forward passes without a graph: 2 for the adjoint that reconstructs and then
        re-evaluates; 1 for a backward whose one evaluation a step serves both
        (``Euler(one_evaluation=True)``), for checkpointing and for the continuous
        adjoint.
    """
    with torch.no_grad():
        for _ in range(forwards):
            y = stack.scheme.initial_state(x)
            for n in range(stack.num_steps):
                y = stack.step(n, y)
    _loss(forward_with(stack, x, "backprop")).backward()


def backward_step(stack: ResidualStack, x: torch.Tensor, method: str) -> None:
    """One forward and backward pass of a fixed linear loss with ``method`` (gradients
    accumulate in ``.grad``), or a floor: what :func:`interleaved_times` times.

    Parameters
    ----------
    stack : ResidualStack
    x : torch.Tensor, shape (B, ...)
    method : str
        One of :data:`METHODS`, ``"floor"`` or ``"floor1"`` (:func:`floor_step` with
        two or one graph-free forwards).
    """
    if method == "floor":
        floor_step(stack, x)
    elif method == "floor1":
        floor_step(stack, x, forwards=1)
    else:
        _loss(forward_with(stack, x, method)).backward()


def interleaved_times(stack: ResidualStack, x: torch.Tensor, methods, repeats: int = 9
                      ) -> dict:
    """Wall times of one forward + backward step per method, the methods interleaved.

    Round ``r`` runs every method once, in an order rotated by ``r``, so that load
    drift hits all methods alike; compare them with :func:`paired_ratio`.

    Parameters
    ----------
    stack : ResidualStack
    x : torch.Tensor, shape (B, ...)
    methods : sequence of str
        Names from :data:`METHODS`, and ``"floor"`` (:func:`floor_step`) or
        ``"floor1"`` (its one-forward version).
    repeats : int
        Rounds, after one warm-up round.

    Returns
    -------
    dict
        ``{method: numpy.ndarray (repeats,)}`` in seconds, round by round.
    """
    methods = list(methods)
    times = {m: [] for m in methods}
    for r in range(repeats + 1):   # round 0 warms up
        k = r % len(methods)
        for m in methods[k:] + methods[:k]:
            if x.is_cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            backward_step(stack, x, m)
            if x.is_cuda:
                torch.cuda.synchronize()
            if r:
                times[m].append(time.perf_counter() - t0)
    stack.zero_grad(set_to_none=True)
    return {m: np.array(t) for m, t in times.items()}


def paired_ratio(times: dict, method: str, reference: str) -> tuple[float, float, float]:
    """Median and quartiles of ``time(method) / time(reference)`` over the rounds of
    :func:`interleaved_times` (each ratio from one round: same load).

    Parameters
    ----------
    times : dict
        As returned by :func:`interleaved_times`.
    method : str
        The method timed.
    reference : str
        The method it is compared with.

    Returns
    -------
    tuple of float
        ``(median, 25th percentile, 75th percentile)``.
    """
    ratio = times[method] / times[reference]
    q25, med, q75 = np.percentile(ratio, [25, 50, 75])
    return float(med), float(q25), float(q75)


def adjoint_error_sweep(depths, kinds=("smooth", "iid"), seeds=(0, 1), dim: int = 16,
                        batch: int = 32, input_seed: int = 123,
                        scheme: str = "euler") -> dict:
    """Reconstruction and gradient errors of the discrete adjoint against depth.

    For tanh stacks (:func:`resode_tut.tanh_stack`, float64, ``scheme``) of
    each depth (number of residual functions),
    weight kind and seed: the largest reconstruction error
    ``max_n ||x~_n - x_n||`` (mean over inputs) and the relative gradient
    error of the adjoint against backprop, and the adjoint's own self-check
    ``||x~_0 - x_0|| / ||x_0||`` (``ResidualStack.last_reconstruction_error``).

    Parameters
    ----------
    depths : sequence of int
        Numbers of residual functions.
    kinds : sequence of {"smooth", "iid"}
        Weight kinds.
    seeds : sequence of int
        One network per seed.
    dim : int
        State size.
    batch : int
        Inputs per comparison.
    input_seed : int
        Seeds the inputs.
    scheme : {"euler", "heun"}

    Returns
    -------
    dict
        ``{"reconstruction": {kind: array (K,)}, "gradient": {kind: array (K,)},
        "self_check": {kind: array (K,)}}``, means over seeds.
    """
    x = torch.randn(batch, dim, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(input_seed))
    out = {"reconstruction": {}, "gradient": {}, "self_check": {}}
    for kind in kinds:
        rec = np.zeros((len(depths), len(seeds)))
        grad = np.zeros((len(depths), len(seeds)))
        check = np.zeros((len(depths), len(seeds)))
        for i, N in enumerate(depths):
            for j, s in enumerate(seeds):
                stack = tanh_stack(N, kind, seed=s, dim=dim, scheme=scheme)
                with torch.no_grad():
                    traj = stack.trajectory(x)
                rec[i, j] = max_state_distance(traj, reconstruct(stack, traj[-1])) \
                    .mean().item()
                grad[i, j] = relative_error(gradients(stack, x, "backprop"),
                                            gradients(stack, x, "adjoint"))
                check[i, j] = stack.last_reconstruction_error
        out["reconstruction"][kind] = rec.mean(axis=1)
        out["gradient"][kind] = grad.mean(axis=1)
        out["self_check"][kind] = check.mean(axis=1)
    return out
