"""Run independent, self-seeded jobs in parallel worker processes.

Small models are dominated by per-operation overhead, so two processes with
one thread each get more done than one process with two threads.  Every job
seeds itself, so the results do not depend on the number of processes (nor on
how the workers start: forked on CPU-only machines, from a fork server where
CUDA is available).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
from collections.abc import Callable, Iterable

import torch

from .runtime import env_positive_int

__all__ = ["parallel_map", "default_processes"]


def default_processes() -> int:
    """Worker count: ``RESODE_PROCESSES`` if set, else the number of usable CPU cores."""
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else os.cpu_count())
    return env_positive_int("RESODE_PROCESSES", cores)


def _start_method() -> str:
    """``fork`` where it is safe, else ``forkserver`` (or ``spawn``).

    With CUDA available, autograd runs device threads after the first
    backward, and torch refuses to fork such a process ("Unable to handle
    autograd's threading in combination with fork-based multiprocessing",
    seen on a GPU machine and on Colab): workers then start from a fresh
    server process instead.
    """
    methods = mp.get_all_start_methods()
    if "fork" in methods and not torch.cuda.is_available():
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


def _init_worker():
    torch.set_num_threads(1)
    # Ctrl-C reaches the whole process group: the parent alone handles it, by
    # terminating the workers (a worker that died of it would leave its job unfinished)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def parallel_map(fn: Callable, jobs: Iterable, processes: int | None = None) -> list:
    """``[fn(job) for job in jobs]``, computed by ``processes`` worker processes.

    Parameters
    ----------
    fn : callable
        A module-level function (it is pickled by reference); it must seed
        whatever randomness it uses from its argument.
    jobs : iterable
    processes : int, optional
        Defaults to :func:`default_processes`; ``1`` runs in this process.

    Returns
    -------
    list
        The results, in the order of ``jobs``.  Every job runs on one thread,
        also when ``processes == 1``, so the numbers do not depend on it.

    Raises
    ------
    KeyboardInterrupt, or the first exception of a job
        After the workers are terminated: an interrupted or failed map leaves no
        process computing behind it.
    """
    jobs = list(jobs)
    processes = default_processes() if processes is None else processes
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ValueError(f"processes must be an integer >= 1, got {processes!r}")
    if processes == 1 or len(jobs) <= 1:
        # one thread, as in a worker: the same numbers whatever the process count
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return [fn(job) for job in jobs]
        finally:
            torch.set_num_threads(threads)
    ctx = mp.get_context(_start_method())
    pool = ctx.Pool(min(processes, len(jobs)), initializer=_init_worker)
    try:
        results = pool.map(fn, jobs, chunksize=1)
    except BaseException:
        pool.terminate()
        pool.join()
        raise
    pool.close()
    pool.join()
    return results
