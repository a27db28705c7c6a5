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

import torch
from torch import nn
from torchdiffeq import odeint

from .solvers import Solver

__all__ = ["Solver", "SphereField", "ImageField", "NeuralODE"]


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

    def forward(self, t, z):
        """``dz/dt``.

        Parameters
        ----------
        t : torch.Tensor, shape ()
            Time (unused: the field is autonomous).
        z : torch.Tensor, shape (B, d)
            State.
        """
        return self.net(z.unsqueeze(1)).squeeze(1)


class ImageField(nn.Module):
    """Autonomous vector field on images: (t, z) with z of shape (B, C, H, W) -> same.

    Parameters
    ----------
    in_channels : int
        ``C``, the channels of the state.
    channels : int
        Width of the hidden convolutions.
    """

    def __init__(self, in_channels: int = 1, channels: int = 16):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, channels, 1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, in_channels, 1))
        _kaiming(self)

    def forward(self, t, z):
        """``dz/dt``.

        Parameters
        ----------
        t : torch.Tensor, shape ()
            Time (unused: the field is autonomous).
        z : torch.Tensor, shape (B, C, H, W)
            State.
        """
        return self.net(z)


class NeuralODE(nn.Module):
    """A linear classifier on the time-1 state of a Neural ODE.

    Parameters
    ----------
    field : nn.Module
        ``(t, z) -> dz/dt``, e.g. :class:`SphereField` or any torchdiffeq-style
        field of your own.
    state_shape : tuple of int
        Shape of one input (the state), e.g. ``(2,)`` or ``(1, 8, 8)``.
    num_classes : int
    solver : Solver
        The solver used when :meth:`forward` gets none (the training solver).

    Shapes: input (B, *state_shape) -> logits (B, num_classes).

    Attributes
    ----------
    nfe : int
        Evaluations of ``field`` so far, counted by the model (forward solves and
        the backward passes through them), so any field can be counted.
    """

    def __init__(self, field: nn.Module, state_shape, num_classes: int, solver: Solver):
        super().__init__()
        self.field = field
        self.state_shape = tuple(state_shape)
        self.head = nn.Linear(int(torch.Size(self.state_shape).numel()), num_classes)
        self.solver = solver
        self.nfe = 0

    def _counted_field(self, t, z):
        self.nfe += 1
        return self.field(t, z)

    def _check(self, x):
        if tuple(x.shape[1:]) != self.state_shape:
            raise ValueError(f"input of shape {tuple(x.shape)}: expected (B, "
                             f"{', '.join(map(str, self.state_shape))})")
        if not torch.isfinite(x).all():
            raise ValueError("input contains NaN or infinite values: clean the data")

    def flow(self, x: torch.Tensor, solver: Solver | None = None,
             times: torch.Tensor | None = None) -> torch.Tensor:
        """States ``z(t)`` of the flow.

        Parameters
        ----------
        x : torch.Tensor, shape (B, *state_shape)
            Initial states ``z(0)``.
        solver : Solver, optional
            Default: the training solver ``self.solver``.
        times : torch.Tensor, shape (T,), optional
            Increasing times in [0, 1]; default ``[0, 1]``.

        Returns
        -------
        torch.Tensor, shape (T, B, *state_shape)
        """
        self._check(x)
        solver = solver or self.solver
        if times is None:
            times = torch.tensor([0.0, 1.0])
        try:
            return odeint(self._counted_field, x, times.to(x), **solver.odeint_kwargs())
        except AssertionError as err:           # torchdiffeq: "underflow in dt ..."
            raise FloatingPointError(
                f"{solver} failed ({err}): the field blows up on these inputs, an adaptive "
                "solver cannot find a step; lower the learning rate or check the inputs"
            ) from err

    def forward(self, x: torch.Tensor, solver: Solver | None = None) -> torch.Tensor:
        """Logits ``head(z(1))``, shape (B, *state_shape) -> (B, num_classes).

        Parameters
        ----------
        x : torch.Tensor, shape (B, *state_shape)
            The initial states ``z(0)``.
        solver : Solver, optional
            Default: the training solver ``self.solver``.
        """
        z1 = self.flow(x, solver)[-1]
        return self.head(z1.flatten(1))

    def accuracy(self, x, y, solver: Solver | None = None) -> float:
        """Share of correct predictions with ``solver``, in [0, 1].

        Parameters
        ----------
        x : torch.Tensor, shape (B, *state_shape)
        y : torch.Tensor, shape (B,)
            Class indices.
        solver : Solver, optional
            Default: the training solver.
        """
        with torch.no_grad():
            return (self(x, solver).argmax(1) == y).double().mean().item()
