r"""Keep a Neural ODE in the ODE regime while it trains (Ott et al., 2021).

:class:`StepSizeAdapter` -- train with Euler at a step ``h`` that is checked
every ``every`` iterations on the current batch against a more accurate solver:
halve ``h`` when the two disagree, otherwise try a 10% larger step.
:class:`ToleranceAdapter` -- the same idea for an adaptive solver's tolerance.

Constants follow the paper's code: a batch-accuracy gap limit of 0.1 (10 points),
checks every 50 iterations, at most 500 steps, and an initial step from the
starting-step heuristic of Hairer, Norsett and Wanner (1993, II.4).
"""
from __future__ import annotations

import math

import torch

from .node import NeuralODE
from .solvers import Solver

__all__ = ["initial_step_size", "batch_check", "StepSizeAdapter", "ToleranceAdapter",
           "PAPER_GAP_LIMIT"]

#: The paper's batch check (its code's constant 0.1, here in points): the largest
#: accuracy difference between the training solver and the test solver on a batch that
#: lets a step (or a tolerance) grow.  The default ``gap_limit`` of both adapters.
PAPER_GAP_LIMIT = 10.0


def _check_adapter_args(gap_limit, every, max_steps=1) -> None:
    if (isinstance(gap_limit, bool) or not isinstance(gap_limit, (int, float))
            or not math.isfinite(gap_limit) or gap_limit < 0):
        raise ValueError(f"gap_limit is the largest tolerated batch-accuracy gap in points, "
                         f"a finite number >= 0 (the paper: {PAPER_GAP_LIMIT:g}); got "
                         f"{gap_limit!r}")
    for name, value in (("every", every), ("max_steps", max_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def initial_step_size(field, x: torch.Tensor, order: int = 1) -> float:
    r"""The Hairer-Norsett-Wanner starting step for ``dz/dt = field(t, z)`` at ``z = x``.

    ``d0 = mean ||x||``, ``d1 = mean ||f(x)||``, ``h0 = 0.01 d0 / d1`` (``1e-6`` if
    either is below ``1e-5``), ``d2 = mean ||f(x + h0 f(x)) - f(x)|| / h0``,
    ``h1 = (0.01 / max(d1, d2))^(1/(order+1))``; returns ``min(100 h0, h1, 1)``.

    Parameters
    ----------
    field : callable
        ``(t, z) -> dz/dt``.
    x : torch.Tensor, shape (B, ...)
    order : int
        Order of the solver.
    """
    if not torch.isfinite(x).all():
        raise ValueError("the batch holds NaN or infinite values: no starting step can be "
                         "computed from it; clean the data")
    with torch.no_grad():
        t0 = torch.zeros((), dtype=x.dtype, device=x.device)     # x's device, CUDA too
        f0 = field(t0, x)
        norm = lambda v: v.flatten(1).norm(dim=1).mean().item()
        d0, d1 = norm(x), norm(f0)
        h0 = 1e-6 if min(d0, d1) < 1e-5 else 0.01 * d0 / d1
        d2 = norm(field(t0 + h0, x + h0 * f0) - f0) / h0
        h1 = (max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15
              else (0.01 / max(d1, d2)) ** (1 / (order + 1)))
    return float(min(100 * h0, h1, 1.0))


def batch_check(model, x, y, acc_train: float, acc_test: float, grown: Solver,
                gap_limit: float) -> str:
    """The paper's check on a batch, given the accuracies (fractions) with the training
    and the test solver: ``"halve"`` when they differ by more than ``gap_limit`` points,
    else ``"grow"`` when the ``grown`` (cheaper) solver still agrees with the test
    solver, else ``"keep"``.

    Parameters
    ----------
    model : NeuralODE
    x : torch.Tensor, shape (B, ...)
        The batch.
    y : torch.Tensor, shape (B,)
        Its labels.
    acc_train : float
        Batch accuracy with the training solver.
    acc_test : float
        Batch accuracy with the test solver.
    grown : Solver
        The training solver one step cheaper (1.1 h or 1.1 tol).
    gap_limit : float
        Points.
    """
    if 100 * abs(acc_train - acc_test) > gap_limit:
        return "halve"
    if 100 * abs(acc_test - model.accuracy(x, y, grown)) > gap_limit:
        return "keep"
    return "grow"


def _started(adapter, model) -> None:
    if not adapter.started:
        raise RuntimeError(f"{type(adapter).__name__}.update() before start(): call "
                           "adapter.start(model, first_batch) first (train_node does)")
    if not isinstance(model, NeuralODE):
        raise TypeError(f"the adapters adapt a NeuralODE's solver, got {type(model).__name__}")


class StepSizeAdapter:
    """Step-size adaptation for Euler training (the paper's algorithm).

    Parameters
    ----------
    gap_limit : float
        Largest tolerated accuracy gap (points) between the training solver
        and the test solver on a batch (the paper: 10).
    every : int
        Iterations between checks.
    max_steps : int
        Smallest step is ``1 / max_steps``.

    Attributes
    ----------
    step_size : float
        The current ``h``; the model's solver is ``Solver("euler", h)``.
    log : list of dict
        One entry per check: iteration count, ``h``, both accuracies, action.
    """

    def __init__(self, gap_limit: float = PAPER_GAP_LIMIT, every: int = 50,
                 max_steps: int = 500):
        _check_adapter_args(gap_limit, every, max_steps)
        self.gap_limit, self.every, self.max_steps = float(gap_limit), every, max_steps
        self.step_size = None
        self.log = []

    @property
    def started(self) -> bool:
        """Whether :meth:`start` has set the initial step."""
        return self.step_size is not None

    def start(self, model: NeuralODE, x: torch.Tensor) -> None:
        """Set the initial step from the heuristic on the first batch.

        Parameters
        ----------
        model : NeuralODE
            Its ``solver`` becomes Euler at the initial step.
        x : torch.Tensor, shape (B, ...)
            The first batch.
        """
        self.step_size = max(initial_step_size(model.field, x, order=1), 1 / self.max_steps)
        model.solver = Solver("euler", self.step_size)

    def halved(self, h: float) -> float:
        """The step after a failed check, as the paper's code takes it: ``h/2``, or, where
        that would pass ``max_steps`` steps, ``2h / (max_steps h + 1)`` (the harmonic mean
        of ``h`` and ``1/max_steps``), and ``h`` itself at the cap.
        """
        if 2 / h <= self.max_steps:
            return h / 2
        return h if int(1 / h) == self.max_steps else 2 * h / (self.max_steps * h + 1)

    def test_solver(self, h: float) -> Solver:
        """Midpoint at ``h`` if there are more than 50 steps, else at ``sqrt(h/50)``."""
        return Solver("midpoint", h if 1 / h > 50 else math.sqrt(h / 50))

    def update(self, model: NeuralODE, x: torch.Tensor, y: torch.Tensor) -> None:
        """Check the current step on a batch and adapt it.

        Parameters
        ----------
        model : NeuralODE
            Its ``solver`` is replaced by Euler at the adapted step.
        x : torch.Tensor, shape (B, ...)
        y : torch.Tensor, shape (B,)
            Class indices.
        """
        _started(self, model)
        h = self.step_size
        grown = min(1.1 * h, 1.0)
        acc_train = model.accuracy(x, y, Solver("euler", h))
        acc_test = model.accuracy(x, y, self.test_solver(h))
        action = batch_check(model, x, y, acc_train, acc_test, Solver("euler", grown),
                                     self.gap_limit)
        self.log.append(dict(step_size=h, acc_train=acc_train, acc_test=acc_test,
                             action=action))
        self.step_size = {"halve": self.halved(h), "keep": h, "grow": grown}[action]
        model.solver = Solver("euler", self.step_size)


class ToleranceAdapter:
    """Tolerance adaptation for an adaptive training solver, as the paper's code does it
    (the paper calls it preliminary).

    Every ``every`` iterations, on the current batch: the accuracy with the training
    solver at ``tol`` is compared with ``test_method`` at ``tol / test_factor``, the
    test tolerance then lowered by a factor ``tighten`` a round until the test solver
    takes more field evaluations than the training solver (a test as cheap as the
    training solve would check nothing).  A gap above ``gap_limit`` points halves ``tol``;
    otherwise ``1.1 tol`` is tried and kept if the training solver there still agrees
    with the test, unless it takes the same number of evaluations as each of the last
    ``patience`` training iterations (then ``tol`` stays: growing it would change
    nothing but the number).

    Parameters
    ----------
    method : str
        The adaptive training solver (``"fehlberg2"`` or ``"dopri5"``).
    tol : float
        Initial ``rtol = atol`` (the paper's code: 1e-6).
    test_method : str
        The more accurate solver the training solver is checked against.
    gap_limit : float
        Largest tolerated batch-accuracy gap (points; the paper: 10).
    every : int
        Iterations between checks.
    test_factor : float
        The first test tolerance is ``tol / test_factor`` (the paper's code: 5).
    tighten : float
        The factor the test tolerance is then divided by, round after round (the
        paper's code: 10).
    min_test_tol : float
        The test tolerance is never lowered below this.
    patience : int
        Training iterations whose evaluation count, all equal to the grown
        tolerance's, keep ``tol`` from growing (the paper's code: 5).

    Attributes
    ----------
    tol : float
        The current tolerance.
    log : list of dict
        One entry per check: ``tol``, ``test_tol``, both accuracies and evaluation
        counts, and the action (``"halve"``, ``"keep"``, ``"grow"`` or ``"frozen"``,
        the last when growth was blocked by the constant evaluation count).
    """

    def __init__(self, method: str = "fehlberg2", tol: float = 1e-6,
                 test_method: str = "dopri5", gap_limit: float = PAPER_GAP_LIMIT,
                 every: int = 50, test_factor: float = 5.0, tighten: float = 10.0,
                 min_test_tol: float = 1e-12, patience: int = 5):
        Solver(method, tol=tol), Solver(test_method, tol=tol)  # validate
        _check_adapter_args(gap_limit, every)
        if not (test_factor > 1 and tighten > 1 and min_test_tol > 0) or \
                isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"need test_factor > 1, tighten > 1, min_test_tol > 0 and an "
                             f"integer patience >= 1, got {test_factor}, {tighten}, "
                             f"{min_test_tol}, {patience!r}")
        self.method, self.tol, self.test_method = method, tol, test_method
        self.gap_limit, self.every = float(gap_limit), every
        self.test_factor, self.tighten = test_factor, tighten
        self.min_test_tol, self.patience = min_test_tol, patience
        self.started = False
        self.log = []
        self._train_nfe = []

    def start(self, model: NeuralODE, x: torch.Tensor) -> None:
        """Set ``model.solver`` to the training method at the initial tolerance.

        Parameters
        ----------
        model : NeuralODE
        x : torch.Tensor, shape (B, ...)
            The first batch (unused: the tolerance does not depend on it).
        """
        model.solver = Solver(self.method, tol=self.tol)
        self._train_nfe = []
        self.started = True

    def observe(self, nfe: int) -> None:
        """Record one training iteration's field evaluations (called by
        :func:`resode_tut.train_node` every iteration).

        Parameters
        ----------
        nfe : int
            Evaluations of the training iteration's forward pass.
        """
        self._train_nfe = (self._train_nfe + [int(nfe)])[-self.patience:]

    def _accuracy_and_nfe(self, model, x, y, solver):
        before = model.nfe
        acc = model.accuracy(x, y, solver)
        return acc, model.nfe - before

    def update(self, model: NeuralODE, x: torch.Tensor, y: torch.Tensor) -> None:
        """Check the current tolerance on the batch ``(x, y)`` and adapt it.

        Parameters
        ----------
        model : NeuralODE
            Its ``solver`` is replaced by the adapted one.
        x : torch.Tensor, shape (B, ...)
        y : torch.Tensor, shape (B,)
            Class indices.
        """
        _started(self, model)
        tol = self.tol
        acc_train, nfe_train = self._accuracy_and_nfe(model, x, y,
                                                      Solver(self.method, tol=tol))
        test_tol = tol / self.test_factor
        acc_test, nfe_test = self._accuracy_and_nfe(
            model, x, y, Solver(self.test_method, tol=test_tol))
        while nfe_test <= nfe_train and test_tol / self.tighten >= self.min_test_tol:
            test_tol /= self.tighten
            acc_test, nfe_test = self._accuracy_and_nfe(
                model, x, y, Solver(self.test_method, tol=test_tol))
        entry = dict(tol=tol, test_tol=test_tol, acc_train=acc_train, acc_test=acc_test,
                     nfe_train=nfe_train, nfe_test=nfe_test)
        if 100 * abs(acc_train - acc_test) > self.gap_limit:
            action = "halve"
        else:
            acc_grown, nfe_grown = self._accuracy_and_nfe(
                model, x, y, Solver(self.method, tol=1.1 * tol))
            if 100 * abs(acc_test - acc_grown) > self.gap_limit:
                action = "keep"
            elif (len(self._train_nfe) == self.patience
                  and all(n == nfe_grown for n in self._train_nfe)):
                action = "frozen"
            else:
                action = "grow"
        entry.update(action=action)
        self.tol = {"halve": tol / 2, "keep": tol, "frozen": tol, "grow": 1.1 * tol}[action]
        self.log.append(entry)
        model.solver = Solver(self.method, tol=self.tol)
