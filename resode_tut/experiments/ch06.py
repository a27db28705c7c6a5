"""Chapter 6: fine-tuning a very deep CIFAR ResNet with the memory-free adjoint.

Sander et al. (2022)'s recipe: train a network with *tied* weights (one
residual function at every step: a discretised autonomous ODE), untie it into a
deep stage of ``N`` independent functions, and fine-tune that stage with the
discrete adjoint, which keeps no activations for the residual layers.  One run
of :func:`run` does the whole experiment for a :class:`FinetuneConfig`:

1. pre-train the tied network (depth ``pretrain_depth``) and evaluate it, with
   the same weights, at other depths (is it an ODE?);
2. untie it into ``depth`` functions and fine-tune the copy twice from the same
   weights and seeds, once with backprop, once with the adjoint;
3. count the bytes the stage keeps for backward against depth (and the CUDA
   peak of a training step on a GPU);
4. compare the adjoint's gradients with backprop's against depth.

Results are plain JSON.  :func:`train_or_load` caches them under a key made of
the configuration, the device type and the source code of the modules that
compute them, so a stale result is never served as current.

Command line (the GPU-scale run; writes JSON, a figure and per-epoch checkpoints)::

    python -m resode_tut.experiments.ch06 --config gpu-full --device cuda --download
    torchrun --nproc_per_node=4 -m resode_tut.experiments.ch06 --config gpu-full --amp bf16

(see the book's "Scaling up" page for several nodes, ``--resume`` and elastic restarts).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import os
import platform
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .. import distributed
from ..cifar_resnet import CifarResNet, untie
from ..datasets.cifar import SHORT_NAMES, cifar10, data_identity, prepare
from ..runtime import seed_everything
from . import cache
from .cifar_training import (
    AMP_DTYPES,
    METHODS,
    accuracy,
    cuda_step_peak_mib,
    gradient_agreement,
    recalibrate_batchnorm,
    stage_saved_bytes,
    train,
)
from .cli import check_device, torch_device
from .finetune_result import (
    FinetuneResult,
    FineTuning,
    Gradients,
    MalformedResult,
    Memory,
    Pretraining,
)
from .plots import use_style

__all__ = ["use_style",
           "FinetuneConfig", "CONFIGS", "METHODS", "run", "train_or_load", "load", "cache_key",
           "code_version", "default_results_dir", "validate", "FinetuneResult",
           "MalformedResult", "stale_results", "plot_accuracy", "plot_memory",
           "plot_gradients", "plot", "summary", "main"]


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
    """SHA-256 (16 hex digits) of the source of every module this experiment imports,
    directly or not (:func:`resode_tut.experiments.cache.code_modules`).
    """
    return cache.code_version("resode_tut.experiments.ch06")


DEFAULT_SCALE = {"processes": 1, "amp": "off", "sync_batchnorm": False}


def scale_options(amp: str | None = None, sync_batchnorm: bool = False) -> dict:
    """How this run is spread and rounded: processes (torchrun's world size), mixed
    precision and SyncBatchNorm. Part of the cache key and the checkpoints' fingerprint.
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


def default_results_dir() -> Path:
    """``$RESODE_RESULTS``, else ``~/.cache/resode_tut/results``."""
    env = os.environ.get("RESODE_RESULTS", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "resode_tut" / "results"


def _config(config: FinetuneConfig | str) -> FinetuneConfig:
    if isinstance(config, FinetuneConfig):
        return config
    if config not in CONFIGS:
        raise ValueError(f"unknown configuration {config!r}: choose one of {sorted(CONFIGS)} "
                         "or pass a FinetuneConfig")
    return CONFIGS[config]


def _path(config: FinetuneConfig, device, out_dir: Path, data_id: str,
          scale: dict | None = None) -> Path:
    key = cache_key(config, device, data_id, scale)
    return Path(out_dir) / f"finetune-{config.name}-{key}.json"


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
    config = _config(config)
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

    # the batch on which the adjoint's gradients are compared with backprop's
    gen = torch.Generator().manual_seed(config.seed)
    pick = torch.randperm(len(test_data), generator=gen)
    grad_idx = pick[:config.gradient_batch]
    x_g = prepare(test_data.images[grad_idx]).to(device)
    y_g = test_data.labels[grad_idx].to(device)

    def adjoint_epoch_end(model):   # after each adjoint fine-tuning epoch: both numbers
        return accuracy(model, test_data, device=device), \
            gradient_agreement(model, x_g, y_g).median

    # 2. untie, fine-tune from the same start with the same seed, once per method, and
    #    once with the stage frozen (what a stage that learns nothing would give)
    start = _depth_copy(tied, config.depth, device, train_data)
    start_acc = accuracy(start, test_data, device=device)
    curves, finetuned = {}, {}
    for method in (*METHODS, "frozen"):
        model = copy.deepcopy(start)
        for p in model.stage.parameters():
            p.requires_grad_(method != "frozen")
        hist = train(model, train_data, test_data, config.epochs, config.lr,
                     method="backprop" if method == "frozen" else method,
                     milestones=config.milestones, seed=config.seed + 1,
                     desc=f"fine-tune N={config.depth} ({method})",
                     evaluate=adjoint_epoch_end if method == "adjoint" else None,
                     **fit(f"finetune-{method}"))
        travel = float((_stage_vector(model) - _stage_vector(start)).norm())
        curves[method] = FineTuning([start_acc] + hist.test_accuracy, hist.train_loss,
                                    hist.seconds, travel)
        if method in METHODS:
            finetuned[method] = model
        if method == "adjoint":
            during = hist.notes
    stage_gap = float((_stage_vector(finetuned["adjoint"])
                       - _stage_vector(finetuned["backprop"])).norm())

    # 3. memory kept by the stage, against depth
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

    # 4. gradient agreement against depth
    grads = Gradients(list(config.gradient_depths), config.gradient_batch,
                      [gradient_agreement(_depth_copy(tied, d, device), x_g, y_g)
                       for d in config.gradient_depths],
                      {m: gradient_agreement(finetuned[m], x_g, y_g) for m in METHODS},
                      during)

    return FinetuneResult(
        config=config, key=key, code=code_version(),
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        torch=torch.__version__, data_source=train_data.source, data_id=data_id,
        train_images=len(train_data), test_images=len(test_data),
        pretrain=Pretraining(config.pretrain_depth, pre.test_accuracy, pre.train_loss,
                             pre.seconds, at_depth, shared_stats),
        depth=config.depth, finetune=curves, stage_gap=stage_gap, memory=mem,
        gradients=grads,
        seconds=time.perf_counter() - t_start, load_average=[load_start, _load_average()],
        scale=scale)


def _load_average() -> float:
    """The 1-minute load average (NaN where the OS has none): wall times are read with it."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return float("nan")


def validate(result: FinetuneResult, config: FinetuneConfig | str) -> str | None:
    """What is wrong with a result of ``config``, or ``None`` if it is complete.

    A result is complete when it was computed for this configuration and carries one
    accuracy per epoch (plus the start) for both methods, one measurement per depth,
    and only finite numbers (see :meth:`FinetuneResult.problems`).

    Parameters
    ----------
    result : FinetuneResult
    config : FinetuneConfig or str
        A configuration or the name of one of :data:`CONFIGS`.
    """
    if result.config != _config(config):
        return "written for another configuration"
    return result.problems(METHODS)


def _read(path: Path, config: FinetuneConfig, device,
          data_id: str | None) -> FinetuneResult | None:
    """The result in ``path`` if it is current (for ``data_id``; for the data copy it
    names when ``data_id`` is None) and complete; ``None`` (with a warning for a
    damaged or incomplete file) otherwise.
    """
    if not path.is_file():
        return None
    try:
        result = FinetuneResult.from_json(path.read_text(), FinetuneConfig)
    except MalformedResult as err:
        warnings.warn(f"ignoring the damaged result file {path} ({err}): it is recomputed",
                      stacklevel=3)
        return None
    if result.key != cache_key(config, device, result.data_id if data_id is None else data_id,
                               result.scale):
        return None
    problem = validate(result, config)
    if problem is not None:
        warnings.warn(f"ignoring the incomplete result file {path} ({problem}): it is "
                      "recomputed", stacklevel=3)
        return None
    return dataclasses.replace(result, path=str(path), cached=True)


def load(config: FinetuneConfig | str, device: str | torch.device = "cpu",
         out_dir=None, data_root=None, any_data: bool = False) -> FinetuneResult | None:
    """The cached result for this configuration, device type, code and data copy, or
    ``None`` (also, with a warning, for a damaged or incomplete file).

    Parameters
    ----------
    config : FinetuneConfig or str
        A configuration or the name of one of :data:`CONFIGS`.
    device : str or torch.device
    out_dir : path, optional
        Results folder (default :func:`default_results_dir`).
    data_root : path, optional
        Folder holding ``cifar-10-batches-py``: the result must come from that copy.
    any_data : bool
        Instead, the newest current result from any copy of CIFAR-10 (it names its
        copy in ``data_source``): for showing a result made on another machine.
    """
    config = _config(config)
    out_dir = default_results_dir() if out_dir is None else Path(out_dir)
    if not any_data:
        data_id = data_identity(data_root)
        return _read(_path(config, device, out_dir, data_id), config, device, data_id)
    files = sorted(out_dir.glob(f"finetune-{config.name}-*.json"),
                   key=lambda p: p.stat().st_mtime, reverse=True)
    for path in files:
        result = _read(path, config, device, None)
        if result is not None:
            return result
    return None


def stale_results(config: FinetuneConfig | str, out_dir=None) -> list:
    """Result files of this configuration's name that are *not* current (other
    configuration or code, or damaged): they are never loaded.

    Parameters
    ----------
    config : FinetuneConfig or str
        A configuration or the name of one of :data:`CONFIGS`.
    out_dir : path, optional
        Results folder (default :func:`default_results_dir`).
    """
    config = _config(config)
    out_dir = default_results_dir() if out_dir is None else Path(out_dir)
    stale = []
    for path in sorted(out_dir.glob(f"finetune-{config.name}-*.json")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if all(_read(path, config, d, None) is None for d in ("cpu", "cuda")):
                stale.append(path)
    return stale


def train_or_load(config: FinetuneConfig | str, device: str | torch.device = "cpu",
                  out_dir=None, data_root=None, download: bool = False,
                  force: bool = False, amp: str | None = None, sync_batchnorm: bool = False,
                  checkpoint_dir=None, resume: bool = False) -> FinetuneResult:
    """:func:`load` the result if cached (same configuration, device type, code),
    else :func:`run` it and write it (JSON, atomically) under ``out_dir``.

    Parameters
    ----------
    config : FinetuneConfig or str
        A configuration or the name of one of :data:`CONFIGS`.
    device : str or torch.device
    out_dir : path, optional
        Results folder (default :func:`default_results_dir`).
    data_root : path, optional
        Folder holding ``cifar-10-batches-py``.
    download : bool
        Download the official archive if the data are missing.
    force : bool
        Run even if a current result is cached.
    amp : {None, "bf16", "fp16"}
        Mixed precision, as for :func:`run`.
    sync_batchnorm : bool
        As for :func:`run`.
    checkpoint_dir : path, optional
        As for :func:`run`.
    resume : bool
        As for :func:`run`.

    Under torchrun every process calls it; only rank 0 writes the file.

    Returns
    -------
    FinetuneResult
        With ``path`` (its file) and ``cached`` (True when it was loaded) set.
        A result that fails :func:`validate` is never written; a damaged or incomplete
        file is recomputed with a warning.
    """
    config = _config(config)
    out_dir = default_results_dir() if out_dir is None else Path(out_dir)
    cifar10(data_root, train=False, download=download)   # there, and sound, or fetched
    data_id = data_identity(data_root)
    path = _path(config, device, out_dir, data_id, scale_options(amp, sync_batchnorm))
    result = None if force else _read(path, config, device, data_id)
    if result is None:
        result = run(config, device, data_root, download, amp, sync_batchnorm,
                     checkpoint_dir, resume)
        problem = validate(result, config)
        if problem is not None:
            raise RuntimeError(f"the run gave an incomplete result ({problem}); not cached")
        if distributed.current().is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            # atomic: a reader sees the old file or the whole new one, never half of it
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(result.to_json())
            os.replace(tmp, path)
        result = dataclasses.replace(result, path=str(path), cached=False)
    return result


# -- figures -------------------------------------------------------------------
_COLOURS = {"backprop": "tab:blue", "adjoint": "tab:orange"}


def plot_accuracy(result: FinetuneResult, ax) -> None:
    """Test accuracy per fine-tuning epoch for both methods, with the tied network's
    accuracy after pre-training (at its own depth) as a dotted line.

    Parameters
    ----------
    result : FinetuneResult
    ax : matplotlib.axes.Axes
    """
    import matplotlib.ticker as mticker

    pre = result.pretrain
    ax.axhline(100 * pre.test_accuracy[-1], color="0.5", ls=":",
               label=f"tied, N = {pre.depth}, after pre-training")
    for m in METHODS:
        acc = result.finetune[m].test_accuracy
        ax.plot(range(len(acc)), [100 * a for a in acc], color=_COLOURS[m],
                ls="-" if m == "backprop" else "--", marker="o" if m == "backprop" else "x",
                label=f"untied, N = {result.depth}, {m}")
    ax.xaxis.set_major_locator(mticker.MaxNLocator(integer=True))
    copy_name = SHORT_NAMES.get(result.data_source, result.data_source)
    ax.set(xlabel="fine-tuning epoch (0: the untied start)", ylabel="test accuracy (%)",
           title=f"CIFAR-10 {copy_name}: {result.train_images} train, "
                 f"{result.test_images} test images")
    ax.legend()


def plot_memory(result: FinetuneResult, ax) -> None:
    """Bytes the stage keeps for backward against its depth (log-log).

    Parameters
    ----------
    result : FinetuneResult
    ax : matplotlib.axes.Axes
    """
    mem = result.memory
    for m in METHODS:
        ax.plot(mem.depths, [b / 2 ** 20 for b in mem.saved_bytes[m]], "o-",
                color=_COLOURS[m], label=m)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set(xlabel="depth N of the stage", ylabel="MiB kept for backward",
           title=f"stage activation memory (batch {mem.batch})")
    ax.legend()


def plot_gradients(result: FinetuneResult, ax) -> None:
    """Median relative squared gradient error of the adjoint against depth.

    Parameters
    ----------
    result : FinetuneResult
    ax : matplotlib.axes.Axes
    """
    g = result.gradients
    ax.plot(g.depths, [r.median for r in g.pretrained], "o-", color="0.3",
            label="tied net untied to depth N")
    for m in METHODS:
        ax.plot([result.depth], [g.finetuned[m].median],
                "x" if m == "adjoint" else "+", ms=10, color=_COLOURS[m],
                label=f"after fine-tuning ({m})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set(xlabel="depth N of the stage", ylabel="relative squared error (median)",
           title="adjoint vs backprop gradients")
    ax.legend()


def plot(result: FinetuneResult):
    """The three panels side by side; returns the matplotlib Figure.

    Parameters
    ----------
    result : FinetuneResult
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6), layout="constrained")
    plot_accuracy(result, axes[0])
    plot_memory(result, axes[1])
    plot_gradients(result, axes[2])
    fig.suptitle(f"{result.config.name} on {result.device} - {result.data_source}")
    return fig


def summary(result: FinetuneResult) -> str:
    """A few lines: accuracies (naming the data copy), memory, gradients, time.

    Parameters
    ----------
    result : FinetuneResult
    """
    pre, ft = result.pretrain, result.finetune
    lines = [f"data: {result.data_source}, {result.train_images} train / "
             f"{result.test_images} test images; device: {result.device}" + (
                 "" if result.scale == DEFAULT_SCALE else
                 f" x {result.scale['processes']} processes, mixed precision "
                 f"{result.scale['amp']}, SyncBatchNorm {result.scale['sync_batchnorm']}"),
             f"tied N={pre.depth}: test accuracy {100 * pre.test_accuracy[-1]:.1f}% (with its "
             f"shared BatchNorm statistics: {100 * pre.accuracy_shared_statistics:.1f}%); "
             "at other depths: "
             + ", ".join(f"N={d}: {100 * a:.1f}%" for d, a in pre.accuracy_at_depth.items())]
    for m in METHODS:
        lines.append(f"fine-tune N={result.depth} with {m:8s}: "
                     f"{100 * ft[m].test_accuracy[0]:.1f}% -> {100 * ft[m].test_accuracy[-1]:.1f}%"
                     f" in {len(ft[m].seconds)} epochs, "
                     f"{sum(ft[m].seconds) / len(ft[m].seconds):.1f} s/epoch")
    mem = result.memory
    for i, d in enumerate(mem.depths):
        line = (f"N={d:4d}: stage keeps {mem.saved_bytes['backprop'][i] / 2 ** 20:8.2f} MiB "
                f"(backprop) vs {mem.saved_bytes['adjoint'][i] / 2 ** 20:6.2f} MiB (adjoint)")
        if mem.cuda_peak_mib["backprop"]:
            line += (f"; CUDA peak {mem.cuda_peak_mib['backprop'][i]:.1f} vs "
                     f"{mem.cuda_peak_mib['adjoint'][i]:.1f} MiB")
        lines.append(line)
    g = result.gradients
    lines.append("gradient rel. squared error (median over the stage's tensors): " + ", ".join(
        f"N={d}: {a.median:.1e}" for d, a in zip(g.depths, g.pretrained)))
    lines.append("after fine-tuning: " + ", ".join(
        f"{m} {g.finetuned[m].median:.1e}" for m in METHODS))
    lines.append(f"wall time {result.seconds:.0f} s (load average {result.load_average[0]:.1f}"
                 f" -> {result.load_average[1]:.1f})")
    return "\n".join(lines)


def main(argv=None) -> int:
    """The command line: ``python -m resode_tut.experiments.ch06 --help``.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (default: ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(
        prog="python -m resode_tut.experiments.ch06",
        description="Fine-tune a deep CIFAR-10 ResNet with the adjoint and with backprop "
                    "(chapter 6); writes JSON and a figure, cached by configuration and code.")
    parser.add_argument("--config", choices=sorted(CONFIGS), default="gpu-full")
    parser.add_argument("--device", type=torch_device,
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data", default=None,
                        help="folder holding cifar-10-batches-py (default $RESODE_DATA "
                             "or ~/.cache/resode_tut)")
    parser.add_argument("--download", action="store_true",
                        help="download the official archive if the data are missing")
    parser.add_argument("--out", default=None,
                        help="results folder (default $RESODE_RESULTS or "
                             "~/.cache/resode_tut/results)")
    parser.add_argument("--force", action="store_true", help="run even if a result is cached")
    parser.add_argument("--amp", choices=sorted(AMP_DTYPES), default=None,
                        help="mixed precision: autocast to bfloat16 or float16 (with a "
                             "gradient scaler); the adjoint's backward re-enters it")
    parser.add_argument("--sync-bn", action="store_true",
                        help="under torchrun: BatchNorm statistics over the global batch "
                             "(SyncBatchNorm, CUDA only)")
    parser.add_argument("--checkpoints", default=None,
                        help="folder of the per-epoch checkpoints (default: "
                             "<out>/checkpoints/<configuration>-<key>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the checkpoints (automatic after torchrun's "
                             "elastic restart)")
    args = parser.parse_args(argv)
    dist, device = distributed.setup(args.device)
    try:
        out = default_results_dir() if args.out is None else Path(args.out)
        config = _config(args.config)
        if args.download:   # one process fetches, the others wait for it
            if dist.is_main:
                cifar10(args.data, train=False, download=True)
            distributed.barrier()
        checkpoints = args.checkpoints
        if checkpoints is None:
            key = cache_key(config, device, data_identity(args.data),
                            scale_options(args.amp, args.sync_bn))
            checkpoints = out / "checkpoints" / f"{config.name}-{key}"
        # torchrun --max-restarts: a restarted worker continues from the last epoch
        resume = args.resume or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0"
        result = train_or_load(config, device, out, args.data, False, args.force,
                               args.amp, args.sync_bn, checkpoints, resume)
        if dist.is_main:
            print(summary(result))
            figure = Path(result.path).with_suffix(".png")
            plot(result).savefig(figure, dpi=120)
            print(f"results: {result.path} and {figure}; checkpoints: {checkpoints}")
    finally:
        distributed.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
