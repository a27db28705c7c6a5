"""Run mode, device, threads and seeds: what the first cell of every chapter sets up.

``RESODE_MODE`` chooses the scale of every experiment:

* ``quick`` -- small sizes that still show each effect (CI, a first look);
* ``full`` (default) -- the chapter's real scale.

``RESODE_THREADS`` (default 1) is the number of CPU threads torch uses in the
chapter's own process.  A fixed count keeps the numbers independent of the
machine's core count (the order of floating-point sums depends on it), and one
thread does not collapse when the cores are shared: measured on a 2-core
machine, a chapter's small-tensor workload took 1.5-1.7 s with one thread and
1.6-10.6 s with torch's default two spinning threads while two other processes
ran (0.93-1.03 s and 0.59-0.71 s idle).  Sweeps of many small runs use worker processes instead
(``RESODE_PROCESSES``, one thread each).
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["MODES", "Runtime", "get_mode", "get_threads", "seed_everything", "setup"]

MODES = ("quick", "full")


def get_mode() -> str:
    """The run mode from the environment variable ``RESODE_MODE`` (default ``full``)."""
    mode = os.environ.get("RESODE_MODE", "full").strip().lower() or "full"
    if mode not in MODES:
        raise ValueError(f"RESODE_MODE={mode!r} is not a run mode: set it to one of {MODES}")
    return mode


def env_positive_int(name: str, default: int | None) -> int | None:
    """The environment variable ``name`` as a positive integer, ``default`` if unset.

    Parameters
    ----------
    name : str
        E.g. ``"RESODE_THREADS"``.
    default : int or None
        Returned when the variable is unset or empty.

    Raises
    ------
    ValueError
        The variable is set to anything but a positive integer.
    """
    env = os.environ.get(name, "").strip()
    if not env:
        return default
    if not env.isdigit() or int(env) < 1:
        raise ValueError(f"{name}={env!r} is not a positive integer: set it to 1 or more")
    return int(env)


def get_threads() -> int:
    """CPU threads for a chapter: ``RESODE_THREADS`` if set (a positive integer), else 1."""
    return env_positive_int("RESODE_THREADS", 1)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's (CPU and CUDA) generators.

    Parameters
    ----------
    seed : int
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


@dataclass(frozen=True)
class Runtime:
    """What a chapter runs with.

    Attributes
    ----------
    mode : {"quick", "full"}
    device : torch.device
        ``cuda`` when a GPU is present, else ``cpu``.
    seed : int
    threads : int
        CPU threads torch uses in this process.
    """

    mode: str
    device: torch.device
    seed: int
    threads: int = 1

    @property
    def quick(self) -> bool:
        """True in quick mode."""
        return self.mode == "quick"

    def pick(self, quick: Any, full: Any) -> Any:
        """``quick`` in quick mode, ``full`` otherwise: ``run.pick(quick=4, full=16)``.

        Parameters
        ----------
        quick : object
            The value for quick mode.
        full : object
            The value for full mode.
        """
        return quick if self.quick else full


def setup(seed: int = 0, device: str | torch.device | None = None,
          threads: int | None = None) -> Runtime:
    """Read the run mode, pick the device, fix the thread count and seed everything.

    Parameters
    ----------
    seed : int
    device : str or torch.device, optional
        Force a device; by default CUDA when available, else the CPU.
    threads : int, optional
        CPU threads for torch in this process; default :func:`get_threads`
        (``RESODE_THREADS``, else 1).

    Returns
    -------
    Runtime
    """
    mode = get_mode()
    threads = get_threads() if threads is None else threads
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(threads)
    seed_everything(seed)
    return Runtime(mode=mode, device=torch.device(device), seed=seed, threads=threads)
