"""The record of a classifier's training, one entry per epoch (chapters 3, 4 and 6)."""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

from torch import nn

from ..adjoint import ReconstructionWarning
from ..stack import ResidualStack

__all__ = ["TrainHistory", "SelfCheckLog"]


@dataclass
class TrainHistory:
    """Per epoch: mean training loss, test accuracy and wall time.

    Attributes
    ----------
    train_loss : list of float
        Mean cross-entropy over the epoch's batches.
    test_accuracy : list of float
        Share of test inputs classified correctly, in [0, 1].
    seconds : list of float
        Wall time of the epoch's training (evaluation excluded).
    reconstruction_error : list of float
        With an adjoint stage: the largest self-check
        (``ResidualStack.last_reconstruction_error``) over the epoch's batches;
        empty otherwise.
    notes : list of float
        What the ``evaluate`` callback of the training recorded beside the
        accuracy (chapter 6: the adjoint's gradient agreement), per epoch.
    """

    train_loss: list = field(default_factory=list)
    test_accuracy: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    reconstruction_error: list = field(default_factory=list)
    notes: list = field(default_factory=list)


class SelfCheckLog:
    """Collects the adjoint's self-check of every adjoint stage of a model during
    training, instead of warning once per stage.

    Parameters
    ----------
    model : torch.nn.Module
        Its :class:`~resode_tut.ResidualStack` submodules (found once, here) are
        watched while their ``adjoint`` flag is on.
    """

    def __init__(self, model: nn.Module):
        self.stacks = [m for m in model.modules() if isinstance(m, ResidualStack)]
        self.values = []

    @contextmanager
    def backward(self):
        """Wrap ``loss.backward()``: silences the warning and records the errors."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ReconstructionWarning)
            yield
        self.values.extend(m.last_reconstruction_error for m in self.stacks if m.adjoint)

    def end_epoch(self, hist: TrainHistory) -> None:
        """Append the epoch's largest error to ``hist.reconstruction_error`` (if any)."""
        if self.values:
            hist.reconstruction_error.append(max(self.values))
        self.values = []
