"""Training, accuracy, memory and gradient checks for :class:`CifarResNet` (chapter 6).

``method`` is how the residual stage is differentiated: ``"backprop"`` (keep
every activation) or ``"adjoint"`` (the memory-free discrete adjoint; stem and
head always use backprop).
"""
from __future__ import annotations

import copy
import math
import time

import torch
from torch import nn

from ..cifar_resnet import CifarResNet, recalibrate_batchnorm
from ..datasets.cifar import Cifar10, prepare
from ..memory import CudaPeak
from ..progress import progress
from .finetune_result import Agreement
from .gradient_methods import relative_error, saved_bytes
from .history import SelfCheckLog, TrainHistory

__all__ = ["METHODS", "TrainHistory", "train", "accuracy", "recalibrate_batchnorm",
           "stage_saved_bytes",
           "cuda_step_peak_mib", "gradient_agreement"]

METHODS = ("backprop", "adjoint")


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown gradient method {method!r}: choose one of {METHODS}")


@torch.no_grad()
def accuracy(model: nn.Module, data: Cifar10, batch: int = 1000,
             device: str | torch.device = "cpu") -> float:
    """Share of ``data`` classified correctly, in eval mode (BatchNorm running statistics).

    Parameters
    ----------
    model : torch.nn.Module
    data : Cifar10
    batch : int
        Images per forward pass.
    device : str or torch.device
        Where ``model`` lives.
    """
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(data), batch):
        x = prepare(data.images[i:i + batch].to(device))
        correct += (model(x).argmax(1).cpu() == data.labels[i:i + batch]).sum().item()
    model.train(was_training)
    return correct / len(data)


def train(model: CifarResNet, train_data: Cifar10, test_data: Cifar10, epochs: int,
          lr: float, method: str = "backprop", milestones=(), batch: int = 128,
          weight_decay: float = 5e-4, seed: int = 0, device: str | torch.device = "cpu",
          desc: str = "train", evaluate=None) -> TrainHistory:
    """SGD (momentum 0.9) on cross-entropy with crops and flips; test accuracy each epoch.

    The batch order and the augmentation depend on ``seed`` only, so two runs
    from the same weights with the same seed see exactly the same images: they
    differ only by how the stage's gradient is computed.

    Parameters
    ----------
    model : CifarResNet
        Trained in place (on ``device``).
    train_data : Cifar10
    test_data : Cifar10
    epochs : int
    lr : float
        Learning rate, divided by 10 at every epoch in ``milestones``.
    method : {"backprop", "adjoint"}
        Sets ``model.stage.adjoint``.
    milestones : sequence of int
        Epochs at which the learning rate is divided by 10.
    batch : int
        Training batch.
    weight_decay : float
    seed : int
        Seeds the batch order and the augmentation.
    device : str or torch.device
    desc : str
        Label of the progress bar.
    evaluate : callable, optional
        ``evaluate(model) -> float``, the test accuracy recorded after each epoch;
        default :func:`accuracy` on ``test_data``.

    Returns
    -------
    TrainHistory
    """
    _check_method(method)
    model.to(device).train()
    adjoint_before, model.stage.adjoint = model.stage.adjoint, method == "adjoint"
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(milestones), gamma=0.1)
    gen = torch.Generator().manual_seed(seed)
    images = train_data.images.to(device)
    labels = train_data.labels.to(device)
    hist = TrainHistory()
    checks = SelfCheckLog(model)
    for _ in progress(range(epochs), desc):
        t0 = time.perf_counter()
        order = torch.randperm(len(labels), generator=gen)
        total = 0.0
        for i in range(0, len(order), batch):
            idx = order[i:i + batch].to(device)
            x = prepare(images[idx], gen)
            loss = nn.functional.cross_entropy(model(x), labels[idx])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: the loss became {loss.item()}: "
                                         "lower the learning rate")
            opt.zero_grad(set_to_none=True)
            with checks.backward():
                loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        checks.end_epoch(hist)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)
        hist.seconds.append(time.perf_counter() - t0)
        hist.train_loss.append(total / len(order))
        hist.test_accuracy.append(accuracy(model, test_data, device=device) if evaluate is None
                                  else evaluate(model))
    model.stage.adjoint = adjoint_before
    return hist


def stage_saved_bytes(model: CifarResNet, x: torch.Tensor, method: str) -> int:
    """Bytes the residual stage keeps for backward in one forward pass (train mode).

    Parameters
    ----------
    model : CifarResNet
    x : torch.Tensor, shape (B, 3, 32, 32)
        Normalised images.
    method : {"backprop", "adjoint"}

    Returns
    -------
    int
        Distinct storages saved by autograd inside the stage, parameters excluded.
    """
    _check_method(method)
    model = copy.deepcopy(model).train()  # leaves the caller's BatchNorm statistics alone
    return saved_bytes(model.stage, model.stem(x), method)


def cuda_step_peak_mib(model: CifarResNet, x: torch.Tensor, y: torch.Tensor,
                       method: str) -> float:
    """Peak CUDA memory (MiB) above the baseline during one training step's forward and
    backward (whole network).

    Parameters
    ----------
    model : CifarResNet
        On a CUDA device.
    x : torch.Tensor, shape (B, 3, H, W)
        Inputs, on the same device.
    y : torch.Tensor, shape (B,)
        Labels, on the same device.
    method : {"backprop", "adjoint"}
    """
    _check_method(method)
    model = copy.deepcopy(model).train()
    model.stage.adjoint = method == "adjoint"
    with CudaPeak(x.device) as peak:
        nn.functional.cross_entropy(model(x), y).backward()
    return peak.mib


def gradient_agreement(model: CifarResNet, x: torch.Tensor, y: torch.Tensor) -> dict:
    """How close the adjoint's gradients are to backprop's, one batch, train mode.

    Per weight tensor of the stage, Sander et al. (2022)'s relative squared error
    ``mean((g_bp - g_adj)^2) / mean(g_bp^2)``; and the relative error
    ``||g_bp - g_adj|| / ||g_bp||`` of the whole gradient (all parameters,
    stem and head included).

    Parameters
    ----------
    model : CifarResNet
    x : torch.Tensor, shape (B, 3, 32, 32)
    y : torch.Tensor, shape (B,), int64

    Returns
    -------
    Agreement
        Per tensor, median, max and whole-gradient errors.
    """
    grads = {}
    for method in METHODS:
        m = copy.deepcopy(model).train()
        m.stage.adjoint = method == "adjoint"
        m.zero_grad(set_to_none=True)
        # the adjoint's error is measured against backprop here: its self-check's
        # warning would only repeat it
        m.stage.reconstruction_tol = math.inf
        nn.functional.cross_entropy(m(x), y).backward()
        grads[method] = {name: p.grad.detach().double().clone()
                         for name, p in m.named_parameters() if p.grad is not None}
    bp, adj = grads["backprop"], grads["adjoint"]
    if bp.keys() != adj.keys():
        raise RuntimeError("backprop and the adjoint reached different parameters")
    per_tensor = [float((bp[k] - adj[k]).square().mean() / bp[k].square().mean())
                  for k in bp if k.startswith("stage.") and bp[k].square().mean() > 0]
    per = torch.tensor(per_tensor)
    return Agreement(per_tensor, float(per.median()), float(per.max()),
                     relative_error(list(bp.values()), list(adj.values())))
