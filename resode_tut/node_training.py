"""Train a Neural ODE classifier through its solver, optionally adapting the solver.

:func:`train_node` is the reference loop for the adapters of
:mod:`resode_tut.adaptation`: Adam on cross-entropy, gradients by backpropagation
through the solver, and every ``adapter.every`` iterations an ``adapter.update`` on
the current batch before the optimizer step.  Use it as it is, or copy its ten
lines into a loop of your own.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .node import NeuralODE
from .progress import progress as progress_bar

__all__ = ["NodeHistory", "train_node"]


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def epoch_batches(n: int, batch_size: int, generator: torch.Generator):
    """Batches of indices, forever: each epoch a seeded permutation of ``0 .. n-1`` cut
    into batches of ``batch_size``, the last incomplete one dropped (the paper's data
    loader: shuffled, ``drop_last``).

    Parameters
    ----------
    n : int
        Items in the data set.
    batch_size : int
        At most ``n``.
    generator : torch.Generator
        Draws the permutations.

    Yields
    ------
    torch.Tensor, shape (batch_size,), int64
    """
    while True:
        order = torch.randperm(n, generator=generator)
        for i in range(0, n - batch_size + 1, batch_size):
            yield order[i:i + batch_size]


def check_training_data(data, num_classes: int, iterations, batch_size, log_every):
    """``(x_train, y_train)`` of ``data`` after checking it and the loop's counts.

    Raises a ``ValueError`` (``TypeError`` for non-tensors) that names the problem: counts
    below 1, empty data, labels that are not integer class indices of shape ``(N,)`` in
    ``0 .. num_classes - 1``, or a different number of labels and inputs.
    """
    _positive_int("iterations", iterations)
    _positive_int("batch_size", batch_size)
    _positive_int("log_every", log_every)
    if not isinstance(data, (tuple, list)) or len(data) < 2:
        raise TypeError("data must be a tuple (x_train, y_train, ...)")
    x, y = data[0], data[1]
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"x_train and y_train must be tensors, got {type(x).__name__} and "
                        f"{type(y).__name__}: convert with torch.as_tensor(...)")
    if len(x) == 0:
        raise ValueError("x_train is empty: give at least one training input")
    if batch_size > len(x):
        raise ValueError(f"batch_size {batch_size} is larger than the {len(x)} training "
                         "inputs: batches are drawn from shuffled epochs without the "
                         "last incomplete one, so none would be left")
    if y.dim() != 1 or len(y) != len(x):
        raise ValueError(f"labels of shape {tuple(y.shape)} for {len(x)} inputs: give one "
                         f"class index per input, shape ({len(x)},) (e.g. y.view(-1))")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"labels of dtype {y.dtype}: give integer class indices "
                         "(y.long())")
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ValueError(f"labels from {int(y.min())} to {int(y.max())} for a model with "
                         f"{num_classes} classes: give indices in 0..{num_classes - 1}")
    return x, y


@dataclass
class NodeHistory:
    """Logged every ``log_every`` iterations: ``iteration``, ``loss`` (training batch),
    ``solver`` (the training solver then), ``nfe`` (mean field evaluations per
    training iteration, forward and backward, since the last log).
    """

    iteration: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    solver: list = field(default_factory=list)
    nfe: list = field(default_factory=list)

    @property
    def mean_nfe(self) -> float:
        """Field evaluations per training iteration, averaged over the logs."""
        return float(np.mean(self.nfe))


def train_node(model: NeuralODE, data, iterations: int, lr: float = 3e-3,
               batch_size: int = 128, seed: int = 0, adapter=None, log_every: int = 50,
               progress: bool = True) -> NodeHistory:
    """Adam on cross-entropy, gradients by backpropagation through the solver.

    Parameters
    ----------
    model : NeuralODE
        Trained with ``model.solver``; an ``adapter`` may change it.
    data : tuple
        ``(x_train, y_train, ...)``.
    iterations : int
        Optimizer steps.
    lr : float
        Adam's learning rate.
    batch_size : int
        Inputs per step.
    seed : int
        Seeds the batches: shuffled epochs, the last incomplete batch of each dropped
        (:func:`epoch_batches`, the paper's data loader).
    adapter : StepSizeAdapter or ToleranceAdapter, optional
        Called every ``adapter.every`` iterations, before the optimizer step,
        on the current batch; its ``observe(nfe)``, if it has one, after every
        iteration's forward pass.
    log_every : int
        Iterations between entries of the history.
    progress : bool
        Show a progress bar (tqdm; off where ``TQDM_DISABLE=1``, as in the book's builds
        and the tests).

    Returns
    -------
    NodeHistory
    """
    if not isinstance(model, NeuralODE):
        raise TypeError(f"model must be a NeuralODE, got {type(model).__name__}: wrap your "
                        "field as rt.NeuralODE(field, state_shape, num_classes, solver)")
    x_train, y_train = check_training_data(data, model.head.out_features, iterations,
                                           batch_size, log_every)
    batches = epoch_batches(len(x_train), batch_size, torch.Generator().manual_seed(seed))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    hist = NodeHistory()
    if adapter is not None:   # the first batch sets it up (and is not trained on), as the
        adapter.start(model, x_train[next(batches)])   # paper's code does
    nfe0, losses = model.nfe, []
    for it in progress_bar(range(1, iterations + 1), "iterations", enabled=progress):
        idx = next(batches)
        xb, yb = x_train[idx], y_train[idx]
        nfe_before = model.nfe
        loss = nn.functional.cross_entropy(model(xb), yb)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the training loss became {loss.item()} at iteration "
                                     f"{it} with solver {model.solver}: lower lr")
        forward_nfe = model.nfe
        opt.zero_grad()
        loss.backward()
        train_nfe = model.nfe
        if adapter is not None and hasattr(adapter, "observe"):
            adapter.observe(forward_nfe - nfe_before)
        if adapter is not None and it % adapter.every == 0:
            adapter.update(model, xb, yb)
        model.nfe = train_nfe  # adaptation's test solves are not training cost
        opt.step()
        losses.append(loss.item())
        if it % log_every == 0 or it == iterations:
            hist.iteration.append(it)
            hist.loss.append(float(np.mean(losses)))
            hist.solver.append(model.solver)
            hist.nfe.append((model.nfe - nfe0) / len(losses))
            nfe0, losses = model.nfe, []
    return hist


