r"""The memory-free discrete adjoint of a residual stack (any scheme).

Forward: the stack's steps ``x_{n+1} = Phi_n(x_n)`` under ``torch.no_grad()``;
only the output ``x_N`` is kept (and the input ``x_0``, for the self-check
below).  Backward, for ``n = N-1, ..., 0`` (Sander et al., 2022):

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

Schemes whose reverse step is exact (:class:`~resode_tut.schemes.Momentum`,
:class:`~resode_tut.schemes.Coupling`, :class:`~resode_tut.schemes.ReversibleHeun`;
``scheme.exact_reverse``) run the same backward: ``x~_n`` is then ``x_n`` up to rounding
and the gradients are backprop's up to rounding (amplified by ``1/gamma`` a step for a
momentum ResNet). A state of several parts (momentum's ``(x, v)``) is one stacked tensor,
made from the input and read into the output by autograd around the adjoint.

Memory for the residual part is O(1) in depth; the price is evaluating every
step twice more (reconstruction and re-evaluation), i.e. about 5/3 of
backprop's work if a vector-Jacobian product costs two evaluations.  (Heun's
reversal starts with ``f_{n+1}(x~_{n+1})``, which the previous step's
re-evaluation has just computed: it is reused, so a Heun step costs five
evaluations in all, not six.)  The measurable floor is two forward passes without
a graph plus one backprop step
(:func:`resode_tut.experiments.gradient_methods.floor_step`); on a CPU this
backward costs 0.96-1.02 times it for tanh layers of width 64 and 256 at depths
64 and 256 (Euler, and Heun at width 64), and 0.87 times it for Heun at width
256, where the saved evaluation weighs most (``python -m
resode_tut.experiments.ch03 adjoint --methods adjoint`` measures it).

What backward guarantees (each one tested against plain backprop):

* **Randomness** (dropout, ``torch.randn_like``): with
  ``stack.preserve_rng_state`` (the default) every re-evaluation replays the
  random state the same evaluation had in forward (CPU and CUDA
  generators), so gradients are backprop's with the same masks, and the global
  generators end where a plain backward leaves them.  The cost is one random
  state (5,056 bytes for the CPU generator, plus 16 per CUDA device) per
  evaluation that draws random numbers: about 5 KB per dropout layer, and
  nothing for a deterministic stack.  The states are saved for backward, so
  :class:`~resode_tut.memory.SavedTensorsCounter` counts them.  To find out
  cheaply, a forward compares the generators before and after; a stack found
  to draw random numbers runs that forward once more from the same state,
  recording, and records directly from then on (until a forward draws none).
* **Buffers a function updates and reads** (spectral normalisation's power-iteration
  vectors, any buffer but normalisation statistics, which a train-mode forward updates
  but does not read): a forward copies them once to see whether they change; a stack
  found updating them records, per evaluation, the values the evaluation saw (a copy
  only when they changed) and backward restores them before each re-evaluation, so the
  gradients are backprop's.  Like random states, found on a forward that is then run once
  more from the same state, recording.
* **Autocast**: backward re-enters the forward's ``torch.autocast`` state.
* **dtype changes**: a function may return another floating dtype than its
  input's (float64 from float32); each reconstructed state is cast back to the
  dtype it had in forward.
* **Refused, with a named error**: a residual function that uses a tensor
  requiring grad which is not a parameter of the stack's functions (the adjoint
  cannot return its gradient), and higher-order gradients (``create_graph=True``):
  the adjoint is first-order only.  Residual functions that modify their input
  in place are refused by the stack itself, in every mode.
* **A self-check**: the input ``x_0`` is kept (one more state, still O(1) in
  depth); at the end of every backward the reconstruction ``x~_0`` is compared
  with it, the miss relative to the stack's displacement,
  ``||x~_0 - x_0|| / ||x_N - x_0||``, is stored as
  ``stack.last_reconstruction_error``, and above ``stack.reconstruction_tol`` a
  :class:`ReconstructionWarning` is issued (once per stack), or a
  :class:`ReconstructionError` raised with ``strict=True``.  A
  non-finite reconstruction always raises.

Every re-evaluation during backward runs in the module's current mode (a
BatchNorm in train mode keeps using batch statistics), and all buffers
(running statistics, counters) are restored afterwards, so they end exactly as
after a plain forward.
"""
from __future__ import annotations

import math
import warnings
from contextlib import ExitStack, contextmanager

import torch

from ._arith import add_scaled, all_finite

__all__ = ["discrete_adjoint", "adjoint_gradients", "one_evaluation_adjoint_gradients",
           "reverse_step", "reconstruct",
           "AdjointState",
           "ReconstructionError", "ReconstructionWarning"]


class ReconstructionError(FloatingPointError):
    """The backward reconstruction of the hidden states became non-finite, or (with
    ``strict=True``) missed the stack's input by more than its tolerance.
    """


class ReconstructionWarning(UserWarning):
    """The backward reconstruction missed the stack's input ``x_0`` by more than the
    stack's ``reconstruction_tol``: the adjoint's gradients are off by about as much.
    """


_CHECK_EVERY = 32  # layers between finiteness checks of the reconstruction


class AdjointState:
    """What the adjoint keeps between calls of one stack (``stack.adjoint_state``).

    Attributes
    ----------
    last_error : float or None
        The last backward's self-check, ``||x~_0 - x_0|| / ||x_N - x_0||``.
    rng_seen : bool
        The last forward drew random numbers (the next one records its random states
        directly).
    self_updating : bool
        In the last forward a residual function updated buffers it reads (spectral
        normalisation's power iteration): the next one records them directly.
    warned : bool
        A :class:`ReconstructionWarning` was issued (it is issued once per stack).
    """

    def __init__(self):
        self.last_error = None
        self.rng_seen = False
        self.warned = False
        self.self_updating = False
        self.plan = None      # (key, per-step plan): see _plan
        self.watched = None   # (key, buffers a forward may update): see _self_updating_candidates
        self.params = None    # (key, the stack's distinct parameters): see _stack_parameters

    def report(self, error: float, tol: float, strict: bool) -> None:
        """Store the self-check ``error`` and warn (or, with ``strict``, raise) above
        ``tol``.

        Parameters
        ----------
        error : float
            ``||x~_0 - x_0|| / ||x_N - x_0||`` of the backward that just ended.
        tol : float
            The stack's ``reconstruction_tol``.
        strict : bool
            Raise :class:`ReconstructionError` instead of warning.
        """
        self.last_error = error
        if error <= tol:
            return
        message = (
            f"the adjoint's reconstruction of the input is off by {error:.3g} (relative), "
            f"above reconstruction_tol={tol:g}: expect its gradients to differ from "
            "backprop's by as much. The steps are too far from invertible at this depth: "
            "use more layers (smaller h), the Heun scheme, smaller residual functions, or "
            "adjoint=False")
        if strict:
            raise ReconstructionError(message)
        if not self.warned:
            self.warned = True
            warnings.warn(message, ReconstructionWarning, stacklevel=3)

    def __getstate__(self):
        # caches hold ids of this process's objects: a copy rebuilds them
        return {**self.__dict__, "plan": None, "params": None, "watched": None}


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


def _step_functions(stack, n):
    """The residual functions that step ``n`` evaluates."""
    return [stack.functions[k] for k in stack.scheme.functions_of_step(n)]


def _evaluator(stack, n, replay):
    """``f(k, x) -> f_k(x)`` for step ``n`` of the backward: the plain module call, after
    setting the random state that the same evaluation had in forward (``replay``).
    """
    functions = stack.functions
    if replay is None:
        return lambda k, x: functions[k](x)
    index = stack.scheme.evaluation_index   # which forward evaluation this one repeats

    def f(k, x):
        replay(index(n, k))
        return functions[k](x)
    return f


def _check_finite(x, n):
    if not all_finite(x):
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
    functions = _step_functions(stack, n)
    with _buffers_frozen(_unique(b for f in functions for b in f.buffers())):
        return stack.scheme.reverse_step(_evaluator(stack, n, None), n, x, stack.h)


def adjoint_gradients(stack, x_N: torch.Tensor, p_N: torch.Tensor):
    """The discrete adjoint as chapter 3 writes it: the reference for the fast backward.

    Parameters
    ----------
    stack : ResidualStack
        Parameters that require grad get gradients; buffers are not restored and random
        states not replayed (the fast backward, ``adjoint=True``, does both).
    x_N : torch.Tensor, shape (B, ...)
        The stack's output.
    p_N : torch.Tensor, shape (B, ...)
        ``dL/dx_N``.

    Returns
    -------
    (p_0, grads)
        ``dL/dx_0`` and one gradient per parameter of ``stack.parameters()`` that requires
        grad.  On float64 they are bitwise the fast backward's (a test checks it).
    """
    if stack.scheme.linearises_reverse_step:          # chapter 8's one-evaluation variant
        return one_evaluation_adjoint_gradients(stack, x_N, p_N)
    params = [q for q in stack.parameters() if q.requires_grad]
    grads = [torch.zeros_like(q) for q in params]
    scheme, h, f = stack.scheme, stack.h, stack.evaluate
    x, p = x_N.detach(), p_N
    for n in reversed(range(stack.num_steps)):
        with torch.no_grad():
            x = scheme.reverse_step(f, n, x, h)       # x~_n, the scheme run backwards
        x.requires_grad_(True)
        with torch.enable_grad():
            x_next = scheme.step(f, n, x, h)          # the step again, with its graph
        p, *g = torch.autograd.grad(x_next, [x, *params], p, allow_unused=True)
        grads = [a if b is None else a + b for a, b in zip(grads, g)]   # sum over steps
        x = x.detach()
    return p, grads


def one_evaluation_adjoint_gradients(stack, x_N: torch.Tensor, p_N: torch.Tensor):
    """The one-evaluation Euler adjoint (``Euler(one_evaluation=True)``) as chapter 8
    writes it: one evaluation ``k = f_n(x~_{n+1})`` a step, which both reconstructs
    ``x~_n = x~_{n+1} - h k`` and gives the product ``p_n = p_{n+1} + h (dk/dx)^T
    p_{n+1}``; the reference for the fast backward.

    Parameters
    ----------
    stack : ResidualStack
        An Euler stack.
    x_N : torch.Tensor, shape (B, ...)
        The stack's output.
    p_N : torch.Tensor, shape (B, ...)
        ``dL/dx_N``.

    Returns
    -------
    (p_0, grads)
        As :func:`adjoint_gradients`; on float64 bitwise the fast backward's.
    """
    if stack.scheme != "euler":
        raise ValueError(f"the one-evaluation adjoint is Euler's, got scheme {stack.scheme!r}")
    params = [q for q in stack.parameters() if q.requires_grad]
    grads = [torch.zeros_like(q) for q in params]
    h, f = stack.h, stack.evaluate
    x, p = x_N.detach(), p_N
    for n in reversed(range(stack.num_steps)):
        x.requires_grad_(True)
        with torch.enable_grad():
            k = f(n, x)                               # f_n(x~_{n+1}), with its graph
        g_x, *g = torch.autograd.grad(k, [x, *params], p * h, allow_unused=True)
        x, p = add_scaled(x.detach(), -h, k.detach()), p + g_x
        grads = [a if b is None else a + b for a, b in zip(grads, g)]
    return p, grads


def _norm_statistics(module) -> set[int]:
    """Ids of the running statistics of the normalisation layers in ``module``: they
    change in a train-mode forward but the output does not read them there.
    """
    return {id(b) for m in module.modules()
            if isinstance(m, torch.nn.modules.batchnorm._NormBase)
            for b in m.buffers(recurse=False)}


def _self_updating_candidates(stack):
    """The buffers of the stack's functions that a forward may update and read (all but
    normalisation statistics: e.g. spectral normalisation's power-iteration vectors),
    cached like the parameters.
    """
    state = stack.adjoint_state
    key = (_registrations[0], id(stack))
    if state.watched is None or state.watched[0] != key:
        stats = set().union(*(_norm_statistics(f) for f in stack.functions))
        state.watched = (key, _unique(b for f in stack.functions for b in f.buffers()
                                      if id(b) not in stats))
    return state.watched[1]


def _all_buffers(stack):
    return _unique(b for f in stack.functions for b in f.buffers())


def _version(t):
    """The tensor's version counter (bumped by every in-place change); None where torch
    does not expose it (then every record copies).
    """
    return getattr(t, "_version", None)


class _BufferTape:
    """The values of the buffers a residual function updates itself (spectral
    normalisation's ``u``, ``v``) before each of its evaluations in forward: backward
    restores them before re-evaluating, so every evaluation sees the forward's state.
    A buffer unchanged since its last record shares that record's copy.
    """

    def __init__(self, stack, watched):
        ids = {id(b) for b in watched}
        self.of_function = [[b for b in _unique(f.buffers()) if id(b) in ids]
                            for f in stack.functions]
        self.states = []
        self._last = {}

    def record(self, k: int) -> None:
        entry = []
        for b in self.of_function[k]:
            version, copy = self._last.get(id(b), (None, None))
            if copy is None or version is None or version != _version(b):
                copy = b.detach().clone()
                self._last[id(b)] = (_version(b), copy)
            entry.append((b, copy))
        self.states.append(entry)

    def restore(self, i: int) -> None:
        with torch.no_grad():
            for b, value in self.states[i]:
                b.copy_(value)

    def tensors(self) -> list[torch.Tensor]:
        """The distinct recorded copies (saved for backward, so memory counters see them)."""
        return _unique(c for entry in self.states for _, c in entry)


def _replayer(tape, buffers):
    """``replay(i)``: the random state and self-updated buffers of forward evaluation
    ``i``; None when there is nothing to replay.
    """
    if tape is None and buffers is None:
        return None
    if buffers is None:
        return tape.restore
    if tape is None:
        return buffers.restore

    def replay(i):
        tape.restore(i)
        buffers.restore(i)
    return replay


class _RngTape:
    """The random state before every evaluation of a residual function in forward.

    Backward sets it again before re-evaluating the same function at the same
    step, so dropout masks and ``torch.randn_like`` noise are the forward's (as
    :func:`torch.utils.checkpoint.checkpoint` does).  A state is the CPU
    generator's (5,056 bytes) and, per CUDA device in use, that device's (16
    bytes).  An evaluation that drew no random numbers leaves the state as it
    found it, so the next entry shares the previous one's tensor: a stack stores
    a state per random evaluation, and a deterministic one none at all.
    """

    def __init__(self, devices):
        self.devices = devices
        self.states = []

    def snapshot(self):
        """The generators' states now: (CPU state, [CUDA states])."""
        return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in self.devices]

    def record(self, k: int) -> None:
        cpu, cuda = self.snapshot()
        if self.states:
            last_cpu, last_cuda = self.states[-1]
            cpu = last_cpu if torch.equal(last_cpu, cpu) else cpu
            cuda = [a if torch.equal(a, b) else b for a, b in zip(last_cuda, cuda)]
        self.states.append((cpu, cuda))

    def restore(self, i: int) -> None:
        cpu, cuda = self.states[i]
        self.set((cpu, cuda))

    def set(self, state) -> None:
        """Set the generators to a :meth:`snapshot`."""
        cpu, cuda = state
        torch.set_rng_state(cpu)
        for d, c in zip(self.devices, cuda):
            torch.cuda.set_rng_state(c, d)

    def unchanged_since(self, state) -> bool:
        """Whether no generator has drawn a number since the :meth:`snapshot` ``state``."""
        cpu, cuda = self.snapshot()
        return torch.equal(cpu, state[0]) and all(map(torch.equal, cuda, state[1]))

    @property
    def random(self) -> bool:
        """Whether the recorded evaluations drew random numbers (there is anything to
        replay).
        """
        return len(self.tensors()) > len(self.devices) + 1

    def tensors(self) -> list[torch.Tensor]:
        """The distinct state tensors (saved for backward, so memory counters see them)."""
        return _unique(t for cpu, cuda in self.states for t in (cpu, *cuda))


def _cuda_devices(tensors):
    if not torch.cuda.is_initialized():   # then no tensor can be on a CUDA device
        return []
    return sorted({t.device.index if t.device.index is not None
                   else torch.cuda.current_device()
                   for t in tensors if t.device.type == "cuda"})


def _captured_error(n, tensor):
    return RuntimeError(
        f"step {n} of the adjoint stack uses a tensor of shape {tuple(tensor.shape)} that "
        "requires grad but is not a parameter of the stack's residual functions (a "
        "conditioning vector, or another module's weight reached through a closure): the "
        "adjoint can only return gradients for the stack's input and its registered "
        "parameters. Register it as an nn.Parameter (or submodule) of the residual "
        "function, or use adjoint=False")


def _forward(stack, x, tape, buffers=None):
    """The stack's steps without a graph (recording random states into ``tape`` and
    self-updated buffers into ``buffers``, if given): ``x_N`` and the dtype of every
    state ``x_0 ... x_N``.
    """
    dtypes = [x.dtype]   # a function may change the dtype: backward casts back
    scheme, h, evaluate = stack.scheme, stack.h, stack.evaluate
    if tape is not None or buffers is not None:
        def f(k, x):
            if tape is not None:
                tape.record(k)
            if buffers is not None:
                buffers.record(k)
            return evaluate(k, x)
    else:
        f = evaluate
    with torch.no_grad():
        for n in range(stack.num_steps):
            x = scheme.step(f, n, x, h)
            dtypes.append(x.dtype)
    return x, dtypes


def _plan(stack, params):
    """Per step: the residual functions it evaluates, the parameters they own that
    require grad, with their gradient slots, and their buffers; the index of the
    gradient slots; and, per function, the ids of the parameters it owns.

    Built once and kept per stack until any module registers a parameter or a
    submodule (see :func:`_stack_parameters`) or another set of parameters requires
    grad (``params``, the forward's): re-filtering a deep stack's steps costs about
    0.7 us a step, every backward.
    """
    state = stack.adjoint_state
    key = (_registrations[0], id(stack), tuple(map(id, params)))
    if state.plan is not None and state.plan[0] == key:
        return state.plan[1]
    index = {id(p): i for i, p in enumerate(params)}
    plan = []
    for n in range(stack.num_steps):
        functions = _step_functions(stack, n)
        ps = [p for p in _unique(p for f in functions for p in f.parameters())
              if id(p) in index]
        # buffers: also of the functions the reverse step evaluates (reversible Heun's
        # f_n belongs to step n - 1's forward)
        touched = functions + [stack.functions[k]
                               for k in stack.scheme.functions_of_reverse_step(n)]
        plan.append((functions, ps, [index[id(p)] for p in ps],
                     _unique(b for f in touched for b in f.buffers())))
    owns = {id(f): {id(p) for p in f.parameters()} for f in stack.functions}
    state.plan = (key, (plan, index, owns))
    return plan, index, owns


def _leaves_checked(k, x_req, index, own, n):
    """The stack parameters under ``k`` that are not in ``own`` (a closure reaching
    another function's weights); raises for a leaf requiring grad that is neither
    ``x_req`` nor a stack parameter (a captured tensor would get no gradient).
    """
    seen, todo, borrowed = set(), [k.grad_fn], []
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if not _is_leaf_node(node):
            todo.extend(f for f, _ in node.next_functions)
            continue
        leaf = node.variable
        if leaf is not x_req and id(leaf) not in own:
            if id(leaf) not in index:
                raise _captured_error(n, leaf)
            borrowed.append(leaf)
    return borrowed


class _DiscreteAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x0, stack, params_count, *params):
        device_type = x0.device.type
        ctx.autocast = {device_type: _autocast_state(device_type), "cpu": _autocast_state("cpu")}
        state = stack.adjoint_state
        tape = _RngTape(_cuda_devices([x0, *params])) if stack.preserve_rng_state else None
        watched = _self_updating_candidates(stack)
        buffers = _BufferTape(stack, watched) if watched else None
        if tape is not None:
            start = tape.snapshot()
        start_values = [b.clone() for b in watched]   # usually none: see the candidates
        # record per evaluation only what the stack was last seen needing (random states,
        # buffers its functions update themselves); otherwise find out, and when it turns
        # out to need them run the forward once more from the same state, recording
        x, dtypes = _forward(stack, x0, tape if state.rng_seen else None,
                             buffers if state.self_updating else None)
        random = tape is not None and (tape.random if state.rng_seen
                                       else not tape.unchanged_since(start))
        updating = any(not torch.equal(b, v) for b, v in zip(watched, start_values))
        if (random and not state.rng_seen) or (updating and not state.self_updating):
            with torch.no_grad():
                end_values = [b.clone() for b in _all_buffers(stack)]
                end = tape.snapshot() if tape is not None else None
                if tape is not None:
                    tape.set(start)
                for b, value in zip(watched, start_values):
                    b.copy_(value)
                _forward(stack, x0, tape if random else None, buffers if updating else None)
                for b, value in zip(_all_buffers(stack), end_values):
                    b.copy_(value)     # as after one forward (BatchNorm's statistics too)
                if tape is not None:
                    tape.set(end)
        if tape is not None and not random:
            tape.states = []
        if buffers is not None and not updating:
            buffers = None
        state.rng_seen, state.self_updating = random, updating
        ctx.stack, ctx.params, ctx.dtypes = stack, params, dtypes
        ctx.tape, ctx.buffers = (tape if random else None), buffers
        ctx.save_for_backward(x0, x, *(tape.tensors() if random else ()),
                              *(buffers.tensors() if buffers is not None else ()))
        return x

    @staticmethod
    def backward(ctx, grad_out):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "the discrete adjoint is first-order only: its backward cannot build a "
                "graph (create_graph=True, double backward, gradient penalties). Use "
                "adjoint=False for higher-order gradients")
        x0, x_N = ctx.saved_tensors[:2]
        stack, tape = ctx.stack, ctx.tape
        # replay what the forward's evaluations saw: random states, self-updated buffers
        replay = _replayer(tape, ctx.buffers)
        # grad mode is off here (checked above): only the re-evaluation enables it
        with torch.random.fork_rng(devices=tape.devices if tape else [],
                                   enabled=tape is not None), _autocast(ctx.autocast):
            x, p, grads = _sweep(stack, ctx.params, replay, ctx.dtypes, x_N.detach(), grad_out)
        _self_check(stack, x, x0, x_N)
        return (p, None, None, *grads)


def _sweep(stack, params, replay, dtypes, x, p):
    """The adjoint recursion, from ``x~_N = x`` and ``p_N = p`` down to step 0.

    Each step reconstructs ``x~_n`` with the scheme's reverse step, then takes one
    vector-Jacobian product through the step from ``x~_n``: ``p_n`` and the step's
    parameter gradients: :func:`adjoint_gradients`'s loop, on its fast path.

    Returns
    -------
    x : Tensor
        ``x~_0`` (detached), for the self-check.
    p : Tensor
        ``p_0``, the gradient with respect to the stack's input.
    grads : list
        One per ``params``: the summed step gradients, None where no step reached it.
    """
    plan, index, owns = _plan(stack, params)
    borrowed = {}   # id(function) -> stack parameters it reaches but does not own
    scheme, h = stack.scheme, stack.h
    shares_first = scheme.reverse_shares_first_evaluation and replay is None
    plain = _evaluator(stack, 0, None) if replay is None else None   # one for all steps
    grads = [None] * len(params)
    known = None   # Heun: (f_{n+1}(x~_{n+1}), x~_{n+1}) from the previous step
    one_evaluation = scheme.linearises_reverse_step
    for n in reversed(range(stack.num_steps)):
        functions, ps, slots, buffers = plan[n]
        dtype = dtypes[n]   # the dtype the step's input had in forward
        saved = [b.clone() for b in buffers] if buffers else None
        x_in = x if x.dtype == dtype else x.to(dtype)
        f = plain or _evaluator(stack, n, replay)
        try:
            if not one_evaluation:
                x = _reconstruct(scheme, f, n, x_in, h, known, dtype)
            with torch.enable_grad():
                # x (or x_in, linearised at the step's end) is the loop's own tensor
                x_req = (x_in if one_evaluation else x).requires_grad_(True)
                out, scale, add_p, ks = _vjp_target(scheme, f, n, h, x_req)
                extra = _borrowed(functions, ks, x_req, ps, index, owns, borrowed, n)
                vjp = _vjp(out, p * scale if add_p else p, (x_req, *ps, *extra))
            if one_evaluation:   # x~_n from the evaluation the product was taken of
                x = _finish_reconstruction(add_scaled(x_in.detach(), -h, out.detach()), n,
                                           dtype)
        finally:   # after the VJP: BatchNorm's backward checks the buffers
            if saved:
                for b, value in zip(buffers, saved):
                    b.copy_(value)
        x = x.detach()
        # Heun: f_n(x~_n) is the next step's first reconstruction evaluation
        # (f_{n+1}(x~_{n+1}) there): kept, it saves one of the six evaluations a
        # step costs (not when random states are replayed: in forward the two
        # evaluations drew different numbers)
        known = (ks[0].detach(), x) if shares_first else None
        p = _adjoint_update(p, vjp[0], add_p)
        _accumulate(grads, slots + [index[id(q)] for q in extra], vjp[1:])
    return x, p, grads


def _reconstruct(scheme, f, n, x_in, h, known, dtype):
    """``x~_n`` from ``x~_{n+1} = x_in`` by the scheme's reverse step, in ``dtype`` (the
    step's forward input dtype); ``known`` is Heun's ``(f_{n+1}(x~_{n+1}), x~_{n+1})``
    when the previous step kept it. Checked finite every ``_CHECK_EVERY`` steps.
    """
    x = scheme.reverse_step(f, n, x_in, h, known[0] if known and known[1] is x_in else None)
    return _finish_reconstruction(x, n, dtype)


def _finish_reconstruction(x, n, dtype):
    """``x~_n`` cast to ``dtype``, checked finite every ``_CHECK_EVERY`` steps."""
    x = x if x.dtype == dtype else x.to(dtype)
    if n % _CHECK_EVERY == 0 and n:   # x~_0: the self-check
        _check_finite(x, n)
    return x


def _adjoint_update(p, g_x, add_p):
    """``p_n`` from ``p_{n+1} = p`` and the step's vector-Jacobian product ``g_x`` with
    respect to ``x~_n``: ``p + g_x`` when the target left out the identity (``add_p``),
    else ``g_x``; ``p`` itself where ``g_x`` is None (f_n ignores x: Euler only).
    """
    if g_x is None:
        return p
    return (p if p.dtype == g_x.dtype else p.to(g_x.dtype)) + g_x if add_p else g_x


def _borrowed(functions, ks, x_req, ps, index, owns, borrowed, n):
    """The stack parameters a step reaches beyond its own ``ps`` (another function's
    weights through a closure), from the graphs of its functions' outputs ``ks``.

    Each function's graph is checked once a backward (its first evaluation there, the
    result kept in ``borrowed``): a captured tensor that requires grad is refused, and
    borrowed weights are found.
    """
    extra = []
    for g, k in zip(functions, ks):
        if id(g) not in borrowed:
            borrowed[id(g)] = _leaves_checked(k, x_req, index, owns[id(g)], n)
        extra += borrowed[id(g)]
    if extra:
        extra = [q for q in _unique(extra) if all(q is not r for r in ps)]
    return extra


def _accumulate(grads, slots, values) -> None:
    """Add each step gradient in ``values`` to ``grads[slot]`` (None: unreached)."""
    for i, g in zip(slots, values):
        if g is not None:
            grads[i] = g if grads[i] is None else grads[i] + g


def _self_check(stack, x_rec, x0, x_N) -> None:
    """Compare the reconstruction ``x~_0`` with the input and report to the stack's
    :class:`AdjointState` (a non-finite reconstruction raises).
    """
    error = _relative_distance(x_rec, x0, x_N)
    if not math.isfinite(error):
        _check_finite(x_rec, 0)
    stack.adjoint_state.report(error, stack.reconstruction_tol, stack.strict)


# One vector-Jacobian product through torch's autograd engine, as torch.autograd.grad
# makes it but without its argument processing (about 8 us a call, once a layer);
# torch.autograd.grad itself where the engine's entry point is not there.
try:
    _run_backward = torch.autograd.Variable._execution_engine.run_backward
except AttributeError:  # pragma: no cover - other torch versions
    _run_backward = None


def _vjp(out, grad, inputs):
    """``(d out / d inputs)^T grad`` for each input (None where unreached)."""
    if _run_backward is not None:
        return _run_backward((out,), (grad,), False, False, inputs, True, False)
    return torch.autograd.grad(out, inputs, grad, allow_unused=True)


def _vjp_target(scheme, f, n, h, x):
    """What the VJP is taken of, at ``x``; its factor; whether ``p`` must then be
    added; and each function's output (whose graphs are checked).

    A scheme whose step is ``x + h f_n(x)`` (:attr:`~resode_tut.schemes.Scheme.additive`,
    Euler): the residual part ``f_n(x)`` alone, the VJP being ``p + h J^T p`` (one
    product and one sum fewer than through the whole step).  Any other scheme (Heun):
    the whole step, so that the contributions to ``p_n`` are summed in autograd's order
    and the gradients stay bitwise those of the recursion.
    """
    if scheme.additive:
        k1 = f(n, x)
        return k1, h, True, (k1,)
    out, ks = scheme.step_with_evaluations(f, n, x, h)
    return out, 1.0, False, ks


def _autocast_state(device_type):
    return {"enabled": torch.is_autocast_enabled(device_type),
            "dtype": torch.get_autocast_dtype(device_type),
            "cache_enabled": torch.is_autocast_cache_enabled()}


@contextmanager
def _autocast(states):
    """Re-enter the forward's autocast state (per device type) in backward; device types
    already in that state are left alone (entering and leaving an autocast region costs
    about 20 us, and clears autocast's cast cache on leaving).
    """
    with ExitStack() as stack:
        for device_type, state in states.items():
            if state != _autocast_state(device_type):
                stack.enter_context(torch.autocast(device_type, **state))
        yield


def _relative_distance(x_rec, x0, x_N):
    """The self-check ``||x~_0 - x_0|| / ||x_N - x_0||`` as a float: the reconstruction's
    miss relative to how far the stack moved its input (0 when it moved nothing and the
    reconstruction is exact).

    Relative to the stack's displacement rather than to ``||x_0||``, it does not depend
    on an offset or a constant feature of the input, which the steps carry along
    unchanged: over 480 stacks (tanh and ReLU-MLP functions, Euler and Heun, depths 4 to
    128, inputs scaled, offset by 50 or with a feature held at 100) its Spearman
    correlation with the true relative gradient error is 0.94 (0.78 for
    ``||x~_0 - x_0|| / ||x_0||``), and it stayed below 0.1 for 5 of the 53 stacks whose
    gradients were more than 10% off (16 of 53 for the old one), with no false alarm
    (``tests/lib/test_self_check.py`` repeats a smaller study).
    """
    x0 = x0.detach().to(x_rec.dtype)
    num = torch.linalg.vector_norm(x_rec - x0)
    den = torch.linalg.vector_norm(x_N.detach().to(x_rec.dtype) - x0)
    if den > 0:
        return float(num / den)
    return 0.0 if num == 0 else math.inf


def discrete_adjoint(stack, x: torch.Tensor) -> torch.Tensor:
    """Apply a :class:`~resode_tut.ResidualStack` with memory-free gradients.

    Parameters
    ----------
    stack : ResidualStack
        Euler or Heun.  Random residual functions (dropout) are replayed with
        the forward's random state when ``stack.preserve_rng_state``.
    x : torch.Tensor, shape (B, ...)

    Returns
    -------
    torch.Tensor, same shape as ``x``
        ``x_N``, identical to the plain forward; its backward uses the
        discrete adjoint and stores nothing but ``x_0``, ``x_N`` (and, when
        replaying, a random state per evaluation that drew random numbers).
    """
    _watch_registrations()
    params = _stack_parameters(stack)
    scheme = stack.scheme
    # a state of several parts is made and read outside the adjoint, by autograd
    state = scheme.initial_state(x)
    if (_apply_c is None or _functorch_active is None or _functorch_active()):
        return scheme.output(_DiscreteAdjoint.apply(state, stack, len(params), *params))
    return scheme.output(_apply_c(_unwrap_if_dead(state), stack, len(params), *params))


# Function.apply's Python wrapper passes every argument through functorch's
# unwrap_dead_wrappers (about 0.17 us an argument, and a stack passes two per layer)
# before calling the C entry point; outside functorch transforms only the input can be
# such a wrapper, so the entry point is called directly, with the input unwrapped.
# torch's own Function.apply where these are not there.
try:
    _apply_c = super(torch.autograd.Function, _DiscreteAdjoint).apply
    _unwrap_if_dead = torch._C._functorch.unwrap_if_dead
except AttributeError:  # other torch versions (tests force this fallback)
    _apply_c = None
_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", None)

# A leaf's node in the autograd graph: torch's class where it is exposed, else its name.
_AccumulateGrad = getattr(getattr(torch._C, "_functions", None), "AccumulateGrad", None)


def _is_leaf_node(node) -> bool:
    if _AccumulateGrad is not None:
        return type(node) is _AccumulateGrad
    return type(node).__name__ == "AccumulateGrad"


# Listing a deep stack's parameters costs about 2 us a layer; the list is kept per stack
# (in its AdjointState) until any module anywhere registers a parameter or a submodule,
# and keyed by the stack's id too: a deep copy or an unpickled stack rebuilds its own
# (the plan's per-function sets hold ids of the original's parameters).  Seeing every
# registration takes torch's global registration hooks -- nothing else tells that a
# module deep inside a residual function gained a parameter -- so they are installed at
# the first adjoint forward, not at import: a program that never uses the adjoint runs
# without them.  Without the caches a forward and backward pass of 64 tanh layers of
# width 64 takes about 3% longer (chapter 3's experiments.ch03.fast_path_ablation).
_registrations = [0]
_watching = []


def _count_registration(*args):
    _registrations[0] += 1


def _watch_registrations() -> None:
    if not _watching:
        _watching.append(
            torch.nn.modules.module.register_module_parameter_registration_hook(
                _count_registration))
        _watching.append(
            torch.nn.modules.module.register_module_module_registration_hook(
                _count_registration))


def _stack_parameters(stack):
    """The distinct parameters of the stack's functions that require grad."""
    state = stack.adjoint_state
    if state.params is None or state.params[0] != (_registrations[0], id(stack)):
        state.params = ((_registrations[0], id(stack)),
                        _unique(p for f in stack.functions for p in f.parameters()))
    return [p for p in state.params[1] if p.requires_grad]


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
