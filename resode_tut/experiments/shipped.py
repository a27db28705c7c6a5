"""Shipped results: long runs computed once, committed under ``results/``, loaded when current.

Some experiments take longer than a page may (chapter 5's Table 1 at the paper's
settings, chapter 6's CPU- and GPU-scale fine-tuning).  Each is a command that writes
one JSON file, ``results/<name>.json``, holding the result and its provenance (command,
configuration, code version, git commit, torch and Python versions, device, date, wall
time, load).  The chapters' full mode loads that file when it is *current* and says where
it came from and how to recompute it; ``RESODE_RECOMPUTE=1`` recomputes instead.

How the key is decided
----------------------
A result is current when its ``key`` equals :func:`result_key` of

- the **configuration** (a JSON-able dict, e.g. ``dataclasses.asdict(config)``);
- the **code that computes it**: every ``resode_tut`` module that the computing module
  imports, directly or not (:func:`resode_tut.experiments.cache.code_modules`), each
  reduced to its Python tokens with comments, docstrings, blank lines and layout removed
  (:func:`code_tokens`).  Rewording a docstring or a comment, or re-wrapping a line, keeps
  every shipped result current; changing an expression, a default or a constant does not.
  The computing module is the one that *runs* the experiment, not the one that stores,
  prints or plots it: Table 1 is keyed on :mod:`~resode_tut.experiments.solver_dependence`,
  not on :mod:`~resode_tut.experiments.table1`, and chapter 6's fine-tuning on
  :mod:`~resode_tut.experiments.finetune`, not on the chapter's figures;
- the **data identity** (e.g. which copy of CIFAR-10), or None for generated data (their
  generator is code, so it is in the key already);
- anything else the caller names (the device type, the scale options).

The torch version, the machine and the wall time are provenance, not key: a result
computed with torch 2.13 on a CPU is shown on Colab's torch, with a line that says which
torch computed it.  Floating-point sums may differ in their last digits between torch
builds; keying on the torch version would make every Colab session recompute hours of
runs to change nothing a figure shows.

A file is written atomically (a reader sees the old file or the whole new one) and read
as JSON only: a result file can never run code.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import shutil
import subprocess
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .cache import code_key, code_tokens

__all__ = ["FORMAT", "ShippedResult", "code_tokens", "code_key", "result_key", "results_dir",
           "recompute_requested", "git_commit", "read", "search_dirs", "load_current",
           "load_checked", "save",
           "check_writable", "named_config",
           "provenance", "describe", "shipped_names", "Experiment"]

#: Version of the file layout; a file of another format is damaged, not stale.
FORMAT = 1
_REPO_RESULTS = Path(__file__).resolve().parents[2] / "results"


def _shipped_dir() -> Path:
    """The results that ship with the code: the checkout's ``results/``, else the copy
    the package installs beside itself (``resode_tut/experiments/results``).
    """
    return _REPO_RESULTS if _REPO_RESULTS.is_dir() else Path(__file__).resolve().parent / "results"


def results_dir() -> Path:
    """Where new results are written: ``$RESODE_RESULTS`` if set, else the shipped
    results' folder (the repository's ``results/``).
    """
    env = os.environ.get("RESODE_RESULTS", "").strip()
    return Path(env).expanduser() if env else _shipped_dir()


def search_dirs(directory=None) -> list[Path]:
    """Where results are looked for, in order: ``directory`` alone when given; else
    ``$RESODE_RESULTS`` (your own runs) and then the shipped results, so that an empty
    ``$RESODE_RESULTS`` never hides what ships with the code.

    Parameters
    ----------
    directory : path, optional
    """
    if directory is not None:
        return [Path(directory)]
    return list(dict.fromkeys([results_dir(), _shipped_dir()]))


def recompute_requested() -> bool:
    """True when ``RESODE_RECOMPUTE`` is set to 1 (or true/yes): compute, do not load."""
    value = os.environ.get("RESODE_RECOMPUTE", "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise ValueError(f"RESODE_RECOMPUTE={value!r}: set it to 1 to recompute shipped "
                     "results, or leave it unset to load them")


def named_config(config, configs: dict, kind: type, what: str):
    """A run's configuration, given as itself or by name.

    Parameters
    ----------
    config : ``kind`` or str
        The configuration, or the name of one in ``configs``.
    configs : dict of str to ``kind``
        The named configurations.
    kind : type
        The configuration class.
    what : str
        What the configuration is of, for the error (e.g. ``"Table 1"``).

    Raises
    ------
    ValueError
        For a name not in ``configs``, with the names to choose from.
    """
    if isinstance(config, kind):
        return config
    if config not in configs:
        raise ValueError(f"unknown {what} configuration {config!r}: choose one of "
                         f"{sorted(configs)}")
    return configs[config]


def result_key(config: dict, module: str, data: str | None = None, **extra) -> str:
    """The key of a result: configuration, the computing code, data identity, extras.

    Parameters
    ----------
    config : dict
        The configuration, JSON-able.
    module : str
        The module that computes the result (see :func:`code_key`).
    data : str, optional
        The data's identity; None for data the code generates.
    **extra
        Anything else that changes the numbers (JSON-able), e.g. ``device="cuda"``.
    """
    text = json.dumps({"config": config, "code": code_key(module), "data": data, **extra},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def git_commit() -> str | None:
    """The checkout's commit, ``+changes`` when the package's files differ from it."""
    here = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", str(here)], cwd=here,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0 or not head.stdout.strip():
        return None
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def provenance(command: str, seconds: float, device: str = "cpu", commit: str | None = None,
               **more) -> dict:
    """Where a result comes from: the command, the software, the machine, the time.

    Parameters
    ----------
    command : str
        The command line that recomputes it.
    seconds : float
        Its wall time.
    device : str
        ``cpu``, or the CUDA device's name.
    commit : str, optional
        :func:`git_commit` when the run started (default: now).
    **more
        Anything else worth recording (processes, load before the run).
    """
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = float("nan")
    cpu = platform.processor() or platform.machine()
    return dict(command=command, seconds=round(float(seconds), 1), device=device,
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                commit=commit or git_commit(), torch=torch.__version__,
                python=platform.python_version(),
                platform=f"{platform.system()} {cpu}, {os.cpu_count()} cores",
                load=round(load, 2), **more)


@dataclass
class ShippedResult:
    """One shipped result file.

    Attributes
    ----------
    name : str
        Its name: the file is ``<results_dir>/<name>.json``.
    key : str
        :func:`result_key` when it was computed.
    config : dict
        The configuration it was computed for.
    provenance : dict
        :func:`provenance`.
    data : Any
        The result itself (JSON).
    path : Path or None
        The file it was read from or written to.
    """

    name: str
    key: str
    config: dict
    provenance: dict
    data: Any
    path: Path | None = field(default=None, compare=False)

    def to_json(self) -> str:
        """The file's text."""
        return json.dumps(dict(format=FORMAT, name=self.name, key=self.key, config=self.config,
                               provenance=self.provenance, data=self.data), indent=1,
                          allow_nan=False) + "\n"


def _check_name(name: str) -> None:
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise ValueError(f"a result name is letters, digits, '-', '_' and '.', got {name!r}")


def read(name: str, directory=None) -> ShippedResult | None:
    """The result file ``name``, or None when there is none.

    Parameters
    ----------
    name : str
    directory : path, optional
        Default :func:`results_dir`.

    Raises
    ------
    ValueError
        The file is damaged (not JSON, cut short, another format or name): the message
        names it and says how to recompute it.
    """
    _check_name(name)
    path = Path(results_dir() if directory is None else directory) / f"{name}.json"
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError(f"format {d.get('format') if isinstance(d, dict) else d!r}, "
                             f"expected {FORMAT}")
        if d["name"] != name or not isinstance(d["key"], str):
            raise ValueError("its name or key does not match")
        if not isinstance(d["config"], dict) or not isinstance(d["provenance"], dict):
            raise ValueError("no configuration or provenance")
        return ShippedResult(name, d["key"], d["config"], d["provenance"], d["data"], path)
    except (KeyError, TypeError, ValueError) as err:    # JSONDecodeError is a ValueError
        raise ValueError(f"the result file {path} is damaged ({err}): delete it and "
                         "recompute it") from err


def load_current(name: str, key: str, directory=None) -> ShippedResult | None:
    """The result ``name`` if its key is ``key``; None when it is missing, stale or
    damaged (a damaged file also warns), or when ``RESODE_RECOMPUTE=1``.

    Parameters
    ----------
    name : str
    key : str
        :func:`result_key` for the current code and configuration.
    directory : path, optional
        Default: each of :func:`search_dirs` in turn.
    """
    if recompute_requested():
        return None
    for folder in search_dirs(directory):
        try:
            found = read(name, folder)
        except ValueError as err:
            warnings.warn(f"{err}; recomputing", stacklevel=2)
            continue
        if found is not None and found.key == key:
            return found
    return None


def load_checked(name: str, key: str, check, directory=None):
    """:func:`load_current`, then ``check(result)``: the result, or None when it is
    missing, stale or fails the check (which then warns with the check's message).

    Parameters
    ----------
    name : str
        As for :func:`load_current`.
    key : str
        As for :func:`load_current`.
    check : callable
        ``check(ShippedResult)``: what a caller makes of the result (e.g. a sweep); it
        raises ``KeyError``, ``TypeError`` or ``ValueError`` for an incomplete one.
    directory : path, optional
        As for :func:`load_current`.

    Returns
    -------
    tuple of (``check``'s return value, ShippedResult), or None
    """
    found = load_current(name, key, directory)
    if found is None:
        return None
    try:
        return check(found), found
    except (KeyError, TypeError, ValueError) as err:
        warnings.warn(f"ignoring {found.path} ({err}): it is recomputed", stacklevel=3)
        return None


def save(result: ShippedResult, directory=None) -> Path:
    """Write ``result`` to ``<directory>/<name>.json`` atomically; return the path.

    Parameters
    ----------
    result : ShippedResult
    directory : path, optional
        Default :func:`results_dir`.
    """
    _check_name(result.name)
    text = result.to_json()
    directory = Path(results_dir() if directory is None else directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{result.name}.json"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)          # atomic: a reader never sees half a file
    finally:
        tmp.unlink(missing_ok=True)
    result.path = path
    return path


def check_writable(directory=None) -> Path:
    """The results folder, after checking that a result can be written there (before
    any work is done): a file in its place or no permission is a ``ValueError``.

    Parameters
    ----------
    directory : path, optional
        Default :func:`results_dir`.
    """
    directory = Path(results_dir() if directory is None else directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"the results folder {directory} is a file: name a folder")
    directory.mkdir(parents=True, exist_ok=True)
    if not os.access(directory, os.W_OK):
        raise ValueError(f"cannot write to the results folder {directory}: name another")
    return directory


def describe(result: ShippedResult) -> str:
    """Two lines for a page: where a loaded result came from and how to recompute it.

    Parameters
    ----------
    result : ShippedResult
    """
    p = result.provenance
    torch_note = ("" if p.get("torch") == torch.__version__ else
                  f"; computed with torch {p.get('torch')}, this is {torch.__version__}")
    commit = f" at commit {p['commit'][:7]}" if p.get("commit") else ""
    load = f", load {p['load']:.1f}" if isinstance(p.get("load"), (int, float)) else ""
    return (f"loaded the shipped result results/{result.name}.json (computed "
            f"{p.get('date', '?')[:10]}{commit} on {p.get('device', '?')}, "
            f"{p.get('seconds', float('nan')) / 60:.0f} min{load}{torch_note})\n"
            f"recompute: {p.get('command', '?')}  (or RESODE_RECOMPUTE=1 for this page)")


def shipped_names(directory=None) -> list[str]:
    """The names of the result files in ``directory`` (default :func:`results_dir`).

    Parameters
    ----------
    directory : path, optional
    """
    directory = Path(results_dir() if directory is None else directory)
    return sorted(p.stem for p in directory.glob("*.json"))


@dataclass(frozen=True)
class Experiment:
    """A shipped experiment: its named configurations, the module whose code keys its
    results, the names of its files and its command line, in one place for the chapter
    modules that load, run and store it (chapter 4's Fig. 4, chapter 6's Table 2,
    chapter 8's benchmark).

    Attributes
    ----------
    prefix : str
        A configuration's result is ``<prefix>-<configuration name>.json``.
    what : str
        What it is, for errors (e.g. ``"Fig. 4"``).
    configs : dict of str to ``kind``
        The named configurations.
    kind : type
        The configuration dataclass.
    module : str
        The computing module (:func:`result_key`).
    command_line : str
        The command, less its ``--config`` option.
    """

    prefix: str
    what: str
    configs: dict
    kind: type
    module: str
    command_line: str

    def config(self, config):
        """:func:`named_config`: ``config`` itself, or the configuration of that name.

        Parameters
        ----------
        config : ``kind`` or str
        """
        return named_config(config, self.configs, self.kind, self.what)

    def name(self, config) -> str:
        """The result's name, ``<prefix>-<configuration name>``.

        Parameters
        ----------
        config : ``kind`` or str
        """
        return f"{self.prefix}-{self.config(config).name}"

    def key(self, config) -> str:
        """:func:`result_key` of the configuration and the computing module's code.

        Parameters
        ----------
        config : ``kind`` or str
        """
        return result_key(asdict(self.config(config)), self.module)

    def command(self, config, options: str = "") -> str:
        """The command that recomputes (or resumes) the result.

        Parameters
        ----------
        config : ``kind`` or str
        options : str
            Added after ``--config <name>`` (e.g. ``" --device cuda"``).
        """
        return f"{self.command_line} --config {self.config(config).name}{options}"

    def chunk_folder(self, config, key: str) -> Path:
        """Where a run keeps its finished jobs, ``<results_dir>/.partial/<name>-<key>``
        (the results folder checked writable first): a stopped run started again resumes
        there.

        Parameters
        ----------
        config : ``kind`` or str
        key : str
            :meth:`key` when the run started.
        """
        return check_writable() / ".partial" / f"{self.name(config)}-{key}"

    def load(self, config, check=None, directory=None):
        """The current result of ``config``.

        Parameters
        ----------
        config : ``kind`` or str
        check : callable, optional
            As for :func:`load_checked`; without it, :func:`load_current`.
        directory : path, optional
            As for :func:`load_current`.

        Returns
        -------
        ShippedResult or None (no ``check``); (``check``'s value, ShippedResult) or None
        """
        if check is None:
            return load_current(self.name(config), self.key(config), directory)
        return load_checked(self.name(config), self.key(config), check, directory)

    def store(self, config, key: str, data: dict, /, chunks=None, command: str | None = None,
              **details) -> ShippedResult:
        """Save ``data`` as the result of ``config``, then remove the run's chunks, which
        have served.

        Parameters
        ----------
        config : ``kind`` or str
        key : str
            :meth:`key` when the run started (the code that ran).
        data : dict
            The result; ``data["seconds"]`` is its wall time.
        chunks : path, optional
            The run's :meth:`chunk_folder`, removed once the result is saved.
        command : str, optional
            The command that recomputes it (default :meth:`command`).
        **details
            For :func:`provenance` (``commit``, ``device``, ``processes`` ...).
        """
        cfg = self.config(config)
        result = ShippedResult(self.name(cfg), key, asdict(cfg),
                               provenance(command or self.command(cfg), data["seconds"],
                                          **details), data)
        save(result)
        if chunks is not None:
            shutil.rmtree(chunks)
        return result
