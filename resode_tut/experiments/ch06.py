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
import dataclasses
import json
import os
import sys
import warnings
from dataclasses import asdict
from pathlib import Path

import torch

from .. import distributed
from ..datasets.cifar import SHORT_NAMES, cifar10, data_identity
from ..runtime import get_threads
from . import shipped
from .cifar_training import (
    AMP_DTYPES,
    METHODS,
)
from .cli import positive_int, torch_device
from .finetune import (
    CONFIGS,
    CONTROL,
    DEFAULT_SCALE,
    FinetuneConfig,
    cache_key,
    code_version,
    get_config,
    run,
    scale_options,
)
from .finetune_result import (
    FinetuneResult,
    MalformedResult,
)
from .plots import use_style
from .shipped import describe

__all__ = ["use_style",
           "FinetuneConfig", "CONFIGS", "CONTROL", "METHODS", "run", "train_or_load", "load",
           "cache_key",
           "code_version", "default_results_dir", "validate", "FinetuneResult", "get_config",
           "result_name", "command", "describe", "describe_config",
           "MalformedResult", "stale_results", "plot_accuracy", "plot_memory",
           "plot_gradients", "plot", "summary", "main"]


def default_results_dir() -> Path:
    """Where results are stored: :func:`resode_tut.experiments.shipped.results_dir`
    (``$RESODE_RESULTS``, else the repository's ``results/``).
    """
    return shipped.results_dir()


def default_checkpoint_root() -> Path:
    """Where the command line keeps per-epoch checkpoints by default:
    ``$RESODE_CHECKPOINTS``, else ``~/.cache/resode_tut/checkpoints`` (never the results
    folder, which is committed).
    """
    env = os.environ.get("RESODE_CHECKPOINTS", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "resode_tut" / "checkpoints"


def result_name(config: FinetuneConfig | str, device: str | torch.device = "cpu",
                scale: dict | None = None) -> str:
    """The stored result's name: ``ch06-<config>-<device type>``, plus the scale options
    when they are not one process in float32 (e.g. ``ch06-gpu-full-cuda-bf16-4p``).

    Parameters
    ----------
    config : FinetuneConfig or str
    device : str or torch.device
    scale : dict, optional
        :func:`scale_options`.
    """
    name = f"ch06-{get_config(config).name}-{torch.device(device).type}"
    if scale is not None and scale != DEFAULT_SCALE:
        name += (f"-{scale['amp']}-{scale['processes']}p"
                 + ("-syncbn" if scale["sync_batchnorm"] else ""))
    return name


def command(config: FinetuneConfig | str, device: str | torch.device = "cpu") -> str:
    """The command line that recomputes ``config``'s result on ``device``.

    Parameters
    ----------
    config : FinetuneConfig or str
    device : str or torch.device
    """
    extra = " --download" if torch.device(device).type == "cuda" else ""
    return (f"python -m resode_tut.experiments.ch06 --config {get_config(config).name} "
            f"--device {torch.device(device).type}{extra}")


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
    if result.config != get_config(config):
        return "written for another configuration"
    return result.problems(METHODS)


def _read(name: str, out_dir: Path, config: FinetuneConfig, device,
          data_id: str | None) -> FinetuneResult | None:
    """The stored result ``name`` if it is current (for ``data_id``; for the data copy it
    names when ``data_id`` is None) and complete; ``None`` (with a warning for a
    damaged or incomplete file) otherwise.
    """
    if shipped.recompute_requested():
        return None
    try:
        found = shipped.read(name, out_dir)
        if found is None:
            return None
        result = FinetuneResult.from_json(json.dumps(found.data), FinetuneConfig)
    except MalformedResult as err:      # whole JSON, but not this code's result format
        warnings.warn(f"ignoring the unreadable result file {Path(out_dir) / name}.json "
                      f"({err}: written by another version of the code, or damaged): it is "
                      "recomputed", stacklevel=3)
        return None
    except ValueError as err:
        warnings.warn(f"ignoring the damaged result file {Path(out_dir) / name}.json ({err}): "
                      "it is recomputed", stacklevel=3)
        return None
    expected = cache_key(config, device, result.data_id if data_id is None else data_id,
                         result.scale)
    if found.key != expected or result.key != expected:
        return None
    problem = validate(result, config)
    if problem is not None:
        warnings.warn(f"ignoring the incomplete result file {found.path} ({problem}): it is "
                      "recomputed", stacklevel=3)
        return None
    return dataclasses.replace(result, path=str(found.path), cached=True, shipped=found)


def load(config: FinetuneConfig | str, device: str | torch.device = "cpu",
         out_dir=None, data_root=None, any_data: bool = False,
         scale: dict | None = None) -> FinetuneResult | None:
    """The stored result for this configuration, device type, code and data copy, or
    ``None`` (also, with a warning, for a damaged or incomplete file, and always when
    ``RESODE_RECOMPUTE=1``).

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
        Instead, the result from whatever copy of CIFAR-10 it names in ``data_source``:
        for showing a result made on another machine (the shipped results come from the
        JPEG mirror; Colab reads the official archive).
    scale : dict, optional
        :func:`scale_options` (default: one process, float32).
    """
    config = get_config(config)
    name = result_name(config, device, scale)
    data_id = None if any_data else data_identity(data_root)
    for folder in shipped.search_dirs(out_dir):
        found = _read(name, folder, config, device, data_id)
        if found is not None:
            return found
    return None


def stale_results(config: FinetuneConfig | str, out_dir=None) -> list:
    """Result files of this configuration that are *not* current (other configuration,
    code or scale, or damaged): they are never loaded.

    Parameters
    ----------
    config : FinetuneConfig or str
        A configuration or the name of one of :data:`CONFIGS`.
    out_dir : path, optional
        Results folder (default :func:`default_results_dir`).
    """
    config = get_config(config)
    out_dir = default_results_dir() if out_dir is None else Path(out_dir)
    stale = []
    for path in sorted(out_dir.glob(f"ch06-{config.name}-*.json")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            current = False
            for device in ("cpu", "cuda"):
                found = _read(path.stem, out_dir, config, device, None)
                current |= (found is not None
                            and path.stem == result_name(config, device, found.scale))
            if not current:
                stale.append(path)
    return stale


def train_or_load(config: FinetuneConfig | str, device: str | torch.device = "cpu",
                  out_dir=None, data_root=None, download: bool = False,
                  force: bool = False, amp: str | None = None, sync_batchnorm: bool = False,
                  checkpoint_dir=None, resume: bool = False,
                  any_data: bool = False) -> FinetuneResult:
    """:func:`load` the result if stored and current (same configuration, device type,
    code, data copy), else :func:`run` it and store it under ``out_dir`` with its
    provenance (:mod:`resode_tut.experiments.shipped`).

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
        Run even if a current result is stored.
    amp : {None, "bf16", "fp16"}
        Mixed precision, as for :func:`run`.
    sync_batchnorm : bool
        As for :func:`run`.
    checkpoint_dir : path, optional
        As for :func:`run`.
    resume : bool
        As for :func:`run`.
    any_data : bool
        Load a stored result computed on any copy of CIFAR-10 (as :func:`load`); a new
        run still reads ``data_root``.

    Under torchrun every process calls it; only rank 0 writes the file.

    Returns
    -------
    FinetuneResult
        With ``path`` (its file) and ``cached`` (True when it was loaded) set.
        A result that fails :func:`validate` is never written; a damaged or incomplete
        file is recomputed with a warning.
    """
    config = get_config(config)
    looked_in = out_dir                    # None: $RESODE_RESULTS, then the shipped results
    out_dir = default_results_dir() if out_dir is None else Path(out_dir)
    shipped.check_writable(out_dir)            # a bad folder fails now, not after the run
    scale = scale_options(amp, sync_batchnorm)
    name = result_name(config, device, scale)
    if not force and any_data:
        result = load(config, device, looked_in, any_data=True, scale=scale)
        if result is not None:
            return result
    cifar10(data_root, train=False, download=download)   # there, and sound, or fetched
    result = None if force else load(config, device, looked_in, data_root, scale=scale)
    if result is None:
        commit = shipped.git_commit()
        result = run(config, device, data_root, download, amp, sync_batchnorm,
                     checkpoint_dir, resume)
        problem = validate(result, config)
        if problem is not None:
            raise RuntimeError(f"the run gave an incomplete result ({problem}); not cached")
        stored = shipped.ShippedResult(
            name, result.key, asdict(config),
            shipped.provenance(command(config, device), result.seconds, result.device,
                               commit=commit, data=result.data_source, scale=scale,
                               load_before=round(result.load_average[0], 2)),
            json.loads(result.to_json()))
        if distributed.current().is_main:
            shipped.save(stored, out_dir)
        result = dataclasses.replace(result, path=str(out_dir / f"{name}.json"), cached=False,
                                     shipped=stored)
    return result


_COLOURS = {"backprop": "tab:blue", "adjoint": "tab:orange", CONTROL: "0.45"}


def plot_accuracy(result: FinetuneResult, ax) -> None:
    """Test accuracy per fine-tuning epoch for both methods and for the weight-decay-only
    control, with the tied network's accuracy after pre-training (at its own depth) as a
    dotted line.

    Parameters
    ----------
    result : FinetuneResult
    ax : matplotlib.axes.Axes
    """
    import matplotlib.ticker as mticker

    pre = result.pretrain
    ax.axhline(100 * pre.test_accuracy[-1], color="0.5", ls=":",
               label=f"tied, N = {pre.depth}, after pre-training")
    style = {"backprop": ("-", "o"), "adjoint": ("--", "x"), CONTROL: (":", ".")}
    for m in (*METHODS, CONTROL):
        acc = result.finetune[m].test_accuracy
        label = (f"untied, N = {result.depth}, {m}" if m in METHODS
                 else "stage gradient zeroed (weight decay alone)")
        ax.plot(range(len(acc)), [100 * a for a in acc], color=_COLOURS[m], ls=style[m][0],
                marker=style[m][1], label=label)
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

    fig, axes = plt.subplots(1, 3, figsize=(9, 3.6), layout="constrained")
    plot_accuracy(result, axes[0])
    plot_memory(result, axes[1])
    plot_gradients(result, axes[2])
    fig.suptitle(f"{result.config.name} on {result.device} - {result.data_source}")
    return fig


def describe_config(config: FinetuneConfig | str, width: int = 80) -> str:
    """The configuration as lines of at most ``width`` characters (``field=value``
    groups), for a page's column instead of one long dataclass repr.

    Parameters
    ----------
    config : FinetuneConfig or str
    width : int
    """
    config = get_config(config)
    lines, line = [], f"{config.name}:"
    for f in dataclasses.fields(config)[1:]:
        item = f"{f.name}={getattr(config, f.name)!r}"
        if len(line) + 1 + len(item) > width:
            lines.append(line)
            line = "  " + item
        else:
            line += " " + item
    return "\n".join(lines + [line])


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
    for m in (*METHODS, CONTROL):
        lines.append(f"fine-tune N={result.depth} with {m:8s}: "
                     f"{100 * ft[m].test_accuracy[0]:.1f}% -> {100 * ft[m].test_accuracy[-1]:.1f}%"
                     f" in {len(ft[m].seconds)} epochs, "
                     f"{sum(ft[m].seconds) / len(ft[m].seconds):.1f} s/epoch, stage moved "
                     f"{ft[m].stage_travel:.3f} ({ft[m].gradient_travel:.3f} from the "
                     f"{CONTROL} run's end)")
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


def _parser() -> argparse.ArgumentParser:
    """The command line's arguments (see :func:`main`)."""
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
                        help="results folder (default $RESODE_RESULTS, else the "
                             "repository's results/)")
    parser.add_argument("--force", action="store_true", help="run even if a result is stored")
    parser.add_argument("--amp", choices=sorted(AMP_DTYPES), default=None,
                        help="mixed precision: autocast to bfloat16 or float16 (with a "
                             "gradient scaler); the adjoint's backward re-enters it")
    parser.add_argument("--sync-bn", action="store_true",
                        help="under torchrun: BatchNorm statistics over the global batch "
                             "(SyncBatchNorm, CUDA only)")
    parser.add_argument("--checkpoints", default=None,
                        help="folder of the per-epoch checkpoints (default: "
                             "$RESODE_CHECKPOINTS or ~/.cache/resode_tut/checkpoints, "
                             "/<configuration>-<key>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the checkpoints (automatic after torchrun's "
                             "elastic restart)")
    parser.add_argument("--threads", type=positive_int, default=get_threads(),
                        help="torch threads per process (default $RESODE_THREADS, else 1, as "
                             "the chapters run: the numbers do not depend on the core count)")
    return parser


def main(argv=None) -> int:
    """The command line: ``python -m resode_tut.experiments.ch06 --help``.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (default: ``sys.argv[1:]``).
    """
    parser = _parser()
    args = parser.parse_args(argv)
    for flag, folder in (("--out", args.out), ("--checkpoints", args.checkpoints)):
        if folder is not None and Path(folder).exists() and not Path(folder).is_dir():
            parser.error(f"{flag} {folder} is a file: name a folder")
    if not args.download:   # the data must be there: say so before any work, no traceback
        try:
            data_identity(args.data)
        except (FileNotFoundError, ValueError) as err:
            parser.error(f"--data: {err}")
    torch.set_num_threads(args.threads)
    dist, device = distributed.setup(args.device)
    try:
        out = default_results_dir() if args.out is None else Path(args.out)
        config = get_config(args.config)
        if args.download:   # one process fetches, the others wait for it
            if dist.is_main:
                cifar10(args.data, train=False, download=True)
            distributed.barrier()
        checkpoints = args.checkpoints
        if checkpoints is None:
            key = cache_key(config, device, data_identity(args.data),
                            scale_options(args.amp, args.sync_bn))
            checkpoints = default_checkpoint_root() / f"{config.name}-{key}"
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
