r"""Training Neural ODE classifiers with a given solver, and testing them with others.

:func:`train_node` -- Adam on cross-entropy with the model's own solver, optional
step-size or tolerance adaptation (:mod:`resode_tut.adaptation`).
:func:`solver_grid` -- Ott et al. (2021)'s protocol: train at several fixed
steps, test each model with euler, midpoint and rk4 at ``h_train / k`` and at a
fine reference step, in parallel worker processes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .node import ImageField, NeuralODE, Solver, SphereField
from .parallel import parallel_map
from .progress import progress as progress_bar

__all__ = ["NodeHistory", "train_node", "make_model", "TASKS", "load_task", "SolverGrid",
           "solver_grid", "TEST_FACTORS", "train_runs"]

TASKS = ("spheres2d", "spheres3d", "spheres10d", "digits")
TEST_FACTORS = (0.5, 0.75, 1.0, 1.5, 2.0)


def _sphere_dim(task: str) -> int | None:
    """``K`` for ``"spheresKd"``, else None."""
    if task.startswith("spheres") and task.endswith("d") and task[7:-1].isdigit():
        return int(task[7:-1])
    return None


def load_task(task: str, seed: int = 0):
    """``(x_train, y_train, x_test, y_test)`` for a named task.

    ``"spheresKd"``: :func:`resode_tut.data.concentric_spheres`, 2,000 train
    and 1,000 test points in ``R^K``; ``"digits"``: the sklearn digits as
    (B, 1, 8, 8) images.
    """
    from .data import concentric_spheres, digits
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
    """The paper's model for ``task`` (seeded initial weights)."""
    torch.manual_seed(seed)
    if task == "digits":
        return NeuralODE(ImageField(1, 16), (1, 8, 8), 10, solver)
    dim = _sphere_dim(task)
    if dim is None:
        raise ValueError(f"unknown task {task!r}: choose one of {TASKS} (or spheresKd)")
    return NeuralODE(SphereField(32), (dim,), 2, solver)


@dataclass
class NodeHistory:
    """Logged every ``log_every`` iterations: ``iteration``, ``loss`` (training batch),
    ``solver`` (the training solver then), ``nfe`` (mean field evaluations per
    training iteration, forward and backward, since the last log)."""

    iteration: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    solver: list = field(default_factory=list)
    nfe: list = field(default_factory=list)

    @property
    def mean_nfe(self) -> float:
        return float(np.mean(self.nfe))


def train_node(model: NeuralODE, data, iterations: int, lr: float = 3e-3,
               batch_size: int = 128, seed: int = 0, adapter=None, log_every: int = 50,
               progress: bool = False) -> NodeHistory:
    """Adam on cross-entropy, gradients by backpropagation through the solver.

    Parameters
    ----------
    model : NeuralODE
        Trained with ``model.solver``; an ``adapter`` may change it.
    data : tuple
        ``(x_train, y_train, ...)``.
    iterations, lr, batch_size, seed
        Batches are drawn with replacement from a generator seeded by ``seed``.
    adapter : StepSizeAdapter or ToleranceAdapter, optional
        Called every ``adapter.every`` iterations, before the optimizer step,
        on the current batch.
    log_every : int
    progress : bool

    Returns
    -------
    NodeHistory
    """
    x_train, y_train = data[0], data[1]
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    hist = NodeHistory()
    if adapter is not None:
        adapter.start(model, x_train[torch.randint(len(x_train), (batch_size,), generator=gen)])
    nfe0, losses = model.field.nfe, []
    for it in progress_bar(range(1, iterations + 1), "iterations", enabled=progress):
        idx = torch.randint(len(x_train), (batch_size,), generator=gen)
        xb, yb = x_train[idx], y_train[idx]
        loss = nn.functional.cross_entropy(model(xb), yb)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the training loss became {loss.item()} at iteration "
                                     f"{it} with solver {model.solver}: lower lr")
        opt.zero_grad()
        loss.backward()
        train_nfe = model.field.nfe
        if adapter is not None and it % adapter.every == 0:
            adapter.update(model, xb, yb)
        model.field.nfe = train_nfe  # adaptation's test solves are not training cost
        opt.step()
        losses.append(loss.item())
        if it % log_every == 0 or it == iterations:
            hist.iteration.append(it)
            hist.loss.append(float(np.mean(losses)))
            hist.solver.append(model.solver)
            hist.nfe.append((model.field.nfe - nfe0) / len(losses))
            nfe0, losses = model.field.nfe, []
    return hist


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
        return self.accuracy[train][("own", 1)]

    def drop(self, train: Solver, test_method: str = "rk4") -> float:
        """Accuracy lost (points, in %) from the own solver to ``test_method`` at the
        reference step."""
        return 100 * (self.own(train) - self.accuracy[train][(test_method, "ref")])

    def max_gap(self, train: Solver) -> float:
        """Largest accuracy difference (points) between any two tests of a model."""
        vals = list(self.accuracy[train].values())
        return 100 * (max(vals) - min(vals))

    def critical_step(self, tol: float = 10.0):
        """``(h_ok, h_fail)``: the largest training step whose model keeps its accuracy
        (max gap <= ``tol`` points) under every test, and the next larger grid step, which
        fails (None where the grid does not bracket it)."""
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
    acc = {("own", 1): model.accuracy(x_test, y_test)}
    h = train.step_size
    for method in cfg["test_methods"]:
        for k in cfg["factors"]:
            acc[(method, k)] = model.accuracy(x_test, y_test, Solver(method, min(h / k, 1.0)))
        acc[(method, "ref")] = model.accuracy(x_test, y_test,
                                              Solver(method, cfg["reference_step"]))
    return acc, state


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
    iterations, lr, batch_size, seed, data_seed
        Training (:func:`train_node`); every model starts from the same seed.
    test_methods : sequence of str
    factors : sequence of float
        Test steps ``h_train / k``.
    reference_step : float
        A step fine enough to stand for the exact flow.
    processes : int, optional

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


def _train_spec(spec):
    from .adaptation import StepSizeAdapter, ToleranceAdapter
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
