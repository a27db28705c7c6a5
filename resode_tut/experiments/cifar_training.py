"""Training, accuracy, memory and gradient checks for :class:`CifarResNet` (chapter 6).

``method`` is how the residual stage is differentiated: ``"backprop"`` (keep
every activation) or ``"adjoint"`` (the memory-free discrete adjoint; stem and
head always use backprop).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from pathlib import Path

import torch
from torch import nn

from .. import checkpoint as ckpt
from .. import distributed
from ..batchnorm import recalibrate_batchnorm
from ..cifar_resnet import CifarResNet
from ..datasets.cifar import Cifar10, prepare
from ..memory import CudaPeak
from ..progress import progress
from .agreement import Agreement
from .gradient_methods import relative_error, saved_bytes
from .history import SelfCheckLog, TrainHistory

__all__ = ["METHODS", "AMP_DTYPES", "TrainHistory", "train", "accuracy", "recalibrate_batchnorm",
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

    Under torchrun every process must call it (each classifies its part).

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
    dist = distributed.current()
    # under torchrun each process classifies its part of the data; the counts are summed
    part = distributed.shard(len(data), dist) if dist.enabled else slice(0, len(data))
    correct = 0
    for i in range(part.start, part.stop, batch):
        j = min(i + batch, part.stop)
        x = prepare(data.images[i:j].to(device))
        correct += (model(x).argmax(1).cpu() == data.labels[i:j]).sum().item()
    model.train(was_training)
    return distributed.all_reduce_sum([correct], device)[0] / len(data)


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _random_states(device) -> dict:
    states = {"cpu": torch.get_rng_state()}
    if torch.device(device).type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device).cpu()
    return states


def _set_random_states(states: dict, device) -> None:
    torch.set_rng_state(states["cpu"])
    if "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


def train(model: CifarResNet, train_data: Cifar10, test_data: Cifar10, epochs: int,
          lr: float, method: str = "backprop", milestones=(), batch: int = 128,
          weight_decay: float = 5e-4, seed: int = 0, device: str | torch.device = "cpu",
          desc: str = "train", evaluate=None, amp: str | None = None,
          sync_batchnorm: bool = False, checkpoint=None, fingerprint: str = "",
          resume: bool = False) -> TrainHistory:
    """SGD (momentum 0.9) on cross-entropy with crops and flips; test accuracy each epoch.

    The batch order and the augmentation depend on ``seed`` only, so two runs
    from the same weights with the same seed see exactly the same images: they
    differ only by how the stage's gradient is computed.

    Under ``torchrun`` (a process group, see :mod:`resode_tut.distributed`) the
    model runs in DistributedDataParallel and ``batch`` is the *global* batch:
    every process draws the same order and augmentation and trains on its slice,
    so the run sees the images a single process sees (a last global batch smaller
    than the number of processes is dropped); losses and accuracies are summed
    over the processes; only rank 0 writes the checkpoint.

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
        Training batch (global, over all processes).
    weight_decay : float
    seed : int
        Seeds the batch order and the augmentation.
    device : str or torch.device
    desc : str
        Label of the progress bar.
    evaluate : callable, optional
        ``evaluate(model)``, called after each epoch: the test accuracy, or a pair
        (accuracy, a number recorded in ``TrainHistory.notes``); default
        :func:`accuracy` on ``test_data``.
    amp : {None, "bf16", "fp16"}
        Mixed precision: forward and loss under :func:`torch.autocast` with this
        dtype (the adjoint's backward re-enters it); ``"fp16"`` adds a
        :class:`torch.amp.GradScaler`.
    sync_batchnorm : bool
        Under torchrun, BatchNorm statistics over the global batch (CUDA only).
    checkpoint : str or Path, optional
        Written atomically after every epoch (model, optimiser, scheduler, scaler,
        random states, history) with ``fingerprint``.
    fingerprint : str
        Names the configuration and code: a checkpoint with another is refused.
    resume : bool
        Continue from ``checkpoint`` if it exists: the run then ends bit for bit
        as an uninterrupted one (a finished checkpoint returns at once).

    Returns
    -------
    TrainHistory
    """
    _check_method(method)
    if amp is not None and amp not in AMP_DTYPES:
        raise ValueError(f"unknown mixed precision {amp!r}: choose one of "
                         f"{sorted(AMP_DTYPES)} or None")
    dist = distributed.current()
    device = torch.device(device)
    model.to(device).train()
    adjoint_before, model.stage.adjoint = model.stage.adjoint, method == "adjoint"
    net = distributed.wrap(model, device, sync_batchnorm)
    parts = _optimiser(model, lr, milestones, weight_decay, amp, device)
    opt, sched, scaler = parts["optimizer"], parts["scheduler"], parts["scaler"]
    gen = torch.Generator().manual_seed(seed)
    hist, first = TrainHistory(), 0
    if resume and checkpoint is not None and Path(checkpoint).exists():
        hist, first = _resume(checkpoint, fingerprint, parts, gen, device)
    images = train_data.images.to(device)
    labels = train_data.labels.to(device)
    checks = SelfCheckLog(model)
    autocast = torch.autocast(device.type, dtype=AMP_DTYPES.get(amp), enabled=amp is not None)
    for epoch in progress(range(first, epochs), desc, enabled=dist.is_main, initial=first,
                          total=epochs):
        t0 = time.perf_counter()
        order = torch.randperm(len(labels), generator=gen)
        total = _train_epoch(net, images, labels, order, batch, gen, dist, autocast, opt,
                             scaler, checks, desc)
        sched.step()
        checks.end_epoch(hist)
        _record_epoch(hist, model, test_data, evaluate, device, t0, total, len(order))
        if checkpoint is not None and dist.is_main:
            _save(checkpoint, fingerprint, epoch + 1, parts, gen, device, hist)
    model.stage.adjoint = adjoint_before
    return hist


def _optimiser(model, lr, milestones, weight_decay, amp, device) -> dict:
    """The training's stateful parts, as :func:`_save` and :func:`_resume` name them:
    the model, SGD with momentum 0.9 (and ``weight_decay``), the step schedule (/10 at
    each of ``milestones``) and the fp16 gradient scaler (disabled unless ``amp="fp16"``).
    """
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(milestones), gamma=0.1)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    return dict(model=model, optimizer=opt, scheduler=sched, scaler=scaler)


def _record_epoch(hist, model, test_data, evaluate, device, t0, total, images) -> None:
    """Append an epoch's seconds (since ``t0``; CUDA synchronised), its training loss
    per image (``total``, this process's summed loss, summed over the processes and
    divided by the epoch's ``images``) and its test accuracy (and note) to ``hist``.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    hist.seconds.append(time.perf_counter() - t0)
    hist.train_loss.append(distributed.all_reduce_sum([total], device)[0] / images)
    result = (accuracy(model, test_data, device=device) if evaluate is None
              else evaluate(model))
    if isinstance(result, tuple):
        result, note = result
        hist.notes.append(float(note))
    hist.test_accuracy.append(float(result))


def _resume(checkpoint, fingerprint, parts, gen, device):
    """Restore ``parts`` (model, optimizer, scheduler, scaler: their
    ``load_state_dict``), the batch generator and the random states from ``checkpoint``:
    ``(history, first epoch)``.
    """
    # on the CPU: random states must stay CPU tensors; load_state_dict moves the rest
    state = ckpt.load(checkpoint, fingerprint, map_location="cpu")
    for name, part in parts.items():
        part.load_state_dict(state[name])
    gen.set_state(state["generator"])
    _set_random_states(state["random"], device)
    return TrainHistory(**state["history"]), state["epoch"]


def _save(checkpoint, fingerprint, epoch, parts, gen, device, hist) -> None:
    """Write what :func:`_resume` restores, after ``epoch`` epochs."""
    ckpt.save(checkpoint, {"epoch": epoch, **{n: p.state_dict() for n, p in parts.items()},
                           "generator": gen.get_state(), "random": _random_states(device),
                           "history": dataclasses.asdict(hist)}, fingerprint)


def _train_epoch(net, images, labels, order, batch, gen, dist, autocast, opt, scaler,
                 checks, desc) -> float:
    """One epoch of SGD steps over ``order`` in global batches of ``batch``: this
    process's slice of each, its loss weighted by its share; the summed loss of this
    process's images.
    """
    total = 0.0
    for i in range(0, len(order), batch):
        idx = order[i:i + batch].to(images.device)
        if len(idx) < dist.world_size:
            break
        # every process augments the whole global batch (same generator state)
        x, y = prepare(images[idx], gen), labels[idx]
        part = distributed.shard(len(idx), dist) if dist.enabled else slice(None)
        x, y = x[part], y[part]
        with autocast:
            loss = nn.functional.cross_entropy(net(x), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: the loss became {loss.item()}: "
                                     "lower the learning rate")
        # DDP averages over processes: weight each by its share of the global batch
        share = distributed.shard_weight(len(y), len(idx), dist)
        opt.zero_grad(set_to_none=True)
        with checks.backward():
            scaler.scale(loss if share == 1 else loss * share).backward()
        scaler.step(opt)
        scaler.update()
        total += loss.item() * len(y)
    return total


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
