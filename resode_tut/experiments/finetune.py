"""Chapter 6's computation: one run of the fine-tuning experiment, and what keys it.

:func:`run` does the whole experiment for a :class:`FinetuneConfig` (pre-train a tied
network, untie it, fine-tune the deep stage alone with backprop, with the adjoint and with
weight decay alone, measure memory and gradients against depth).  Its result's key is made of the
configuration, the device type, the data copy, the scale options and the code of this
module and what it imports (:func:`code_version`); storing, loading, printing and
plotting live in :mod:`resode_tut.experiments.ch06`, so editing those does not make a
shipped result stale.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .. import distributed
from ..cifar_resnet import CifarResNet, untie
from ..datasets.cifar import cifar10, data_identity, prepare
from ..runtime import seed_everything
from . import cache
from .cifar_training import (
    METHODS,
    accuracy,
    cuda_step_peak_mib,
    gradient_agreement,
    recalibrate_batchnorm,
    stage_saved_bytes,
    train,
)
from .cli import check_device
from .finetune_result import (
    FinetuneResult,
    FineTuning,
    Gradients,
    Memory,
    Pretraining,
)

__all__ = ["FinetuneConfig", "CONFIGS", "CONTROL", "DEFAULT_SCALE", "scale_options", "cache_key",
           "code_version", "get_config", "run"]


@dataclass(frozen=True)
class FinetuneConfig:
    """One scale of the chapter 6 experiment.

    Attributes
    ----------
    name : str
    train_images, test_images : int
        Images used from each split (0: the whole split).
    channels : int
        Width ``C`` of the stage.
    pretrain_depth, pretrain_epochs, pretrain_lr, pretrain_milestones
        The tied network: its depth and its SGD schedule (lr / 10 at the milestones).
    depth : int
        ``N``, the depth of the untied stage that is fine-tuned.
    epochs, lr, milestones
        The fine-tuning schedule (the paper: 50 epochs, lr 1e-3, / 10 at epoch 40).
    batch : int
    eval_depths : tuple of int
        Depths at which the tied network is evaluated with its trained weights.
    memory_depths, memory_batch
        Depths and batch size of the memory measurement.
    gradient_depths, gradient_batch
        Depths and batch size of the gradient comparison.
    seed : int
    """

    name: str
    train_images: int
    test_images: int
    channels: int = 16
    pretrain_depth: int = 8
    pretrain_epochs: int = 10
    pretrain_lr: float = 0.1
    pretrain_milestones: tuple = ()
    depth: int = 32
    epochs: int = 4
    lr: float = 0.01
    milestones: tuple = ()
    batch: int = 128
    eval_depths: tuple = (2, 4, 8, 16, 32, 64)
    memory_depths: tuple = (8, 16, 32, 64)
    memory_batch: int = 128
    gradient_depths: tuple = (4, 8, 16, 32, 64)
    gradient_batch: int = 64
    seed: int = 0


CONFIGS = {
    # CI: a few thousand images, a few epochs, a couple of minutes on 2 CPU cores
    "quick": FinetuneConfig("quick", train_images=4000, test_images=2000, pretrain_epochs=8,
                            pretrain_milestones=(6,), epochs=3, lr=0.01),
    # a CPU-sized run (minutes on 2 cores)
    "cpu-full": FinetuneConfig("cpu-full", train_images=20000, test_images=10000,
                               pretrain_epochs=15, pretrain_milestones=(10, 13), epochs=6,
                               lr=0.01, milestones=(5,), memory_depths=(8, 16, 32, 64, 128),
                               gradient_depths=(4, 8, 16, 32, 64, 128)),
    # the whole training set and the paper's fine-tuning schedule (a GPU)
    "gpu-full": FinetuneConfig("gpu-full", train_images=0, test_images=0, pretrain_epochs=60,
                               pretrain_milestones=(30, 45), epochs=50, lr=1e-3,
                               milestones=(40,), memory_depths=(8, 16, 32, 64, 128, 256),
                               gradient_depths=(4, 8, 16, 32, 64, 128, 256)),
    # seconds: checks that a setup runs end to end (torchrun, --amp, --resume), not results
    "smoke": FinetuneConfig("smoke", train_images=512, test_images=256, channels=8,
                            pretrain_depth=2, pretrain_epochs=2, depth=4, epochs=2, batch=64,
                            eval_depths=(2, 4), memory_depths=(2, 4), memory_batch=32,
                            gradient_depths=(2, 4), gradient_batch=16),
}

def code_version() -> str:
    """:func:`resode_tut.experiments.cache.code_key` of this module: its code and that of
    every module it imports, comments, docstrings and layout left out.
    """
    return cache.code_key("resode_tut.experiments.finetune")


DEFAULT_SCALE = {"processes": 1, "amp": "off", "sync_batchnorm": False}


def scale_options(amp: str | None = None, sync_batchnorm: bool = False) -> dict:
    """How this run is spread and rounded: processes (torchrun's world size), mixed
    precision and SyncBatchNorm. Part of the cache key and the checkpoints' fingerprint.

    Parameters
    ----------
    amp : {None, "bf16", "fp16"}
        Mixed precision (None: float32).
    sync_batchnorm : bool
        BatchNorm statistics over the global batch under torchrun.
    """
    return {"processes": distributed.current().world_size, "amp": amp or "off",
            "sync_batchnorm": bool(sync_batchnorm)}


def cache_key(config: FinetuneConfig, device: str | torch.device, data_id: str,
              scale: dict | None = None) -> str:
    """Key of a result: configuration, device type, code version, data copy and, when
    not one process in float32, the scale options (the torch version is recorded in the
    result, not keyed, so a GPU result made elsewhere can be shown).

    Parameters
    ----------
    config : FinetuneConfig
    device : str or torch.device
        Only its type (``cpu``, ``cuda``) counts.
    data_id : str
        The CIFAR-10 copy (:func:`resode_tut.datasets.cifar.data_identity`): a result
        from the JPEG mirror is never served for the official archive, nor the reverse.
    scale : dict, optional
        :func:`scale_options` (default: one process, float32, plain BatchNorm).
    """
    key = {"config": asdict(config), "device": torch.device(device).type,
           "code": code_version(), "data": data_id}
    if scale is not None and scale != DEFAULT_SCALE:
        key["scale"] = scale
    text = json.dumps(key, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def get_config(config: FinetuneConfig | str) -> FinetuneConfig:
    """``config`` itself, or the configuration of that name in :data:`CONFIGS`.

    Parameters
    ----------
    config : FinetuneConfig or str
    """
    if isinstance(config, FinetuneConfig):
        return config
    if config not in CONFIGS:
        raise ValueError(f"unknown configuration {config!r}: choose one of {sorted(CONFIGS)} "
                         "or pass a FinetuneConfig")
    return CONFIGS[config]


def _split(root, train: bool, n: int, seed: int, download: bool):
    data = cifar10(root, train=train, download=download)
    return data if n in (0, len(data)) else data.subset(n, seed)


def _stage_vector(model: CifarResNet) -> torch.Tensor:
    """All of the stage's parameters as one float64 vector on the CPU."""
    return torch.cat([p.detach().double().cpu().flatten() for p in model.stage.parameters()])


def _depth_copy(model: CifarResNet, depth: int, device, train_data=None) -> CifarResNet:
    """``untie(model, depth)`` on ``device``; with ``train_data``, each layer's BatchNorm
    statistics re-estimated for its own step (see :func:`recalibrate_batchnorm`).
    """
    copy_ = untie(model, depth).to(device)
    if train_data is not None:
        recalibrate_batchnorm(copy_, train_data, device=device)
    return copy_


def run(config: FinetuneConfig | str, device: str | torch.device = "cpu",
        data_root=None, download: bool = False, amp: str | None = None,
        sync_batchnorm: bool = False, checkpoint_dir=None,
        resume: bool = False) -> FinetuneResult:
    """Run the whole experiment once (see the module docstring).

    Parameters
    ----------
    config : FinetuneConfig or one of ``CONFIGS``' names
    device : str or torch.device
    data_root : path, optional
        Folder holding ``cifar-10-batches-py`` (default
        :func:`resode_tut.datasets.cifar.default_root`).
    download : bool
        Download the official archive if the data are missing.
    amp : {None, "bf16", "fp16"}
        Mixed precision for every training (see :func:`cifar_training.train`).
    sync_batchnorm : bool
        Under torchrun: BatchNorm statistics over the global batch (CUDA).
    checkpoint_dir : path, optional
        A checkpoint per training phase (``pretrain.pt``, ``finetune-<method>.pt``),
        written after every epoch.
    resume : bool
        Continue each phase from its checkpoint: a killed run ends as an
        uninterrupted one would, having lost at most the epoch it was in.

    Under torchrun every process runs this (the trainings are data-parallel; the
    measurements are repeated by each process and agree).

    Returns
    -------
    FinetuneResult
        The tied network's training and its accuracy at ``eval_depths``, both
        fine-tunings, the stage's memory and the gradient agreement against depth.
    """
    config = get_config(config)
    device = check_device(device)
    t_start, load_start = time.perf_counter(), _load_average()
    seed_everything(config.seed)
    train_data = _split(data_root, True, config.train_images, config.seed, download)
    test_data = _split(data_root, False, config.test_images, config.seed, download)
    data_id = data_identity(data_root)
    scale = scale_options(amp, sync_batchnorm)
    key = cache_key(config, device, data_id, scale)

    def fit(phase):
        return dict(device=device, batch=config.batch, amp=amp, sync_batchnorm=sync_batchnorm,
                    resume=resume, fingerprint=f"{key}/{phase}",
                    checkpoint=None if checkpoint_dir is None
                    else Path(checkpoint_dir) / f"{phase}.pt")

    # 1. the tied network, and the same weights at other depths
    tied, pretraining = _pretrain(config, train_data, test_data, device, fit)
    # the batch on which the adjoint's gradients are compared with backprop's
    pick, x_g, y_g = _gradient_batch(config, test_data, device)

    def adjoint_epoch_end(model):   # after each adjoint fine-tuning epoch: both numbers
        return accuracy(model, test_data, device=device), \
            gradient_agreement(model, x_g, y_g).median

    # 2. untie, fine-tune the stage from the same start with the same seed, once per
    #    method, and once on weight decay alone (its gradient zeroed: what an adjoint that
    #    returned zeros would do)
    start = _depth_copy(tied, config.depth, device, train_data)
    curves, finetuned, during = _finetune(start, config, train_data, test_data, device, fit,
                                          adjoint_epoch_end)
    stage_gap = float((_stage_vector(finetuned["adjoint"])
                       - _stage_vector(finetuned["backprop"])).norm())

    # 3. memory kept by the stage, against depth
    mem = _memory(tied, config, test_data, pick, device)

    # 4. gradient agreement against depth
    grads = Gradients(list(config.gradient_depths), config.gradient_batch,
                      [gradient_agreement(_depth_copy(tied, d, device), x_g, y_g)
                       for d in config.gradient_depths],
                      {m: gradient_agreement(finetuned[m], x_g, y_g) for m in METHODS},
                      during)

    return FinetuneResult(
        config=config, key=key, code=code_version(), device=_device_name(device),
        torch=torch.__version__, data_source=train_data.source, data_id=data_id,
        train_images=len(train_data), test_images=len(test_data), pretrain=pretraining,
        depth=config.depth, finetune=curves, stage_gap=stage_gap, memory=mem,
        gradients=grads,
        seconds=time.perf_counter() - t_start, load_average=[load_start, _load_average()],
        scale=scale)


def _pretrain(config, train_data, test_data, device, fit):
    """Train the tied network: ``(tied, Pretraining)``, its test accuracy at the
    training depth, with its shared BatchNorm statistics and at ``config.eval_depths``.
    """
    tied = CifarResNet(config.pretrain_depth, config.channels, tied=True, seed=config.seed)
    # (the shared BatchNorm's running statistics fit no single step: evaluate an untied
    # copy with per-step statistics)
    def tied_accuracy(model, depth=config.pretrain_depth):
        return accuracy(_depth_copy(model, depth, device, train_data), test_data, device=device)

    pre = train(tied, train_data, test_data, config.pretrain_epochs, config.pretrain_lr,
                milestones=config.pretrain_milestones, seed=config.seed,
                desc=f"pre-train tied N={config.pretrain_depth}", evaluate=tied_accuracy,
                **fit("pretrain"))
    shared_stats = accuracy(tied, test_data, device=device)
    at_depth = {d: tied_accuracy(tied, d) for d in config.eval_depths}
    return tied, Pretraining(config.pretrain_depth, pre.test_accuracy, pre.train_loss,
                             pre.seconds, at_depth, shared_stats)


def _gradient_batch(config, test_data, device):
    """``(pick, x, y)``: a seeded permutation of the test set and its first
    ``config.gradient_batch`` images and labels, prepared, on ``device``.
    """
    gen = torch.Generator().manual_seed(config.seed)
    pick = torch.randperm(len(test_data), generator=gen)
    grad_idx = pick[:config.gradient_batch]
    return pick, prepare(test_data.images[grad_idx]).to(device), \
        test_data.labels[grad_idx].to(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


CONTROL = "decay"
"""The control fine-tuning: the stage trained on weight decay alone, its gradient zeroed
(what a broken adjoint returning zeros would do)."""


def _train_stage_only(model: CifarResNet, zero_gradient: bool) -> list:
    """Make the stage the only trainable part of ``model`` (the official fine-tuning
    optimises ``layer3`` alone); with ``zero_gradient``, its gradients are replaced by
    zeros (weight decay then moves it alone). Returns the gradient hooks, to remove.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    hooks = []
    for p in model.stage.parameters():
        p.requires_grad_(True)
        if zero_gradient:
            hooks.append(p.register_hook(torch.zeros_like))
    return hooks


def _finetune(start, config, train_data, test_data, device, fit, adjoint_epoch_end):
    """Fine-tune copies of ``start``, the stage alone, once per method and once on weight
    decay alone (:data:`CONTROL`), from the same weights with the same seed: the curves,
    the fine-tuned models (per method, every parameter trainable again) and the notes of
    the adjoint run's epochs.
    """
    start_acc = accuracy(start, test_data, device=device)
    curves, models, during = {}, {}, []
    for method in (*METHODS, CONTROL):
        model = copy.deepcopy(start)
        hooks = _train_stage_only(model, zero_gradient=method == CONTROL)
        hist = train(model, train_data, test_data, config.epochs, config.lr,
                     method="backprop" if method == CONTROL else method,
                     milestones=config.milestones, seed=config.seed + 1,
                     desc=f"fine-tune N={config.depth} ({method})",
                     evaluate=adjoint_epoch_end if method == "adjoint" else None,
                     **fit(f"finetune-{method}"))
        for h in hooks:
            h.remove()
        model.requires_grad_(True)
        models[method] = model
        curves[method] = (hist, _stage_vector(model))
        if method == "adjoint":
            during = hist.notes
    moved = {m: float((v - _stage_vector(start)).norm()) for m, (_, v) in curves.items()}
    # how far each run ended from where weight decay alone took the stage: its gradient's doing
    by_gradient = {m: float((v - curves[CONTROL][1]).norm()) for m, (_, v) in curves.items()}
    curves = {m: FineTuning([start_acc] + h.test_accuracy, h.train_loss, h.seconds, moved[m],
                            by_gradient[m])
              for m, (h, _) in curves.items()}
    return curves, {m: models[m] for m in METHODS}, during


def _memory(tied, config, test_data, pick, device) -> Memory:
    """Bytes the stage keeps for backward (and, on CUDA, the step's peak) against depth."""
    mem_idx = pick[:config.memory_batch]
    x_mem = prepare(test_data.images[mem_idx]).to(device)
    y_mem = test_data.labels[mem_idx].to(device)
    mem = Memory(list(config.memory_depths), config.memory_batch,
                 {m: [] for m in METHODS}, {m: [] for m in METHODS})
    for d in config.memory_depths:
        model = _depth_copy(tied, d, device)
        for m in METHODS:
            mem.saved_bytes[m].append(stage_saved_bytes(model, x_mem, m))
            if device.type == "cuda":
                mem.cuda_peak_mib[m].append(cuda_step_peak_mib(model, x_mem, y_mem, m))
    return mem


def _load_average() -> float:
    """The 1-minute load average (NaN where the OS has none): wall times are read with it."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return float("nan")
