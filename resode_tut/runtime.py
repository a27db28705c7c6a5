"""Run mode, device and seeds: what the first cell of every chapter sets up.

``RESODE_MODE`` chooses the scale of every experiment:

* ``quick`` -- small sizes that still show each effect (CI, a first look);
* ``full`` (default) -- the chapter's real scale.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["MODES", "Runtime", "get_mode", "seed_everything", "setup"]

MODES = ("quick", "full")


def get_mode() -> str:
    """The run mode from the environment variable ``RESODE_MODE`` (default ``full``)."""
    mode = os.environ.get("RESODE_MODE", "full").strip().lower() or "full"
    if mode not in MODES:
        raise ValueError(f"RESODE_MODE={mode!r} is not a run mode: set it to one of {MODES}")
    return mode


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's (CPU and CUDA) generators."""
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
    """

    mode: str
    device: torch.device
    seed: int

    @property
    def quick(self) -> bool:
        return self.mode == "quick"

    def pick(self, quick: Any, full: Any) -> Any:
        """``quick`` in quick mode, ``full`` otherwise: ``rt.pick(quick=4, full=16)``."""
        return quick if self.quick else full


def setup(seed: int = 0, device: str | torch.device | None = None) -> Runtime:
    """Read the run mode, pick the device and seed everything.

    Parameters
    ----------
    seed : int
    device : str or torch.device, optional
        Force a device; by default CUDA when available, else the CPU.

    Returns
    -------
    Runtime
    """
    mode = get_mode()
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    seed_everything(seed)
    return Runtime(mode=mode, device=torch.device(device), seed=seed)
