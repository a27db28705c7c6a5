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

import argparse
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

from ..datasets.cifar import cifar10, data_identity
from ..datasets.small import digits
from ..parallel import parallel_map
from ..stack import SCHEMES
from . import shipped
from .classifier import ResidualClassifier, train_classifier
from .cli import positive_int
from .discretisation import distance_sweep
from .gradient_methods import adjoint_error_sweep, gradients, relative_error
from .heun_cifar import FIG4_CONFIGS, Fig4Config, compute_fig4
from .heun_cifar import METHODS as FIG4_METHODS
from .heun_cifar import SCHEMES as FIG4_SCHEMES
from .plots import depth_axis, use_style

__all__ = ["use_style", "DepthTrainingSweep", "depth_training_sweep", "distance_sweep", "gradients",
           "relative_error", "adjoint_error_sweep", "depth_axis", "FIG4_CONFIGS", "Fig4Config",
           "FIG4", "cifar_fig4", "load_fig4", "fig4_for_page", "fig4_sweep",
           "plot_fig4", "main"]


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


# -- paper A's Fig. 4 on CIFAR-10 (a shipped run: resode_tut.experiments.heun_cifar) ----

#: Fig. 4 as a shipped experiment: its configurations, its computing module (the code its
#: result is keyed on), ``ch04-fig4-<config>.json`` and its command.
FIG4 = shipped.Experiment("ch04-fig4", "Fig. 4", FIG4_CONFIGS, Fig4Config,
                          "resode_tut.experiments.heun_cifar",
                          "python -m resode_tut.experiments.ch04 fig4")


def fig4_sweep(config, data: dict) -> DepthTrainingSweep:
    """The runs of a Fig. 4 result as a :class:`DepthTrainingSweep`: ``accuracy`` is
    each run's best test accuracy over its epochs (the official figure's score),
    ``train_loss`` its last epoch's, ``self_check`` the adjoint's largest reconstruction
    error in its last epoch.

    Parameters
    ----------
    config : Fig4Config or str
    data : dict
        :func:`resode_tut.experiments.heun_cifar.compute_fig4`'s result.

    Raises
    ------
    ValueError
        When a run of the configuration is missing or has the wrong number of epochs.
    """
    cfg = FIG4.config(config)
    runs = {(r["seed"], r["depth"], r["scheme"], r["method"]): r for r in data["runs"]}
    depths, seeds = sorted(cfg.depths), list(cfg.seeds)
    out = DepthTrainingSweep(depths=np.asarray(depths), seeds=seeds)
    for scheme in FIG4_SCHEMES:
        out.accuracy[scheme], out.train_loss[scheme] = {}, {}
        for method in FIG4_METHODS:
            acc, loss = np.zeros((len(depths), len(seeds))), np.zeros((len(depths), len(seeds)))
            for i, depth in enumerate(depths):
                for j, seed in enumerate(seeds):
                    run = runs.get((seed, depth, scheme, method))
                    if run is None or len(run["test_accuracy"]) != cfg.epochs:
                        raise ValueError(f"no complete run for seed {seed}, N = {depth}, "
                                         f"{scheme}, {method}")
                    acc[i, j], loss[i, j] = max(run["test_accuracy"]), run["train_loss"][-1]
            out.accuracy[scheme][method], out.train_loss[scheme][method] = acc, loss
        out.self_check[scheme] = np.array(
            [[runs[seed, depth, scheme, "adjoint"]["self_check"][-1] for seed in seeds]
             for depth in depths])
    return out


def cifar_fig4(config="cpu", store: bool = True, force: bool = False,
               processes: int | None = None, root=None):
    """Paper A's Fig. 4 on CIFAR-10: the shipped result when current, else the run
    (stored with ``store``; a stopped run resumes from its finished trainings).

    Parameters
    ----------
    config : Fig4Config or str
        ``"cpu"`` (the shipped run), ``"gpu-full"`` (the paper's scale; this version
        trains on the CPU only: about 8 days of one core) or ``"smoke"``.
    store : bool
        Keep finished trainings as chunks and write the result to the results folder.
    force : bool
        Compute even if a current result is shipped.
    processes : int, optional
        Worker processes (default: all cores).
    root : path, optional
        The CIFAR-10 folder (default :func:`resode_tut.datasets.cifar.default_root`).

    Returns
    -------
    sweep : DepthTrainingSweep
        See :func:`fig4_sweep`.
    result : ShippedResult or None
        Where it came from (loaded or stored), else None.
    """
    cfg = FIG4.config(config)
    key = FIG4.key(cfg)                   # the code that runs, read before it runs
    if not force:
        loaded = load_fig4(cfg)
        if loaded is not None:
            return loaded
    chunks = FIG4.chunk_folder(cfg, key) if store else None
    commit = shipped.git_commit()
    source = cifar10(root, train=False).source        # a missing copy fails here, first
    data = compute_fig4(cfg, processes, chunks, root)
    data.update(data_source=source, data_id=data_identity(root))
    sweep = fig4_sweep(cfg, data)
    if not store:
        return sweep, None
    invocations = data.pop("invocations")
    return sweep, FIG4.store(cfg, key, data, chunks, commit=commit,
                             processes=data["processes"], invocations=invocations, data=source)


def load_fig4(config="cpu", directory=None):
    """The stored Fig. 4 result of ``config`` when it is current for this code and
    complete, else None (with a warning for an incomplete file; always None with
    ``RESODE_RECOMPUTE=1``).

    Parameters
    ----------
    config : Fig4Config or str
    directory : path, optional
        Where to look (default: ``$RESODE_RESULTS``, then the shipped results).

    Returns
    -------
    tuple of (DepthTrainingSweep, ShippedResult), or None
    """
    cfg = FIG4.config(config)
    return FIG4.load(cfg, lambda found: fig4_sweep(cfg, found.data), directory)


def fig4_for_page(quick: bool, root=None):
    """What chapter 4 shows: the shipped ``"cpu"`` Fig. 4 result when it is current for
    this code; otherwise, in full mode, that run itself (hours on a CPU, resumable), and in
    quick mode the ``"smoke"`` run (seconds: the code runs end to end, its numbers are not
    results).

    Parameters
    ----------
    quick : bool
    root : path, optional
        The CIFAR-10 folder for a run.

    Returns
    -------
    sweep : DepthTrainingSweep
    config : Fig4Config
    result : ShippedResult or None
        The stored file with its provenance (None for the smoke run).
    """
    cfg = FIG4_CONFIGS["cpu"]
    loaded = load_fig4(cfg)
    if loaded is not None:
        return loaded[0], cfg, loaded[1]
    if quick:
        sweep, _ = cifar_fig4("smoke", store=False, root=root)
        return sweep, FIG4_CONFIGS["smoke"], None
    sweep, result = cifar_fig4("cpu", root=root)
    return sweep, cfg, result


def plot_fig4(sweep: DepthTrainingSweep, title: str = ""):
    """Paper A's Fig. 4 as its official script draws it: test error against depth, the
    mean over seeds with the interquartile band, Euler blue and Heun red, backprop solid
    and the adjoint dashed; beside it, the adjoint's self-check (its reconstruction error
    in the last epoch) against depth.

    Parameters
    ----------
    sweep : DepthTrainingSweep
        From :func:`cifar_fig4`.
    title : str

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 4.1))
    colours = {"euler": "darkblue", "heun": "red"}
    names = {"euler": "ResNet (Euler)", "heun": "HeunNet"}
    for scheme in FIG4_SCHEMES:
        for method, style in (("backprop", "-"), ("adjoint", "--")):
            err = 100.0 * (1.0 - sweep.accuracy[scheme][method])          # (K, S)
            ax.plot(sweep.depths, err.mean(axis=1), style, color=colours[scheme], lw=2,
                    label=f"{names[scheme]} + {method}")
            ax.fill_between(sweep.depths, np.quantile(err, 0.25, axis=1),
                            np.quantile(err, 0.75, axis=1), color=colours[scheme], alpha=0.15)
        check = sweep.self_check[scheme]
        ax2.plot(sweep.depths, np.median(check, axis=1), "o-", color=colours[scheme],
                 label=names[scheme])
    ax.set_yscale("log")
    ax.set_ylabel("test error (%), best epoch")
    ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0f}"))
    ax.yaxis.set_minor_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0f}"))
    ax2.set_yscale("log")
    ax2.set_ylabel(r"self-check $\|\tilde x_0 - x_0\| / \|x_0\|$")
    ax2.legend()
    for a in (ax, ax2):
        depth_axis(a, sweep.depths)
        a.grid(True, which="major", alpha=0.3)
    if title:
        fig.suptitle(title)
    # below the panels: inside, the four entries would cover the curves' rise with depth
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=2, frameon=False)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    return fig


def main(argv=None) -> int:
    """``python -m resode_tut.experiments.ch04 fig4 --config cpu``: run (or resume) and
    store paper A's Fig. 4 on CIFAR-10.

    Parameters
    ----------
    argv : list of str, optional
    """
    parser = argparse.ArgumentParser(prog="python -m resode_tut.experiments.ch04",
                                     description=main.__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    fig4 = sub.add_parser("fig4", help="paper A's Fig. 4 on CIFAR-10 (resumable)")
    fig4.add_argument("--config", default="cpu", choices=sorted(FIG4_CONFIGS),
                      help="cpu: the shipped run (about 5 h of one core); gpu-full: the "
                           "paper's scale, on the CPU in this version (about 8 days of one "
                           "core); smoke: seconds")
    fig4.add_argument("--processes", type=positive_int, default=None,
                      help="worker processes (default: all cores)")
    fig4.add_argument("--data", default=None, help="the CIFAR-10 folder")
    fig4.add_argument("--force", action="store_true", help="rerun a current result")
    args = parser.parse_args(argv)
    sweep, result = cifar_fig4(args.config, force=args.force, processes=args.processes,
                               root=args.data)
    print(shipped.describe(result))
    for scheme in FIG4_SCHEMES:
        print(scheme, "adjoint - backprop (points, mean over seeds):",
              " ".join(f"N={d}: {g:+.1f}" for d, g in zip(sweep.depths, sweep.gap(scheme))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
