r"""Chapter 5's computations (solver dependence, Ott et al., 2021): tasks, models, grids
of trained models, adapted runs, and Table 1 at the paper's scale.

:func:`load_task`, :func:`make_model` -- the tasks and the paper's models;
:func:`solver_grid` -- the paper's protocol: train at several fixed steps, test each
model with euler, midpoint and rk4 at ``h_train / k`` and at a fine reference step;
:func:`seed_grid` -- the same for Euler with several seeds per step, trained together
(mean +- std, as the paper reports); :func:`adapted_seeds` -- step-size adaptation,
several seeds trained together; :func:`train_runs` -- several seeded trainings in
worker processes; :func:`compute_table1` -- the paper's Table 1 (spheres 2-d) at its
settings.  Table 1's shipped result is keyed on this module's code (and what it imports):
storing, loading and printing it live in :mod:`resode_tut.experiments.table1`, chapter
5's presentation (crossings, the fan, the shells) in :mod:`resode_tut.experiments.ch05`,
so that editing either does not make the shipped result stale.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..adaptation import PAPER_GAP_LIMIT
from ..node import ImageField, NeuralODE, SphereField
from ..node_training import train_node
from ..ode_regime import ODE_GAP_LIMIT
from ..parallel import parallel_map
from ..solvers import Solver
from .chunks import resumable_map

__all__ = ["make_model", "TASKS", "load_task", "SolverGrid", "solver_grid", "TEST_FACTORS",
           "equal_or_finer",
           "ODE_GAP_LIMIT", "PAPER_GAP_LIMIT", "SeedGrid", "seed_grid", "AdaptedSeeds",
           "adapted_seeds",
           "train_runs", "Table1Config", "compute_table1"]

TASKS = ("spheres2d", "spheres3d", "spheres10d", "digits")
TEST_FACTORS = (0.5, 0.75, 1.0, 1.5, 2.0)
# Two gap limits, both in points (%): ODE_GAP_LIMIT (3) -- a model *keeps its accuracy*,
# is in the ODE regime, when its test accuracies lie within it (rt.ode_regime's default,
# used by every such statement of chapter 5); PAPER_GAP_LIMIT (10) -- the paper's batch
# check during step-size adaptation (the adapters' default).


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
    """The paper's model for ``task`` (seeded initial weights): Kaiming-normal
    weights for the field's convolutions and the linear head, zero biases.

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
        model = NeuralODE(ImageField(1, 16), (1, 8, 8), 10, solver)
    else:
        dim = _sphere_dim(task)
        if dim is None:
            raise ValueError(f"unknown task {task!r}: choose one of {TASKS} (or spheresKd)")
        model = NeuralODE(SphereField(32), (dim,), 2, solver)
    nn.init.kaiming_normal_(model.head.weight)       # the paper's code: the head too
    nn.init.zeros_(model.head.bias)
    return model


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
        """Largest accuracy difference (points) between any two of a model's
        equal-or-finer tests (:func:`equal_or_finer`).

        Parameters
        ----------
        train : Solver
            The model's training solver.
        """
        vals = _gap_table(self.accuracy[train])
        return float(vals.max() - vals.min())

    def critical_step(self, tol: float = ODE_GAP_LIMIT):
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


def equal_or_finer(key) -> bool:
    """Whether a test key is the training solver or a solver at an equal or finer step:
    ``("own", 1)``, ``(method, "ref")`` or ``(method, k)`` with ``k >= 1`` (step ``h/k``).
    Only these say whether a model computes an ODE's flow; the coarser tests (``k < 1``)
    are not evidence about it, and no gap, pick or verdict uses them.

    Parameters
    ----------
    key : tuple
        A test key of a grid's ``accuracy``.
    """
    return key[1] == "ref" or key[1] >= 1


def _gap_table(accuracy: dict) -> np.ndarray:
    """Accuracies (points) of the equal-or-finer tests, shape (tests, ...)."""
    return 100 * np.asarray([v for k, v in accuracy.items() if equal_or_finer(k)])


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
        """Per seed, the largest accuracy difference (points) between any two
        equal-or-finer tests (:func:`equal_or_finer`).

        Parameters
        ----------
        h : float
            A training step of the grid.
        """
        table = _gap_table(self.accuracy[h])                          # (tests, seeds)
        return (table.max(0) - table.min(0)).tolist()

    def critical_step(self, tol: float = ODE_GAP_LIMIT):
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
                         batch_size=cfg["batch_size"], seeds=seeds, progress=False)
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
                      adapter=adapter, progress=False)
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


# -- step-size adaptation, several seeds at once -----------------------------------

@dataclass
class AdaptedSeeds:
    """Euler models trained with step-size adaptation, one per seed.

    Attributes
    ----------
    task : str
    seeds : list of int
    step_sizes : list of float
        Each model's final training step.
    nfe : list of float
        Each model's field evaluations per training iteration (forward Euler steps),
        averaged over the whole training.
    accuracy : dict
        ``accuracy[test]``: one accuracy per seed, tests as in :class:`SolverGrid`,
        at the model's final step.
    logs : list of list of dict
        Each adapter's checks (:attr:`resode_tut.StepSizeAdapter.log`).
    iterations : int
    lr : float
    seconds : float
    gap_limit : float
        The adapters' batch check, points (:class:`resode_tut.StepSizeAdapter`).
    """

    task: str
    seeds: list
    step_sizes: list
    nfe: list
    accuracy: dict
    logs: list
    iterations: int
    lr: float
    seconds: float = 0.0
    gap_limit: float = PAPER_GAP_LIMIT

    def mean_std(self, test=("own", 1)) -> tuple[float, float]:
        """Mean and standard deviation (points, %) over the seeds of one test.

        Parameters
        ----------
        test : tuple
            A test key (default: the model's own final solver).
        """
        return _mean_std(self.accuracy[test])

    def gaps(self) -> list[float]:
        """Per seed, the largest accuracy difference (points) between any two
        equal-or-finer tests (:func:`equal_or_finer`).
        """
        table = _gap_table(self.accuracy)
        return (table.max(0) - table.min(0)).tolist()

    def halvings(self) -> list[int]:
        """Per seed, how many of the adapter's checks halved the step."""
        return [sum(e["action"] == "halve" for e in log) for log in self.logs]

    def nfe_mean_std(self) -> tuple[float, float]:
        """Mean and standard deviation over the seeds of the evaluations per iteration."""
        v = np.asarray(self.nfe, dtype=float)
        return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _mean_std(values) -> tuple[float, float]:
    v = 100 * np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _adapt_seeds(job):
    task, seeds, cfg = job
    from ..adaptation import StepSizeAdapter
    from ..ensemble import train_euler_ensemble
    data = load_task(task, seed=cfg["data_seed"])
    models = [make_model(task, Solver("euler", 1.0), seed=s) for s in seeds]
    adapters = [StepSizeAdapter(gap_limit=cfg["gap_limit"]) for _ in seeds]
    hists = train_euler_ensemble(models, data, None, cfg["iterations"], lr=cfg["lr"],
                                 batch_size=cfg["batch_size"], seeds=seeds, adapters=adapters,
                                 log_every=cfg["iterations"], progress=False)
    tests = [_test_grid(m, data[2], data[3], cfg) for m in models]
    states = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in models]
    return dict(step_sizes=[a.step_size for a in adapters], nfe=[h.nfe[0] for h in hists],
                accuracy={key: [t[key] for t in tests] for key in tests[0]},
                logs=[a.log for a in adapters]), states


def adapted_seeds(task: str, seeds=(0, 1, 2, 3, 4), iterations: int = 10_000,
                  lr: float = 1e-4, batch_size: int = 128, data_seed: int = 0,
                  test_methods=("euler", "midpoint", "rk4"), factors=TEST_FACTORS,
                  reference_step: float = 1 / 256, gap_limit: float = PAPER_GAP_LIMIT):
    """Step-size adaptation (:class:`resode_tut.StepSizeAdapter`, the paper's
    algorithm), one model per seed, all trained together
    (:func:`resode_tut.train_euler_ensemble`), each tested on the grid of
    :func:`solver_grid` at its final step.

    Parameters
    ----------
    task : str
        See :func:`load_task`.
    seeds : sequence of int
        Initial weights and batches, one model per seed.
    iterations : int
        Adam steps.
    lr : float
        Adam's learning rate.
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
    gap_limit : float
        The adapters' batch check: the largest accuracy difference (points) between
        Euler at ``h`` and the test solver that lets ``h`` grow (default: the
        paper's, :data:`PAPER_GAP_LIMIT`).

    Returns
    -------
    (AdaptedSeeds, models)
    """
    seeds = list(seeds)
    if not seeds:
        raise ValueError("adapted_seeds needs at least one seed")
    cfg = dict(iterations=iterations, lr=lr, batch_size=batch_size, data_seed=data_seed,
               test_methods=tuple(test_methods), factors=tuple(factors),
               reference_step=reference_step, gap_limit=gap_limit)
    t0 = time.perf_counter()
    out, states = _adapt_seeds((task, seeds, cfg))
    return _adapted_from(task, seeds, cfg, out, states, time.perf_counter() - t0)


def _adapted_from(task, seeds, cfg, out, states, seconds):
    models = []
    for s, h, state in zip(seeds, out["step_sizes"], states):
        model = make_model(task, Solver("euler", h), seed=s)
        model.load_state_dict(state)
        models.append(model)
    return AdaptedSeeds(task, seeds, out["step_sizes"], out["nfe"], out["accuracy"],
                        out["logs"], cfg["iterations"], cfg["lr"], seconds,
                        cfg["gap_limit"]), models


# -- Table 1 of the paper: what it runs and the run itself ------------------------------
# (stored, loaded and shown by :mod:`resode_tut.experiments.table1`; this module is the
# code its shipped result is keyed on)

@dataclass(frozen=True)
class Table1Config:
    """What :func:`compute_table1` runs.

    Attributes
    ----------
    name : str
    task : str
    steps : tuple of float
        Grid-search training steps.
    seeds : tuple of int
    iterations : int
    lr : float
    batch_size : int
    reference_step : float
    strict_gap_limit : float or None
        A second step adaptation whose batch check is the chapter's own limit
        (:data:`ODE_GAP_LIMIT` points) instead of :data:`PAPER_GAP_LIMIT`; None: not run.
    """

    name: str
    task: str
    steps: tuple
    seeds: tuple
    iterations: int
    lr: float
    batch_size: int = 128
    reference_step: float = 1 / 256
    strict_gap_limit: float | None = ODE_GAP_LIMIT


def _table_job(job) -> dict:
    """One job of Table 1 as its JSON-able chunk: a grid step's accuracies, or an adapted
    ensemble's step sizes, evaluations, accuracies and logs (the weights are not kept).
    """
    if job[0] == "grid":
        accuracy, _ = _train_seeds(job[1:])
        return dict(accuracy=_encode(accuracy))
    out, _ = _adapt_seeds(job[1:])
    return dict(out, accuracy=_encode(out["accuracy"]))


def _encode(acc: dict) -> dict:
    """Test keys ``(method, k)`` written ``"method|k"`` (JSON keys are strings)."""
    return {f"{m}|{k}": v for (m, k), v in acc.items()}


def compute_table1(config: Table1Config, processes: int | None = None, chunks=None) -> dict:
    """Run Table 1: a seed grid of Euler steps (grid search) and step-size adaptation
    (the paper's batch check and, when configured, the strict one) over the same seeds,
    the grid steps and the adapted ensembles in worker processes.

    Parameters
    ----------
    config : Table1Config
    processes : int, optional
        Worker processes (default: all cores).
    chunks : path, optional
        A folder that keeps each job's result as it finishes
        (:func:`resode_tut.experiments.chunks.resumable_map`): a run stopped part-way and
        started again with the same folder runs only what is missing.

    Returns
    -------
    dict
        JSON-able: ``grid`` (accuracies per step and test, one per seed, and the wall
        time), ``adapted`` and ``strict`` (step sizes, evaluations, accuracies, logs),
        ``seconds`` (over every invocation that computed a part), ``processes``,
        ``invocations``.
    """
    cfg = dict(iterations=config.iterations, lr=config.lr, batch_size=config.batch_size,
               data_seed=0, test_methods=("euler", "midpoint", "rk4"), factors=TEST_FACTORS,
               reference_step=config.reference_step)
    seeds = list(config.seeds)
    steps = sorted(config.steps)                                  # most Euler steps first
    limits = [PAPER_GAP_LIMIT] + ([] if config.strict_gap_limit is None
                                  else [config.strict_gap_limit])
    adapt_cfgs = [{**cfg, "gap_limit": g} for g in limits]
    jobs = ([("adapt", config.task, seeds, c) for c in adapt_cfgs]
            + [("grid", config.task, h, seeds, cfg) for h in steps])
    results, run = resumable_map(_table_job, jobs, processes, chunks)
    seconds = run["seconds"]
    runs = [dict(step_sizes=r["step_sizes"], nfe=r["nfe"], accuracy=r["accuracy"],
                 logs=r["logs"], seconds=seconds, gap_limit=c["gap_limit"])
            for c, r in zip(adapt_cfgs, results)]
    accuracy = {repr(h): r["accuracy"] for h, r in zip(steps, results[len(adapt_cfgs):])}
    return dict(grid=dict(accuracy=accuracy, seconds=seconds), adapted=runs[0],
                strict=runs[1] if len(runs) > 1 else None, seconds=seconds,
                processes=processes or os.cpu_count() or 1, invocations=run["invocations"])
