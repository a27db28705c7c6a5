r"""Chapter 5 (solver dependence, Ott et al., 2021): its experiments.

The computations -- tasks, models, grids of trained models, adapted runs -- are in
:mod:`resode_tut.experiments.solver_dependence` and Table 1's shipped result in
:mod:`resode_tut.experiments.table1`, both re-exported here; this module adds
:func:`crossing_pairs` -- do 2-d trajectories cross? --, :func:`windermere_fan` --
Lady Windermere's fan -- and :func:`shells`,
:func:`shell_accuracy`, :func:`shell_stretch` -- what a model does to each of the
spheres' three shells.  The training loops
are the library's :func:`resode_tut.train_node` and
:func:`resode_tut.train_euler_ensemble`.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from torchdiffeq import odeint

from ..datasets.small import SHELLS
from ..node import NeuralODE
from ..solvers import Solver
from . import ch05_runs as shipped_runs
from .plots import use_style
from .shipped import describe
from .solver_dependence import (
    ODE_GAP_LIMIT,
    TASKS,
    TEST_FACTORS,
    AdaptedSeeds,
    SeedGrid,
    SolverGrid,
    Table1Config,
    adapted_seeds,
    equal_or_finer,
    load_task,
    make_model,
    seed_grid,
    solver_grid,
    train_runs,
)
from .table1 import STALLED, TABLE1_CONFIGS, Table1, table1

__all__ = ["use_style",
           "make_model", "TASKS", "load_task", "SolverGrid", "solver_grid", "TEST_FACTORS",
           "ODE_GAP_LIMIT", "SeedGrid", "seed_grid", "AdaptedSeeds", "adapted_seeds", "Table1",
           "table1",
           "describe", "shipped_runs",
           "Table1Config", "TABLE1_CONFIGS", "QUICK_TABLE1",
           "train_runs", "crossing_pairs", "windermere_fan", "plot_grid", "plot_adaptation",
           "learned_seeds", "seed_subset", "shells", "shell_accuracy", "shell_stretch",
           "equal_or_finer", "STALLED", "PAPER_TABLE1", "official_evaluation"]

#: Table 1 of Ott et al. (2021) as the paper prints it (five seeds; evaluations per
#: iteration, accuracy mean +- std in %), quoted for the chapter to print beside its rerun.
PAPER_TABLE1 = {
    ("spheres 2-d", "grid search"): dict(nfe="65–129", accuracy=(98.7, 1.0)),
    ("spheres 2-d", "step adaptation"): dict(nfe="100.5", accuracy=(98.9, 0.6)),
    ("CIFAR-10", "grid search"): dict(nfe="17–33", accuracy=(54.7, 0.3)),
    ("CIFAR-10", "step adaptation"): dict(nfe="21.9", accuracy=(55.0, 0.8)),
}


def official_evaluation(accuracy, n_test: int = 1000, batch_size: int = 128):
    """What the paper's released ``evaluate_model`` reports for a model of test accuracy
    ``accuracy``: it divides every batch's correct count by ``batch_size``, the last,
    partial batch included, and averages over the batches -- the correct count over
    ``batch_size * ceil(n_test / batch_size)``.  On 1,000 points in batches of 128 it
    can report at most 1000/1024 = 97.7%.

    Parameters
    ----------
    accuracy : float or array
        True test accuracy in [0, 1] (or in %: the unit is kept).
    n_test : int
        Test points (the spheres: 1,000).
    batch_size : int
        The test loader's batch (the paper's code: 128).

    Returns
    -------
    float or array
        The released code's number, same unit as ``accuracy``.
    """
    batches = -(-n_test // batch_size)
    return np.asarray(accuracy) * n_test / (batch_size * batches)

#: The chapter's quick mode (CI): Table 1's code at seconds' scale -- two steps, two
#: seeds, 500 iterations at lr 1e-3.  It shows the collapse at h = 1/2 and the adapter
#: at work, not the paper's accuracies (``TABLE1_CONFIGS["paper"]`` does).
QUICK_TABLE1 = Table1Config("chapter-quick", "spheres2d", (1 / 2, 1 / 8), (0, 1), 500, 1e-3)


# -- which seeds learned -------------------------------------------------------------
# A model that learned nothing is flat under every solver: before a seed's models locate
# the critical step, the seed must have learned the task.

def learned_seeds(grid: SeedGrid, min_accuracy: float = 0.9) -> list[int]:
    """Positions (in ``grid.seeds``) of the seeds whose finest-step model reaches
    ``min_accuracy`` test accuracy with rk4 at the reference step, i.e. as an ODE.

    Parameters
    ----------
    grid : SeedGrid
    min_accuracy : float
        Accuracy in [0, 1].
    """
    finest = grid.accuracy[min(grid.steps)]["rk4", "ref"]
    return [i for i, acc in enumerate(finest) if acc >= min_accuracy]


def seed_subset(grid: SeedGrid, positions) -> SeedGrid:
    """The same grid restricted to some of its seeds.

    Parameters
    ----------
    grid : SeedGrid
    positions : sequence of int
        Positions in ``grid.seeds`` to keep.
    """
    positions = list(positions)
    if not positions:
        raise ValueError("no seeds to keep: a SeedGrid needs at least one")
    accuracy = {h: {t: [v[i] for i in positions] for t, v in tests.items()}
                for h, tests in grid.accuracy.items()}
    return SeedGrid(grid.task, list(grid.steps), [grid.seeds[i] for i in positions], accuracy,
                    grid.reference_step, grid.iterations, grid.lr, grid.seconds)


# -- figures ------------------------------------------------------------------------

def plot_grid(grid, axes, title: str, methods=("euler", "midpoint", "rk4")) -> None:
    """Test accuracy against the number of test steps, one curve per trained model
    (Euler steps on a colour scale, any other training solver in red), one panel per
    test method; a circle marks the training solver.

    Parameters
    ----------
    grid : SolverGrid or SeedGrid
        For a :class:`SeedGrid`, the curve is the mean over the seeds and the band
        their range.
    axes : sequence of matplotlib Axes
        One per test method.
    title : str
    methods : sequence of str
        Test methods, one per panel.
    """
    if isinstance(grid, SeedGrid):
        entries = [(Solver("euler", h), grid.accuracy[h]) for h in sorted(grid.steps)[::-1]]
    else:
        entries = [(s, {k: [v] for k, v in grid.accuracy[s].items()})
                   for s in grid.train_solvers]
    steps = sorted({s.step_size for s, _ in entries if s.method == "euler"})
    colour = dict(zip(steps, plt.cm.viridis(np.linspace(0.9, 0, len(steps)))))
    for ax, method in zip(axes, methods):
        for s, acc in entries:
            c = colour[s.step_size] if s.method == "euler" else "tab:red"
            x = [k / s.step_size for k in TEST_FACTORS] + [1 / grid.reference_step]
            vals = 100 * np.array([acc[method, k] for k in TEST_FACTORS]
                                  + [acc[method, "ref"]])                 # (tests, seeds)
            ax.plot(x, vals.mean(1), ".-", color=c, label=str(s))
            if vals.shape[1] > 1:
                ax.fill_between(x, vals.min(1), vals.max(1), color=c, alpha=0.15, lw=0)
            if s.method == method:
                ax.plot(1 / s.step_size, 100 * np.mean(acc["own", 1]), "o", ms=9,
                        mfc="none", color=c)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("test steps")
        ax.set_title(f"{title}, tested with {method}")
    axes[0].set_ylabel("test accuracy (%)")


def plot_adaptation(logs, ax, every: int = 50, paper_nfe: float | None = None) -> None:
    """The number of Euler steps ``1/h`` chosen by step-size adaptation over training:
    up to five runs one line each with their halvings marked; more runs as thin grey
    lines under their median.

    Parameters
    ----------
    logs : sequence of list of dict
        :attr:`resode_tut.StepSizeAdapter.log` of each run (all of one length when
        more than five).
    ax : matplotlib Axes
    every : int
        Iterations between the adapter's checks.
    paper_nfe : float, optional
        Draws the paper's mean evaluations per iteration as a dashed line.
    """
    many = len(logs) > 5
    for k, log in enumerate(logs):
        its = every * np.arange(1, len(log) + 1)
        n = [1 / e["step_size"] for e in log]
        if many:
            ax.step(its, n, where="post", color="0.6", lw=0.6, alpha=0.7)
            continue
        ax.step(its, n, where="post", color=f"C{k}", lw=1, label=f"seed {k}")
        halved = [i for i, e in enumerate(log) if e["action"] == "halve"]
        ax.plot(its[halved], np.array(n)[halved], "v", color=f"C{k}", ms=4)
    if many:
        n = np.array([[1 / e["step_size"] for e in log] for log in logs])
        its = every * np.arange(1, n.shape[1] + 1)
        ax.step(its, np.median(n, 0), where="post", color="C0", lw=2,
                label=f"median of {len(logs)} seeds")
    if paper_nfe is not None:
        ax.axhline(paper_nfe, color="C3", ls="--", lw=1, label="the paper's mean NFE")
    ax.set_yscale("log", base=2)
    ax.set_xlabel("iteration")
    ax.set_ylabel("Euler steps $1/h$")

# -- crossing trajectories --------------------------------------------------------
# The orbits of an autonomous ODE in the plane never cross; the discrete trajectories
# of a coarse solver can (Ott et al., 2021).

def _orient(a, b, c):
    return np.sign((b[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1])
                   - (b[..., 1] - a[..., 1]) * (c[..., 0] - a[..., 0]))


def _cross(a, b, c, d):
    """Segments [a, b] and [c, d] properly intersect (broadcast over leading axes)."""
    return (_orient(a, b, c) * _orient(a, b, d) < 0) & (_orient(c, d, a) * _orient(c, d, b) < 0)


def crossing_pairs(trajectories: torch.Tensor, same_step: bool = True,
                   chunk: int = 512) -> list[tuple[int, int]]:
    """Pairs of trajectories whose polylines properly intersect.

    Parameters
    ----------
    trajectories : torch.Tensor, shape (T, B, 2)
        ``B`` trajectories sampled at ``T`` times; consecutive samples are joined
        by straight segments (for a fixed-step solver: its steps).
    same_step : bool
        Compare only segments of the same time interval ``[t_k, t_{k+1}]``
        (default).  Two steps taken at the same time must not cross for a flow;
        comparing all segments would also count chords of a sampled exact orbit
        that cut corners past a nearby orbit.
    chunk : int
        Segments compared at once when ``same_step=False`` (memory).

    Returns
    -------
    list of (i, j)
        Sorted pairs ``i < j`` of trajectories with at least one proper crossing of
        their segments (touching end points and collinear overlaps do not count).
    """
    traj = torch.as_tensor(trajectories).detach().cpu().double().numpy()
    if traj.ndim != 3 or traj.shape[2] != 2 or traj.shape[0] < 2:
        raise ValueError(f"trajectories must have shape (T >= 2, B, 2), got {traj.shape}")
    T, B, _ = traj.shape
    if same_step:   # (T-1, B, 1) against (T-1, 1, B): each step with itself
        a, b = traj[:-1, :, None], traj[1:, :, None]
        c, d = traj[:-1, None], traj[1:, None]
        hit = _cross(a, b, c, d).any(axis=0)
        i, j = np.nonzero(np.triu(hit | hit.T, k=1))
        return sorted(zip(i.tolist(), j.tolist()))
    p = traj[:-1].reshape(-1, 2)          # segment starts, (S, 2), S = (T-1) B
    q = traj[1:].reshape(-1, 2)
    owner = np.tile(np.arange(B), T - 1)
    pairs = set()
    for s in range(0, len(p), chunk):
        a, b, o = p[s:s + chunk, None], q[s:s + chunk, None], owner[s:s + chunk, None]
        c, d = p[None], q[None]
        hit = _cross(a, b, c, d) & (o < owner[None])
        i, j = np.nonzero(hit)
        pairs.update(zip(o[i, 0].tolist(), owner[j].tolist()))
    return sorted(pairs)


# -- the three shells ---------------------------------------------------------------
# The exact flow of a planar field is a homeomorphism: the middle shell, which separates
# the inner one from infinity, still encloses it after the flow, so a linear head cannot
# put the whole middle shell on one side and the inner shell on the other.  What a model
# does to each shell shows how it copes.

def shells(x: torch.Tensor) -> torch.Tensor:
    """The shell of each point of the concentric spheres: 0 inner, 1 middle, 2 outer.

    Parameters
    ----------
    x : torch.Tensor, shape (B, d)
        Points of :func:`resode_tut.datasets.concentric_spheres`.

    Returns
    -------
    torch.Tensor, shape (B,), int64
    """
    x = torch.as_tensor(x)
    if x.ndim != 2:
        raise ValueError(f"x must have shape (B, d), got {tuple(x.shape)}")
    r = x.double().norm(dim=1)
    index = torch.full(r.shape, -1, dtype=torch.int64)
    for k, (r_min, r_max, _) in enumerate(SHELLS):
        index[(r >= r_min - 1e-6) & (r <= r_max + 1e-6)] = k
    if (index < 0).any():
        bad = r[index < 0][0].item()
        raise ValueError(f"a point at radius {bad:.4g} lies on none of the shells "
                         f"{[s[:2] for s in SHELLS]}: pass concentric_spheres data")
    return index


def shell_accuracy(pred: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Share of right predictions on each shell (inner, middle, outer), in [0, 1].

    Parameters
    ----------
    pred : torch.Tensor, shape (B,)
        Predicted classes, e.g. ``model.head(z1).argmax(1)``.
    x : torch.Tensor, shape (B, d)
        The points of the spheres (they name the shells).
    y : torch.Tensor, shape (B,)
        Their classes.

    Returns
    -------
    numpy.ndarray, shape (3,)
    """
    if pred.shape != y.shape or len(y) != len(x):
        raise ValueError(f"pred {tuple(pred.shape)}, x {tuple(x.shape)} and y "
                         f"{tuple(y.shape)} must hold the same B points")
    index = shells(x)
    right = (pred == y).double()
    return np.array([right[index == k].mean().item() for k in range(len(SHELLS))])


def _diameter(z: torch.Tensor) -> float:
    return torch.cdist(z.double(), z.double()).max().item()


def shell_stretch(x: torch.Tensor, z: torch.Tensor) -> float:
    """How much more a map stretched the middle shell than the inner one:
    ``(diam z_middle / diam x_middle) / (diam z_inner / diam x_inner)``.

    1 for a map that scales the plane uniformly; large when the middle shell was
    pulled far apart while the inner one stayed small.

    Parameters
    ----------
    x : torch.Tensor, shape (B, 2)
        Points of the spheres (each shell needs two or more).
    z : torch.Tensor, shape (B, 2)
        Their images (e.g. ``model.flow(x, solver)[-1]``).
    """
    if z.shape != x.shape:
        raise ValueError(f"z must have the shape of x, {tuple(x.shape)}, got {tuple(z.shape)}")
    index = shells(x)
    if min((index == k).sum().item() for k in (0, 1)) < 2:
        raise ValueError("the inner and the middle shell need two points each")
    ratio = [_diameter(z[index == k]) / _diameter(x[index == k]) for k in (0, 1)]
    return ratio[1] / ratio[0]


# -- Lady Windermere's fan ---------------------------------------------------------
# Hairer, Norsett and Wanner (1993, Fig. II.3.2): from every point z_n of a numerical
# trajectory, follow the *exact* flow to the final time.  The spread of these curves at
# t = 1 is the global error, built from the local error of each step carried along by
# the flow.

def windermere_fan(model: NeuralODE, x: torch.Tensor, step_size: float,
                   num_times: int = 16, tol: float = 1e-8):
    """Euler steps of ``model``'s field and the exact flows that start from them.

    Parameters
    ----------
    model : NeuralODE
    x : torch.Tensor, shape (B, d)
    step_size : float
        ``h``, with ``1/h`` an integer ``N``.
    num_times : int
        Samples of each exact curve.
    tol : float
        dopri5 tolerance of the "exact" flows.

    Returns
    -------
    euler : torch.Tensor, shape (N + 1, B, d)
        ``z_0, ..., z_N``.
    exact : list of torch.Tensor
        ``exact[n]``, shape (num_times, B, d): the exact flow from ``z_n`` at
        ``t_n = n h`` to ``t = 1`` (``exact[0]`` is the true trajectory).
    """
    N = round(1 / step_size)
    if abs(N * step_size - 1) > 1e-9:
        raise ValueError(f"1/step_size must be an integer, got step_size={step_size}")
    times = torch.linspace(0, 1, N + 1, dtype=x.dtype)
    with torch.no_grad():
        euler = model.flow(x, Solver("euler", step_size), times)
        exact = [odeint(model.field, euler[n], torch.linspace(float(times[n]), 1, num_times,
                                                              dtype=x.dtype),
                        **Solver("dopri5", tol=tol).odeint_kwargs()) for n in range(N)]
    return euler, exact
