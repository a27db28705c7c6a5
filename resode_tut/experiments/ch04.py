r"""Chapter 4 (Heun residual networks): its experiments.

The distance sweep (:mod:`resode_tut.experiments.discretisation`) and the gradient
methods (:mod:`resode_tut.experiments.gradient_methods`) are shared with chapters 1
and 3; this module adds the training experiment: how deep must a ResNet be for its adjoint to train?

For each scheme and depth ``M``, one :class:`~resode_tut.experiments.classifier.ResidualClassifier`
on the sklearn digits is trained twice from the same initial weights and batch
order: by backpropagation and by the memory-free adjoint.  The embedding and
the head are fixed random maps (``fixed_ends=True``), so that the test error
measures what the residual stage learned from its gradients.  The residual
functions start from one shared initialisation (``tied_init=True``, weights
constant in depth) and the learning rate is ``lr_scale / h``: the layer
gradients carry a factor ``h``, so this keeps training comparable across depths.

Runs are independent and seeded, and are spread over worker processes
(:func:`resode_tut.parallel.parallel_map`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

from ..datasets.small import digits
from ..parallel import parallel_map
from ..stack import SCHEMES
from .classifier import ResidualClassifier, train_classifier
from .discretisation import distance_sweep
from .gradient_methods import adjoint_error_sweep, gradients, relative_error
from .plots import depth_axis, use_style

__all__ = ["use_style", "DepthTrainingSweep", "depth_training_sweep", "distance_sweep", "gradients",
           "relative_error", "adjoint_error_sweep", "depth_axis"]


@dataclass
class DepthTrainingSweep:
    """Test accuracies after training, by scheme, gradient method and depth.

    Attributes
    ----------
    depths : numpy.ndarray, shape (K,)
    seeds : list of int, length S
    accuracy : dict
        ``accuracy[scheme][method]``, method in ``("backprop", "adjoint")``:
        array (K, S) of final test accuracies in [0, 1].
    train_loss : dict
        Same layout: final training losses.
    self_check : dict
        ``self_check[scheme]``: array (K, S), the adjoint run's largest
        reconstruction error ``||x~_0 - x_0|| / ||x_0||`` over its last epoch
        (the stack's self-check, ``ResidualStack.last_reconstruction_error``).
    """

    depths: np.ndarray
    seeds: list
    accuracy: dict = field(default_factory=dict)
    train_loss: dict = field(default_factory=dict)
    self_check: dict = field(default_factory=dict)

    def test_error(self, scheme: str, method: str) -> np.ndarray:
        """Test error in percent, averaged over seeds, shape (K,).

        Parameters
        ----------
        scheme : {"euler", "heun"}
        method : {"backprop", "adjoint"}
        """
        return 100.0 * (1.0 - self.accuracy[scheme][method].mean(axis=1))

    def gap(self, scheme: str) -> np.ndarray:
        """Adjoint's test error minus backprop's (points), averaged over seeds, shape (K,).

        Parameters
        ----------
        scheme : {"euler", "heun"}
        """
        return self.test_error(scheme, "adjoint") - self.test_error(scheme, "backprop")

    def seed_gaps(self, scheme: str) -> np.ndarray:
        """Adjoint's test error minus backprop's (points) for each depth and seed,
        shape (K, S): the pair shares its initial weights and batch order.

        Parameters
        ----------
        scheme : {"euler", "heun"}
        """
        acc = self.accuracy[scheme]
        return 100.0 * (acc["backprop"] - acc["adjoint"])

    def matching_depth(self, scheme: str, tol: float = 1.0) -> int | None:
        """Smallest depth from which the adjoint's test error stays within ``tol``
        points of backprop's at every larger depth of the sweep (None if never).

        Parameters
        ----------
        scheme : {"euler", "heun"}
        tol : float
            Points (%).
        """
        ok = np.abs(self.gap(scheme)) <= tol
        for i in range(len(ok)):
            if ok[i:].all():
                return int(self.depths[i])
        return None


@lru_cache(maxsize=2)
def _digits(seed):
    return digits(seed=seed)


def _train_pair(job):
    scheme, depth, seed, cfg = job
    torch.manual_seed(seed)
    net = ResidualClassifier(64, 10, dim=cfg["dim"], width=cfg["width"], depth=depth,
                             scheme=scheme, gain=cfg["gain"], tied_init=cfg["tied_init"],
                             fixed_ends=True)
    lr = cfg["lr_scale"] * net.stage.num_steps
    out = {}
    for method in ("backprop", "adjoint"):
        model = net.with_adjoint(method == "adjoint")
        hist = train_classifier(model, _digits(cfg["data_seed"]), epochs=cfg["epochs"], lr=lr,
                                batch_size=cfg["batch_size"], seed=seed)
        out[method] = (hist.test_accuracy[-1], hist.train_loss[-1])
    out["self_check"] = hist.reconstruction_error[-1]   # of the adjoint run
    return out


def depth_training_sweep(depths, schemes=("euler", "heun"), seeds=(0,), epochs: int = 10,
                         lr_scale: float = 0.02, gain: float = 4.0, dim: int = 32,
                         width: int = 64, batch_size: int = 64, data_seed: int = 0,
                         tied_init: bool = True,
                         processes: int | None = None) -> DepthTrainingSweep:
    """Train with backprop and with the adjoint at every depth, for each scheme.

    Parameters
    ----------
    depths : sequence of int
        Numbers of residual functions ``M`` (>= 2 for Heun).
    schemes : sequence of {"euler", "heun"}
        Schemes to train.
    seeds : sequence of int
        Seeds of the initial weights and of the batch order.
    epochs : int
        Passes over the training set.
    lr_scale : float
        SGD (momentum 0.9) learning rate times ``h``.
    gain : float
        Initial scale of the residual functions.
    dim : int
        State size of the residual stage.
    width : int
        Hidden units of each residual function.
    batch_size : int
        Training batch.
    data_seed : int
        Seed of the digits' train/test split.
    tied_init : bool
        Start every residual function from one shared initialisation (weights smooth in
        depth, the chapter's choice); False: i.i.d. initial functions.
    processes : int, optional
        Worker processes (default: all cores).

    Returns
    -------
    DepthTrainingSweep
    """
    for s in schemes:
        if s not in SCHEMES:
            raise ValueError(f"unknown scheme {s!r}: choose one of {SCHEMES}")
    depths = np.asarray(depths)
    cfg = dict(epochs=epochs, lr_scale=lr_scale, gain=gain, dim=dim, width=width,
               batch_size=batch_size, data_seed=data_seed, tied_init=tied_init)
    jobs = [(s, int(M), seed, cfg) for s in schemes for M in depths for seed in seeds]
    # deepest first: the longest jobs start early and the workers finish together
    order = sorted(range(len(jobs)), key=lambda i: -jobs[i][1])
    results = parallel_map(_train_pair, [jobs[i] for i in order], processes)
    by_job = dict(zip(order, results))
    out = DepthTrainingSweep(depths=depths, seeds=list(seeds))
    for s in schemes:
        out.accuracy[s], out.train_loss[s] = {}, {}
        for method in ("backprop", "adjoint"):
            acc = np.zeros((len(depths), len(seeds)))
            loss = np.zeros_like(acc)
            for i in range(len(depths)):
                for j in range(len(seeds)):
                    k = (schemes.index(s) * len(depths) + i) * len(seeds) + j
                    acc[i, j], loss[i, j] = by_job[k][method]
            out.accuracy[s][method], out.train_loss[s][method] = acc, loss
        out.self_check[s] = np.array(
            [[by_job[(schemes.index(s) * len(depths) + i) * len(seeds) + j]["self_check"]
              for j in range(len(seeds))] for i in range(len(depths))])
    return out
