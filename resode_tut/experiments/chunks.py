"""Resumable job maps: a long run in chunks that can span sessions (chapter 5's Table 1).

:func:`resumable_map` is :func:`resode_tut.parallel.parallel_map` that writes each job's
result to a folder as the job finishes. Run again with the same folder (after Ctrl-C, a
crash, or the end of a session), it runs only the jobs not found there, so a two-hour run
can be finished in pieces and end with exactly the numbers of an uninterrupted one (each
job seeds itself from its own description).

Each chunk is a JSON file ``job-<i>.json`` holding the job's description, its result and
when it finished; it is written atomically, so a chunk is whole or absent. A chunk that
cannot be read, or that was written for another job, is an error naming the file, never
skipped: delete it and that job runs again. JSON, not pickle: a chunk cannot run code.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

from ..parallel import parallel_map

__all__ = ["resumable_map"]


def _canonical(job) -> str:
    return json.dumps(job, sort_keys=True)


def _write(path: Path, record: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)          # atomic: a chunk is whole or absent
    finally:
        tmp.unlink(missing_ok=True)


def _read(path: Path, job) -> dict:
    """The chunk at ``path`` for ``job``; ``ValueError`` naming the file otherwise."""
    fix = "delete it to run that job again"
    try:
        record = json.loads(path.read_text())
        written_for, result = record["job"], record["result"]
        started, elapsed = float(record["started"]), float(record["elapsed"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: a damaged chunk ({type(err).__name__}: {err}); {fix}") from None
    if written_for != _canonical(job):
        raise ValueError(f"{path}: a chunk of another job ({written_for[:200]}), not of "
                         f"{_canonical(job)[:200]}; {fix}")
    return dict(result=result, started=started, elapsed=elapsed)


def _run_and_write(arg):
    fn, job, path, started = arg
    result = json.loads(json.dumps(fn(job)))   # as a reader of the chunk will see it
    if path is not None:
        _write(Path(path), dict(job=_canonical(job), result=result, started=started,
                                elapsed=time.time() - started))
    return result


def resumable_map(fn: Callable, jobs, processes: int | None = None,
                  folder=None) -> tuple[list, dict]:
    """``[fn(job) for job in jobs]`` in worker processes, each result kept in ``folder``
    as its job finishes; jobs whose result is there already are not run again.

    Parameters
    ----------
    fn : callable
        A module-level function of one job (pickled by reference) that returns a
        JSON-able result and seeds whatever randomness it uses from its job.
    jobs : sequence
        JSON-able job descriptions (tuples become lists in the chunk).
    processes : int, optional
        Worker processes (see :func:`resode_tut.parallel.parallel_map`).
    folder : path, optional
        Where the chunks live (created if missing); None keeps nothing.

    Returns
    -------
    results : list
        One per job, in order, as JSON reads them back (lists for tuples, string keys)
        whether computed now or read from a chunk.
    run : dict
        ``seconds``: wall time over every invocation that computed a part (an earlier,
        interrupted one counted up to its last finished job); ``invocations``: how many
        took part; ``resumed``: jobs read from chunks.
    """
    jobs = list(jobs)
    started, t0 = time.time(), time.perf_counter()
    paths = [None] * len(jobs)
    found = {}
    if folder is not None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / f"job-{i}.json" for i in range(len(jobs))]
        found = {i: _read(p, job) for i, (p, job) in enumerate(zip(paths, jobs)) if p.exists()}
    todo = [i for i in range(len(jobs)) if i not in found]
    computed = parallel_map(_run_and_write,
                            [(fn, jobs[i], None if paths[i] is None else str(paths[i]), started)
                             for i in todo], processes)
    results = [None] * len(jobs)
    for i, chunk in found.items():
        results[i] = chunk["result"]
    for i, result in zip(todo, computed):
        results[i] = result
    earlier = {}
    for chunk in found.values():        # an earlier invocation: up to its last chunk
        earlier[chunk["started"]] = max(earlier.get(chunk["started"], 0.0), chunk["elapsed"])
    earlier.pop(started, None)
    seconds = sum(earlier.values()) + (time.perf_counter() - t0)
    return results, dict(seconds=seconds, invocations=len(earlier) + 1, resumed=len(found))
