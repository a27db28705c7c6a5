r"""Chapter 8 (memory-free training, compared): its measurements, figures and command line.

The benchmark itself is :mod:`.memory_benchmark` (the code its shipped result is keyed
on); this module stores it as the shipped result ``results/ch08-benchmark-cpu.json``,
loads it when current, prints and plots it, and adds the chapter's smaller
measurements: how a momentum ResNet's reconstruction drift grows with depth, the
one-evaluation adjoint against torchdiffeq's continuous adjoint, and a training
comparison on digits. Command line::

    python -m resode_tut.experiments.ch08 benchmark --config cpu
"""
from __future__ import annotations

import argparse
import copy
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

from ..datasets import digits
from ..residual_functions import tanh_stack
from ..schemes import Euler, Momentum
from . import shipped
from .classifier import ResidualClassifier, train_classifier
from .gradient_methods import gradients, relative_error
from .memory_benchmark import (
    ARCHITECTURES,
    BENCHMARK,
    BENCHMARK_CONFIGS,
    BenchmarkConfig,
    drift,
    run_benchmark,
)
from .plots import depth_axis, use_style

__all__ = ["use_style", "BENCHMARK", "BENCHMARK_CONFIGS", "benchmark", "format_table",
           "plot_benchmark", "momentum_drift", "one_evaluation_vs_odeint",
           "TRAINED", "train_comparison", "main", "load_benchmark", "SHIPPED_BENCHMARK",
           "COMPUTING_MODULE", "gradients",
           "relative_error"]

#: The benchmark as a shipped experiment: its configurations, its computing module (the
#: code its result is keyed on), ``ch08-benchmark-<config>.json`` and its command.
SHIPPED_BENCHMARK = shipped.Experiment("ch08-benchmark", "benchmark", BENCHMARK_CONFIGS,
                                       BenchmarkConfig, "resode_tut.experiments.memory_benchmark",
                                       "python -m resode_tut.experiments.ch08 benchmark")
COMPUTING_MODULE = SHIPPED_BENCHMARK.module


def load_benchmark(config="cpu", directory=None) -> shipped.ShippedResult | None:
    """The stored benchmark of ``config`` if it is current for this code, else None.

    Parameters
    ----------
    config : str or BenchmarkConfig
    directory : path, optional
        Results folder (default :func:`resode_tut.experiments.shipped.results_dir`).
    """
    return SHIPPED_BENCHMARK.load(config, directory=directory)


def benchmark(config="cpu", store: bool = True, force: bool = False,
              show_progress: bool = True) -> tuple[list[dict], shipped.ShippedResult | None]:
    """The benchmark's rows: the shipped result when current, else a run (stored with
    ``store``).

    Parameters
    ----------
    config : str or BenchmarkConfig
        ``"cpu"`` (the shipped run) or ``"quick"`` (seconds; what the page computes in
        quick mode), or a configuration.
    store : bool
        Write a computed result to the results folder.
    force : bool
        Compute even if a current result is shipped.
    show_progress : bool

    Returns
    -------
    rows : list of dict
        As :func:`resode_tut.experiments.memory_benchmark.run_benchmark` gives them.
    result : ShippedResult or None
        Where they came from (loaded or stored), else None.
    """
    cfg = SHIPPED_BENCHMARK.config(config)
    key = SHIPPED_BENCHMARK.key(cfg)     # the code that runs, read before it runs
    if not force:
        found = load_benchmark(cfg)
        if found is not None:
            print(shipped.describe(found))
            return found.data["rows"], found
    # a stopped run resumes from its finished settings
    chunks = SHIPPED_BENCHMARK.chunk_folder(cfg, key) if store else None
    commit = shipped.git_commit()
    data = run_benchmark(cfg, show_progress=show_progress, chunks=chunks)
    invocations = data.pop("invocations")
    if not store:
        return data["rows"], None
    return data["rows"], SHIPPED_BENCHMARK.store(cfg, key, data, chunks, commit=commit,
                                                 threads=1, invocations=invocations)


def _short(v):
    return (f"{v:.2f}" if v < 9.995 else f"{v:.1f}" if v < 99.95 else
            f"{v:.0f}" if v < 999.5 else f"{v:.0e}")


def format_table(rows: list[dict], N: int, width: int, precision: str = "float32") -> str:
    """The benchmark at one depth, width and precision, one line a method (at most 90
    characters wide): time per step, x backprop and x the method's floor (medians of
    interleaved rounds), MiB kept for backward, gradient error against float64 backprop
    of the same architecture, and the drift of the input rebuilt from the output.

    Parameters
    ----------
    rows : list of dict
    N : int
    width : int
    precision : {"float32", "bf16"}
    """
    def num(value, fmt):
        return "-" if value is None else format(value, fmt)

    head = (f"{'method':<31}{'ms':>7}{'x bp':>6}{'x floor':>8}{'MiB':>8}{'grad err':>9}"
            f"{'(bp)':>8}{'drift':>9}")
    lines = [f"N = {N}, width {width}, {precision}", head, "-" * len(head)]
    for r in rows:
        if (r["N"], r["width"], r["precision"]) != (N, width, precision):
            continue
        lines.append(
            f"{r['method']:<31}{num(r['ms'], '.1f'):>7}"
            f"{_short(r['x_backprop'][0]) if r['x_backprop'] else '-':>6}"
            f"{_short(r['x_floor'][0]) if r['x_floor'] else '-':>8}"
            f"{num(r['mib'], '.3f'):>8}{num(r['grad_error'], '.1e'):>9}"
            f"{num(r['backprop_error'], '.0e'):>8}{num(r['drift'], '.0e'):>9}")
    return "\n".join(lines)


_STYLE = {"backprop": ("k", "-"), "checkpoint per block": ("0.5", "-"),
          "adjoint, Euler (Sander et al.)": ("tab:blue", "-"),
          "adjoint, Heun (Sander et al.)": ("tab:blue", "--"),
          "one-evaluation adjoint, Euler": ("tab:cyan", "-"),
          "momentum, gamma = 0.9": ("tab:red", "-"), "momentum, gamma = 1 - h": ("tab:red", "--"),
          "coupling (RevNet)": ("tab:green", "-"), "reversible Heun": ("tab:purple", "-"),
          "odeint_adjoint (torchdiffeq)": ("tab:orange", ":")}


def plot_benchmark(rows: list[dict], width: int, precision: str = "float32"):
    """Three panels against depth at one width and precision (and the legend in a
    fourth): gradient error (against float64 backprop of the same architecture), memory
    kept for backward, and time per step over the method's own floor.

    Parameters
    ----------
    rows : list of dict
    width : int
    precision : {"float32", "bf16"}

    Returns
    -------
    matplotlib.figure.Figure
    """
    sel = [r for r in rows if r["width"] == width and r["precision"] == precision]
    depths = sorted({r["N"] for r in sel})
    fig, grid = plt.subplots(2, 2, figsize=(9, 7.5), layout="constrained")
    axes, key = [grid[0, 0], grid[0, 1], grid[1, 0]], grid[1, 1]
    for m in BENCHMARK:
        mine = sorted((r for r in sel if r["method"] == m.label), key=lambda r: r["N"])
        colour, style = _STYLE[m.label]
        kw = dict(color=colour, ls=style, marker="o", ms=4, label=m.label)
        axes[0].plot([r["N"] for r in mine],
                     [min(r["grad_error"], 1e3) for r in mine], **kw)
        axes[1].plot([r["N"] for r in mine], [r["mib"] for r in mine], **kw)
        timed = [r for r in mine if r["x_floor"]]
        if timed:
            axes[2].plot([r["N"] for r in timed], [r["x_floor"][0] for r in timed], **kw)
    bp = sorted((r for r in sel if r["method"] == "backprop"), key=lambda r: r["N"])
    axes[0].plot([r["N"] for r in bp], [r["backprop_error"] for r in bp], color="k", ls="",
                 marker="x", label="float32 rounding (backprop)")
    axes[0].set(yscale="log", ylabel="relative gradient error",
                title="error vs float64 backprop")
    axes[1].set(yscale="log", ylabel="MiB kept for backward", title="memory")
    axes[2].axhline(1.0, color="k", lw=0.8)
    axes[2].set(yscale="log", ylabel="time / own floor", title="time (interleaved medians)")
    for ax in axes:
        depth_axis(ax, depths)
    handles, labels = axes[0].get_legend_handles_labels()
    key.axis("off")
    key.legend(handles, labels, loc="center", frameon=False, fontsize=10)
    fig.suptitle(f"width {width}, {precision}")
    return fig


def momentum_drift(depths, gammas=(0.5, 0.9), epsilon: float = 1.0, dim: int = 16,
                   seed: int = 0) -> dict:
    """How far a momentum ResNet's reversal misses its input in float32, against depth.

    Parameters
    ----------
    depths : sequence of int
    gammas : sequence of float
        Fixed momenta.
    epsilon : float
        Also ``gamma = 1 - h / epsilon`` at each depth.
    dim : int
    seed : int

    Returns
    -------
    dict
        ``{label: numpy.ndarray (len(depths),)}`` of ``||x~_0 - x_0|| / ||x_0||``.
    """
    x = torch.randn(64, dim, generator=torch.Generator().manual_seed(seed))
    schemes = {f"gamma = {g}": Momentum(g) for g in gammas}
    schemes[f"gamma = 1 - h/{epsilon:g}"] = Momentum(epsilon=epsilon)
    out = {}
    for label, scheme in schemes.items():
        out[label] = np.array([drift(tanh_stack(M, "smooth", seed=seed, dim=dim, scheme=scheme,
                                                dtype=torch.float32), x) for M in depths])
    return out


def one_evaluation_vs_odeint(depths, dim: int = 8, seed: int = 0) -> dict:
    """The one-evaluation Euler adjoint against torchdiffeq's continuous adjoint (Euler,
    the stack's step) and both against backprop, float64.

    Parameters
    ----------
    depths : sequence of int
    dim : int
    seed : int

    Returns
    -------
    dict
        ``{"vs_odeint", "one_evaluation", "sander", "odeint"}``: numpy arrays of relative
        gradient errors (the first between the two, the others against backprop).
    """
    x = torch.randn(16, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    out = {k: [] for k in ("vs_odeint", "one_evaluation", "sander", "odeint")}
    for M in depths:
        stack = tanh_stack(M, "smooth", seed=seed, dim=dim)
        one = tanh_stack(M, "smooth", seed=seed, dim=dim, scheme=Euler(one_evaluation=True))
        g_bp = gradients(stack, x, "backprop")
        g_ode = gradients(stack, x, "odeint_adjoint")
        g_one = gradients(one, x, "adjoint")
        out["vs_odeint"].append(relative_error(g_ode, g_one))
        out["one_evaluation"].append(relative_error(g_bp, g_one))
        out["odeint"].append(relative_error(g_bp, g_ode))
        out["sander"].append(relative_error(g_bp, gradients(stack, x, "adjoint")))
    return {k: np.array(v) for k, v in out.items()}


#: The architectures of the training comparison: (label, scheme name in ARCHITECTURES).
TRAINED = (("ResNet, Euler (Sander et al.'s adjoint)", "euler"),
           ("ResNet, Heun (Sander et al.'s adjoint)", "heun"),
           ("ResNet, Euler (one-evaluation adjoint)", "euler_one_eval"),
           ("momentum, gamma = 0.9", "momentum"),
           ("coupling (RevNet)", "coupling"),
           ("reversible Heun", "reversible_heun"))


def train_comparison(depth: int, epochs: int, seeds=(0,), dim: int = 32, width: int = 64,
                     lr: float = 0.05, gain: float = 3.0, fixed_ends: bool = True
                     ) -> list[dict]:
    """Each architecture of :data:`TRAINED` trained on digits from the same initial weights
    twice, by backprop and memory-free, with the same batches: test accuracy of both.

    Parameters
    ----------
    depth : int
        Residual functions of the stage.
    epochs : int
    seeds : sequence of int
        Initial weights and batch order.
    dim : int
        The stage's state size.
    width : int
        Hidden units of its blocks.
    lr : float
        SGD's learning rate (momentum 0.9).
    gain : float
        Initial scale of the blocks (:class:`.classifier.MLPBlock`): 3 makes the stage
        move its input far enough to matter.
    fixed_ends : bool
        Keep the embedding and head at their random initial values, so that the
        residual stage alone learns (as chapter 4 does).

    Returns
    -------
    list of dict
        One per architecture and seed: ``architecture``, ``seed``, ``backprop`` and
        ``memory_free`` (test accuracy, %), ``seconds`` of each.
    """
    data = digits(seed=0)
    rows = []
    for label, name in TRAINED:
        for seed in seeds:
            torch.manual_seed(seed)
            model = ResidualClassifier(64, 10, dim=dim, width=width, depth=depth,
                                       scheme=ARCHITECTURES[name](), gain=gain,
                                       fixed_ends=fixed_ends)
            row = dict(architecture=label, seed=seed)
            for adjoint in (False, True):
                twin = copy.deepcopy(model)
                twin.stage.adjoint = adjoint
                t0 = time.perf_counter()
                hist = train_classifier(twin, data, epochs=epochs, lr=lr, seed=seed)
                key = "memory_free" if adjoint else "backprop"
                row[key] = 100 * hist.test_accuracy[-1]
                row[f"{key}_seconds"] = time.perf_counter() - t0
            rows.append(row)
    return rows


def main(argv=None) -> int:
    """``python -m resode_tut.experiments.ch08 benchmark --config cpu``: run and store
    the benchmark (one torch thread; about 85 minutes on a CPU core, resumable).

    Parameters
    ----------
    argv : list of str, optional
    """
    parser = argparse.ArgumentParser(prog="python -m resode_tut.experiments.ch08",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("which", choices=["benchmark"])
    parser.add_argument("--config", choices=sorted(BENCHMARK_CONFIGS), default="cpu")
    parser.add_argument("--force", action="store_true",
                        help="recompute even if a current result is shipped")
    args = parser.parse_args(argv)
    rows, result = benchmark(args.config, force=args.force)
    cfg = BENCHMARK_CONFIGS[args.config]
    for p in cfg.precisions:
        for w in cfg.widths:
            print(format_table(rows, max(cfg.depths), w, p), end="\n\n")
    if result is not None and result.path is not None:
        print(f"stored {result.path} ({result.provenance['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
