"""The record of a classifier's training, one entry per epoch (chapters 3, 4 and 6)."""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["TrainHistory"]


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
    """

    train_loss: list = field(default_factory=list)
    test_accuracy: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
