r"""Chapter 3 (the memory-free adjoint): its experiments and benchmark.

The four gradient methods compared in the chapter come from
:mod:`resode_tut.experiments.gradient_methods` (shared with chapters 4 and 6), the
digits classifier from :mod:`resode_tut.experiments.classifier` (shared with
chapter 4).  This module adds the benchmark, also a command line::

    python -m resode_tut.experiments.ch03 adjoint [options]

For Euler (or Heun) stacks of tanh layers (:func:`resode_tut.tanh_stack`, smooth
weights) at several depths, one run measures for each gradient method: the wall
time of a forward + backward step (methods interleaved, with the adjoint's floor,
compared as paired ratios), bytes kept for backward, and (in float64, on a smaller
batch) the relative error of the gradient against backpropagation.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import time

import numpy as np
import torch

from .. import adjoint as _adjoint_module
from ..adjoint import adjoint_gradients, reconstruct
from ..progress import progress
from ..residual_functions import tanh_stack
from ..schemes import Euler, Heun
from .classifier import ResidualClassifier, train_classifier
from .cli import positive_int, torch_device
from .gradient_methods import (
    METHODS,
    adjoint_error_sweep,
    cuda_peak_mib,
    floor_step,
    gradients,
    interleaved_times,
    layer_errors,
    paired_ratio,
    relative_error,
    saved_bytes,
)
from .plots import depth_axis, use_style

__all__ = ["use_style", "FAST_PATH", "fast_path_ablation", "misplaced_adjoint",
           "self_check_blind_spot",
           "adjoint_benchmark", "format_table", "main", "METHODS", "gradients", "floor_step",
           "interleaved_times", "paired_ratio", "layer_errors",
           "relative_error", "saved_bytes", "cuda_peak_mib", "adjoint_error_sweep",
           "ResidualClassifier", "train_classifier", "depth_axis"]


@contextlib.contextmanager
def _setting(owner, name, value):
    old = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)


class _NoCache:
    """Drops the adjoint's plan and parameter caches before every call."""

    def __init__(self, stack):
        self.stack = stack

    def __enter__(self):
        state = self.stack.adjoint_state
        state.plan = state.params = state.watched = None

    def __exit__(self, *exc):
        return False


#: What the fast backward adds to the reference loop (:func:`resode_tut.adjoint.
#: adjoint_gradients`) for speed, each undone in turn by :func:`fast_path_ablation`:
#: ``{name: (the scheme it concerns or None, context manager undoing it)}``.
FAST_PATH = {
    "Heun: the reversal reuses one evaluation": ("heun", lambda stack: _setting(
        Heun, "reverse_shares_first_evaluation", False)),
    "Euler: the VJP of f_n alone, not of the step": ("euler", lambda stack: _setting(
        Euler, "additive", False)),
    "the per-step plan and parameter list kept": (None, _NoCache),
    "the engine's VJP entry, not autograd.grad": (None, lambda stack: _setting(
        _adjoint_module, "_run_backward", None)),
    "Function.apply's C entry, not its wrapper": (None, lambda stack: _setting(
        _adjoint_module, "_apply_c", None)),
}


def fast_path_ablation(scheme: str = "euler", depth: int = 64, dim: int = 64,
                       batch: int = 64, repeats: int = 9, seed: int = 0) -> dict:
    """Time of the fast backward with each of its additions undone, and of the
    reference loop, relative to the fast backward (forward + backward, interleaved
    rounds, median of per-round ratios).

    Parameters
    ----------
    scheme : {"euler", "heun"}
    depth : int
        Layers of the tanh stack (float32, smooth weights).
    dim : int
        Its width.
    batch : int
        Inputs per pass.
    repeats : int
        Rounds after one warm-up round.
    seed : int

    Returns
    -------
    dict
        ``{name: median time ratio to the fast backward}`` for the additions that
        concern ``scheme``, and the reference loop under ``"reference loop
        (adjoint_gradients)"``.
    """
    stack = tanh_stack(depth, "smooth", seed=seed, dim=dim, scheme=scheme,
                       dtype=torch.float32)
    stack.adjoint = True
    x = torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed))

    def fast():
        out = stack(x.requires_grad_(True))
        out.backward(torch.ones_like(out))

    def reference():
        with torch.no_grad():
            out = stack(x)
        adjoint_gradients(stack, out, torch.ones_like(out))

    runs = {"fast": fast, "reference loop (adjoint_gradients)": reference}
    for name, (concerns, undo) in FAST_PATH.items():
        if concerns not in (None, scheme):
            continue

        def run(undo=undo):
            with undo(stack):
                fast()
        runs[name] = run
    names = list(runs)
    times = {n: [] for n in names}
    for r in range(repeats + 1):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            t0 = time.perf_counter()
            runs[n]()
            if r:
                times[n].append(time.perf_counter() - t0)
            stack.zero_grad(set_to_none=True)
    return {n: float(np.median(np.array(times[n]) / np.array(times["fast"])))
            for n in names if n != "fast"}


def misplaced_adjoint(stack, x_N: torch.Tensor, p_N: torch.Tensor):
    """A *wrong* adjoint, for chapter 3's blind-spot check: the reference loop with the
    vector-Jacobian product of step ``n`` taken at ``x~_{n+1}`` instead of ``x~_n`` (an
    off-by-one a fast implementation can make).  Its reconstruction, and so its
    self-check, is the correct one's.

    Parameters
    ----------
    stack : ResidualStack
    x_N : torch.Tensor, shape (B, ...)
    p_N : torch.Tensor, shape (B, ...)

    Returns
    -------
    (p_0, grads)
    """
    params = [q for q in stack.parameters() if q.requires_grad]
    grads = [torch.zeros_like(q) for q in params]
    scheme, h, f = stack.scheme, stack.h, stack.evaluate
    x, p = x_N.detach(), p_N
    for n in reversed(range(stack.num_steps)):
        at = x.detach().requires_grad_(True)          # x~_{n+1}: the wrong point
        with torch.enable_grad():
            x_next = scheme.step(f, n, at, h)
        p, *g = torch.autograd.grad(x_next, [at, *params], p, allow_unused=True)
        grads = [a if b is None else a + b for a, b in zip(grads, g)]
        with torch.no_grad():
            x = scheme.reverse_step(f, n, x, h)
    return p, grads


def self_check_blind_spot(depth: int = 64, dim: int = 16, seed: int = 0) -> dict:
    """What the self-check sees of two adjoints with the same reconstruction: the
    correct one and :func:`misplaced_adjoint`.

    Parameters
    ----------
    depth : int
    dim : int
    seed : int
        A tanh stack (float64, smooth weights) and its input.

    Returns
    -------
    dict
        ``gradient_error`` (relative, against backprop) and ``self_check`` for
        ``"correct"`` and ``"misplaced"``.
    """
    stack = tanh_stack(depth, "smooth", seed=seed, dim=dim)
    x = torch.randn(32, dim, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(seed)).requires_grad_(True)
    out = stack(x)
    p_N = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)
    true = torch.autograd.grad(out, [x, *stack.parameters()], p_N)
    with torch.no_grad():
        x_rec = reconstruct(stack, out)[0]
        check = float((x_rec - x).norm() / (out - x).norm())
    result = {}
    for name, method in (("correct", adjoint_gradients), ("misplaced", misplaced_adjoint)):
        p_0, grads = method(stack, out.detach(), p_N)
        result[name] = dict(gradient_error=relative_error(list(true), [p_0, *grads]),
                            self_check=check)
    return result


def adjoint_benchmark(depths=(16, 64, 256, 1024), dim: int = 256, batch: int = 256,
                      device: str = "cpu", repeats: int = 9, error_batch: int = 32,
                      methods=METHODS, timed=True, errors=True, seed: int = 0,
                      scheme: str = "euler", show_progress: bool = True) -> list[dict]:
    """Time, memory and gradient error of each method at each depth.

    Times are measured with the methods interleaved (rotated order, one round each
    per repeat) together with the adjoint's floor (:func:`floor_step`), and compared
    as paired ratios per round (:func:`paired_ratio`), so that load drift cancels.

    Parameters
    ----------
    depths : sequence of int
        Numbers of residual functions.
    dim : int
        State size of the tanh layers.
    batch : int
        Batch of the timed step (float32).
    device : str
        ``"cpu"`` or ``"cuda"``.
    repeats : int
        Timed rounds after one warm-up round.
    error_batch : int
        Batch of the float64 gradient comparison.
    methods : sequence of str
        Gradient methods (:data:`METHODS`); ``"backprop"`` must be among them when
        timing.
    timed : bool or sequence of int
        Time every depth (True), none (False) or only the given depths.
    errors : bool or sequence of int
        Compare gradients at every depth (True), none (False) or only the given depths.
    seed : int
        Seeds the weights and inputs.
    scheme : {"euler", "heun"}
    show_progress : bool
        Show a progress bar.

    Returns
    -------
    list of dict
        One row per (depth, method), and per timed depth one for ``"floor"``:
        ``N``, ``method``, ``ms`` (median, or None), ``x_backprop`` and ``x_floor``
        (median, 25th and 75th percentile of the paired time ratios, or None),
        ``mib`` (bytes kept for backward, MiB; None for the floor) and
        ``grad_error`` (relative error against backprop, 0 for backprop itself; or
        None).
    """
    rows = []
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, generator=gen).to(device)
    x64 = torch.randn(error_batch, dim, generator=gen, dtype=torch.float64).to(device)
    for N in progress(list(depths), "depths", enabled=show_progress):
        stack = tanh_stack(N, "smooth", seed=seed, dim=dim, dtype=torch.float32,
                           scheme=scheme).to(device)
        do_time = timed is True or (timed and N in timed)
        do_err = errors is True or (errors and N in errors)
        if do_err:
            stack64 = tanh_stack(N, "smooth", seed=seed, dim=dim, scheme=scheme).to(device)
            ref = gradients(stack64, x64, "backprop")
        xr = x.clone().requires_grad_(True)
        times = interleaved_times(stack, xr, [*methods, "floor"], repeats) if do_time else None
        for m in [*methods, "floor"] if do_time else methods:
            rows.append({
                "N": N, "method": m,
                "ms": 1e3 * float(np.median(times[m])) if do_time else None,
                "x_backprop": paired_ratio(times, m, "backprop") if do_time else None,
                "x_floor": paired_ratio(times, m, "floor") if do_time else None,
                "mib": None if m == "floor" else saved_bytes(stack, xr, m) / 2 ** 20,
                "grad_error": (relative_error(ref, gradients(stack64, x64, m))
                               if do_err and m != "floor" else None),
            })
    return rows


def format_table(rows: list[dict]) -> str:
    """A plain-text table of :func:`adjoint_benchmark` rows, at most 80 characters wide
    (it fits a page's column): the ratio columns are medians with their quartiles.

    Parameters
    ----------
    rows : list of dict
        As returned by :func:`adjoint_benchmark`.
    """
    def short(v):       # four characters below 1,000: 0.54, 3.48, 32.2, 318
        return (f"{v:.2f}" if v < 9.995 else f"{v:.1f}" if v < 99.95 else
                f"{v:.0f}" if v < 999.5 else f"{v:.0e}")

    def ratio(r):
        return "-" if r is None else f"{short(r[0])} ({short(r[1])}-{short(r[2])})"

    def num(value, fmt):
        return "-" if value is None else format(value, fmt)

    head = (f"{'N':>5} {'method':<14} {'ms/step':>7} {'x backprop':>16} {'x floor':>16} "
            f"{'MiB':>7} {'grad err':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['N']:>5} {r['method']:<14} {num(r['ms'], '.1f'):>7} "
                     f"{ratio(r['x_backprop']):>16} {ratio(r['x_floor']):>16} "
                     f"{num(r['mib'], '.3f'):>7} {num(r['grad_error'], '.1e'):>8}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    """The benchmark's arguments (see :func:`main`)."""
    parser = argparse.ArgumentParser(prog="python -m resode_tut.experiments.ch03",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("which", choices=["adjoint"], help="benchmark to run")
    parser.add_argument("--depths", type=positive_int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--dim", type=positive_int, default=256)
    parser.add_argument("--batch", type=positive_int, default=256)
    parser.add_argument("--repeats", type=positive_int, default=9,
                        help="timed rounds, methods interleaved (default 9)")
    parser.add_argument("--scheme", choices=["euler", "heun"], default="euler")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="gradient methods to compare (default: all; backprop is "
                             "always run, the floor always timed)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch threads (default: torch's); on a shared machine set "
                             "OMP_WAIT_POLICY=PASSIVE as well")
    parser.add_argument("--device", type=torch_device,
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv=None) -> None:
    """The command line: ``python -m resode_tut.experiments.ch03 adjoint --help``.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (default: ``sys.argv[1:]``).
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.scheme == "heun" and min(args.depths) < 2:
        parser.error(f"--depths: a Heun stack needs at least 2 residual functions, got "
                     f"{min(args.depths)}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"device {args.device}, torch {torch.__version__}, threads "
          f"{torch.get_num_threads()} (OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '-')}),"
          f" load {load:.2f}; {args.scheme} tanh layers dim {args.dim}, batch {args.batch}, "
          f"{args.repeats} interleaved rounds")
    methods = [m for m in METHODS if m in args.methods or m == "backprop"]
    rows = adjoint_benchmark(args.depths, args.dim, args.batch, args.device, args.repeats,
                             seed=args.seed, scheme=args.scheme, methods=methods)
    print(format_table(rows))
    by = {(r["N"], r["method"]): r for r in rows}
    for N in args.depths if "adjoint" in methods else ():
        bp, adj = by[N, "backprop"], by[N, "adjoint"]
        line = (f"N={N}: adjoint {adj['x_backprop'][0]:.2f}x backprop, "
                f"{adj['x_floor'][0]:.2f}x its floor; memory {adj['mib'] / bp['mib']:.4f}x "
                "backprop's")
        if "odeint_adjoint" in methods:
            line += (f"; grad error adjoint/odeint_adjoint "
                     f"{adj['grad_error'] / by[N, 'odeint_adjoint']['grad_error']:.3f}")
        print(line)
    if hasattr(os, "getloadavg"):
        print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
