"""Step-size and tolerance adaptation: the heuristic by hand, the adapters' reactions."""
import math

import pytest
import torch

from resode_tut import (
    NeuralODE,
    Solver,
    SphereField,
    StepSizeAdapter,
    initial_step_size,
    ode_regime,
    train_node,
)
from resode_tut.experiments.ch05 import (
    load_task,
)


def test_initial_step_size_follows_the_heuristic():
    # f(z) = -2 z: d0 = mean|x|, d1 = 2 d0, h0 = 0.005, d2 = 4 d0 -> h1 = (0.01/(4 d0))^(1/2)
    field = lambda t, z: -2 * z
    x = torch.full((4, 1), 3.0, dtype=torch.float64)
    h = initial_step_size(field, x, order=1)
    assert math.isclose(h, min(100 * 0.005, math.sqrt(0.01 / 12)), rel_tol=1e-9)


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
