r"""Paper A's Fig. 4 on CIFAR-10: test error against depth, Euler and Heun stages, each
trained by backprop and by the memory-free adjoint (chapter 4).

This is the code the shipped result ``results/ch04-fig4-<config>.json`` is keyed on:
:func:`compute_fig4` runs one training per (seed, depth, scheme, gradient method), each
in a worker process and kept as a chunk as it finishes (:mod:`.chunks`), so the run can
span sessions. :mod:`resode_tut.experiments.ch04` loads, stores and shows it.

The protocol is the official code's (``resnet_cifar/train_tiny.py``): the one-stage
16-channel network (:class:`TinyResNet`, last BatchNorm of every residual function at
zero), SGD with momentum 0.9, weight decay 5e-4 on every
parameter, learning rate 0.1 divided by 10 after the first and the second third of the
epochs, batch 256, random crops and flips; a run's score is its best test accuracy over
the epochs, as the official figure script takes it. What differs at CPU scale is said by
the configuration: fewer images and epochs (:data:`FIG4_CONFIGS`).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from functools import lru_cache, partial

import torch
import torch.nn.functional as F
from torch import nn

from ..cifar_resnet import CifarResNet
from ..datasets.cifar import cifar10
from ..parallel import default_processes
from ..schemes import Heun
from .chunks import resumable_map
from .cifar_training import train

__all__ = ["OfficialHeun", "TinyResNet", "Fig4Config", "FIG4_CONFIGS", "SCHEMES", "METHODS",
           "fig4_jobs", "run_one", "compute_fig4"]

#: The stage's schemes and how its gradient is taken, in the order of the result's runs.
SCHEMES = ("euler", "heun")
METHODS = ("backprop", "adjoint")


class OfficialHeun(Heun):
    """Heun's step as the official code takes it (``HeunFwd`` in ``resnet_cifar``):
    ``M - 1`` steps of ``h = 1/M``, the step of the Euler stack of the same depth, so the
    stage ends at ``t = (M - 1)/M`` (the package's :class:`~resode_tut.schemes.Heun`
    takes ``h = 1/(M - 1)`` and ends at ``t = 1``: at ``M = 2`` its one step is twice
    as long).
    """

    def step_size(self, M: int) -> float:
        """``1 / M``."""
        return 1.0 / M

    def times(self, M: int) -> torch.Tensor:
        """``n / M`` for ``n = 0 .. M - 1``, shape (M,), float64."""
        return torch.arange(M, dtype=torch.float64) / M


class TinyResNet(CifarResNet):
    """The official Fig. 4 network (``iTinyResnet``): the stem ``conv 5x5 / 3`` with
    padding 1, BatchNorm, ReLU (3 -> C channels, 32x32 -> 10x10); ``N`` residual
    functions ``BN(conv(ReLU(BN(conv(x)))))`` scaled by ``1/N``, the last BatchNorm at
    zero; a ``4 x 4`` average pooling (10x10 -> 2x2) and a linear head on the ``4 C``
    features. Its convolutions have no bias: each is followed by a BatchNorm, which
    removes it.

    Parameters
    ----------
    depth : int
        ``N``.
    channels : int
    scheme : {"euler", "heun"}
        ``"heun"`` is :class:`OfficialHeun`.
    seed : int
        The residual functions are those of ``CifarResNet(depth, channels, seed=seed)``.

    Shapes
    ------
    (B, 3, 32, 32) -> logits (B, 10)
    """

    def __init__(self, depth: int, channels: int = 16, scheme: str = "euler", seed: int = 0):
        super().__init__(depth, channels, scheme=OfficialHeun() if scheme == "heun" else scheme,
                         seed=seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.stem = nn.Sequential(nn.Conv2d(3, channels, 5, stride=3, padding=1, bias=False),
                                      nn.BatchNorm2d(channels), nn.ReLU())
            self.head = nn.Linear(4 * channels, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, shape (B, 3, 32, 32) -> (B, 10)."""
        if x.ndim != 4 or x.shape[1:] != (3, 32, 32):
            raise ValueError(f"TinyResNet expects images of shape (B, 3, 32, 32), got "
                             f"{tuple(x.shape)}")
        return self.head(F.avg_pool2d(self.stage(self.stem(x)), 4).flatten(1))


@dataclass(frozen=True)
class Fig4Config:
    """What :func:`compute_fig4` runs.

    Attributes
    ----------
    name : str
    train_images, test_images : int
        Images drawn from each split with a seeded permutation (0: the whole split).
    depths : tuple of int
        ``N``, residual functions of the stage (the paper: 2 to 64).
    seeds : tuple of int
        Each seeds the initial weights, the batch order and the augmentation; the four
        runs of a (seed, depth) start from the same weights and see the same batches.
    epochs : int
        The paper: 90. The learning rate is divided by 10 after the first and the second
        third (:meth:`milestones`).
    lr, batch, weight_decay, channels
        The paper's: 0.1, 256, 5e-4, 16.
    """

    name: str
    train_images: int
    test_images: int
    depths: tuple
    seeds: tuple
    epochs: int
    lr: float = 0.1
    batch: int = 256
    weight_decay: float = 5e-4
    channels: int = 16

    def milestones(self) -> tuple:
        """Epochs (counted from 0) that start with the learning rate divided by 10: the
        official code divides it after epochs ``E // 3`` and ``2 E // 3``.
        """
        return (self.epochs // 3 + 1, 2 * self.epochs // 3 + 1)


FIG4_CONFIGS = {
    # the shipped CPU run: 20,000 training images, 15 epochs (measured: 4.8 hours of one core)
    "cpu": Fig4Config("cpu", 20000, 10000, (2, 4, 8, 16, 32), (1, 2, 3), 15),
    # the paper's: the whole data set, 90 epochs, depths to 64, its four plotted seeds; this
    # version trains on the CPU only (about 8 days of one core, scaled from the cpu run):
    # a device option changes this module's code, so it waits for the shipped run's rerun
    "gpu-full": Fig4Config("gpu-full", 0, 0, (2, 4, 8, 16, 32, 64), (1, 2, 3, 4), 90),
    # seconds: that the code runs end to end, not results
    "smoke": Fig4Config("smoke", 256, 128, (2, 4), (1,), 2, batch=64, channels=8),
}


def fig4_jobs(config: Fig4Config) -> list:
    """One job per training: ``[seed, depth, scheme, method, config as a dict]``, seeds
    outermost and the deepest stages first within a seed (they take longest, so two
    processes finish together).

    Parameters
    ----------
    config : Fig4Config
    """
    cfg = asdict(config)
    return [[seed, depth, scheme, method, cfg]
            for seed in config.seeds for depth in sorted(config.depths, reverse=True)
            for scheme in SCHEMES for method in METHODS]


@lru_cache(maxsize=2)
def _data(root, train_split: bool, n: int):
    data = cifar10(root, train=train_split)
    return data if n in (0, len(data)) else data.subset(n, seed=0)


def run_one(job, root=None) -> dict:
    """Train one network of :func:`fig4_jobs` and return its history.

    Parameters
    ----------
    job : list
        ``[seed, depth, scheme, method, config as a dict]``.
    root : path, optional
        The CIFAR-10 folder (default :func:`resode_tut.datasets.cifar.default_root`).

    Returns
    -------
    dict
        ``test_accuracy``, ``train_loss``, ``seconds`` (per epoch) and ``self_check``
        (the adjoint's largest reconstruction error per epoch; empty for backprop).
    """
    seed, depth, scheme, method, cfg = job
    config = Fig4Config(**{**cfg, "depths": tuple(cfg["depths"]), "seeds": tuple(cfg["seeds"])})
    model = TinyResNet(depth, channels=config.channels, scheme=scheme, seed=seed)
    hist = train(model, _data(root, True, config.train_images),
                 _data(root, False, config.test_images), config.epochs, config.lr,
                 method=method, milestones=config.milestones(), batch=config.batch,
                 weight_decay=config.weight_decay, seed=seed,
                 desc=f"seed {seed}, N = {depth}, {scheme}, {method}")
    return dict(test_accuracy=hist.test_accuracy, train_loss=hist.train_loss,
                seconds=hist.seconds, self_check=hist.reconstruction_error)


def compute_fig4(config: Fig4Config, processes: int | None = None, chunks=None,
                 root=None) -> dict:
    """Every training of ``config``, each kept in ``chunks`` as it finishes.

    Parameters
    ----------
    config : Fig4Config
    processes : int, optional
        Worker processes (default: all cores), one torch thread each.
    chunks : path, optional
        Folder of finished trainings: a stopped run started again resumes there.
    root : path, optional
        The CIFAR-10 folder.

    Returns
    -------
    dict
        ``runs``: one dict per job (``seed``, ``depth``, ``scheme``, ``method`` and
        :func:`run_one`'s history); ``seconds``, ``invocations``, ``processes``.
    """
    jobs = fig4_jobs(config)
    t0 = time.perf_counter()
    results, run = resumable_map(partial(run_one, root=root), jobs, processes, chunks)
    runs = [dict(seed=j[0], depth=j[1], scheme=j[2], method=j[3], **r)
            for j, r in zip(jobs, results)]
    return dict(runs=runs, seconds=run["seconds"] if chunks else time.perf_counter() - t0,
                invocations=run["invocations"],
                processes=processes or default_processes())
