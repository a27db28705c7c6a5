r"""Paper A's Table 2 at CPU scale: a tied four-stage Bottleneck ResNet, untied into a deep
third stage, that stage alone fine-tuned by backprop and by the memory-free adjoint
(chapter 6).

This is the code the shipped result ``results/ch06-table2-<config>.json`` is keyed on;
:mod:`resode_tut.experiments.ch06_table2` loads, stores and shows it. The protocol is the
official code's (``experiments/is_ode_like_CIFAR.py`` and ``resnet_ode/trainer_CIFAR_10.py``):

1. **Pre-training.** :class:`~resode_tut.bottleneck_resnet.BottleneckResNet` with tied
   weights (one residual function per stage, ``layers = (4, 4, 32, 4)``), SGD with momentum
   0.9, weight decay 5e-4 on every parameter, batch 128, random crops and flips, learning
   rate 0.1 annealed along a cosine over the epochs (the repository's CIFAR trainer; the
   script that made the paper's tied checkpoint is not in the repository).
2. **Untying.** The third stage's one function copied into ``N - 1 = 31`` independent ones
   (:func:`~resode_tut.bottleneck_resnet.untie_stage`): the same network, the same accuracy.
3. **Fine-tuning.** Only that stage's parameters in the optimiser (the official
   ``optim.SGD(net.module.layer3.parameters(), ...)``), every layer in train mode (so
   BatchNorm statistics move everywhere), SGD with momentum 0.9, weight decay 5e-4, batch
   128, learning rate 1e-3 divided by 10 at 80% of the epochs (the paper: 50 epochs, the
   drop at 40). Three runs from the same start with the same batches: ``"backprop"``,
   ``"adjoint"`` (the stage differentiated by the memory-free adjoint) and ``"decay"``
   (the stage's gradient zeroed, weight decay alone moving it: what an adjoint that
   returned zeros would do), against which the gradient's effect is measured.

What differs at CPU scale is in the configuration (:data:`CONFIGS`): narrower (``width``:
the paper's is 64), fewer images and epochs. Every training keeps a checkpoint per epoch in
the run's folder, and each fine-tuning is a chunk (:mod:`.chunks`), so a run can span
sessions.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from functools import lru_cache, partial
from pathlib import Path

import torch
from torch import nn

from .. import checkpoint as ckpt
from ..bottleneck_resnet import BottleneckResNet, untie_stage
from ..datasets.cifar import cifar10, prepare
from ..parallel import default_processes
from .chunks import resumable_map
from .cifar_training import accuracy
from .gradient_methods import relative_error
from .history import SelfCheckLog

__all__ = ["Table2Config", "CONFIGS", "RUNS", "pretrain", "finetune_one", "compute_table2"]

#: The fine-tuning runs, in the result's order; ``"decay"`` is the zero-gradient control.
RUNS = ("backprop", "adjoint", "decay")


@dataclass(frozen=True)
class Table2Config:
    """What :func:`compute_table2` runs.

    Attributes
    ----------
    name : str
    train_images, test_images : int
        Images drawn from each split with a seeded permutation (0: the whole split).
    width : int
        Planes of the first stage (the paper: 64).
    layers : tuple of 4 int
        ``N`` per stage (the paper: ``(4, 4, 32, 4)``).
    stage : int
        The stage untied and fine-tuned (0-based; the paper: the third, 2).
    depth : int
        Its ``N`` after untying (the paper: 32, as in the tied network).
    pretrain_epochs, pretrain_lr : int, float
        The tied network's training (cosine-annealed learning rate).
    epochs, lr : int, float
        Fine-tuning (the paper: 50 epochs at 1e-3).
    lr_drop_epoch : int
        The fine-tuning epoch (counted from 0) that starts at ``lr / 10`` (the paper: 40).
    batch, weight_decay : int, float
        Both trainings (the paper: 128, 5e-4).
    seed : int
        Initial weights, image subsets, batch order and augmentation.
    gradient_batch : int
        Images of the batch on which the adjoint's gradient is compared with backprop's at
        the untied start.
    """

    name: str
    train_images: int
    test_images: int
    width: int = 8
    layers: tuple = (4, 4, 32, 4)
    stage: int = 2
    depth: int = 32
    pretrain_epochs: int = 15
    pretrain_lr: float = 0.1
    epochs: int = 10
    lr: float = 1e-3
    lr_drop_epoch: int = 8
    batch: int = 128
    weight_decay: float = 5e-4
    seed: int = 0
    gradient_batch: int = 128


CONFIGS = {
    # the shipped CPU run: 1/8 of the paper's width, 20,000 training images
    "cpu": Table2Config("cpu", 20000, 10000),
    # the paper's configuration (a GPU): full width and data, 200 + 50 epochs
    "gpu-full": Table2Config("gpu-full", 0, 0, width=64, pretrain_epochs=200, epochs=50,
                             lr_drop_epoch=40),
    # seconds: that the code runs end to end, not results
    "smoke": Table2Config("smoke", 256, 128, width=2, layers=(2, 2, 4, 2), depth=4,
                          pretrain_epochs=2, epochs=2, lr_drop_epoch=1, batch=64,
                          gradient_batch=16),
}


def _config(cfg: dict) -> Table2Config:
    return Table2Config(**{**cfg, "layers": tuple(cfg["layers"])})


@lru_cache(maxsize=2)
def _data(root, train_split: bool, n: int, seed: int):
    data = cifar10(root, train=train_split)
    return data if n in (0, len(data)) else data.subset(n, seed=seed)


def _fit(model: nn.Module, params: list, config: Table2Config, phase: str, root,
         checkpoint: Path | None, fingerprint: str, zero_gradient: bool = False,
         device: str = "cpu") -> dict:
    """SGD on ``params`` of ``model`` (momentum 0.9, ``config.weight_decay``), batches of
    ``config.batch`` with crops and flips, the test accuracy after every epoch; a
    checkpoint after every epoch, from which a stopped training resumes and ends as an
    uninterrupted one.

    ``phase`` is ``"pretrain"`` (cosine from ``pretrain_lr`` over ``pretrain_epochs``) or a
    fine-tuning (``lr``, divided by 10 from ``lr_drop_epoch`` on). ``zero_gradient``
    replaces the gradients of ``params`` by zeros (weight decay alone moves them). The
    batches are drawn and augmented on the CPU (the same images on any ``device``), then
    moved to ``device``, where ``model`` trains.
    """
    train_data = _data(root, True, config.train_images, config.seed)
    test_data = _data(root, False, config.test_images, config.seed)
    pre = phase == "pretrain"
    epochs = config.pretrain_epochs if pre else config.epochs
    opt = torch.optim.SGD(params, lr=config.pretrain_lr if pre else config.lr, momentum=0.9,
                          weight_decay=config.weight_decay)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs) if pre else
             torch.optim.lr_scheduler.MultiStepLR(opt, [config.lr_drop_epoch], gamma=0.1))
    gen = torch.Generator().manual_seed(config.seed + (0 if pre else 1))
    hist = dict(test_accuracy=[], train_loss=[], seconds=[], self_check=[])
    first = 0
    if checkpoint is not None and checkpoint.exists():
        state = ckpt.load(checkpoint, fingerprint, map_location="cpu")
        for name, part in (("model", model), ("optimizer", opt), ("scheduler", sched)):
            part.load_state_dict(state[name])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["random"])
        hist, first = state["history"], state["epoch"]
    hooks = [p.register_hook(torch.zeros_like) for p in params] if zero_gradient else []
    checks = SelfCheckLog(model)
    model.train()
    try:
        for epoch in range(first, epochs):
            t0, total = time.perf_counter(), 0.0
            order = torch.randperm(len(train_data), generator=gen)
            for i in range(0, len(order), config.batch):
                idx = order[i:i + config.batch]
                x = prepare(train_data.images[idx], gen).to(device)
                y = train_data.labels[idx].to(device)
                loss = nn.functional.cross_entropy(model(x), y)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{phase}: the loss became {loss.item()}")
                opt.zero_grad(set_to_none=True)
                with checks.backward():
                    loss.backward()
                opt.step()
                total += loss.item() * len(y)
            sched.step()
            hist["seconds"].append(time.perf_counter() - t0)
            hist["train_loss"].append(total / len(order))
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize(device)
            hist["test_accuracy"].append(accuracy(model, test_data, device=device))
            if checks.values:
                hist["self_check"].append(max(checks.values))
            checks.values = []
            if checkpoint is not None:
                ckpt.save(checkpoint, {"epoch": epoch + 1, "model": model.state_dict(),
                                       "optimizer": opt.state_dict(),
                                       "scheduler": sched.state_dict(),
                                       "generator": gen.get_state(),
                                       "random": torch.get_rng_state(), "history": hist},
                          fingerprint)
    finally:
        for h in hooks:
            h.remove()
    return hist


def _tied(config: Table2Config) -> BottleneckResNet:
    return BottleneckResNet(config.layers, config.width, tied=True, seed=config.seed)


def pretrain(config: Table2Config, root=None, folder=None, fingerprint: str = "",
             device: str = "cpu") -> tuple:
    """Train the tied network (resuming from ``folder/pretrain.pt`` when there).

    Parameters
    ----------
    config : Table2Config
    root : path, optional
        The CIFAR-10 folder.
    folder : path, optional
        Where the checkpoint lives (None: none is kept).
    fingerprint : str
        Names the configuration and code: a checkpoint with another is refused.
    device : str
        Where it trains (``"cpu"``, ``"cuda"``).

    Returns
    -------
    model : BottleneckResNet
        The tied network, trained, on ``device``.
    history : dict
        ``test_accuracy``, ``train_loss``, ``seconds`` per epoch.
    """
    torch.manual_seed(config.seed)
    model = _tied(config).to(device)
    path = None if folder is None else Path(folder) / "pretrain.pt"
    hist = _fit(model, list(model.parameters()), config, "pretrain", root, path,
                f"{fingerprint}/pretrain", device=device)
    return model, hist


def _start(config: Table2Config, folder, fingerprint: str) -> BottleneckResNet:
    """The untied start: the pre-trained tied network (its finished checkpoint) with
    ``config.stage`` untied into ``config.depth - 1`` functions.
    """
    model = _tied(config)
    state = ckpt.load(Path(folder) / "pretrain.pt", f"{fingerprint}/pretrain",
                      map_location="cpu")
    if state["epoch"] != config.pretrain_epochs:
        raise RuntimeError("the tied network's pre-training is not finished")
    model.load_state_dict(state["model"])
    return untie_stage(model, config.stage, config.depth)


def finetune_one(job, root=None, folder=None, fingerprint: str = "") -> dict:
    """One fine-tuning of the untied start, the stage alone trainable.

    Parameters
    ----------
    job : list
        ``[run, config as a dict, device]``, ``run`` one of :data:`RUNS`.
    root : path, optional
        The CIFAR-10 folder.
    folder : path
        The run's folder: ``pretrain.pt`` is read, ``finetune-<run>.pt`` written each epoch
        (its last state is the fine-tuned network).
    fingerprint : str

    Returns
    -------
    dict
        ``test_accuracy``, ``train_loss``, ``seconds`` and ``self_check`` per epoch (the
        adjoint's largest reconstruction error; empty for the others).
    """
    run, cfg, device = job
    if run not in RUNS:
        raise ValueError(f"unknown fine-tuning run {run!r}: choose one of {RUNS}")
    config = _config(cfg)
    torch.manual_seed(config.seed + 1)
    model = _start(config, folder, fingerprint).to(device)
    model.requires_grad_(False)
    stage = model.stages[config.stage]
    stage.requires_grad_(True)
    stage.adjoint = run == "adjoint"
    return _fit(model, list(stage.parameters()), config, run, root,
                Path(folder) / f"finetune-{run}.pt", f"{fingerprint}/{run}",
                zero_gradient=run == "decay", device=device)


def _stage_vector(model: BottleneckResNet, stage: int) -> torch.Tensor:
    return torch.cat([p.detach().double().cpu().flatten()
                      for p in model.stages[stage].parameters()])


def _finetuned(config: Table2Config, folder, run: str, fingerprint: str) -> BottleneckResNet:
    model = untie_stage(_tied(config), config.stage, config.depth)
    model.load_state_dict(ckpt.load(Path(folder) / f"finetune-{run}.pt",
                                    f"{fingerprint}/{run}", map_location="cpu")["model"])
    return model


def _gradient_agreement(model: BottleneckResNet, config: Table2Config, root,
                        device="cpu") -> float:
    """Relative error ``||g_adj - g_bp|| / ||g_bp||`` of the stage's gradient on one test
    batch, train mode (BatchNorm statistics of the batch), as in fine-tuning.
    """
    test_data = _data(root, False, config.test_images, config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    idx = torch.randperm(len(test_data), generator=gen)[:config.gradient_batch]
    x, y = prepare(test_data.images[idx]).to(device), test_data.labels[idx].to(device)
    grads = {}
    for adjoint in (False, True):
        m = copy.deepcopy(model).train()
        stage = m.stages[config.stage]
        stage.adjoint, stage.reconstruction_tol = adjoint, math.inf
        nn.functional.cross_entropy(m(x), y).backward()
        grads[adjoint] = [p.grad.double().cpu() for p in stage.parameters()]
    return relative_error(grads[False], grads[True])


def compute_table2(config: Table2Config, processes: int | None = None, folder=None,
                   root=None, fingerprint: str = "", device: str = "cpu") -> dict:
    """Pre-train, untie, fine-tune three times (:data:`RUNS`) and measure.

    Parameters
    ----------
    config : Table2Config
    processes : int, optional
        Worker processes for the fine-tunings (default: all cores), one torch thread each.
    folder : path
        The run's folder: checkpoints and finished fine-tunings; a stopped run started
        again resumes there.
    root : path, optional
        The CIFAR-10 folder.
    fingerprint : str
        The result's key: checkpoints written under another are refused.
    device : str
        Where the networks train (``"cpu"``, ``"cuda"``); on CUDA the fine-tunings run one
        after the other in this process.

    Returns
    -------
    dict
        ``pretrain`` (its history), ``start_accuracy`` (the untied start; the tied
        network's accuracy before fine-tuning), ``runs`` (per run: history,
        ``stage_travel`` from the start and ``gradient_travel`` from the ``"decay"`` run's
        end), ``stage_gap`` (adjoint's stage against backprop's), ``start_gradient_error``
        (the adjoint's relative gradient error at the start), ``seconds``, ``invocations``,
        ``processes``. ``seconds`` counts the pre-training's epochs, the fine-tunings over
        every invocation (:func:`resumable_map`) and the measurements.
    """
    if folder is None:
        raise ValueError("compute_table2 needs a folder for its checkpoints")
    folder = Path(folder)
    tied, pre = pretrain(config, root, folder, fingerprint, device)
    t0 = time.perf_counter()
    start = untie_stage(tied, config.stage, config.depth)
    test_data = _data(root, False, config.test_images, config.seed)
    start_acc = accuracy(start, test_data, device=device)
    start_error = _gradient_agreement(start, config, root, device)
    if torch.device(device).type == "cuda":
        processes = 1         # one GPU: the fine-tunings in turn, in this process
    measuring = time.perf_counter() - t0
    # the adjoint first: the longest, beside the two others in turn
    order = ("adjoint", "backprop", "decay")
    results, run = resumable_map(partial(finetune_one, root=root, folder=str(folder),
                                         fingerprint=fingerprint),
                                 [[r, asdict(config), str(device)] for r in order], processes,
                                 folder)
    by_run = dict(zip(order, results))
    t1 = time.perf_counter()
    vectors = {r: _stage_vector(_finetuned(config, folder, r, fingerprint), config.stage)
               for r in RUNS}
    v0 = _stage_vector(start.cpu(), config.stage)
    runs = {r: dict(**by_run[r], stage_travel=float((vectors[r] - v0).norm()),
                    gradient_travel=float((vectors[r] - vectors["decay"]).norm()))
            for r in RUNS}
    return dict(pretrain=pre, start_accuracy=start_acc, runs=runs,
                stage_gap=float((vectors["adjoint"] - vectors["backprop"]).norm()),
                start_gradient_error=start_error,
                # training epochs (over every invocation) and this invocation's measurements
                seconds=sum(pre["seconds"]) + run["seconds"] + measuring
                + (time.perf_counter() - t1),
                invocations=run["invocations"], processes=processes or default_processes())
