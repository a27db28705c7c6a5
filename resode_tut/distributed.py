"""Data-parallel training on PyTorch's own engine: ``torchrun`` + DistributedDataParallel.

A script that calls :func:`setup` runs unchanged as one process or under
``torchrun --nproc_per_node=K`` (and several nodes with the usual rendezvous
flags): :func:`setup` reads torchrun's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``) and joins the default process group (NCCL on CUDA, gloo on the
CPU).  :func:`wrap` puts a model in :class:`~torch.nn.parallel.DistributedDataParallel`,
whose gradient all-reduce works with the memory-free adjoint: the adjoint's
backward returns every stage parameter's gradient through autograd, so DDP's
hooks see them as they see backprop's (tested against one process).

:func:`shard` splits a *global* batch between the processes: every process
draws the same seeded order and augmentation for the whole global batch and
keeps its slice, so ``K`` processes with a global batch ``B`` see exactly the
images one process sees with ``B`` (each image once per epoch, disjoint slices,
as :class:`~torch.utils.data.DistributedSampler` gives), and their averaged
gradient is that of the global batch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from torch import nn

__all__ = ["Distributed", "setup", "current", "shard", "shard_weight", "all_reduce_sum", "wrap",
           "barrier",
           "teardown"]


@dataclass(frozen=True)
class Distributed:
    """Where this process stands in a run.

    Attributes
    ----------
    rank : int
        This process, ``0 <= rank < world_size``.
    world_size : int
        Processes in the run (1: no process group).
    local_rank : int
        This process on its node (selects its GPU).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes results, figures and checkpoints."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit():
        raise ValueError(f"{name}={value!r} is not a non-negative integer (set by torchrun)")
    return int(value)


def setup(device: str | torch.device = "cpu") -> tuple[Distributed, torch.device]:
    """Join torchrun's process group, if there is one, and pick this process's device.

    Parameters
    ----------
    device : str or torch.device
        ``"cuda"`` without an index becomes ``cuda:LOCAL_RANK`` under torchrun.

    Returns
    -------
    Distributed
        ``Distributed()`` (one process) when ``WORLD_SIZE`` is unset or 1.
    torch.device
        The device this process computes on.
    """
    device = torch.device(device)
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return Distributed(), device
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank, world, local), device


def current() -> Distributed:
    """The run this process is in (``Distributed()`` without a process group)."""
    if tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1:
        return Distributed(tdist.get_rank(), tdist.get_world_size(),
                           _env_int("LOCAL_RANK", 0))
    return Distributed()


def barrier() -> None:
    """Wait for every process (nothing with one process)."""
    if current().enabled:
        tdist.barrier()


def teardown() -> None:
    """Leave the process group (if joined)."""
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def shard(n: int, dist: Distributed) -> slice:
    """The part of a global batch of ``n`` items that is this process's: contiguous, sizes
    differing by at most one, in rank order (so the parts concatenate to the batch).

    Parameters
    ----------
    n : int
        Items in the global batch (at least ``dist.world_size``).
    dist : Distributed
    """
    if n < dist.world_size:
        raise ValueError(f"a global batch of {n} cannot be split between "
                         f"{dist.world_size} processes: use a batch of at least "
                         f"{dist.world_size}")
    base, extra = divmod(n, dist.world_size)
    start = dist.rank * base + min(dist.rank, extra)
    return slice(start, start + base + (dist.rank < extra))


def shard_weight(shard_size: int, batch_size: int, dist: Distributed) -> float:
    """The factor of this process's mean loss that makes DDP's average of the gradients
    the gradient of the global batch's mean loss: ``K |S_k| / |S|`` (1 for equal slices
    and for one process).

    Exact for losses that are means of per-sample terms: with BatchNorm in train mode
    each process normalises its slice by the slice's own statistics (unless
    ``SyncBatchNorm``), so the samples' terms are not those of one process on the whole
    batch.

    Parameters
    ----------
    shard_size : int
        ``|S_k|``, the items in this process's slice.
    batch_size : int
        ``|S|``, the items in the global batch.
    dist : Distributed
    """
    return shard_size * dist.world_size / batch_size if dist.enabled else 1.0


def all_reduce_sum(values, device: str | torch.device = "cpu") -> list[float]:
    """``values`` (floats) summed over every process (unchanged with one process).

    Parameters
    ----------
    values : sequence of float
    device : str or torch.device
        Where the reduction runs (a CUDA device under NCCL).
    """
    values = [float(v) for v in values]
    if not current().enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    tdist.all_reduce(t)
    return t.tolist()


def wrap(model: nn.Module, device: str | torch.device,
         sync_batchnorm: bool = False) -> nn.Module:
    """``model`` in DistributedDataParallel when there are several processes, else itself.

    Parameters
    ----------
    model : torch.nn.Module
        On ``device``; its parameters are made equal to rank 0's by DDP.
    device : str or torch.device
    sync_batchnorm : bool
        Replace every BatchNorm by :class:`~torch.nn.SyncBatchNorm` (statistics
        over the global batch; CUDA only in torch), in ``model`` itself.

    Returns
    -------
    torch.nn.Module
        Call it for the forward pass; ``model`` stays the module to save.
    """
    if not current().enabled:
        return model
    device = torch.device(device)
    if sync_batchnorm:
        if device.type != "cuda":
            raise ValueError("SyncBatchNorm needs CUDA devices (torch has no CPU version): "
                             "drop --sync-bn on the CPU")
        if isinstance(model, nn.modules.batchnorm._BatchNorm):
            raise ValueError("wrap a network that contains BatchNorm layers, not a BatchNorm")
        nn.SyncBatchNorm.convert_sync_batchnorm(model)   # replaces the layers in model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)
