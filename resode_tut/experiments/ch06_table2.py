"""Paper A's Table 2 at CPU scale, as a shipped result (chapter 6): load it when current,
else run it (:mod:`resode_tut.experiments.table2`, resumable) and store it with its
provenance; a table and a figure of it.

Command line (writes ``results/ch06-table2-<config>.json``; a stopped run resumes)::

    python -m resode_tut.experiments.ch06_table2 --config cpu
"""
from __future__ import annotations

import argparse
import copy
import platform
import tempfile

import torch

from ..datasets.cifar import cifar10, data_identity
from ..runtime import get_threads
from . import shipped
from .cli import check_device, positive_int, torch_device
from .gradient_methods import saved_bytes
from .table2 import CONFIGS, RUNS, Table2Config, compute_table2

__all__ = ["TABLE2", "COMPUTING_MODULE", "CONFIGS", "RUNS", "Table2Config", "command",
           "check", "load", "table2", "for_page", "stage_saved_bytes", "rows", "plot",
           "main"]

#: Table 2 as a shipped experiment: its configurations, its computing module (the code its
#: result is keyed on, with the configuration), ``ch06-table2-<config>.json`` and its
#: command. The CIFAR-10 copy is recorded in the result (``data_source``, ``data_id``), not
#: keyed: a result made on the JPEG mirror is shown, naming it, where the official archive
#: is installed.
TABLE2 = shipped.Experiment("ch06-table2", "Table 2", CONFIGS, Table2Config,
                            "resode_tut.experiments.table2",
                            "python -m resode_tut.experiments.ch06_table2")
COMPUTING_MODULE = TABLE2.module


def command(config, device="cpu") -> str:
    """The command that recomputes (or resumes) ``config``'s shipped result.

    Parameters
    ----------
    config : Table2Config or str
    device : str or torch.device
        Where it runs (named in the command unless the CPU).
    """
    device = torch.device(device)
    return TABLE2.command(config, "" if device.type == "cpu" else
                          f" --device {device.type} --download")


def check(config, data: dict) -> None:
    """Raise ``ValueError`` naming what is missing from a Table 2 result of ``config``:
    a run, an epoch, or a non-finite number.

    Parameters
    ----------
    config : Table2Config or str
    data : dict
        :func:`resode_tut.experiments.table2.compute_table2`'s result.
    """
    cfg = TABLE2.config(config)
    if len(data["pretrain"]["test_accuracy"]) != cfg.pretrain_epochs:
        raise ValueError("the pre-training has the wrong number of epochs")
    for run in RUNS:
        r = data["runs"].get(run)
        if r is None or len(r["test_accuracy"]) != cfg.epochs:
            raise ValueError(f"no complete {run} fine-tuning")
        numbers = [*r["test_accuracy"], *r["train_loss"], r["stage_travel"],
                   r["gradient_travel"]]
        if not all(float(v) == float(v) and abs(float(v)) != float("inf") for v in numbers):
            raise ValueError(f"the {run} fine-tuning has a non-finite number")
    if len(data["runs"]["adjoint"]["self_check"]) != cfg.epochs:
        raise ValueError("the adjoint's self-check is missing for some epochs")


def device_name(device) -> str:
    """The device in words: the GPU's name, or ``CPU (<processor>)``."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()})"


def load(config="cpu", directory=None):
    """The stored result of ``config`` when it is current for this code and complete, else
    None (with a warning for an incomplete file; always None with ``RESODE_RECOMPUTE=1``).

    Parameters
    ----------
    config : Table2Config or str
    directory : path, optional
        Where to look (default: ``$RESODE_RESULTS``, then the shipped results).

    Returns
    -------
    ShippedResult or None
    """
    cfg = TABLE2.config(config)
    loaded = TABLE2.load(cfg, lambda found: check(cfg, found.data), directory)
    return None if loaded is None else loaded[1]


def table2(config="cpu", store: bool = True, force: bool = False,
           processes: int | None = None, root=None, device="cpu", download: bool = False):
    """Paper A's Table 2 experiment: the shipped result when current, else the run (stored
    with ``store``; a stopped run resumes from its checkpoints and finished fine-tunings).

    Parameters
    ----------
    config : Table2Config or str
        ``"cpu"`` (the shipped run), ``"gpu-full"`` (the paper's) or ``"smoke"``.
    store : bool
        Write the result to the results folder; the run's checkpoints live under its
        ``.partial`` folder, removed once the result is stored (without ``store``: in a
        temporary folder, so a stopped run starts afresh).
    force : bool
        Compute even if a current result is shipped.
    processes : int, optional
        Worker processes for the fine-tunings (default: all cores).
    root : path, optional
        The CIFAR-10 folder (default :func:`resode_tut.datasets.cifar.default_root`).
    device : str or torch.device
        Where the networks train (recorded in the result and its provenance, not keyed:
        the page shows whichever run of the configuration is stored, naming its device).
    download : bool
        Download the official archive if the data are missing.

    Returns
    -------
    data : dict
        :func:`resode_tut.experiments.table2.compute_table2`'s result.
    result : ShippedResult or None
        Where it came from (loaded or stored), else None.
    """
    cfg = TABLE2.config(config)
    if not force:
        found = load(cfg)
        if found is not None:
            return found.data, found
    device = check_device(device)
    source = cifar10(root, train=False, download=download).source   # missing data fail first
    data_id = data_identity(root)
    key = TABLE2.key(cfg)
    if not store:          # checkpoints in a temporary folder, removed with it
        with tempfile.TemporaryDirectory() as tmp:
            data = compute_table2(cfg, processes, tmp, root, fingerprint=key,
                                  device=str(device))
        data.update(data_source=source, data_id=data_id, device=device_name(device))
        check(cfg, data)
        return data, None
    folder = TABLE2.chunk_folder(cfg, key)
    commit = shipped.git_commit()
    data = compute_table2(cfg, processes, folder, root, fingerprint=key, device=str(device))
    data.update(data_source=source, data_id=data_id, device=device_name(device))
    check(cfg, data)
    invocations = data.pop("invocations")
    return data, TABLE2.store(cfg, key, data, folder, command(cfg, device),
                              device=data["device"], commit=commit,
                              processes=data["processes"], invocations=invocations,
                              data=source)


def for_page(quick: bool, root=None):
    """What a chapter shows: the shipped ``"cpu"`` result when it is current for this code
    (computed on whichever copy of CIFAR-10 it names); otherwise, in full mode, that run
    itself (hours on a CPU, resumable), and in quick mode the ``"smoke"`` run (seconds:
    the code runs end to end, its numbers are not results).

    Parameters
    ----------
    quick : bool
    root : path, optional
        The CIFAR-10 folder for a run.

    Returns
    -------
    data : dict
        :func:`table2`'s result.
    config : Table2Config
        The configuration it is of.
    result : ShippedResult or None
        The stored file with its provenance (None for the smoke run).
    """
    found = load("cpu")
    if found is not None:
        return found.data, CONFIGS["cpu"], found
    name_ = "smoke" if quick else "cpu"
    data, result = table2(name_, store=not quick, root=root)
    return data, CONFIGS[name_], result


def stage_saved_bytes(model, x: torch.Tensor, stage: int, method: str) -> int:
    """Bytes the residual functions of ``model.stages[stage]`` keep for backward in one
    forward pass of ``x`` (train mode, a copy: the model's BatchNorm statistics are left
    alone), by backprop or by the adjoint.

    Parameters
    ----------
    model : BottleneckResNet
    x : torch.Tensor, shape (B, 3, 32, 32)
        Normalised images.
    stage : int
    method : {"backprop", "adjoint"}
    """
    model = copy.deepcopy(model).train()
    with torch.no_grad():
        z = model.stem(x)
        for s in range(stage):
            z = torch.relu(model.stages[s](model.blocks[s](z)))
        z = model.blocks[stage](z)
    return saved_bytes(model.stages[stage], z, method)


def rows(data: dict) -> list:
    """Table 2's rows: ``(what, test accuracy %)``, the tied network before fine-tuning,
    then each fine-tuning's last epoch.

    Parameters
    ----------
    data : dict
        :func:`table2`'s result.
    """
    out = [("tied, before fine-tuning", 100 * data["start_accuracy"])]
    labels = {"backprop": "fine-tuned, backprop", "adjoint": "fine-tuned, adjoint",
              "decay": "weight decay alone (gradient zeroed)"}
    for run in RUNS:
        out.append((labels[run], 100 * data["runs"][run]["test_accuracy"][-1]))
    return out


_STYLE = {"backprop": ("tab:blue", "-", "o"), "adjoint": ("tab:orange", "--", "x"),
          "decay": ("0.45", "-.", "")}
_LABEL = {"backprop": "backprop", "adjoint": "adjoint",
          "decay": "control: weight decay alone (gradient zeroed)"}


def plot(data: dict, title: str = ""):
    """Test accuracy and training loss per fine-tuning epoch, the three runs, the tied
    network's accuracy as a dotted line; returns the matplotlib Figure.

    Parameters
    ----------
    data : dict
        :func:`table2`'s result.
    title : str
    """
    import matplotlib.pyplot as plt

    fig, (acc, loss) = plt.subplots(1, 2, figsize=(9, 4.1), layout="constrained")
    start = 100 * data["start_accuracy"]
    acc.axhline(start, color="0.3", ls=":", lw=1, label="tied, before fine-tuning")
    for run in RUNS:
        colour, ls, marker = _STYLE[run]
        r = data["runs"][run]
        epochs = range(len(r["test_accuracy"]) + 1)
        acc.plot(epochs, [start] + [100 * a for a in r["test_accuracy"]], color=colour, ls=ls,
                 marker=marker, label=_LABEL[run])
        loss.plot(range(1, len(r["train_loss"]) + 1), r["train_loss"], color=colour, ls=ls,
                  marker=marker)
    acc.set(xlabel="fine-tuning epoch (0: the untied start)", ylabel="test accuracy (%)")
    loss.set(xlabel="fine-tuning epoch", ylabel="training loss (epoch mean)")
    # below the panels: inside, the entries would cover the curves
    fig.legend(*acc.get_legend_handles_labels(), loc="outside lower center", ncol=2,
               frameon=False)
    if title:
        fig.suptitle(title)
    return fig


def main(argv=None) -> int:
    """``python -m resode_tut.experiments.ch06_table2 --config cpu``: run (or resume) and
    store paper A's Table 2 experiment at CPU scale.

    Parameters
    ----------
    argv : list of str, optional
    """
    parser = argparse.ArgumentParser(prog="python -m resode_tut.experiments.ch06_table2",
                                     description=main.__doc__.split("\n")[0])
    parser.add_argument("--config", default="cpu", choices=sorted(CONFIGS))
    parser.add_argument("--processes", type=positive_int, default=None,
                        help="worker processes for the fine-tunings (default: all cores)")
    parser.add_argument("--data", default=None, help="the CIFAR-10 folder")
    parser.add_argument("--device", type=torch_device,
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--download", action="store_true",
                        help="download the official archive if the data are missing")
    parser.add_argument("--force", action="store_true", help="rerun a current result")
    parser.add_argument("--threads", type=positive_int, default=get_threads(),
                        help="torch threads of the pre-training (default $RESODE_THREADS, "
                             "else 1); each fine-tuning process runs one")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data, result = table2(args.config, force=args.force, processes=args.processes,
                          root=args.data, device=args.device, download=args.download)
    if result is not None:
        print(shipped.describe(result))
    for what, acc in rows(data):
        print(f"{what:40s} {acc:5.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
