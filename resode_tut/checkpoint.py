"""Training checkpoints that are written atomically, read safely and never mixed up.

A checkpoint is a dict of tensors, numbers, strings and lists (model, optimiser,
scheduler and gradient-scaler states, random states, the epoch, the history so
far) with a ``fingerprint``: a string naming the configuration and code that
wrote it.  :func:`save` writes it to a temporary file in the same folder and
renames it over the old one, so a process killed mid-write leaves the previous
checkpoint whole.  :func:`load` reads it with ``torch.load(weights_only=True)``
(a checkpoint cannot run code) and refuses one from another configuration or
code version.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["save", "load", "CheckpointMismatch", "FORMAT"]

FORMAT = 1   # the layout of the dict; bumped when it changes


class CheckpointMismatch(ValueError):
    """A checkpoint written by another configuration or code version."""


def save(path, state: dict, fingerprint: str) -> None:
    """Write ``state`` with its ``fingerprint`` to ``path``, atomically.

    Parameters
    ----------
    path : str or Path
    state : dict
        Tensors, numbers, strings, lists and dicts of them.
    fingerprint : str
        What wrote it (configuration, code version, run options).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save({"format": FORMAT, "fingerprint": fingerprint, **state}, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load(path, fingerprint: str, map_location=None) -> dict:
    """Read a checkpoint written by :func:`save` with the same ``fingerprint``.

    Parameters
    ----------
    path : str or Path
    fingerprint : str
    map_location : optional
        As for :func:`torch.load`.

    Raises
    ------
    FileNotFoundError
        No checkpoint at ``path``.
    ValueError
        The file is damaged or not a checkpoint (message names it).
    CheckpointMismatch
        It was written by another configuration or code version.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:   # truncated, garbage, or globals the safe loader refuses
        raise ValueError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err}); "
                         "delete it to start the run afresh") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a checkpoint of this format (version {FORMAT}); "
                         "delete it to start the run afresh")
    if state.get("fingerprint") != fingerprint:
        raise CheckpointMismatch(
            f"checkpoint {path} was written by another configuration or code version "
            f"({state.get('fingerprint')!r}, this run is {fingerprint!r}): resume it with "
            "the code and options that wrote it, or delete it to start afresh")
    return state
