"""Neural ODE classifiers and solvers against exact flows."""
import pytest
import torch
from helpers import LinearField

from resode_tut import NeuralODE, Solver


def test_solvers_match_the_exact_flow_and_bad_solvers_are_named():
    A = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    model = NeuralODE(LinearField(A), (2,), 2, Solver("euler", 1 / 4)).double()
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
    with pytest.raises(ValueError, match="adaptive: give a finite tol"):
        Solver("dopri5", step_size=0.1)
    with pytest.raises(ValueError, match="expected \\(B, 2\\)"):
        model(torch.zeros(3, 5, dtype=torch.float64))
