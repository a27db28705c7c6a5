"""Chapter 5's longer model runs as shipped results, so that its full mode fits a page.

Besides Table 1 (:mod:`.table1`), chapter 5's full mode trains models whose weights its
figures need: the 2-d spheres at h = 1/2 and at h = 1/128 (the crossing, fan and shells
figures; about 7 minutes on two CPU cores) and the tolerance-adaptation runs with step
adaptation on the digits (about 5 minutes).  :func:`seed_grid` and :func:`train_runs` are
:func:`.solver_dependence.seed_grid` and :func:`.solver_dependence.train_runs` with a
shipped result: given ``name``, they load the trained weights, accuracies, histories and
logs from ``results/<name>.json`` when it is current (keyed on the arguments and on the code
of :mod:`.solver_dependence`, as Table 1), and otherwise train and store them.  Without
``name`` they always train.  Weights are stored as JSON numbers (exact for float32 and
float64), never as pickles.  The chapter's command recomputes both::

    python -m resode_tut.experiments.ch05_runs
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from ..node_training import NodeHistory
from ..solvers import Solver
from . import shipped
from . import solver_dependence as sd
from .table1 import decode_accuracy

__all__ = ["seed_grid", "train_runs", "FULL_RUNS", "is_current", "main"]

_MODULE = "resode_tut.experiments.solver_dependence"


def _state_to_json(model) -> dict:
    return {k: {"dtype": str(v.dtype).removeprefix("torch."), "shape": list(v.shape),
                "values": v.detach().cpu().flatten().tolist()}
            for k, v in model.state_dict().items()}


def _state_from_json(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        dtype = getattr(torch, v["dtype"], None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown dtype {v['dtype']!r} for {k}")
        out[k] = torch.tensor(v["values"], dtype=dtype).reshape(v["shape"])
    return out


def _solver_to_json(s: Solver) -> dict:
    return dataclasses.asdict(s)


def _command(name: str) -> str:
    return f"python -m resode_tut.experiments.ch05_runs --only {name}"


def _load(name, key):
    """The current shipped result, announced on the page (where it came from, how to
    recompute it), or None.
    """
    found = shipped.load_current(name, key)
    if found is not None:
        print(shipped.describe(found))
    return found


def _seed_grid_config(task, steps, seeds, iterations, lr, **kwargs) -> dict:
    return dict(kind="seed_grid", task=task, steps=[float(h) for h in steps],
                seeds=[int(s) for s in seeds], iterations=iterations, lr=lr, **kwargs)


def _train_runs_config(specs) -> dict:
    return dict(kind="train_runs", specs=[{**s, "solver": _solver_to_json(s["solver"])}
                                          for s in specs])


def _store(name, key, config, data, seconds, commit) -> shipped.ShippedResult:
    result = shipped.ShippedResult(
        name, key, config, shipped.provenance(_command(name), seconds, commit=commit), data)
    shipped.save(result)
    return result


def seed_grid(task: str, steps, seeds, iterations: int, lr: float, name: str | None = None,
              **kwargs):
    """:func:`.solver_dependence.seed_grid`, loaded from the shipped result ``name`` when
    it is current.

    Parameters
    ----------
    task : str
        As for :func:`.solver_dependence.seed_grid`.
    steps : sequence of float
        Training steps.
    seeds : sequence of int
        One model per seed.
    iterations : int
        Adam steps.
    lr : float
        Adam's learning rate.
    name : str, optional
        The shipped result's name; None: always train.
    **kwargs
        Further arguments of :func:`.solver_dependence.seed_grid`.

    Returns
    -------
    (SeedGrid, models), with ``grid.shipped`` set to the result file when loaded
    """
    steps, seeds = [float(h) for h in steps], [int(s) for s in seeds]
    config = _seed_grid_config(task, steps, seeds, iterations, lr, **kwargs)
    if name is None:
        return sd.seed_grid(task, steps, seeds, iterations, lr, **kwargs)
    key = shipped.result_key(config, _MODULE)
    found = _load(name, key)
    if found is not None:
        d = found.data
        accuracy = {float(h): decode_accuracy(acc) for h, acc in d["accuracy"].items()}
        grid = sd.SeedGrid(task, steps, seeds, accuracy, d["reference_step"], iterations, lr,
                           d["seconds"])
        models = {}
        for h, states in d["models"].items():
            models[float(h)] = []
            for s, state in zip(seeds, states):
                model = sd.make_model(task, Solver("euler", float(h)), seed=s)
                model.load_state_dict(_state_from_json(state))
                models[float(h)].append(model)
        grid.shipped = found
        return grid, models
    shipped.check_writable()
    commit, t0 = shipped.git_commit(), time.perf_counter()
    grid, models = sd.seed_grid(task, steps, seeds, iterations, lr, **kwargs)
    data = dict(accuracy={repr(h): sd._encode(acc) for h, acc in grid.accuracy.items()},
                reference_step=grid.reference_step, seconds=grid.seconds,
                models={repr(h): [_state_to_json(m) for m in ms] for h, ms in models.items()})
    grid.shipped = _store(name, key, config, data, time.perf_counter() - t0, commit)
    return grid, models


def train_runs(specs, name: str | None = None, processes: int | None = None):
    """:func:`.solver_dependence.train_runs`, loaded from the shipped result ``name`` when
    it is current.

    Parameters
    ----------
    specs : sequence of dict
        As for :func:`.solver_dependence.train_runs`.
    name : str, optional
        The shipped result's name; None: always train.
    processes : int, optional

    Returns
    -------
    list of (NeuralODE, NodeHistory, list)
    """
    specs = list(specs)
    if name is None:
        return sd.train_runs(specs, processes)
    config = _train_runs_config(specs)
    key = shipped.result_key(config, _MODULE)
    found = _load(name, key)
    if found is not None:
        out = []
        for spec, run in zip(specs, found.data["runs"]):
            model = sd.make_model(spec["task"], Solver(**run["solver"]), seed=spec.get("seed", 0))
            model.load_state_dict(_state_from_json(run["state"]))
            hist = NodeHistory(**{k: run["history"][k] for k in ("iteration", "loss", "nfe")},
                               solver=[Solver(**s) for s in run["history"]["solver"]])
            out.append((model, hist, run["log"]))
        return out
    shipped.check_writable()
    commit, t0 = shipped.git_commit(), time.perf_counter()
    out = sd.train_runs(specs, processes)
    runs = [dict(solver=_solver_to_json(model.solver), state=_state_to_json(model),
                 history=dict(iteration=hist.iteration, loss=hist.loss, nfe=hist.nfe,
                              solver=[_solver_to_json(s) for s in hist.solver]),
                 log=log) for model, hist, log in out]
    _store(name, key, config, {"runs": runs}, time.perf_counter() - t0, commit)
    return out


def _tol_specs():
    return ([dict(task="spheres2d", solver=Solver("fehlberg2", tol=1e-3), adapt="tol",
                  seed=seed, iterations=10_000, lr=1e-4) for seed in (0, 1)]
            + [dict(task="digits", solver=Solver("euler", 1 / 2), adapt="step",
                    iterations=1500, batch_size=64)])


#: The runs chapter 5's full mode loads: name -> (function, arguments).
FULL_RUNS = {
    "ch05-spheres-models": (seed_grid, dict(task="spheres2d", steps=[1 / 2, 1 / 128],
                                            seeds=[0], iterations=10_000, lr=1e-4)),
    "ch05-tolerance-runs": (train_runs, dict(specs=_tol_specs())),
}


def is_current(name: str, directory=None) -> bool:
    """Whether the shipped result ``name`` of :data:`FULL_RUNS` is current for this code.

    Parameters
    ----------
    name : str
    directory : path, optional
        Default :func:`resode_tut.experiments.shipped.results_dir`.
    """
    fn, kwargs = FULL_RUNS[name]
    config = (_seed_grid_config(**kwargs) if fn is seed_grid
              else _train_runs_config(kwargs["specs"]))
    key = shipped.result_key(config, _MODULE)
    return shipped.load_current(name, key, directory) is not None


def main(argv=None) -> int:
    """``python -m resode_tut.experiments.ch05_runs``: compute and store chapter 5's runs.

    Parameters
    ----------
    argv : list of str, optional
    """
    parser = argparse.ArgumentParser(prog="python -m resode_tut.experiments.ch05_runs",
                                     description="Train and store chapter 5's full-mode "
                                                 "model runs (results/ch05-*.json).")
    parser.add_argument("--only", choices=sorted(FULL_RUNS), default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for name, (fn, kwargs) in FULL_RUNS.items():
        if args.only in (None, name):
            t0 = time.perf_counter()
            fn(**kwargs, name=name)
            print(f"{name}: {time.perf_counter() - t0:.0f} s (results/{name}.json)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
