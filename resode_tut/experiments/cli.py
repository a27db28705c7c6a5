"""Argument types for the chapters' command lines (chapters 3 and 6): bad values are
argparse errors that name the argument, before any work or cache lookup.
"""
from __future__ import annotations

import argparse

import torch

__all__ = ["positive_int", "check_device", "torch_device"]


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


def check_device(device: str | torch.device) -> torch.device:
    """A device torch knows and this machine has (``cpu``, ``cuda``, ``cuda:1``, ...).

    Parameters
    ----------
    device : str or torch.device

    Raises
    ------
    ValueError
        Unknown, not CPU or CUDA, or CUDA without a GPU.
    """
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"unknown device {device!r}: use 'cpu' or 'cuda'") from None
    if parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}: only 'cpu' and 'cuda' are supported")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for but torch sees no GPU: use cpu")
    return parsed


def torch_device(text: str) -> str:
    """:func:`check_device` as an argparse type: a bad device is an argparse error.

    Parameters
    ----------
    text : str
        The argument as typed.
    """
    try:
        check_device(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text
