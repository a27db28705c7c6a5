"""Table 1 of Ott et al. (2021), rerun at the paper's settings, for chapter 5: a shipped
result.

The run itself is :func:`resode_tut.experiments.solver_dependence.compute_table1` (about
two hours on two CPU cores at the paper's settings, fifteen seeds).  This module stores it as the
shipped result ``results/ch05-table1-<config>.json`` (:mod:`.shipped`: keyed on the
configuration and on the code of :mod:`.solver_dependence` and what it imports), loads
it when current, and prints it.  Command line::

    python -m resode_tut.experiments.table1 --config paper

The run is resumable: each of its nine jobs (a grid step, an adapted ensemble) is kept
under ``<results>/.partial/`` as it finishes (:mod:`.chunks`), so the same command run
again after a stop (Ctrl-C, the end of a session) runs only what is missing and ends
with the numbers of an uninterrupted run.
"""
from __future__ import annotations

import argparse
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from . import shipped
from .cli import positive_int
from .solver_dependence import (
    ODE_GAP_LIMIT,
    PAPER_GAP_LIMIT,
    TEST_FACTORS,
    AdaptedSeeds,
    SeedGrid,
    Table1Config,
    compute_table1,
)

__all__ = ["Table1Config", "TABLE1_CONFIGS", "Table1", "table1", "load_table1", "decode_accuracy",
           "result_name", "table1_key", "COMPUTING_MODULE", "main"]

#: The module whose code (and imports) Table 1's result is keyed on.
COMPUTING_MODULE = "resode_tut.experiments.solver_dependence"

#: Points (%): a seed whose model stays below this test accuracy with its own solver has
#: *stalled* (the spheres' classes are 50/50: chance is 50%, a working model 97-100%).
STALLED = 90.0

#: ``paper``: the paper's settings (Adam lr 1e-4, batch 128, 10,000 iterations, Euler
#: steps 1/2 ... 1/128) over fifteen seeds (the paper: five; five cannot tell a stalled
#: seed from a setting); ``quick``: the same code in minutes; ``smoke``:
#: seconds, to check a setup (its numbers mean nothing).
TABLE1_CONFIGS = {
    "paper": Table1Config("paper", "spheres2d", tuple(1 / 2 ** k for k in range(1, 8)),
                          tuple(range(15)), 10_000, 1e-4),
    "quick": Table1Config("quick", "spheres2d", (1 / 2, 1 / 8, 1 / 32), (0, 1), 1_500, 1e-3),
    "smoke": Table1Config("smoke", "spheres2d", (1 / 2, 1 / 4), (0, 1), 20, 1e-2,
                          batch_size=16, reference_step=1 / 16),
}


@dataclass
class Table1:
    """Grid search against step-size adaptation, mean +- std over seeds.

    Attributes
    ----------
    config : Table1Config
    grid : SeedGrid
    adapted : AdaptedSeeds
    seconds : float
        Wall time of the run.
    processes : int
        Worker processes.
    strict : AdaptedSeeds or None
        Step adaptation with the batch check at ``config.strict_gap_limit``.
    shipped : ShippedResult or None
        The result file it was loaded from or written to, with its provenance; None
        when it was computed and not stored.
    cached : bool
        True when loaded from a file, False when computed now.
    """

    config: Table1Config
    grid: SeedGrid
    adapted: AdaptedSeeds
    seconds: float
    processes: int
    strict: AdaptedSeeds | None = None
    shipped: shipped.ShippedResult | None = None
    cached: bool = False

    @property
    def path(self) -> str | None:
        """The result file, or None."""
        return None if self.shipped is None else str(self.shipped.path)

    @property
    def load(self) -> float:
        """The 1-minute load average when the run ended (NaN when unknown)."""
        if self.shipped is None:
            return float("nan")
        return float(self.shipped.provenance.get("load_after", float("nan")))

    def grid_choice(self, tol: float = ODE_GAP_LIMIT) -> float | None:
        """Grid search's pick: the coarsest step from which on every finer step keeps
        its accuracy (mean gap over the seeds <= ``tol`` points); None if none does.

        Parameters
        ----------
        tol : float
            Points (%).
        """
        return self.grid.critical_step(tol)[0]

    def rows(self, tol: float = ODE_GAP_LIMIT) -> list[dict]:
        """The table's rows -- grid search, step adaptation (the paper's check) and,
        when run, step adaptation with the strict check: method, evaluations per
        iteration, accuracy (own solver, mean and std over seeds, %) and the largest gap
        across test solvers (mean over seeds, points).

        Parameters
        ----------
        tol : float
            Points (%), for the grid's pick.
        """
        rows = []
        h = self.grid_choice(tol)
        if h is not None:
            own = 100 * np.asarray(self.grid.accuracy[h][("own", 1)])
            rows.append(dict(method="grid search", nfe=1 / h, nfe_std=0.0, step=h,
                             accuracy=self.grid.mean_std(h), median=float(np.median(own)),
                             stalled=int((own < STALLED).sum()),
                             gap=float(np.mean(self.grid.gaps(h)))))
        for method, run in (("step adaptation", self.adapted),
                            ("step adaptation, strict", self.strict)):
            if run is None:
                continue
            nfe, nfe_std = run.nfe_mean_std()
            own = 100 * np.asarray(run.accuracy[("own", 1)])
            rows.append(dict(method=method, nfe=nfe, nfe_std=nfe_std,
                             step=float(np.mean(run.step_sizes)), accuracy=run.mean_std(),
                             median=float(np.median(own)), stalled=int((own < STALLED).sum()),
                             gap=float(np.mean(run.gaps())), gap_limit=run.gap_limit))
        return rows

    @classmethod
    def from_data(cls, config: Table1Config, d: dict) -> Table1:
        """Rebuild from :func:`compute_table1`'s output; ``ValueError`` naming what is
        wrong otherwise.

        Parameters
        ----------
        config : Table1Config
        d : dict
        """
        try:
            dec = decode_accuracy
            accuracy = {float(h): dec(a) for h, a in d["grid"]["accuracy"].items()}
            if sorted(accuracy) != sorted(config.steps) or any(
                    len(v) != len(config.seeds) or not np.isfinite(v).all()
                    for a in accuracy.values() for v in a.values()):
                raise ValueError("the grid's accuracies do not match its configuration")
            grid = SeedGrid(config.task, list(config.steps), list(config.seeds), accuracy,
                            config.reference_step, config.iterations, config.lr,
                            d["grid"]["seconds"])

            def run(a, gap_limit):
                if a is None:
                    return None
                if a["gap_limit"] != gap_limit or len(a["step_sizes"]) != len(config.seeds):
                    raise ValueError("an adapted run does not match its configuration")
                return AdaptedSeeds(config.task, list(config.seeds), a["step_sizes"],
                                    a["nfe"], dec(a["accuracy"]), a["logs"],
                                    config.iterations, config.lr, a["seconds"], gap_limit)
            adapted = run(d["adapted"], PAPER_GAP_LIMIT)
            strict = run(d["strict"], config.strict_gap_limit)
            if adapted is None or (strict is None) != (config.strict_gap_limit is None):
                raise ValueError("the adapted runs do not match the configuration")
            return cls(config, grid, adapted, float(d["seconds"]), int(d["processes"]),
                       strict)
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"not a Table 1 result: {err!r}") from err


def decode_accuracy(acc: dict) -> dict:
    """Accuracies keyed ``"method|k"`` (as :func:`.solver_dependence.compute_table1` and
    :mod:`.ch05_runs` write them) back to ``(method, k)`` keys, values as floats.

    Parameters
    ----------
    acc : dict
        ``"own|1"``, ``"rk4|0.5"``, ``"rk4|ref"``, ... -> list of accuracies.
    """
    methods = ("euler", "midpoint", "rk4")
    tests = ([("own", 1)] + [(m, k) for m in methods for k in TEST_FACTORS]
             + [(m, "ref") for m in methods])
    names = {f"{m}|{k}": (m, k) for m, k in tests}
    return {names[name]: [float(v) for v in vals] for name, vals in acc.items()}


def _table1_config(config) -> Table1Config:
    return shipped.named_config(config, TABLE1_CONFIGS, Table1Config, "Table 1")


def result_name(config: Table1Config | str) -> str:
    """The shipped result's name: ``ch05-table1-<config name>``.

    Parameters
    ----------
    config : Table1Config or str
    """
    return f"ch05-table1-{_table1_config(config).name}"


def table1_key(config: Table1Config | str) -> str:
    """:func:`resode_tut.experiments.shipped.result_key` of ``config`` for this code.

    Parameters
    ----------
    config : Table1Config or str
    """
    return shipped.result_key(asdict(_table1_config(config)), COMPUTING_MODULE)


def load_table1(config: Table1Config | str = "paper", out_dir=None) -> Table1 | None:
    """The shipped result of ``config`` if it is current for this code, else None (with
    a warning when the file is damaged or does not hold a Table 1).

    Parameters
    ----------
    config : Table1Config or str
    out_dir : path, optional
        Results folder (default :func:`resode_tut.experiments.shipped.results_dir`).
    """
    config = _table1_config(config)
    found = shipped.load_current(result_name(config), table1_key(config), out_dir)
    if found is None:
        return None
    try:
        table = Table1.from_data(config, found.data)
    except ValueError as err:
        warnings.warn(f"ignoring the result file {found.path} ({err}): it is recomputed",
                      stacklevel=2)
        return None
    table.shipped, table.cached = found, True
    return table


def command(config: Table1Config | str) -> str:
    """The command line that recomputes ``config``'s shipped result.

    Parameters
    ----------
    config : Table1Config or str
    """
    return f"python -m resode_tut.experiments.table1 --config {_table1_config(config).name}"


def table1(config: Table1Config | str = "paper", processes: int | None = None,
           out_dir=None, cache_result: bool = True, force: bool = False) -> Table1:
    """Table 1 for the 2-d spheres: loaded when a current result is shipped, else
    computed (:func:`compute_table1`) and, with ``cache_result``, stored.

    Parameters
    ----------
    config : Table1Config or str
        ``"paper"``, ``"quick"`` or ``"smoke"`` (:data:`TABLE1_CONFIGS`), or a
        configuration.
    processes : int, optional
        Worker processes (default: all cores).
    out_dir : path, optional
        Results folder (default :func:`resode_tut.experiments.shipped.results_dir`).
    cache_result : bool
        Read and write the result file (False: always compute, write nothing).
    force : bool
        Compute even if a current result is stored (and overwrite it).
    """
    config = _table1_config(config)
    if processes is not None and processes < 1:
        raise ValueError(f"processes must be at least 1, got {processes}")
    key = table1_key(config)               # the code that runs, read before it runs
    if cache_result and not force:
        found = load_table1(config, out_dir)
        if found is not None:
            return found
    chunks = None
    if cache_result:
        folder = shipped.check_writable(out_dir)    # a bad folder fails now, not after the run
        chunks = _chunk_folder(folder, config, key)
    commit = shipped.git_commit()
    data = compute_table1(config, processes, chunks)
    invocations = data.pop("invocations")
    table = Table1.from_data(config, data)
    if cache_result:
        prov = shipped.provenance(command(config), data["seconds"], commit=commit,
                                  processes=data["processes"], invocations=invocations)
        prov["load_after"] = prov.pop("load")
        result = shipped.ShippedResult(result_name(config), key, asdict(config), prov, data)
        shipped.save(result, out_dir)
        table.shipped = result
        shutil.rmtree(chunks)                      # stored: the chunks have served
    return table


def _chunk_folder(results: Path, config: Table1Config, key: str) -> Path:
    """Where a run of ``config`` under code ``key`` keeps its finished jobs
    (``<results>/.partial/<name>-<key>``): a stopped run started again resumes there.
    Chunks of the same configuration under other code can never be used: removed.
    """
    partial, name = results / ".partial", result_name(config)
    for old in (partial.iterdir() if partial.is_dir() else ()):
        if old.is_dir() and old.name.startswith(f"{name}-") and old.name != f"{name}-{key}":
            print(f"removing {old}: chunks of older code")
            shutil.rmtree(old)
    return partial / f"{name}-{key}"


def main(argv=None) -> int:
    """``python -m resode_tut.experiments.table1``: compute and store Table 1.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default: ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(
        prog="python -m resode_tut.experiments.table1",
        description="Rerun Table 1 of Ott et al. (2021) for the 2-d spheres (chapter 5): "
                    "grid search over Euler steps and step-size adaptation (the paper's "
                    "check and a strict one), over the configuration's seeds; writes "
                    "results/ch05-table1-<config>.json with its provenance.")
    parser.add_argument("--config", default="paper", choices=sorted(TABLE1_CONFIGS))
    parser.add_argument("--processes", type=positive_int, default=None,
                        help="worker processes (default: all cores)")
    parser.add_argument("--out", default=None,
                        help="results folder (default $RESODE_RESULTS, else the "
                             "repository's results/)")
    parser.add_argument("--force", action="store_true",
                        help="run even if a current result is stored")
    args = parser.parse_args(argv)
    try:
        shipped.check_writable(args.out)
    except ValueError as err:
        parser.error(f"--out: {err}")
    torch.set_num_threads(1)
    result = table1(args.config, args.processes, args.out, force=args.force)
    print(f"{'loaded' if result.cached else 'computed'}: {result.path} "
          f"({result.seconds:.0f} s on {result.processes} processes)")
    for row in result.rows():
        print(f"{row['method']:<24} NFE {row['nfe']:6.1f}  accuracy "
              f"{row['accuracy'][0]:5.1f} +- {row['accuracy'][1]:4.1f} %  median "
              f"{row['median']:5.1f} %  stalled {row['stalled']}  gap {row['gap']:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
