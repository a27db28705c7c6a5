"""How close the adjoint's gradients are to backprop's: one record (chapters 6 and 7).

Its own module so that the CIFAR training code (:mod:`.cifar_training`), on which shipped
results are keyed, does not import chapter 6's result format (:mod:`.finetune_result`).
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Agreement"]


@dataclass
class Agreement:
    """Adjoint gradients against backprop's for one network, on one batch.

    Attributes
    ----------
    per_tensor : list of float
        Relative squared error ``mean((g_bp - g_adj)^2) / mean(g_bp^2)`` of each stage
        weight tensor.
    median, max : float
        Over ``per_tensor``.
    total : float
        Relative error of the whole stage gradient, ``||g_bp - g_adj|| / ||g_bp||``.
    """

    per_tensor: list
    median: float
    max: float
    total: float
