"""BatchNorm running statistics re-estimated from training images.

After :func:`resode_tut.untie`, each copy of a tied stage's BatchNorm needs the
statistics of its own step: :func:`recalibrate_batchnorm` re-estimates them.  (A module
of its own so that the model module does not import a data set.)
"""
from __future__ import annotations

import torch
from torch import nn

from .datasets.cifar import Cifar10, prepare

__all__ = ["recalibrate_batchnorm"]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, data: Cifar10, batches: int = 10,
                          batch: int = 256, seed: int = 0,
                          device: str | torch.device = "cpu") -> nn.Module:
    """Re-estimate every BatchNorm's running statistics from training images.

    A BatchNorm shared by all the steps of a tied stage sees a different input
    distribution at every step, and its running averages fit none of them;
    after :func:`untie` each copy needs the statistics
    of its own step.  This resets them and averages the batch statistics of
    ``batches`` forward passes (train mode, no gradient, no augmentation, no
    parameter change).

    Parameters
    ----------
    model : torch.nn.Module
        Changed in place (buffers only) and returned.
    data : resode_tut.datasets.Cifar10
        Training images.
    batches : int
        Forward passes averaged.
    batch : int
        Images per pass.
    seed : int
        Seeds the choice of images.
    device : str or torch.device
        Where ``model`` lives.

    Returns
    -------
    torch.nn.Module
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the passes below
    was_training = model.training
    model.train()
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    for i in range(0, min(batches * batch, len(data)), batch):
        model(prepare(data.images[idx[i:i + batch]].to(device)))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)
    return model
