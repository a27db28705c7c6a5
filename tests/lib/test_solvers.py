"""One Solver type: validation, names, and the arguments it hands to torchdiffeq."""
import math

import pytest
import torch
from torchdiffeq import odeint

from resode_tut import ADAPTIVE_SOLVERS, FIXED_STEP_SOLVERS, SOLVERS, Solver


def test_every_method_in_the_table_solves_dz_dt_equals_z():
    """Each method, with its own step or tolerance, gets close to e (exact: z(1) = e)."""
    z0, t = torch.ones(1, dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    for method in SOLVERS:
        s = Solver(method, step_size=1 / 64) if method in FIXED_STEP_SOLVERS \
            else Solver(method, tol=1e-8)
        z1 = odeint(lambda t, z: z, z0, t, **s.odeint_kwargs())[-1].item()
        bound = 1e-4 if s.adaptive else 10 * (1 / 64) ** s.order   # global error O(h^p)
        assert abs(z1 - math.e) < bound, (method, z1)
        assert s.adaptive == (method in ADAPTIVE_SOLVERS)


def test_orders_and_names():
    assert [Solver(m, 0.5).order for m in ("euler", "midpoint", "rk4")] == [1, 2, 4]
    assert Solver("dopri5", tol=1e-6).order == 5
    assert str(Solver("euler", 1 / 8)) == "euler, h=1/8"
    assert str(Solver("euler", 0.3)) == "euler, h=0.3"
    assert str(Solver("dopri5", tol=1e-7)) == "dopri5, tol=1e-07"
    assert str(Solver("dopri5", tol=1e-7, atol=1e-9)) == "dopri5, tol=1e-07, atol=1e-09"
    assert Solver("dopri5", tol=1e-7).odeint_kwargs() == dict(method="dopri5", rtol=1e-7,
                                                               atol=1e-7)
    assert Solver("rk4", 0.25).odeint_kwargs(perturb=False) == dict(
        method="rk4", options={"step_size": 0.25, "perturb": False})
    assert Solver("euler", 0.5) == Solver("euler", 0.5)        # usable as a dict key
    assert len({Solver("euler", 0.5), Solver("euler", 0.5)}) == 1


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="rk45", step_size=0.1), "unknown solver 'rk45'"),
    (dict(method="euler"), "euler needs a step_size in \\(0, 1\\]"),
    (dict(method="euler", step_size=0.0), "step_size in"),
    (dict(method="euler", step_size=1.5), "step_size in"),
    (dict(method="euler", step_size=float("nan")), "step_size in"),
    (dict(method="euler", step_size=True), "step_size in"),
    (dict(method="euler", step_size=0.1, tol=1e-3), "fixed step: give step_size, not tol"),
    (dict(method="dopri5"), "adaptive: give a finite tol > 0"),
    (dict(method="dopri5", tol=-1e-6), "finite tol > 0"),
    (dict(method="dopri5", tol=0.0), "finite tol > 0"),
    (dict(method="dopri5", tol=float("nan")), "finite tol > 0"),
    (dict(method="dopri5", tol=float("inf")), "finite tol > 0"),
    (dict(method="dopri5", tol=1e-6, atol=0.0), "atol must be finite and > 0"),
    (dict(method="dopri5", tol=1e-6, step_size=0.1), "give tol, not step_size"),
])
def test_bad_solvers_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Solver(**kwargs)
