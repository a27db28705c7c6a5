"""The Gronwall bound on the distance between a stack and its ODE, against measured distances."""
import pytest
import torch

from resode_tut import euler_distance_bound, solve_limit_ode, tanh_stack

pytestmark = pytest.mark.usefixtures("float64")


@pytest.mark.parametrize("kind", ["smooth", "iid"])
def test_bound_is_above_the_measured_distance(kind):
    x0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(2))
    for N in (8, 32):
        stack = tanh_stack(N, kind, seed=5)
        with torch.no_grad():
            dist = (stack.trajectory(x0) - solve_limit_ode(stack, x0)).norm(dim=2).amax(0)
        radius = solve_limit_ode(stack, x0).norm(dim=2).amax(0)
        assert (dist <= euler_distance_bound(stack, radius)).all()


def test_bound_rejects_other_stacks():
    with pytest.raises(ValueError, match="Euler"):
        euler_distance_bound(tanh_stack(4, scheme="heun"), torch.ones(1))


def test_closed_form_bound_is_above_the_recursion():
    x0 = torch.randn(8, 2, generator=torch.Generator().manual_seed(3))
    for kind in ("smooth", "iid"):
        stack = tanh_stack(16, kind, seed=1)
        radius = solve_limit_ode(stack, x0).norm(dim=2).amax(0)
        rec = euler_distance_bound(stack, radius)
        closed = euler_distance_bound(stack, radius, form="closed")
        assert (closed >= rec).all()
    with pytest.raises(ValueError, match="unknown form"):
        euler_distance_bound(stack, radius, form="tight")
