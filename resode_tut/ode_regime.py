r"""Is a trained Neural ODE an ODE?  Test its predictions across solvers and steps.

A model trained with a coarse fixed step can rely on the discretisation error;
its accuracy then changes once it is solved more accurately (Ott et al., 2021).
:func:`ode_regime` solves the model with its own solver, with other fixed-step
methods at finer steps and with an adaptive solver at a tight tolerance, and
gives a verdict with the evidence.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchdiffeq import odeint

from .node import NeuralODE
from .solvers import Solver

__all__ = ["RegimeReport", "ode_regime", "default_test_solvers", "ODE_GAP_LIMIT"]

#: Points (%): a model is *in the ODE regime* when its accuracies under all test solvers
#: (the training solver and equal-or-finer ones) lie within this many points of each
#: other.  The default ``gap_limit`` of :func:`ode_regime`; chapter 5 uses it throughout.
ODE_GAP_LIMIT = 3.0


def default_test_solvers(own: Solver | None) -> list[Solver]:
    """Euler, midpoint and rk4 at the training step and 2x and 8x finer (or at 1/8, 1/32
    and 1/128 for an adaptive or unknown training solver), and dopri5 at tol 1e-7.

    Parameters
    ----------
    own : Solver or None
        The model's training solver, if known.
    """
    if own is not None and own.step_size is not None:
        steps = [own.step_size, own.step_size / 2, own.step_size / 8]
    else:
        steps = [1 / 8, 1 / 32, 1 / 128]
    return ([Solver(m, h) for m in ("euler", "midpoint", "rk4") for h in steps]
            + [Solver("dopri5", tol=1e-7)])


@dataclass
class RegimeReport:
    """The evidence and the verdict of :func:`ode_regime`.

    Attributes
    ----------
    accuracy : dict
        Solver -> accuracy in [0, 1].
    disagreement : dict
        Solver -> fraction of inputs whose predicted class differs from the
        reference solver's.
    reference : Solver
        The most accurate solve (dopri5 at a tight tolerance).
    own : Solver or None
        The training solver, if known.
    gap_limit : float
        Largest tolerated accuracy difference (points, in %).
    chance : float
        The accuracy of always predicting the most frequent label, in [0, 1]: a model no
        solver lifts ``gap_limit`` points above it has learned nothing, and is flat under
        every solver for that reason alone.
    """

    accuracy: dict
    disagreement: dict
    reference: Solver
    own: Solver | None
    gap_limit: float
    chance: float = 0.0

    @property
    def learned(self) -> bool:
        """True when some solver's accuracy is more than ``gap_limit`` points above
        :attr:`chance`.
        """
        return 100 * (max(self.accuracy.values()) - self.chance) > self.gap_limit

    @property
    def max_gap(self) -> float:
        """Largest accuracy difference between any two solvers (points)."""
        return 100 * (max(self.accuracy.values()) - min(self.accuracy.values()))

    @property
    def in_ode_regime(self) -> bool:
        """True when the model learned (:attr:`learned`) and every solver's accuracy is
        within ``gap_limit`` points of the others.
        """
        return self.learned and self.max_gap <= self.gap_limit

    def __str__(self) -> str:
        lines = [f"{'solver':<22}{'accuracy':>10}{'changed':>10}"]
        for s, a in self.accuracy.items():
            mark = " (own)" if s == self.own else (" (ref)" if s == self.reference else "")
            lines.append(f"{str(s) + mark:<22}{100 * a:>9.1f}%{100 * self.disagreement[s]:>9.1f}%")
        verdict = ("NOT determined: no solver's accuracy is above chance "
                   f"({100 * self.chance:.1f}%), so the model has not learned the task"
                   if not self.learned else
                   "IN the ODE regime: predictions are stable across solvers"
                   if self.in_ode_regime else
                   "NOT in the ODE regime: the predictions depend on the solver")
        lines.append(f"max accuracy gap {self.max_gap:.1f} points "
                     f"(limit {self.gap_limit:g}) -> {verdict}")
        return "\n".join(lines)


def _check_inputs(x, y, gap_limit) -> None:
    """Named errors for inputs no verdict can come from."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"x and y must be tensors, got {type(x).__name__} and "
                        f"{type(y).__name__}: convert with torch.as_tensor(...)")
    if (isinstance(gap_limit, bool) or not isinstance(gap_limit, (int, float))
            or math.isnan(gap_limit) or gap_limit < 0):
        raise ValueError(f"gap_limit is the largest tolerated gap in points, a number >= 0; "
                         f"got {gap_limit!r}")
    if len(x) == 0:
        raise ValueError("x is empty: give at least one input")
    if x.is_floating_point() and x.device.type != "meta" and not torch.isfinite(x).all():
        raise ValueError("x holds NaN or infinite values: every solver would fail or agree "
                         "on nonsense; clean the inputs first")
    if y.dim() != 1 or len(x) != len(y):
        raise ValueError(f"labels of shape {tuple(y.shape)} for {len(x)} inputs: give class "
                         f"indices of shape ({len(x)},) (e.g. y.view(-1))")
    if y.is_floating_point() or y.is_complex():
        raise ValueError(f"labels of dtype {y.dtype}: give integer class indices")


def _test_solvers(solvers, own):
    """The solvers to compare (the default set, the model's own and the reference added)
    and the reference, checked.
    """
    solvers = list(solvers) if solvers is not None else default_test_solvers(own)
    if not solvers:
        raise ValueError("solvers is empty: give the solvers to compare (or None for the "
                         "default set), else dopri5 would only be compared with itself")
    for s in solvers:
        if not isinstance(s, Solver):
            raise TypeError(f"solvers holds {s!r}, not a Solver: write e.g. "
                            "rt.Solver('euler', step_size=1/8)")
    if own is not None and own not in solvers:
        solvers = [own] + solvers
    reference = Solver("dopri5", tol=1e-7)
    if reference not in solvers:
        solvers.append(reference)
    if len(set(solvers)) < 2:
        raise ValueError(f"only one distinct solver ({solvers[0]}): a verdict needs at "
                         "least two to compare")
    return solvers, reference


def _predictions(predict, solvers, y) -> dict:
    """Predicted classes under every solver; a blow-up is a ``FloatingPointError``, labels
    outside the model's classes a ``ValueError``.
    """
    preds = {}
    with torch.no_grad():
        for s in solvers:
            try:
                logits = predict(s)
            except AssertionError as err:       # torchdiffeq: "underflow in dt ..."
                raise FloatingPointError(
                    f"{s} failed on these inputs ({err}): the field blows up or the inputs "
                    "are not finite; an adaptive solver cannot find a step") from err
            if not torch.isfinite(logits).all():
                raise FloatingPointError(f"{s} gives non-finite logits: the field blows up "
                                         "on these inputs")
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= logits.shape[1]):
                raise ValueError(f"labels from {int(y.min())} to {int(y.max())} for a model "
                                 f"with {logits.shape[1]} classes: give indices in "
                                 f"0..{logits.shape[1] - 1}")
            preds[s] = logits.argmax(1)
    return preds


def ode_regime(model, x: torch.Tensor, y: torch.Tensor, solvers=None,
               gap_limit: float = ODE_GAP_LIMIT, readout=None) -> RegimeReport:
    """Check whether a trained Neural ODE's predictions are stable across solvers.

    Parameters
    ----------
    model : NeuralODE or callable
        A :class:`~resode_tut.node.NeuralODE`, or any torchdiffeq-style vector field
        ``(t, z) -> dz/dt`` together with ``readout``.
    x : torch.Tensor, shape (B, ...)
        Inputs ``z(0)``.
    y : torch.Tensor, shape (B,)
        Labels.
    solvers : sequence of Solver, optional
        Default :func:`default_test_solvers` of the model's own solver.
    gap_limit : float
        Largest accuracy difference (points) still called stable.
    readout : callable, optional
        ``z(1) -> logits`` for a plain vector field.

    Returns
    -------
    RegimeReport
        ``print(report)`` shows the table and the verdict.
    """
    _check_inputs(x, y, gap_limit)
    if isinstance(model, NeuralODE):
        own = model.solver
        predict = lambda s: model(x, s)
    else:
        if readout is None:
            raise ValueError("a plain vector field needs readout=(z(1) -> logits); "
                             "or pass a resode_tut.node.NeuralODE")
        own = None
        t = torch.tensor([0.0, 1.0], dtype=x.dtype, device=x.device)   # x's device, CUDA too
        predict = lambda s: readout(odeint(model, x, t, **s.odeint_kwargs())[-1])
    solvers, reference = _test_solvers(solvers, own)
    preds = _predictions(predict, solvers, y)
    ref = preds[reference]
    accuracy = {s: (p == y).double().mean().item() for s, p in preds.items()}
    disagreement = {s: (p != ref).double().mean().item() for s, p in preds.items()}
    chance = torch.bincount(y.long().cpu()).max().item() / len(y)
    return RegimeReport(accuracy, disagreement, reference, own, float(gap_limit), chance)
