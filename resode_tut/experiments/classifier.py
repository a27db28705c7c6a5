"""A small residual classifier and its training loop (chapters 3 and 4).

``embed (Linear) -> ResidualStack of MLP blocks -> head (Linear)``.  The same
initial weights can be trained with ``adjoint=False`` and ``adjoint=True``.
"""
from __future__ import annotations

import copy
import time

import torch
from torch import nn

from ..progress import progress as progress_bar
from ..schemes import get_scheme
from ..stack import ResidualStack
from .history import SelfCheckLog, TrainHistory

__all__ = ["MLPBlock", "ResidualClassifier", "TrainHistory", "train_classifier", "accuracy"]


class MLPBlock(nn.Module):
    """``f(x) = W_2 tanh(W_1 x + b_1) + b_2``; input (B, dim) -> output (B, dim).

    Parameters
    ----------
    dim : int
        State size.
    width : int
        Hidden units.
    gain : float
        Multiplies PyTorch's default initialisation of both weight matrices: the
        Lipschitz constant of ``f`` grows like ``gain^2``.
    """

    def __init__(self, dim: int, width: int, gain: float = 1.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, width), nn.Tanh(), nn.Linear(width, dim))
        with torch.no_grad():
            self.net[0].weight.mul_(gain)
            self.net[2].weight.mul_(gain)

    def forward(self, x):
        """``f(x)``, shape (B, dim) -> (B, dim)."""
        return self.net(x)


class ResidualClassifier(nn.Module):
    """Linear embedding, a residual stage of ``depth`` MLP blocks, linear head.

    Parameters
    ----------
    in_features : int
        Input size.
    num_classes : int
        Output size.
    dim : int
        State size of the residual stage.
    width : int
        Hidden units of each block.
    depth : int
        Number of residual functions ``M``.
    gain : float
        Initial scale of the residual functions (:class:`MLPBlock`).
    scheme : str or Scheme
        Any scheme of :mod:`resode_tut.schemes` (a coupling stage's blocks map
        ``dim / 2`` features).
    adjoint : bool
        Train the residual stage with the memory-free adjoint.
    tied_init : bool
        Start every residual function from the same weights (weights constant,
        hence smooth, in depth; they are not tied during training).
        Otherwise each block has its own default initialisation (i.i.d. in depth).
    fixed_ends : bool
        Keep the embedding and the head at their random initial values
        (``requires_grad=False``): the residual stage alone learns.

    Shapes: input (B, in_features) -> logits (B, num_classes).
    """

    def __init__(self, in_features: int, num_classes: int, dim: int = 32, width: int = 64,
                 depth: int = 8, scheme: str = "euler", adjoint: bool = False,
                 gain: float = 1.0, tied_init: bool = False, fixed_ends: bool = False):
        super().__init__()
        self.embed = nn.Linear(in_features, dim)
        features = get_scheme(scheme).function_features(dim)   # coupling: half of dim
        blocks = [MLPBlock(features, width, gain) for _ in range(depth)]
        if tied_init:
            blocks = [blocks[0]] + [copy.deepcopy(blocks[0]) for _ in range(depth - 1)]
        self.stage = ResidualStack(blocks, scheme=scheme, adjoint=adjoint)
        self.head = nn.Linear(dim, num_classes)
        if fixed_ends:
            for p in [*self.embed.parameters(), *self.head.parameters()]:
                p.requires_grad_(False)

    def forward(self, x):
        """Logits, shape (B, in_features) -> (B, num_classes)."""
        return self.head(self.stage(self.embed(x)))

    def with_adjoint(self, adjoint: bool) -> "ResidualClassifier":
        """A deep copy with the same weights, trained by the adjoint or by backprop.

        Parameters
        ----------
        adjoint : bool
            True for the memory-free adjoint.
        """
        twin = copy.deepcopy(self)
        twin.stage.adjoint = adjoint
        return twin


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of inputs classified correctly, in [0, 1].

    Parameters
    ----------
    model : torch.nn.Module
        ``(B, F) -> (B, classes)`` logits.
    x : torch.Tensor, shape (B, F)
    y : torch.Tensor, shape (B,)
        Class indices.
    """
    with torch.no_grad():
        return (model(x).argmax(1) == y).double().mean().item()


def train_classifier(model: nn.Module, data, epochs: int = 10, lr: float = 0.05,
                     batch_size: int = 64, seed: int = 0, progress: bool = False) -> TrainHistory:
    """SGD with momentum 0.9 on cross-entropy; the batch order depends on ``seed`` only.

    The adjoint's self-check of every adjoint stage in ``model`` is recorded in
    the history (:attr:`TrainHistory.reconstruction_error`) rather than warned.

    Parameters
    ----------
    model : torch.nn.Module
    data : tuple
        ``(x_train, y_train, x_test, y_test)`` as returned by :func:`resode_tut.datasets.digits`.
    epochs : int
        Passes over the training set.
    lr : float
        Learning rate.
    batch_size : int
        Training batch.
    seed : int
        Seeds the batch order.
    progress : bool
        Show a progress bar.

    Returns
    -------
    TrainHistory
    """
    x_train, y_train, x_test, y_test = data
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr,
                          momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    hist = TrainHistory()
    checks = SelfCheckLog(model)
    for _ in progress_bar(range(epochs), "epochs", enabled=progress):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(len(x_train), generator=gen)
        losses = []
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad()
            with checks.backward():
                loss.backward()
            opt.step()
            losses.append(loss.item())
        hist.seconds.append(time.perf_counter() - t0)
        checks.end_epoch(hist)
        model.eval()
        hist.train_loss.append(sum(losses) / len(losses))
        hist.test_accuracy.append(accuracy(model, x_test, y_test))
    return hist
