r"""Chapter 5 (solver dependence, Ott et al., 2021): its experiments.

:func:`solver_grid` -- the paper's protocol: train at several fixed steps, test each
model with euler, midpoint and rk4 at ``h_train / k`` and at a fine reference step,
in parallel worker processes; :func:`seed_grid` -- the same for Euler with several
seeds per step, trained together (mean +- std, as the paper reports);
:func:`train_runs` -- several seeded trainings (with or without adaptation) in
worker processes; :func:`load_task`, :func:`make_model` -- the
tasks and the paper's models; :func:`crossing_pairs` -- do 2-d trajectories cross?;
:func:`windermere_fan` -- Lady Windermere's fan.  The training loop itself is the
library's :func:`resode_tut.train_node`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torchdiffeq import odeint

from ..node import ImageField, NeuralODE, Solver, SphereField
from ..node_training import train_node
from ..parallel import parallel_map
from .plots import use_style

__all__ = ["use_style",
           "make_model", "TASKS", "load_task", "SolverGrid", "solver_grid", "TEST_FACTORS",
           "SeedGrid", "seed_grid",
           "train_runs", "crossing_pairs", "windermere_fan"]

TASKS = ("spheres2d", "spheres3d", "spheres10d", "digits")
TEST_FACTORS = (0.5, 0.75, 1.0, 1.5, 2.0)


def _sphere_dim(task: str) -> int | None:
    """``K`` for ``"spheresKd"``, else None."""
    if task.startswith("spheres") and task.endswith("d") and task[7:-1].isdigit():
        return int(task[7:-1])
    return None


def load_task(task: str, seed: int = 0):
    """``(x_train, y_train, x_test, y_test)`` for a named task.

    Parameters
    ----------
    task : str
        ``"spheresKd"``: :func:`resode_tut.datasets.concentric_spheres`, 2,000 train
        and 1,000 test points in ``R^K``; ``"digits"``: the sklearn digits as
        (B, 1, 8, 8) images.
    seed : int
        Seed of the data (and of the digits' split).
    """
    from ..datasets.small import concentric_spheres, digits
    dim = _sphere_dim(task)
    if dim is not None:
        x, y = concentric_spheres(2000, dim, seed=seed)
        xt, yt = concentric_spheres(1000, dim, seed=seed + 10_000)
        return x, y, xt, yt
    if task == "digits":
        x, y, xt, yt = digits(seed=seed)
        return x.view(-1, 1, 8, 8), y, xt.view(-1, 1, 8, 8), yt
    raise ValueError(f"unknown task {task!r}: choose one of {TASKS} (or spheresKd)")


def make_model(task: str, solver: Solver, seed: int = 0) -> NeuralODE:
    """The paper's model for ``task`` (seeded initial weights).

    Parameters
    ----------
    task : str
        See :func:`load_task`.
    solver : Solver
        The training solver.
    seed : int
        Seeds the initial weights.
    """
    torch.manual_seed(seed)
    if task == "digits":
        return NeuralODE(ImageField(1, 16), (1, 8, 8), 10, solver)
    dim = _sphere_dim(task)
    if dim is None:
        raise ValueError(f"unknown task {task!r}: choose one of {TASKS} (or spheresKd)")
    return NeuralODE(SphereField(32), (dim,), 2, solver)


@dataclass
class SolverGrid:
    """Test accuracies of models trained at several solvers.

    Attributes
    ----------
    task : str
    train_solvers : list of Solver
    accuracy : dict
        ``accuracy[train_solver][(test_method, k)]`` = accuracy in [0, 1] with
        ``Solver(test_method, h_train / k)``; ``(test_method, "ref")`` at the
        reference step; ``("own", 1)`` with the training solver.
    reference_step : float
    seconds : float
        Wall time of the sweep.
    """

    task: str
    train_solvers: list
    accuracy: dict
    reference_step: float
    seconds: float = 0.0

    def own(self, train: Solver) -> float:
        """Test accuracy of the model trained with ``train``, under ``train`` itself."""
        return self.accuracy[train][("own", 1)]

    def drop(self, train: Solver, test_method: str = "rk4") -> float:
        """Accuracy lost (points, in %) from the own solver to ``test_method`` at the
        reference step.

        Parameters
        ----------
        train : Solver
            The model's training solver.
        test_method : str
            ``"euler"``, ``"midpoint"`` or ``"rk4"``.
        """
        return 100 * (self.own(train) - self.accuracy[train][(test_method, "ref")])

    def max_gap(self, train: Solver) -> float:
        """Largest accuracy difference (points) between any two tests of a model.

        Parameters
        ----------
        train : Solver
            The model's training solver.
        """
        vals = list(self.accuracy[train].values())
        return 100 * (max(vals) - min(vals))

    def critical_step(self, tol: float = 10.0):
        """``(h_ok, h_fail)``: the largest training step whose model keeps its accuracy
        (max gap <= ``tol`` points) under every test, and the next larger grid step, which
        fails (None where the grid does not bracket it).

        Parameters
        ----------
        tol : float
            Points (%).
        """
        euler = sorted((s for s in self.train_solvers if s.method == "euler"),
                       key=lambda s: -s.step_size)
        ok = [self.max_gap(s) <= tol for s in euler]
        for i, s in enumerate(euler):
            if all(ok[i:]):
                return s.step_size, (euler[i - 1].step_size if i > 0 else None)
        return None, euler[-1].step_size if euler else None


def _train_and_test(job):
    task, train, cfg = job
    spec = dict(task=task, solver=train, iterations=cfg["iterations"], lr=cfg["lr"],
                batch_size=cfg["batch_size"], seed=cfg["seed"], data_seed=cfg["data_seed"])
    state = _train_spec(spec)[0]
    model = make_model(task, train, seed=cfg["seed"])
    model.load_state_dict(state)
    x_test, y_test = load_task(task, seed=cfg["data_seed"])[2:]
    return _test_grid(model, x_test, y_test, cfg), state


def _test_grid(model, x_test, y_test, cfg) -> dict:
    """Test accuracies of ``model`` (trained at a fixed step) on the grid of test solvers:
    ``("own", 1)``, ``(method, k)`` at ``h_train / k``, ``(method, "ref")``.
    """
    acc = {("own", 1): model.accuracy(x_test, y_test)}
    h = model.solver.step_size
    for method in cfg["test_methods"]:
        for k in cfg["factors"]:
            acc[(method, k)] = model.accuracy(x_test, y_test, Solver(method, min(h / k, 1.0)))
        acc[(method, "ref")] = model.accuracy(x_test, y_test,
                                              Solver(method, cfg["reference_step"]))
    return acc


def solver_grid(task: str, train_solvers, iterations: int, lr: float = 3e-3,
                batch_size: int = 128, seed: int = 0, data_seed: int = 0,
                test_methods=("euler", "midpoint", "rk4"), factors=TEST_FACTORS,
                reference_step: float = 1 / 256, processes: int | None = None):
    """Train one model per training solver and test it on the grid.

    Parameters
    ----------
    task : str
        See :func:`load_task`.
    train_solvers : sequence of Solver
        Fixed-step solvers.
    iterations : int
        Training iterations (:func:`resode_tut.train_node`).
    lr : float
        Adam's learning rate.
    batch_size : int
        Training batch.
    seed : int
        Initial weights and batches; every model starts from the same seed.
    data_seed : int
        Seed of the data.
    test_methods : sequence of str
        Fixed-step methods to test with.
    factors : sequence of float
        Test steps ``h_train / k``.
    reference_step : float
        A step fine enough to stand for the exact flow.
    processes : int, optional
        Worker processes (default: all cores).

    Returns
    -------
    (SolverGrid, models)
        ``models[train_solver]`` is the trained :class:`NeuralODE`.
    """
    train_solvers = list(train_solvers)
    for s in train_solvers:
        if s.step_size is None:
            raise ValueError(f"solver_grid trains with fixed steps, got {s}")
    cfg = dict(iterations=iterations, lr=lr, batch_size=batch_size, seed=seed,
               data_seed=data_seed, test_methods=tuple(test_methods), factors=tuple(factors),
               reference_step=reference_step)
    jobs = [(task, s, cfg) for s in train_solvers]
    # longest first (euler, midpoint, rk4 evaluate the field 1, 2, 4 = order times a step)
    order = sorted(range(len(jobs)),
                   key=lambda i: -train_solvers[i].order / train_solvers[i].step_size)
    t0 = time.perf_counter()
    results = parallel_map(_train_and_test, [jobs[i] for i in order], processes)
    seconds = time.perf_counter() - t0
    by_job = dict(zip(order, results))
    accuracy, models = {}, {}
    for i, s in enumerate(train_solvers):
        acc, state = by_job[i]
        accuracy[s] = acc
        models[s] = make_model(task, s, seed=seed)
        models[s].load_state_dict(state)
    return SolverGrid(task, train_solvers, accuracy, reference_step, seconds), models


@dataclass
class SeedGrid:
    """Test accuracies of Euler models trained at several steps, several seeds each
    (Ott et al. (2021) report mean +- std over five seeds).

    Attributes
    ----------
    task : str
    steps : list of float
        Training steps ``h``.
    seeds : list of int
        Initial-weight and batch seeds; model ``i`` of every step has ``seeds[i]``.
    accuracy : dict
        ``accuracy[h][test]``: list of accuracies in [0, 1], one per seed; ``test`` as
        in :class:`SolverGrid` (``("own", 1)``, ``(method, k)``, ``(method, "ref")``).
    reference_step : float
    iterations : int
    lr : float
    seconds : float
        Wall time of the sweep.
    """

    task: str
    steps: list
    seeds: list
    accuracy: dict
    reference_step: float
    iterations: int
    lr: float
    seconds: float = 0.0

    def mean_std(self, h: float, test=("own", 1)) -> tuple[float, float]:
        """Mean and standard deviation (points, %) over the seeds of one test.

        Parameters
        ----------
        h : float
            A training step of the grid.
        test : tuple
            A test key (default: the model's own solver).
        """
        values = 100 * np.asarray(self.accuracy[h][test])
        return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0

    def gaps(self, h: float) -> list[float]:
        """Per seed, the largest accuracy difference (points) between any two tests.

        Parameters
        ----------
        h : float
            A training step of the grid.
        """
        table = 100 * np.asarray(list(self.accuracy[h].values()))    # (tests, seeds)
        return (table.max(0) - table.min(0)).tolist()

    def critical_step(self, tol: float = 10.0):
        """``(h_ok, h_fail)``: the largest training step from which on every finer step's
        *mean* gap over the seeds is at most ``tol`` points, and the next larger grid
        step (None where the grid does not bracket it).

        Parameters
        ----------
        tol : float
            Points (%).
        """
        steps = sorted(self.steps, reverse=True)
        ok = [float(np.mean(self.gaps(h))) <= tol for h in steps]
        for i, h in enumerate(steps):
            if all(ok[i:]):
                return h, (steps[i - 1] if i > 0 else None)
        return None, steps[-1] if steps else None


def _train_seeds(job):
    task, h, seeds, cfg = job
    from ..ensemble import train_euler_ensemble
    data = load_task(task, seed=cfg["data_seed"])
    models = [make_model(task, Solver("euler", h), seed=s) for s in seeds]
    train_euler_ensemble(models, data, h, cfg["iterations"], lr=cfg["lr"],
                         batch_size=cfg["batch_size"], seeds=seeds)
    tests = [_test_grid(m, data[2], data[3], cfg) for m in models]
    states = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in models]
    return {key: [t[key] for t in tests] for key in tests[0]}, states


def seed_grid(task: str, steps, seeds=(0, 1, 2, 3, 4), iterations: int = 10_000,
              lr: float = 1e-4, batch_size: int = 128, data_seed: int = 0,
              test_methods=("euler", "midpoint", "rk4"), factors=TEST_FACTORS,
              reference_step: float = 1 / 256, processes: int | None = None):
    """Train Euler models at each step in ``steps``, all ``seeds`` of a step together
    (:func:`resode_tut.ensemble.train_euler_ensemble`), the steps in worker processes,
    and test every model on the grid of :func:`solver_grid`.

    Parameters
    ----------
    task : str
        See :func:`load_task`.
    steps : sequence of float
        Training steps ``h = 1/N``.
    seeds : sequence of int
        Initial weights and batches, one model per seed (the paper: five).
    iterations : int
        Adam steps (the paper: 10,000 on the spheres).
    lr : float
        Adam's learning rate (the paper: 1e-4).
    batch_size : int
        Training batch per model.
    data_seed : int
        As for :func:`solver_grid`.
    test_methods : sequence of str
        As for :func:`solver_grid`.
    factors : sequence of float
        As for :func:`solver_grid`.
    reference_step : float
        As for :func:`solver_grid`.
    processes : int, optional
        As for :func:`solver_grid`.

    Returns
    -------
    (SeedGrid, models)
        ``models[h]``: the trained :class:`NeuralODE` of each seed.
    """
    steps, seeds = list(steps), list(seeds)
    if not steps or not seeds:
        raise ValueError("seed_grid needs at least one step and one seed")
    cfg = dict(iterations=iterations, lr=lr, batch_size=batch_size, data_seed=data_seed,
               test_methods=tuple(test_methods), factors=tuple(factors),
               reference_step=reference_step)
    order = sorted(range(len(steps)), key=lambda i: steps[i])    # most steps first
    t0 = time.perf_counter()
    results = parallel_map(_train_seeds, [(task, steps[i], seeds, cfg) for i in order],
                           processes)
    seconds = time.perf_counter() - t0
    accuracy, models = {}, {}
    for i, (acc, states) in zip(order, results):
        h = steps[i]
        accuracy[h] = acc
        models[h] = []
        for s, state in zip(seeds, states):
            model = make_model(task, Solver("euler", h), seed=s)
            model.load_state_dict(state)
            models[h].append(model)
    return SeedGrid(task, steps, seeds, accuracy, reference_step, iterations, lr,
                    seconds), models


def _train_spec(spec):
    from ..adaptation import StepSizeAdapter, ToleranceAdapter
    data = load_task(spec["task"], seed=spec.get("data_seed", 0))
    model = make_model(spec["task"], spec["solver"], seed=spec.get("seed", 0))
    adapter = {"step": lambda: StepSizeAdapter(),
               "tol": lambda: ToleranceAdapter(spec["solver"].method, spec["solver"].tol),
               None: lambda: None}[spec.get("adapt")]()
    hist = train_node(model, data, spec["iterations"], lr=spec.get("lr", 3e-3),
                      batch_size=spec.get("batch_size", 128), seed=spec.get("seed", 0),
                      adapter=adapter)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, model.solver, hist, (adapter.log if adapter is not None else [])


def train_runs(specs, processes: int | None = None):
    """Train several Neural ODEs, each described by a dict, in worker processes.

    Parameters
    ----------
    specs : sequence of dict
        Keys: ``task``, ``solver`` (a :class:`~resode_tut.node.Solver`: the
        training solver, or the adaptive method and initial tolerance),
        ``iterations``; optional ``adapt`` (None, ``"step"`` for
        :class:`~resode_tut.adaptation.StepSizeAdapter` -- the solver's step is
        then replaced by the heuristic's -- or ``"tol"`` for
        :class:`~resode_tut.adaptation.ToleranceAdapter`), ``lr``,
        ``batch_size``, ``seed``, ``data_seed``.
    processes : int, optional

    Returns
    -------
    list of (NeuralODE, NodeHistory, list)
        The trained model (its solver is the final training solver), its
        history and the adapter's log (empty without adaptation).
    """
    specs = list(specs)
    for spec in specs:
        if spec.get("adapt") not in (None, "step", "tol"):
            raise ValueError(f"unknown adapt {spec.get('adapt')!r}: choose None, 'step' or 'tol'")
    out = []
    for spec, (state, solver, hist, log) in zip(specs, parallel_map(_train_spec, specs,
                                                                       processes)):
        model = make_model(spec["task"], solver, seed=spec.get("seed", 0))
        model.load_state_dict(state)
        out.append((model, hist, log))
    return out


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
