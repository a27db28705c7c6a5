"""Train a Neural ODE classifier through its solver, optionally adapting the solver.

:func:`train_node` is the reference loop for the adapters of
:mod:`resode_tut.adaptation`: Adam on cross-entropy, gradients by backpropagation
through the solver, and every ``adapter.every`` iterations an ``adapter.update`` on
the current batch before the optimizer step.  Use it as it is, or copy its ten
lines into a loop of your own.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .node import NeuralODE
from .progress import progress as progress_bar

__all__ = ["NodeHistory", "train_node"]


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
               progress: bool = False) -> NodeHistory:
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
        Seeds the batches, which are drawn with replacement.
    adapter : StepSizeAdapter or ToleranceAdapter, optional
        Called every ``adapter.every`` iterations, before the optimizer step,
        on the current batch; its ``observe(nfe)``, if it has one, after every
        iteration's forward pass.
    log_every : int
        Iterations between entries of the history.
    progress : bool
        Show a progress bar.

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
        nfe_before = model.field.nfe
        loss = nn.functional.cross_entropy(model(xb), yb)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the training loss became {loss.item()} at iteration "
                                     f"{it} with solver {model.solver}: lower lr")
        forward_nfe = model.field.nfe
        opt.zero_grad()
        loss.backward()
        train_nfe = model.field.nfe
        if adapter is not None and hasattr(adapter, "observe"):
            adapter.observe(forward_nfe - nfe_before)
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


