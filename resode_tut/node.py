r"""Neural ODE classifiers whose prediction depends on the solver (Ott et al., 2021).

``model(x) = head(z(1))`` with ``dz/dt = f(z)``, ``z(0) = x`` (no augmentation,
autonomous field), solved by torchdiffeq.  The *solver* -- method and step
size, or tolerance -- is part of the model: it is set for training and can be
changed for testing (:meth:`NeuralODE.forward`).

Fields, following the paper's code:

* :class:`SphereField` -- on points ``(B, d)``: ``Conv1d(1->32, k=1) - ReLU -
  Conv1d(32->32, k=3) - ReLU - Conv1d(32->1, k=1)`` across the coordinates;
* :class:`ImageField` -- on images ``(B, C, H, W)``: ``Conv2d(C->ch, 1x1) -
  ReLU - Conv2d(ch->ch, 3x3) - ReLU - Conv2d(ch->C, 1x1)``.

Both use Kaiming-normal weights and zero biases.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchdiffeq import odeint

__all__ = ["FIXED_STEP_SOLVERS", "ADAPTIVE_SOLVERS", "SOLVERS", "Solver", "SphereField",
           "ImageField", "NeuralODE"]

FIXED_STEP_SOLVERS = ("euler", "midpoint", "rk4")
ADAPTIVE_SOLVERS = ("fehlberg2", "dopri5")
SOLVERS = FIXED_STEP_SOLVERS + ADAPTIVE_SOLVERS
_ORDER = {"euler": 1, "midpoint": 2, "rk4": 4, "fehlberg2": 2, "dopri5": 5}


@dataclass(frozen=True)
class Solver:
    """An ODE solver for ``t`` in [0, 1]: a fixed-step method with ``step_size``, or
    an adaptive one with ``tol`` (``rtol = atol = tol``).

    Examples
    --------
    >>> Solver("euler", step_size=1/8), Solver("dopri5", tol=1e-6)
    """

    method: str
    step_size: float | None = None
    tol: float | None = None

    def __post_init__(self):
        if self.method not in SOLVERS:
            raise ValueError(f"unknown solver {self.method!r}: choose one of {SOLVERS}")
        if self.method in FIXED_STEP_SOLVERS:
            if self.step_size is None or not 0 < self.step_size <= 1:
                raise ValueError(f"{self.method} needs a step_size in (0, 1], "
                                 f"got {self.step_size}")
        elif self.tol is None or not self.tol > 0:
            raise ValueError(f"{self.method} is adaptive: give tol > 0, got {self.tol}")

    @property
    def order(self) -> int:
        return _ORDER[self.method]

    def __str__(self):
        if self.step_size is not None:
            n = 1 / self.step_size
            return f"{self.method}, h=1/{n:.0f}" if abs(n - round(n)) < 1e-9 else \
                f"{self.method}, h={self.step_size:.3g}"
        return f"{self.method}, tol={self.tol:.0e}"

    def odeint_kwargs(self) -> dict:
        if self.step_size is not None:
            return {"method": self.method, "options": {"step_size": self.step_size}}
        return {"method": self.method, "rtol": self.tol, "atol": self.tol}


def _kaiming(module):
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight)
            nn.init.zeros_(m.bias)


class SphereField(nn.Module):
    """Autonomous vector field on points: (t, z) with z of shape (B, d) -> (B, d)."""

    def __init__(self, channels: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(1, channels, 1), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, padding=1), nn.ReLU(),
            nn.Conv1d(channels, 1, 1))
        _kaiming(self)
        self.nfe = 0

    def forward(self, t, z):
        self.nfe += 1
        return self.net(z.unsqueeze(1)).squeeze(1)


class ImageField(nn.Module):
    """Autonomous vector field on images: (t, z) with z of shape (B, C, H, W) -> same."""

    def __init__(self, in_channels: int = 1, channels: int = 16):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, channels, 1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, in_channels, 1))
        _kaiming(self)
        self.nfe = 0

    def forward(self, t, z):
        self.nfe += 1
        return self.net(z)


class NeuralODE(nn.Module):
    """A linear classifier on the time-1 state of a Neural ODE.

    Parameters
    ----------
    field : nn.Module
        ``(t, z) -> dz/dt``, e.g. :class:`SphereField`; it counts its
        evaluations in ``field.nfe``.
    state_shape : tuple of int
        Shape of one input (the state), e.g. ``(2,)`` or ``(1, 8, 8)``.
    num_classes : int
    solver : Solver
        The solver used when :meth:`forward` gets none (the training solver).

    Shapes: input (B, *state_shape) -> logits (B, num_classes).
    """

    def __init__(self, field: nn.Module, state_shape, num_classes: int, solver: Solver):
        super().__init__()
        self.field = field
        self.state_shape = tuple(state_shape)
        self.head = nn.Linear(int(torch.Size(self.state_shape).numel()), num_classes)
        self.solver = solver

    def _check(self, x):
        if tuple(x.shape[1:]) != self.state_shape:
            raise ValueError(f"input of shape {tuple(x.shape)}: expected (B, "
                             f"{', '.join(map(str, self.state_shape))})")
        if not torch.isfinite(x).all():
            raise ValueError("input contains NaN or infinite values: clean the data")

    def flow(self, x: torch.Tensor, solver: Solver | None = None,
             times: torch.Tensor | None = None) -> torch.Tensor:
        """States ``z(t)`` at ``times`` (default: ``[0, 1]``), shape (T, B, *state_shape)."""
        self._check(x)
        solver = solver or self.solver
        if times is None:
            times = torch.tensor([0.0, 1.0])
        return odeint(self.field, x, times.to(x), **solver.odeint_kwargs())

    def forward(self, x: torch.Tensor, solver: Solver | None = None) -> torch.Tensor:
        z1 = self.flow(x, solver)[-1]
        return self.head(z1.flatten(1))

    def accuracy(self, x, y, solver: Solver | None = None) -> float:
        """Accuracy (fraction in [0, 1]) of the predictions with ``solver``."""
        with torch.no_grad():
            return (self(x, solver).argmax(1) == y).double().mean().item()
