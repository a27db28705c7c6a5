"""The limit ODE against closed forms and against the ResNet itself."""
import math

import pytest
import torch
from helpers import Linear
from torch import nn

from resode_tut import (
    InterpolatedField,
    ResidualStack,
    Solver,
    loglog_slope,
    ode_distance,
    solve_limit_ode,
    tanh_stack,
)

pytestmark = pytest.mark.usefixtures("float64")


def test_constant_weights_give_the_matrix_exponential():
    A = torch.tensor([[0.0, -1.5], [1.5, 0.2]])
    stack = ResidualStack([Linear(A) for _ in range(5)])
    x0 = torch.randn(4, 2)
    ode = solve_limit_ode(stack, x0)
    for n, t in enumerate(stack.times):
        torch.testing.assert_close(ode[n], x0 @ torch.linalg.matrix_exp(t * A).T,
                                   rtol=1e-6, atol=1e-7)


def test_scalar_linear_weight_path_matches_closed_form():
    """dx/dt = a(t) x with a(t) piecewise linear: x(1) = x0 exp(int a)."""
    a = [0.3, -1.0, 2.0, 0.5]  # Euler grid: knots 0, 1/4, 2/4, 3/4, constant after
    stack = ResidualStack([Linear(torch.tensor([[v]])) for v in a])
    integral = sum((a[n] + a[n + 1]) / 2 * 0.25 for n in range(3)) + a[-1] * 0.25
    x0 = torch.tensor([[1.0], [-2.0]])
    ode = solve_limit_ode(stack, x0)
    torch.testing.assert_close(ode[-1], x0 * math.exp(integral), rtol=1e-6, atol=1e-8)


def test_theta_is_interpolated_linearly_between_layers():
    fs = [nn.Linear(2, 2) for _ in range(3)]
    field = InterpolatedField(ResidualStack(fs, scheme="heun"))  # knots 0, 1/2, 1
    mid = field.theta_at(0.25)["weight"]
    torch.testing.assert_close(mid, (fs[0].weight + fs[1].weight).detach() / 2)
    torch.testing.assert_close(field.theta_at(1.0)["bias"], fs[2].bias.detach())


def test_smooth_stack_distance_is_first_order():
    x0 = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    depths = [16, 32, 64, 128]
    d = [ode_distance(tanh_stack(N, "smooth", seed=3), x0).mean().item() for N in depths]
    assert loglog_slope(depths, d) < -0.9


def test_fixed_step_solver_agrees_with_adaptive():
    stack = tanh_stack(8, "smooth", seed=1)
    x0 = torch.randn(5, 2)
    torch.testing.assert_close(solve_limit_ode(stack, x0, solver=Solver("rk4", stack.h / 8)),
                               solve_limit_ode(stack, x0), rtol=1e-5, atol=1e-5)  # rk4, step h/8


def test_errors_name_the_problem():
    stack = tanh_stack(4, "smooth")
    x0 = torch.randn(3, 2)
    with pytest.raises(TypeError, match="solver must be a resode_tut.Solver"):
        solve_limit_ode(stack, x0, solver="rk45")
    with pytest.raises(ValueError, match="NaN"):
        solve_limit_ode(stack, torch.full((1, 2), float("inf")))
    for t in ([0.5, 1.0], [], [0.0, float("nan")], [0.0, 0.5, 0.5]):
        with pytest.raises(ValueError, match="increasing, finite times"):
            solve_limit_ode(stack, x0, t=torch.tensor(t))
    with pytest.raises(TypeError, match="must be a resode_tut.ResidualStack"):
        solve_limit_ode(nn.Linear(2, 2), x0)
    with pytest.raises(ValueError, match="no parameters"):
        solve_limit_ode(ResidualStack([nn.Tanh(), nn.Tanh()]), x0)
    mixed = ResidualStack([nn.Linear(2, 2), nn.Tanh()])
    with pytest.raises(ValueError, match="one parametrised function"):
        solve_limit_ode(mixed, x0)


def test_knot_position():
    from resode_tut.limit import knot_position
    assert knot_position(0.0, 0.25, 4) == (0, 0.0)
    n, w = knot_position(0.375, 0.25, 4)
    assert n == 1 and w == pytest.approx(0.5)
    assert knot_position(3 * 0.1, 0.1, 11) == (3, 0.0)   # 0.30000000000000004 is a knot
    assert knot_position(0.9, 0.25, 4) == (3, 0.0)       # constant after the last knot
    assert knot_position(0.7, 1.0, 1) == (0, 0.0)


def test_piecewise_constant_weights_solve_each_step_exactly():
    """f_n(x) = W_n x with theta constant on each step: the ODE is
    x(t_{n+1}) = expm(h W_n) x(t_n), a closed form."""
    torch.manual_seed(11)
    fs = [nn.Linear(3, 3, bias=False).double() for _ in range(7)]
    stack = ResidualStack(fs)
    x0 = torch.randn(4, 3, dtype=torch.float64)
    ode = solve_limit_ode(stack, x0, weights="piecewise")
    x, expected = x0, [x0]
    for f in fs:
        x = x @ torch.linalg.matrix_exp(stack.h * f.weight).T
        expected.append(x)
    torch.testing.assert_close(ode, torch.stack(expected), rtol=1e-6, atol=1e-8)
    # and it is not the linear path's solution
    assert (solve_limit_ode(stack, x0) - ode).abs().max() > 1e-3
    with pytest.raises(ValueError, match="unknown weight path 'spline'"):
        solve_limit_ode(stack, x0, weights="spline")
    with pytest.raises(ValueError, match="leave t at its default"):
        solve_limit_ode(stack, x0, t=torch.tensor([0.0, 1.0]), weights="piecewise")


def test_iid_stacks_converge_to_their_piecewise_constant_ode():
    """The i.i.d. plateau is a property of the linear weight path: with piecewise-constant
    weights the distance falls like 1/N whatever the weights."""
    from resode_tut import loglog_slope, ode_distance, tanh_stack
    x0 = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    depths = [16, 32, 64]
    pc = [ode_distance(tanh_stack(N, "iid", seed=1), x0, weights="piecewise").mean().item()
          for N in depths]
    lin = [ode_distance(tanh_stack(N, "iid", seed=1), x0).mean().item() for N in depths]
    assert loglog_slope(depths, pc) <= -0.9
    assert lin[-1] > 3 * pc[-1]
