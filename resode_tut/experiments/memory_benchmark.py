r"""Chapter 8's benchmark: every way to train a deep residual stack without keeping its
activations, on one network family, one machine, one table (the code chapter 8's shipped
benchmark is keyed on; :mod:`.ch08` loads, prints and plots it).

For tanh stacks (:func:`resode_tut.tanh_stack`, smooth weights, seed-fixed) at each depth,
width and precision, one run measures for each method of :data:`BENCHMARK`:

* ``grad_error`` -- the relative error of its float32 (or bf16-autocast) gradient against
  float64 backprop *of the same architecture* (a momentum or coupling stack is another
  model than a plain ResNet: each is compared with itself), and ``backprop_error``, that
  architecture's own float32 backprop error, the rounding floor;
* ``drift`` -- for the memory-free methods, ``||x~_0 - x_0|| / ||x_0||``: the input
  rebuilt from the output alone by the scheme's reverse steps, at the run's precision;
* ``failed`` -- the memory-free backward raised a
  :class:`~resode_tut.ReconstructionError` (a reconstruction that overflowed: a momentum
  ResNet at fixed ``gamma`` and large depth); its error is then ``inf`` and it is not
  timed;
* ``mib`` -- bytes kept for backward (:class:`resode_tut.SavedTensorsCounter`), MiB;
* ``ms``, ``x_backprop``, ``x_floor`` -- wall time of a forward + backward step, and the
  paired ratios (median and quartiles over interleaved rounds, as chapter 3 times) to the
  same architecture's backprop and to the method's own floor: the evaluations it cannot
  avoid, two graph-free forwards and a backprop step for a backward that reconstructs
  and then re-evaluates, one graph-free forward and a backprop step for one whose
  evaluation a step serves both (the one-evaluation adjoint, checkpointing, the
  continuous adjoint).
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..adjoint import ReconstructionError, ReconstructionWarning
from ..residual_functions import tanh_stack
from ..schemes import Coupling, Euler, Heun, Momentum, ReversibleHeun
from .chunks import resumable_map
from .gradient_methods import (
    backward_step,
    gradients,
    paired_ratio,
    relative_error,
    saved_bytes,
)

__all__ = ["Method", "BENCHMARK", "BenchmarkConfig", "BENCHMARK_CONFIGS", "run_benchmark",
           "drift"]


@dataclass(frozen=True)
class Method:
    """One row of the benchmark: an architecture (scheme) and how it is differentiated.

    Attributes
    ----------
    label : str
    scheme : str
        A key of :data:`ARCHITECTURES`.
    gradient : str
        ``"backprop"``, ``"checkpoint"``, ``"adjoint"`` (the stack's memory-free
        backward) or ``"odeint_adjoint"``.
    floor : str or None
        ``"floor"`` (two graph-free forwards and a backprop step), ``"floor1"`` (one),
        or None for backprop, its own floor.
    """

    label: str
    scheme: str
    gradient: str
    floor: str | None


#: The architectures, by the name the rows use.
ARCHITECTURES = {
    "euler": Euler, "heun": Heun,
    "euler_one_eval": lambda: Euler(one_evaluation=True),
    "momentum": lambda: Momentum(0.9),
    "momentum_scaled": lambda: Momentum(epsilon=1.0),
    "coupling": Coupling, "reversible_heun": ReversibleHeun,
}

#: The rows, in the order of the chapter's table.
BENCHMARK = (
    Method("backprop", "euler", "backprop", None),
    Method("checkpoint per block", "euler", "checkpoint", "floor1"),
    Method("adjoint, Euler (Sander et al.)", "euler", "adjoint", "floor"),
    Method("adjoint, Heun (Sander et al.)", "heun", "adjoint", "floor"),
    Method("one-evaluation adjoint, Euler", "euler_one_eval", "adjoint", "floor1"),
    Method("momentum, gamma = 0.9", "momentum", "adjoint", "floor"),
    Method("momentum, gamma = 1 - h", "momentum_scaled", "adjoint", "floor"),
    Method("coupling (RevNet)", "coupling", "adjoint", "floor"),
    Method("reversible Heun", "reversible_heun", "adjoint", "floor"),
    Method("odeint_adjoint (torchdiffeq)", "euler", "odeint_adjoint", "floor1"),
)


@dataclass(frozen=True)
class BenchmarkConfig:
    """What :func:`run_benchmark` measures.

    Attributes
    ----------
    name : str
    depths : tuple of int
        Residual functions ``M``.
    widths : tuple of int
        Features of the state.
    precisions : tuple of str
        ``"float32"`` and/or ``"bf16"`` (float32 weights, bf16 autocast).
    batch : int
        Inputs of the timed step.
    error_batch : int
        Inputs of the gradient comparison.
    repeats : int
        Timed rounds after a warm-up round.
    seed : int
    """

    name: str
    depths: tuple
    widths: tuple
    precisions: tuple
    batch: int
    error_batch: int
    repeats: int
    seed: int = 0


BENCHMARK_CONFIGS = {
    "cpu": BenchmarkConfig("cpu", (8, 32, 128, 512), (64, 256), ("float32", "bf16"),
                           batch=64, error_batch=32, repeats=9),
    "quick": BenchmarkConfig("quick", (8, 32), (16,), ("float32", "bf16"), batch=16,
                             error_batch=8, repeats=3),
}


def _autocast(precision: str, gradient: str | None = None):
    # autocast's weight cache grows by about a set of weights per step inside
    # torchdiffeq's adjoint backward (measured: 4.8 GB at N = 128, width 256, bf16, against
    # 0.7 GB without it), so odeint_adjoint runs with the cache off; the others keep it on,
    # as a user's autocast does
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16",
                          cache_enabled=gradient != "odeint_adjoint")


def drift(stack, x: torch.Tensor, precision: str = "float32") -> float:
    """``||x~_0 - x_0|| / ||x_0||``: the input rebuilt from the output by the scheme's
    reverse steps, at the run's precision.

    Parameters
    ----------
    stack : ResidualStack
    x : torch.Tensor, shape (B, ...)
    precision : {"float32", "bf16"}
    """
    scheme = stack.scheme
    with torch.no_grad(), _autocast(precision):
        state = scheme.initial_state(x)
        for n in range(stack.num_steps):
            state = stack.step(n, state)
        for n in reversed(range(stack.num_steps)):
            state = scheme.reverse_step(stack.evaluate, n, state, stack.h).to(x.dtype)
        back = scheme.output(state).to(x.dtype)
    return float((back - x).norm() / x.norm())


def _errors(arch, M, width, precision, cfg, x64, methods):
    """The float32 stack, and the error of its gradient by each of ``methods`` (and by
    backprop) against float64 backprop on the same weights.
    """
    stack64 = tanh_stack(M, "smooth", seed=cfg.seed, dim=width, scheme=arch)
    stack32 = tanh_stack(M, "smooth", seed=cfg.seed, dim=width, scheme=arch,
                         dtype=torch.float32)
    ref = gradients(stack64, x64, "backprop")
    x32 = x64.float()
    errors = {}
    for m in {"backprop", *methods}:
        try:
            with _autocast(precision, m):
                errors[m] = relative_error(ref, gradients(stack32, x32, m))
        except ReconstructionError:      # a reconstruction that overflowed
            errors[m] = math.inf
    return stack32, errors


def _interleaved(calls: dict, repeats: int) -> dict:
    """Wall times of each call, interleaved as :func:`gradient_methods.interleaved_times`."""
    names = list(calls)
    times = {m: [] for m in names}
    for r in range(repeats + 1):     # round 0 warms up
        k = r % len(names)
        for m in names[k:] + names[:k]:
            t0 = time.perf_counter()
            calls[m]()
            if r:
                times[m].append(time.perf_counter() - t0)
    return {m: np.array(t) for m, t in times.items()}


def _step(stack, x, gradient, precision):
    def run():
        with _autocast(precision, gradient):
            backward_step(stack, x, gradient)
        stack.zero_grad(set_to_none=True)
    return run


def _one_config(M, width, precision, cfg):
    """The rows of one depth, width and precision."""
    gen = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn(cfg.batch, width, generator=gen)
    x64 = torch.randn(cfg.error_batch, width, generator=gen, dtype=torch.float64)
    archs = sorted({m.scheme for m in BENCHMARK})
    stacks, errors, calls = {}, {}, {}
    for a in archs:
        used = [m.gradient for m in BENCHMARK if m.scheme == a]
        stacks[a], errors[a] = _errors(ARCHITECTURES[a](), M, width, precision, cfg, x64, used)
        xr = x.clone().requires_grad_(True)
        for g in ("backprop", "floor", "floor1"):
            calls[a, g] = _step(stacks[a], xr, g, precision)
    failed = set()
    for m in BENCHMARK:
        key = (m.scheme, m.gradient)
        if key not in calls:
            calls[key] = _step(stacks[m.scheme], x.clone().requires_grad_(True), m.gradient,
                               precision)
            try:
                calls[key]()          # a backward whose reconstruction overflows is not timed
            except ReconstructionError:
                failed.add(key)
                del calls[key]
    times = _interleaved(calls, cfg.repeats)
    rows = []
    for m in BENCHMARK:
        stack, key = stacks[m.scheme], (m.scheme, m.gradient)
        with _autocast(precision, m.gradient):
            mib = saved_bytes(stack, x.clone().requires_grad_(True), m.gradient) / 2 ** 20
        timed = key not in failed
        rows.append(dict(
            N=M, width=width, precision=precision, method=m.label, scheme=m.scheme,
            gradient=m.gradient, ms=1e3 * float(np.median(times[key])) if timed else None,
            x_backprop=paired_ratio(times, key, (m.scheme, "backprop")) if timed else None,
            x_floor=(paired_ratio(times, key, (m.scheme, m.floor))
                     if m.floor and timed else None),
            mib=mib, grad_error=errors[m.scheme][m.gradient],
            backprop_error=errors[m.scheme]["backprop"],
            drift=drift(stack, x, precision) if m.gradient == "adjoint" else None,
            failed=not timed))
    return rows


def _setting(job) -> list[dict]:
    """The rows of one setting ``(M, width, precision, config as a dict)``: a job of
    :func:`run_benchmark`, JSON-able (its chunk).
    """
    M, width, precision, cfg = job
    cfg = BenchmarkConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
    with warnings.catch_warnings():
        # the drift column measures what the self-check would warn about
        warnings.simplefilter("ignore", ReconstructionWarning)
        return _one_config(M, width, precision, cfg)


def run_benchmark(cfg: BenchmarkConfig, show_progress: bool = True, chunks=None) -> dict:
    """Run :data:`BENCHMARK` over ``cfg``'s depths, widths and precisions, on one thread,
    one setting after another (each setting a job of
    :func:`resode_tut.experiments.chunks.resumable_map`: with ``chunks``, a stopped run
    started again runs only the settings it has not finished).

    Parameters
    ----------
    cfg : BenchmarkConfig
    show_progress : bool
        Print each setting as it starts (the settings run in this process).
    chunks : path, optional
        Where finished settings are kept.

    Returns
    -------
    dict
        JSON-able: ``rows`` (one dict per method and setting, see the module's
        docstring), ``seconds`` (over every invocation), ``threads``, ``invocations``.
    """
    jobs = [(M, w, p, asdict(cfg)) for p in cfg.precisions for w in cfg.widths
            for M in cfg.depths]
    if show_progress:
        print(f"{len(jobs)} settings, one torch thread")
    results, run = resumable_map(_setting, jobs, 1, chunks)   # one process: one thread
    rows = [r for setting in results for r in setting]
    return dict(rows=rows, seconds=run["seconds"], threads=1, invocations=run["invocations"])
