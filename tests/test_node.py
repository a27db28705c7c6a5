"""Chapter 5's machinery against independent computations."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from resode_tut.adaptation import StepSizeAdapter, ToleranceAdapter, initial_step_size
from resode_tut.crossings import crossing_pairs
from resode_tut.data import concentric_spheres, xor
from resode_tut.fan import windermere_fan
from resode_tut.node import NeuralODE, Solver, SphereField
from resode_tut.node_training import load_task, solver_grid, train_node, train_runs
from resode_tut.ode_regime import ode_regime


def test_spheres_shells_counts_and_seed():
    x, y = concentric_spheres(400, dim=3, seed=1)
    r = x.double().norm(dim=1)
    assert x.shape == (400, 3) and (y == 1).sum() == 200
    inner, middle = (r >= 0.10) & (r <= 0.15 + 1e-6), (r >= 0.25) & (r <= 0.30 + 1e-6)
    outer = (r >= 0.40) & (r <= 0.45 + 1e-6)
    assert (inner | middle | outer).all() and (y[middle] == 1).all() and (y[~middle] == 0).all()
    assert torch.equal(concentric_spheres(400, 3, seed=1)[0], x)
    with pytest.raises(ValueError, match="n >= 4"):
        concentric_spheres(2)
    assert xor()[1].tolist() == [0, 1, 1, 0]


class Linear(nn.Module):
    """dz/dt = A z: exact flow expm(A t)."""

    def __init__(self, A):
        super().__init__()
        self.A = nn.Parameter(A)
        self.nfe = 0

    def forward(self, t, z):
        self.nfe += 1
        return z @ self.A.T


def test_solvers_match_the_exact_flow_and_bad_solvers_are_named():
    A = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    model = NeuralODE(Linear(A), (2,), 2, Solver("euler", 1 / 4)).double()
    x = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    exact = x @ torch.linalg.matrix_exp(A).T
    for s, tol in ((Solver("euler", 1 / 1000), 2e-3), (Solver("rk4", 1 / 8), 1e-5),
                   (Solver("dopri5", tol=1e-9), 1e-7)):
        assert (model.flow(x, s)[-1] - exact).norm() < tol
    # euler with h = 1/4 is (I + A/4)^4 exactly
    euler4 = x @ torch.linalg.matrix_power(torch.eye(2, dtype=torch.float64) + A / 4, 4).T
    torch.testing.assert_close(model.flow(x)[-1], euler4)
    with pytest.raises(ValueError, match="unknown solver 'heun'"):
        Solver("heun", 0.1)
    with pytest.raises(ValueError, match="adaptive: give tol"):
        Solver("dopri5", step_size=0.1)
    with pytest.raises(ValueError, match="expected \\(B, 2\\)"):
        model(torch.zeros(3, 5, dtype=torch.float64))


def test_initial_step_size_follows_the_heuristic():
    # f(z) = -2 z: d0 = mean|x|, d1 = 2 d0, h0 = 0.005, d2 = 4 d0 -> h1 = (0.01/(4 d0))^(1/2)
    field = lambda t, z: -2 * z
    x = torch.full((4, 1), 3.0, dtype=torch.float64)
    h = initial_step_size(field, x, order=1)
    assert math.isclose(h, min(100 * 0.005, math.sqrt(0.01 / 12)), rel_tol=1e-9)


def test_crossings_found_by_geometry():
    # two segments that cross in step 0, then run parallel; a third one apart
    t = torch.tensor([[[0., 0.], [0., 1.], [5., 5.]],
                      [[1., 1.], [1., 0.], [6., 5.]],
                      [[2., 2.], [2., 1.], [7., 5.]]])
    assert crossing_pairs(t) == [(0, 1)]
    assert crossing_pairs(t, same_step=False) == [(0, 1)]
    # an exact rotation never crosses: concentric circles
    ang = torch.linspace(0, 1, 50)[:, None]
    r = torch.tensor([0.5, 1.0, 1.5])[None]
    circles = torch.stack([r * torch.cos(ang), r * torch.sin(ang)], -1)
    assert crossing_pairs(circles) == [] and crossing_pairs(circles, same_step=False) == []
    with pytest.raises(ValueError, match="shape"):
        crossing_pairs(torch.zeros(5, 3, 3))


def test_coarse_model_fails_the_regime_check_and_adapter_reacts():
    """A field trained to exploit one Euler step differs from its exact flow."""
    torch.manual_seed(0)
    data = load_task("spheres2d")
    model = NeuralODE(SphereField(8), (2,), 2, Solver("euler", 1 / 2))
    train_node(model, data, iterations=300, lr=1e-2)
    report = ode_regime(model, data[2], data[3])
    assert report.own == Solver("euler", 1 / 2)
    assert report.max_gap == pytest.approx(
        100 * (max(report.accuracy.values()) - min(report.accuracy.values())))
    assert "ODE regime" in str(report)
    # the adapter halves h when the training and test solvers disagree on a batch
    adapter = StepSizeAdapter(threshold=0.0)
    adapter.step_size = 1 / 2
    x, y = data[2][:256], data[3][:256]
    gap = abs(model.accuracy(x, y, Solver("euler", 1 / 2))
              - model.accuracy(x, y, adapter.test_solver(1 / 2)))
    adapter.update(model, x, y)
    assert (adapter.step_size == 1 / 4) == (gap > 0)
    with pytest.raises(ValueError, match="readout"):
        ode_regime(model.field, data[2], data[3])


def test_plain_field_with_readout_and_linear_model_is_an_ode():
    A = torch.tensor([[-1.0, 0.5], [0.0, -0.5]])
    field = Linear(A)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    readout = lambda z: torch.stack([-z[:, 0], z[:, 0]], 1)
    report = ode_regime(field, x, y, readout=readout)
    assert report.in_ode_regime and report.own is None


def test_grid_runs_in_parallel_and_matches_a_serial_run():
    solvers = [Solver("euler", 1 / 2), Solver("euler", 1 / 4)]
    g1, m1 = solver_grid("spheres2d", solvers, iterations=5, processes=1)
    g2, _ = solver_grid("spheres2d", solvers, iterations=5, processes=2)
    assert g1.accuracy == g2.accuracy
    assert set(g1.accuracy[solvers[0]]) >= {("own", 1), ("rk4", "ref"), ("midpoint", 2.0)}
    (model, hist, log), = train_runs([dict(task="spheres2d", solver=Solver("euler", 1 / 2),
                                           adapt="step", iterations=100)], processes=1)
    assert len(log) == 2 and hist.iteration[-1] == 100 and hist.mean_nfe > 0
    with pytest.raises(ValueError, match="unknown adapt"):
        train_runs([dict(task="spheres2d", solver=Solver("euler", 1), adapt="grid",
                         iterations=1)])
    with pytest.raises(ValueError, match="unknown task"):
        load_task("mnist")


def test_fan_starts_on_the_euler_points():
    torch.manual_seed(1)
    model = NeuralODE(SphereField(8), (2,), 2, Solver("euler", 1 / 4))
    x = xor()[0]
    euler, exact = windermere_fan(model, x, 1 / 4)
    assert euler.shape == (5, 4, 2) and len(exact) == 4
    for n, curve in enumerate(exact):
        torch.testing.assert_close(curve[0], euler[n])
    torch.testing.assert_close(exact[0][-1], model.flow(x, Solver("dopri5", tol=1e-8))[-1],
                               rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="integer"):
        windermere_fan(model, x, 0.3)
