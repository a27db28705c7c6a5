"""Argument types for the chapters' command lines (chapters 3 and 6): bad values are
argparse errors that name the argument, before any work or cache lookup.
"""
from __future__ import annotations

import argparse

import torch

__all__ = ["positive_int", "torch_device"]


def positive_int(text: str) -> int:
    """An integer >= 1.

    Parameters
    ----------
    text : str
        The argument as typed.
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def torch_device(text: str) -> str:
    """A device torch knows and this machine has (``cpu``, ``cuda``, ``cuda:1``, ...).

    Parameters
    ----------
    text : str
        The argument as typed.
    """
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}: use 'cpu' or 'cuda'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError("'cuda' asked for but torch sees no GPU: use cpu")
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"device {text!r}: only 'cpu' and 'cuda' are supported")
    return text
